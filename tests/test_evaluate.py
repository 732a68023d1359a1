"""The evaluate stage: scoring on known completions (a scripted backend), reuse and resume, decontamination,
errors, and end-to-end runs of each real backend on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from pipeline import cli
from pipeline.evaluate import stage as evaluate
from pipeline.core.config import FilterConfig, load_recipe
from pipeline.core.data import load_problems
from pipeline.evaluate.contamination import ContaminationError
from pipeline.backends.base import GenResult
from pipeline.backends.server import free_port
from pipeline.generate.store import OutputConfigMismatch

PNG = b"\x89PNG\r\n\x1a\n"
RECORD_COLUMNS = {"model", "benchmark", "id", "sample", "problem", "answer", "completion", "predicted", "correct",
                  "verify_reason", "failure", "finish_reason", "completion_tokens", "error"}


def write_problems(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def config(output: Path, models, benchmarks, **kv):
    base = {"models": models, "benchmarks": benchmarks, "output": str(output), "progress": False}
    base.update(kv)
    args = []
    for k, v in base.items():
        args += [f"--evaluate.{k}", v if isinstance(v, str) else json.dumps(v)]
    return load_recipe(None, args).evaluate


# ------------------------------------------------------------------- scoring on known completions

SCRIPT = {  # (problem id, sample) -> completion, or an exception text for a failed request
    ("half", 0): "1 over 2 is \\boxed{1/2}",
    ("half", 1): "<think>maybe \\boxed{7}?</think>\nSo it is \\boxed{0.5}.",  # the answer after the reasoning
    ("half", 2): "\\boxed{3}",
    ("half", 3): "\\boxed{\\frac{1}{2}}",
    ("four", 0): "\\boxed{5}",
    ("four", 1): "2 + 2 = 5, so \\boxed{5}",  # a false written step
    ("four", 2): "2 + 2 = \\boxed{4}",
    ("four", 3): "<think>2 + 2 is \\boxed{4} but let me check",  # cut off inside its reasoning: no answer
    ("ten", 0): RuntimeError("HTTP 503: overloaded"),
    ("ten", 1): "The answer is 10.",
    ("ten", 2): "\\boxed{10}",
    ("ten", 3): "I give up.",
}
PROBLEMS = [{"id": "half", "problem": "Write 1/2 as a decimal.", "answer": "0.5"},
            {"id": "four", "problem": "What is 2 + 2?", "answer": "4"},
            {"id": "ten", "problem": "What is 5 + 5?", "answer": "10"}]


class ScriptedTeacher:
    """A backend that answers from SCRIPT (the Teacher protocol); records what it was asked."""

    calls: list = []

    def __init__(self, cfg, sampling, script):
        self.name, self.sampling, self.script = cfg.model, sampling, script
        ScriptedTeacher.calls.append({"sampling": sampling, "requests": []})

    def generate(self, requests, on_result):
        for r in requests:
            ScriptedTeacher.calls[-1]["requests"].append((r.id, r.sample))
            text = self.script[(r.id, r.sample)]
            if isinstance(text, Exception):
                on_result(GenResult(r.id, r.sample, error=str(text)))
            else:
                cut = "</think>" not in text and "<think>" in text
                on_result(GenResult(r.id, r.sample, completion=text, finish_reason="length" if cut else "stop",
                                    prompt_tokens=5, completion_tokens=10))

    def close(self):
        pass


@pytest.fixture()
def scripted(monkeypatch):
    script = dict(SCRIPT)
    ScriptedTeacher.calls = []
    monkeypatch.setattr(evaluate, "make_teacher",
                        lambda cfg, sampling, base_urls=None: ScriptedTeacher(cfg, sampling, script))
    monkeypatch.setattr(evaluate, "preflight", lambda model, sampling, index: None)
    return script


def test_scoring_on_known_completions(scripted, tmp_path, capsys):
    problems = write_problems(tmp_path / "p.jsonl", PROBLEMS)
    out = tmp_path / "eval"
    models = [{"model": "scripted", "name": "student", "backend": "transformers"}]
    benches = [{"source": problems, "name": "mini"}]
    cfg = config(out, models, benches, **{"sampling.n": 4})
    r = evaluate.run(cfg)
    m = r["results"]["student"]["mini"]
    # correct: half [T, T, F, T]; four [F, F, T, F]; ten [failed, T (the answer is), T, F]
    assert m["pass@1"] == pytest.approx((3 / 4 + 1 / 4 + 2 / 4) / 3, abs=1e-6)
    assert m["pass@k"]["2"] == pytest.approx((1 + (1 - 3 / 6) + (1 - 1 / 6)) / 3, abs=1e-6)
    assert m["pass@k"]["4"] == 1.0
    # maj@4: half {1/2, 0.5, \frac{1}{2}} beats {3}; four 5, 5 beats 4; ten 10, 10 (the failed and the
    # answerless samples do not vote)
    assert m["maj@k"] == {"1": pytest.approx(1 / 3, abs=1e-6), "2": pytest.approx(2 / 3, abs=1e-6),
                          "4": pytest.approx(2 / 3, abs=1e-6)}
    assert m["failed_requests"] == 1 and m["truncated_rate"] == pytest.approx(1 / 12, abs=1e-6)
    assert m["no_answer_rate"] == pytest.approx(2 / 11, abs=1e-6) and m["mean_output_tokens"] == 10
    assert m["ci95_low"] <= m["pass@1"] <= m["ci95_high"]
    assert m["failures"] == {"correct": 6, "failed": 1, "loop": 0, "truncated": 1, "no answer": 1, "arithmetic": 1,
                             "method": 2}
    assert m["steps"] == {"+": [0, 1], "-": [0, 0], "*": [0, 0], "/": [0, 0]}  # "2 + 2 = 5", the one written step
    assert "1 requests failed" in capsys.readouterr().out

    samples = datasets.load_from_disk(str(out / "samples"))
    assert set(samples.column_names) == RECORD_COLUMNS and len(samples) == 12
    row = {(x["id"], x["sample"]): x for x in samples}
    assert row[("half", 1)]["predicted"] == "\\frac{1}{2}" and row[("half", 1)]["correct"]
    assert row[("four", 3)]["predicted"] is None and row[("four", 3)]["finish_reason"] == "length"
    assert row[("ten", 0)]["error"] == "HTTP 503: overloaded" and row[("ten", 0)]["verify_reason"] == "request failed"
    assert row[("ten", 1)]["predicted"] == "10"
    assert [row[("four", i)]["failure"] for i in range(4)] == ["method", "arithmetic", "correct", "truncated"]
    assert json.loads((out / "results.json").read_text())["results"]["student"]["mini"] == m
    md = (out / "results.md").read_text()
    assert r["table"].startswith("| benchmark (problems) | metric | student |") and r["table"] in md
    assert "| mini (3) | pass@1 (95% CI) | 50.0 (" in md and "| maj@4 | 66.7 |" in md
    assert "| failed requests | 1 |" in md
    assert "| mini (3) | correct | 50.0 (6) |" in md and "|  | arithmetic | 8.3 (1) |" in md
    assert (out / "failures.png").read_bytes()[:8] == PNG
    assert (out / "results.png").read_bytes()[:8] == PNG

    # a rerun asks again for the failed request only, and the server has recovered
    scripted[("ten", 0)] = "\\boxed{10}"
    r = evaluate.run(cfg)
    assert ScriptedTeacher.calls[-1]["requests"] == [("ten", 0)]
    assert r["results"]["student"]["mini"]["pass@1"] == pytest.approx((3 / 4 + 1 / 4 + 3 / 4) / 3, abs=1e-6)
    assert r["results"]["student"]["mini"]["failed_requests"] == 0

    # finished: reused as is; other ks: re-scored from the stored samples; more samples: only the new ones
    calls = len(ScriptedTeacher.calls)
    evaluate.run(cfg)
    assert len(ScriptedTeacher.calls) == calls and "reusing finished results on mini" in capsys.readouterr().out
    r = evaluate.run(config(out, models, benches, **{"sampling.n": 4, "ks": [3]}))
    assert len(ScriptedTeacher.calls) == calls and set(r["results"]["student"]["mini"]["pass@k"]) == {"3"}
    scripted.update({(p["id"], 4): "\\boxed{0}" for p in PROBLEMS})
    r = evaluate.run(config(out, models, benches, **{"sampling.n": 5}))
    assert sorted(ScriptedTeacher.calls[-1]["requests"]) == [("four", 4), ("half", 4), ("ten", 4)]
    assert r["results"]["student"]["mini"]["n_samples"] == 5

    # a change that decides the samples' content is refused until overwrite
    with pytest.raises(OutputConfigMismatch, match="sampling.temperature 0.6 -> 0.9.*--evaluate.overwrite true"):
        evaluate.run(config(out, models, benches, **{"sampling.n": 4, "sampling.temperature": 0.9}))
    evaluate.run(config(out, models, benches, **{"sampling.n": 4, "sampling.temperature": 0.9,
                                                           "overwrite": True}))
    assert len(ScriptedTeacher.calls[-1]["requests"]) == 12


def test_greedy_defaults_and_r1_defaults(scripted, tmp_path):
    problems = write_problems(tmp_path / "p.jsonl", PROBLEMS)
    cfg = config(tmp_path / "g", ["scripted"], [problems], greedy=True)
    r = evaluate.run(cfg)
    s = ScriptedTeacher.calls[-1]["sampling"]
    assert (s.n, s.temperature, s.top_p) == (1, 0.0, 1.0) and r["ks"] == [1]
    assert list(r["results"]) == ["scripted"] and list(r["results"]["scripted"]) == ["p"]  # default labels
    d = config(tmp_path / "d", ["m"], ["gsm8k"])
    assert (d.sampling.temperature, d.sampling.top_p, d.sampling.max_tokens) == (0.6, 0.95, 32768)
    assert evaluate.resolve_sampling(d).n == 4 and evaluate.resolve_ks([], 4) == [1, 2, 4]
    assert evaluate.resolve_ks([], 6) == [1, 2, 4, 6] and evaluate.resolve_ks([1, 8], 4) == [1]
    assert d.prompt.instruction == "Please reason step by step, and put your final answer within \\boxed{}."


def test_interrupted_run_keeps_finished_samples(scripted, tmp_path):
    problems = write_problems(tmp_path / "p.jsonl", PROBLEMS)
    cfg = config(tmp_path / "i", ["scripted"], [problems], **{"sampling.n": 4})
    scripted[("four", 2)] = KeyboardInterrupt  # the backend is interrupted after the first 6 samples

    original = ScriptedTeacher.generate

    def generate(self, requests, on_result):
        for r in requests:
            if self.script[(r.id, r.sample)] is KeyboardInterrupt:
                raise KeyboardInterrupt
            original(self, [r], on_result)

    ScriptedTeacher.generate = generate
    try:
        with pytest.raises(KeyboardInterrupt):
            evaluate.run(cfg)
    finally:
        ScriptedTeacher.generate = original
    assert not (tmp_path / "i" / "results.json").exists()
    scripted[("four", 2)] = SCRIPT[("four", 2)]
    evaluate.run(cfg)
    assert sorted(ScriptedTeacher.calls[-1]["requests"])[0] == ("four", 2)
    assert len(ScriptedTeacher.calls[-1]["requests"]) == 12 - 6


def test_smaller_subset_keeps_the_other_samples_for_later(scripted, tmp_path):
    scripted[("ten", 0)] = "\\boxed{10}"
    problems = write_problems(tmp_path / "p.jsonl", PROBLEMS)
    out = tmp_path / "s"
    evaluate.run(config(out, ["scripted"], [problems], **{"sampling.n": 2}))
    calls = len(ScriptedTeacher.calls)
    r = evaluate.run(config(out, ["scripted"], [problems], limit=1, **{"sampling.n": 1}))
    assert r["results"]["scripted"]["p"]["n_problems"] == 1 and r["results"]["scripted"]["p"]["samples"] == 1
    assert len(datasets.load_from_disk(str(out / "samples"))) == 1
    r = evaluate.run(config(out, ["scripted"], [problems], **{"sampling.n": 2}))  # back: nothing to generate
    assert len(ScriptedTeacher.calls) == calls and r["results"]["scripted"]["p"]["samples"] == 6
    samples = datasets.load_from_disk(str(out / "samples"))
    assert sorted(zip(samples["id"], samples["sample"])) == sorted((p["id"], s) for p in PROBLEMS for s in range(2))


# --------------------------------------------------------------------------------- decontamination

def filter_report(path: Path, training_problems: list[str], benchmarks: list[str]) -> str:
    """A filter report.json whose decontamination section the filter's own code computed."""
    from pipeline.filter.stage import decontamination_hits

    cfg = FilterConfig(output=str(path), decontaminate=benchmarks)
    hits = decontamination_hits([f"t{i}" for i in range(len(training_problems))], training_problems, cfg)
    path.mkdir(parents=True)
    (path / "report.json").write_text(json.dumps({"decontamination": {
        "benchmarks": benchmarks, "ngram": 8, "problems_flagged": len({h["id"] for h in hits}), "hits": hits}}))
    return str(path)


def test_flagged_benchmark_problems_are_refused_unless_forced(scripted, tmp_path, capsys):
    gsm8k = load_problems("gsm8k", limit=3)
    script = {(i, 0): "\\boxed{1}" for i in gsm8k["id"]}
    scripted.update(script)
    local = write_problems(tmp_path / "p.jsonl", PROBLEMS)
    report = filter_report(tmp_path / "filtered", [gsm8k[1]["problem"], "Unrelated words about nothing"], ["gsm8k"])
    benches = [{"source": "gsm8k", "limit": 3}, local]
    with pytest.raises(ContaminationError) as e:
        evaluate.run(config(tmp_path / "e", ["scripted"], benches, decontamination_report=report))
    msg = str(e.value)
    assert "\n" not in msg and "gsm8k (1 of 3 problems)" in msg and "--evaluate.force true" in msg
    assert not ScriptedTeacher.calls  # refused before any model was loaded
    capsys.readouterr()

    scripted.update({(p["id"], 0): "\\boxed{1}" for p in PROBLEMS})
    r = evaluate.run(config(tmp_path / "e", ["scripted"], benches, decontamination_report=report, force=True,
                            **{"sampling.n": 1}))
    out = capsys.readouterr().out
    assert "did not check p for contamination" in out and "evaluating them anyway" in out
    assert [b["contamination"] for b in r["benchmarks"]] == ["1 problems flagged (forced)", "not checked by the filter"]
    # a subset without the flagged problem is fine
    r = evaluate.run(config(tmp_path / "f", ["scripted"], [{"source": "gsm8k", "limit": 1}],
                            decontamination_report=str(Path(report) / "report.json"), **{"sampling.n": 1}))
    assert r["benchmarks"][0]["contamination"] == "clean"


def test_recipe_filter_report_is_checked_by_default(scripted, tmp_path, capsys):
    report = filter_report(tmp_path / "filtered", [load_problems("gsm8k", limit=1)[0]["problem"]], ["gsm8k"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"filter: {{output: {report}}}\n"
                      f"evaluate: {{models: [scripted], benchmarks: [{{source: gsm8k, limit: 2}}], "
                      f"output: {tmp_path / 'o'}, progress: false}}\n")
    assert cli.main(["evaluate", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "gsm8k (1 of 2 problems)" in err and "report.json" in err


# ------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("overrides, message", [
    (["--evaluate.benchmarks", "[gsmk8]"], "evaluate.benchmarks[0] (gsmk8): 'gsmk8' is not a benchmark name"),
    (["--evaluate.benchmarks", "[aime24]"], "set DISTILL_BENCHMARKS_DIR"),
    (["--evaluate.models", "[./no/such/model]"], "no such folder ./no/such/model; set evaluate.models[0].model"),
    (["--evaluate.models", f"[{Path(__file__).parent}]"], "set evaluate.models[0].model to a local model folder"),
    (["--evaluate.models", "[{model: m, backend: openai}]"], "evaluate.models[0].base_urls is empty"),
    (["--evaluate.models", "[{model: m, name: a}, {model: n, name: a}]"], "two entries are labelled 'a' and 'a'"),
    (["--evaluate.decontamination_report", "nowhere/report.json"], "nowhere/report.json not found"),
])
def test_errors_are_one_line(overrides, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISTILL_BENCHMARKS_DIR", raising=False)
    args = {"--evaluate.models": "[{model: ./no/such/model, backend: transformers}]",
            "--evaluate.benchmarks": "[{source: gsm8k, limit: 1}]", "--evaluate.output": str(tmp_path / "o")}
    args.update(dict(zip(overrides[::2], overrides[1::2])))
    code = cli.main(["evaluate", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().count("\n") == 0 and message in err, err


def test_dead_server_is_one_line_naming_the_url(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    code = cli.main(["evaluate", "--evaluate.models", f"[{{model: m, backend: openai, base_urls: [{url}]}}]",
                     "--evaluate.benchmarks", "[{source: gsm8k, limit: 1}]", "--evaluate.output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().count("\n") == 0 and url in err and "not reachable" in err


# ----------------------------------------------------------------------------- real backends, end to end

def run_models(tiny_model: str, **model) -> list[dict]:
    return [{"model": tiny_model, "name": name, "dtype": "float32", **model} for name in ("student-a", "student-b")]


def check_outputs(out: Path, results: dict, models: list[str], benches: list[str], n: int) -> None:
    assert list(results["results"]) == models
    for m in models:
        assert list(results["results"][m]) == benches
        for cell in results["results"][m].values():
            assert cell["n_samples"] == n and cell["failed_requests"] == 0 and cell["mean_output_tokens"] > 0
            assert 0 <= cell["ci95_low"] <= cell["pass@1"] <= cell["ci95_high"] <= 1
    assert json.loads((out / "results.json").read_text())["results"] == results["results"]
    md = (out / "results.md").read_text()
    assert f"| benchmark (problems) | metric | {' | '.join(models)} |" in md
    assert (out / "results.png").read_bytes()[:8] == PNG
    samples = datasets.load_from_disk(str(out / "samples"))
    assert set(samples.column_names) == RECORD_COLUMNS
    assert len(samples) == sum(c["samples"] for m in results["results"].values() for c in m.values())
    assert all(c is not None for c in samples["completion"])


def test_transformers_backend_end_to_end(tiny_model, tmp_path):
    local = write_problems(tmp_path / "mine.jsonl", [{"q": p["problem"], "a": p["answer"]} for p in PROBLEMS[:2]])
    out = tmp_path / "eval"
    cfg = config(out, run_models(tiny_model, backend="transformers"),
                 [{"source": "gsm8k", "limit": 2}, {"source": local, "columns": {"problem": "q", "answer": "a"}}],
                 **{"sampling.n": 2, "sampling.max_tokens": 8})
    results = evaluate.run(cfg)
    check_outputs(out, results, ["student-a", "student-b"], ["gsm8k", "mine"], 2)


@pytest.mark.slow
def test_vllm_backend_end_to_end(tiny_model, tmp_path):
    out = tmp_path / "eval"
    args = ["--evaluate.models", json.dumps([{"model": tiny_model, "name": "student", "backend": "vllm",
                                              "dtype": "float32", "enforce_eager": True, "max_model_len": 1024}]),
            "--evaluate.benchmarks", "[{source: gsm8k, limit: 3}, {source: math500, limit: 2}]",
            "--evaluate.sampling.n", "3", "--evaluate.sampling.max_tokens", "16", "--evaluate.output", str(out),
            "--evaluate.progress", "false"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "evaluate", *args], capture_output=True, text=True,
                       timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    check_outputs(out, results, ["student"], ["gsm8k", "math500"], 3)
    assert "pass@1 (95% CI)" in p.stdout  # the summary table


@pytest.mark.slow
def test_openai_backend_end_to_end(vllm_server, tiny_model, tmp_path):
    out = tmp_path / "eval"
    cfg = config(out, run_models(tiny_model, backend="openai", base_urls=[vllm_server], concurrency=8),
                 [{"source": "gsm8k", "limit": 3}, {"source": "svamp", "limit": 2, "shuffle_seed": 0}],
                 **{"sampling.n": 2, "sampling.max_tokens": 16})
    results = evaluate.run(cfg)
    check_outputs(out, results, ["student-a", "student-b"], ["gsm8k", "svamp"], 2)
