"""Tests that pin the values users see: what a server is sent, the numbers of a report or a card, the config a stage
resolves and runs with, the seeds of each sample, the position ids of a packed batch. Elsewhere many checks look at
the shape of such values (a key is present, a column exists); these compare each against the config or the computation
it must come from. Each is the test of a named mutation in tests/mutation_check.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import datasets
import pytest
import yaml

from openai_stub import OpenAIStub
from pipeline.backends.base import GenRequest, GenResult, sample_seed
from pipeline.backends.prompts import chat_messages
from pipeline.core.config import PromptConfig, load_recipe

PROBLEMS = [{"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(3)]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("\n---\n", 1)[0][4:])


# ----------------------------------------------------------------------------- what the teacher server is sent

def _generate_args(url: str, problems: str, out: Path, **kv) -> list[str]:
    base = {"problems.source": problems, "teacher.model": "stub-teacher", "teacher.backend": "openai",
            "teacher.base_urls": url, "teacher.concurrency": 1, "output": str(out), "sampling.n": 2,
            "progress": False}
    base.update(kv)
    args = []
    for k, v in base.items():
        args += [f"--generate.{k}", v if isinstance(v, str) else json.dumps(v)]
    return args


def _run_generate(args: list[str]) -> dict:
    from pipeline.generate import stage as generate

    return generate.run(load_recipe(None, args).generate)


def test_the_openai_backend_sends_the_configured_sampling(tmp_path):
    """Every chat request carries the recipe's temperature, top_p and max_tokens (a server left to its own defaults
    samples another distribution), the prompt as built, and no seed unless request_seed; with logprobs k it asks for
    k + 1 top logprobs (vLLM may spend one on the sampled token). The traces record the same settings."""
    problems = write_jsonl(tmp_path / "p.jsonl", PROBLEMS)
    prompt = PromptConfig(system="Be brief.")
    with OpenAIStub() as stub:
        _run_generate(_generate_args(stub.url, problems, tmp_path / "a", **{
            "sampling.temperature": 0.3, "sampling.top_p": 0.8, "sampling.max_tokens": 77,
            "prompt.system": "Be brief."}))
        bodies = list(stub.bodies)
        assert len(bodies) == 6
        want = {(p["id"], s): {"model": "stub-teacher", "messages": chat_messages(p["problem"], prompt), "n": 1,
                               "temperature": 0.3, "top_p": 0.8, "max_tokens": 77}
                for p in PROBLEMS for s in range(2)}
        key = lambda b: json.dumps(b, sort_keys=True)  # noqa: E731 - the bodies as a multiset
        assert sorted(map(key, bodies)) == sorted(map(key, want.values()))
        traces = datasets.load_from_disk(str(tmp_path / "a" / "dataset"))
        assert traces["sampling"] == [{"temperature": 0.3, "top_p": 0.8, "max_tokens": 77, "seed": 0,
                                       "logprobs": 0}] * 6

        stub.bodies.clear()
        _run_generate(_generate_args(stub.url, problems, tmp_path / "b", **{
            "sampling.temperature": 1.0, "sampling.top_p": 0.5, "sampling.max_tokens": 9, "sampling.logprobs": 5}))
        assert len(stub.bodies) == 6
        for body in stub.bodies:
            assert (body["temperature"], body["top_p"], body["max_tokens"]) == (1.0, 0.5, 9)
            assert (body["logprobs"], body["top_logprobs"]) == (True, 6) and "seed" not in body


def test_each_sample_has_its_own_seed(tmp_path):
    """request_seed: each (id, sample) is sent sample_seed(seed, id, sample), all distinct, so the n samples of a
    problem are n draws and not one draw n times."""
    problems = write_jsonl(tmp_path / "p.jsonl", PROBLEMS)
    with OpenAIStub() as stub:
        _run_generate(_generate_args(stub.url, problems, tmp_path / "out", **{
            "teacher.request_seed": True, "sampling.seed": 11, "sampling.n": 3}))
        by_key = {}
        for body in stub.bodies:
            pid = next(p["id"] for p in PROBLEMS if p["problem"] in body["messages"][-1]["content"])
            by_key.setdefault(pid, []).append(body["seed"])
    assert len(stub.bodies) == 9
    for p in PROBLEMS:
        assert sorted(by_key[p["id"]]) == sorted(sample_seed(11, p["id"], s) for s in range(3))
    seeds = [s for ss in by_key.values() for s in ss]
    assert len(set(seeds)) == 9
    # stable across runs and machines (a resumed run asks with the same seeds): sha256 of "seed:id:sample"
    assert (sample_seed(0, "p0", 0), sample_seed(0, "p0", 1)) == (1975650147, 1765287669)


def test_the_transformers_backend_draws_distinct_samples(tiny_model, tmp_path):
    """One prompt per generate() call (batch_size 1): each sample is drawn with its own seed, so the samples of a
    problem differ (the random tiny model at temperature 1 almost never repeats 8 tokens)."""
    problems = write_jsonl(tmp_path / "p.jsonl", PROBLEMS[:2])
    _run_generate(_generate_args("", problems, tmp_path / "out", **{
        "teacher.model": tiny_model, "teacher.backend": "transformers", "teacher.base_urls": "[]",
        "teacher.dtype": "float32", "teacher.batch_size": 1, "sampling.n": 3, "sampling.temperature": 1.0,
        "sampling.top_p": 1.0, "sampling.max_tokens": 8}))
    ds = datasets.load_from_disk(str(tmp_path / "out" / "dataset"))
    for p in PROBLEMS[:2]:
        samples = [tuple(ids) for i, ids in zip(ds["id"], ds["completion_token_ids"]) if i == p["id"]]
        assert len(samples) == 3 and len(set(samples)) == 3, samples


def test_in_process_vllm_asks_with_the_sampling_and_each_samples_seed(tmp_path):
    """The vLLM backend's SamplingParams per request: the recipe's sampling, and with request_seed the request's own
    seed (distinct per sample); without it none (the engine's seeded generator draws them)."""
    pytest.importorskip("vllm")
    from pipeline.backends.vllm_backend import VLLMTeacher
    from pipeline.generate.stage import build_requests

    problems = datasets.Dataset.from_list(PROBLEMS)
    for request_seed in (True, False):
        cfg = load_recipe(None, ["--generate.problems.source", "x", "--generate.teacher.model", "m",
                                 "--generate.output", "o", "--generate.teacher.request_seed", str(request_seed).lower(),
                                 "--generate.sampling.n", "3", "--generate.sampling.seed", "4",
                                 "--generate.sampling.temperature", "0.7", "--generate.sampling.top_p", "0.9",
                                 "--generate.sampling.max_tokens", "33", "--generate.sampling.logprobs", "2"]).generate
        teacher = VLLMTeacher.__new__(VLLMTeacher)  # no engine: only the per-request parameters are asked for
        teacher.cfg, teacher.sampling = cfg.teacher, cfg.sampling
        requests = build_requests(problems, cfg)
        params = [teacher._params(r) for r in requests]
        for p in params:
            assert (p.n, p.temperature, p.top_p, p.max_tokens, p.logprobs) == (1, 0.7, 0.9, 33, 2)
        seeds = [p.seed for p in params]
        if request_seed:
            assert seeds == [sample_seed(4, r.id, r.sample) for r in requests] and len(set(seeds)) == 9
        else:
            assert seeds == [None] * 9


def test_a_launched_server_gets_the_runs_seed_and_logprobs(monkeypatch, tmp_path):
    """teacher.launch_server: the `vllm serve` command line holds the sampling seed and room for k + 1 logprobs
    (vLLM refuses requests for more top logprobs than --max-logprobs)."""
    from pipeline.backends import server
    from pipeline.generate import stage as generate

    started = []

    class NoServer(server.LocalVLLMServer):
        def __enter__(self):
            started.append(self.cmd)
            return self.url

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(server, "LocalVLLMServer", NoServer)
    cfg = load_recipe(None, ["--generate.problems.source", "x", "--generate.teacher.model", "my-teacher",
                             "--generate.teacher.backend", "openai", "--generate.teacher.launch_server", "true",
                             "--generate.teacher.server_port", "8123", "--generate.teacher.dtype", "float32",
                             "--generate.output", str(tmp_path / "o"), "--generate.sampling.seed", "7",
                             "--generate.sampling.logprobs", "30"]).generate
    with generate.teacher_urls(cfg) as urls:
        assert urls == ["http://127.0.0.1:8123/v1"]
    (cmd,) = started
    flags = {a: b for a, b in zip(cmd, cmd[1:]) if a.startswith("--")}
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert flags["--model"] == flags["--served-model-name"] == "my-teacher" and flags["--port"] == "8123"
    assert flags["--seed"] == "7" and flags["--max-logprobs"] == "31" and flags["--dtype"] == "float32"


# -------------------------------------------------------------------------------------------------- evaluate

class _Scripted:
    """A backend answering \\boxed{gold} where SCRIPT says right, \\boxed{-1} elsewhere; records its sampling."""

    calls: list = []

    def __init__(self, cfg, sampling, script):
        self.name, self.sampling, self.script = cfg.model, sampling, script
        _Scripted.calls.append(sampling)

    def generate(self, requests, on_result):
        for r in requests:
            right = self.script[r.id][r.sample]
            answer = next(p["answer"] for p in EVAL_PROBLEMS if p["id"] == r.id) if right else "-1"
            on_result(GenResult(r.id, r.sample, completion=f"So \\boxed{{{answer}}}", finish_reason="stop",
                                prompt_tokens=5, completion_tokens=4))

    def close(self):
        pass


EVAL_PROBLEMS = [{"id": f"q{i}", "problem": f"What is {i} times 3?", "answer": str(3 * i)} for i in range(1, 7)]
EVAL_SCRIPT = {"q1": [1, 1, 1, 1], "q2": [0, 0, 0, 0], "q3": [1, 0, 0, 0], "q4": [1, 1, 0, 0], "q5": [1, 1, 1, 0],
               "q6": [0, 0, 0, 1]}


@pytest.fixture()
def scripted(monkeypatch):
    from pipeline.evaluate import stage as evaluate

    _Scripted.calls = []
    monkeypatch.setattr(evaluate, "make_teacher", lambda cfg, sampling, base_urls=None:
                        _Scripted(cfg, sampling, {k: v + [1] * 4 for k, v in EVAL_SCRIPT.items()}))
    monkeypatch.setattr(evaluate, "preflight", lambda model, sampling, index: None)
    return evaluate


def _eval_config(out: Path, problems: str, **kv):
    base = {"models": [{"model": "scripted", "name": "student", "backend": "transformers"}],
            "benchmarks": [{"source": problems, "name": "mini"}], "output": str(out), "progress": False}
    base.update(kv)
    args = []
    for k, v in base.items():
        args += [f"--evaluate.{k}", v if isinstance(v, str) else json.dumps(v)]
    return load_recipe(None, args).evaluate


def test_the_interval_is_the_bootstrap_of_the_problems(scripted, tmp_path):
    """pass@1's 95% interval in results.json is bootstrap_ci over the per-problem accuracies, with evaluate.bootstrap
    resamples and the sampling seed: problems are resampled, not samples (which would make it far too narrow)."""
    from pipeline.evaluate.metrics import bootstrap_ci, per_problem_accuracy

    problems = write_jsonl(tmp_path / "p.jsonl", EVAL_PROBLEMS)
    cfg = _eval_config(tmp_path / "eval", problems, **{"sampling.n": 4, "sampling.seed": 5, "bootstrap": 300})
    scripted.run(cfg)
    m = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]["student"]["mini"]
    flags = [[bool(x) for x in EVAL_SCRIPT[p["id"]]] for p in EVAL_PROBLEMS]
    assert m["pass@1"] == pytest.approx(sum(map(sum, flags)) / 24, abs=1e-6)
    lo, hi = bootstrap_ci(per_problem_accuracy(flags), n_boot=300, seed=5)
    assert (m["ci95_low"], m["ci95_high"]) == (round(lo, 6), round(hi, 6))
    md = (tmp_path / "eval" / "results.md").read_text()
    assert f"| mini (6) | pass@1 (95% CI) | {100 * m['pass@1']:.1f} ({100 * lo:.1f}-{100 * hi:.1f}) |" in md


def test_results_record_the_sampling_that_was_used(scripted, tmp_path):
    """results.json's sampling (what the cards quote as the protocol) is the one the model was asked with: the
    resolved n and, with greedy, temperature 0 and top_p 1, not the section as written."""
    problems = write_jsonl(tmp_path / "p.jsonl", EVAL_PROBLEMS)
    r = scripted.run(_eval_config(tmp_path / "a", problems, **{"sampling.max_tokens": 64, "sampling.seed": 2}))
    used = _Scripted.calls[-1]
    assert (used.n, used.temperature, used.top_p, used.max_tokens, used.seed) == (4, 0.6, 0.95, 64, 2)
    want = {"n": 4, "temperature": 0.6, "top_p": 0.95, "max_tokens": 64, "seed": 2, "logprobs": 0, "greedy": False}
    assert r["sampling"] == want
    assert json.loads((tmp_path / "a" / "results.json").read_text())["sampling"] == want
    r = scripted.run(_eval_config(tmp_path / "g", problems, greedy=True))
    assert r["sampling"] == {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 32768, "seed": 0, "logprobs": 0,
                             "greedy": True}


# ------------------------------------------------------------------------------------------------------- push

EVAL_RESULTS = {
    "models": [{"name": "teacher", "model": "org/teacher", "backend": "vllm"},
               {"name": "student", "model": "student", "backend": "vllm"}],
    "benchmarks": [{"name": "gsm8k", "source": "gsm8k", "split": None, "n_problems": 6, "contamination": "checked"}],
    "sampling": {"n": 4, "temperature": 0.8, "top_p": 0.9, "max_tokens": 1024, "seed": 0, "greedy": False},
    "ks": [1, 2, 4],
    "prompt": {"instruction": "Think, then box it.", "system": None, "template": "{problem}\n{instruction}"},
    "results": {name: {"gsm8k": {"n_problems": 6, "n_samples": 4, "samples": 24, "pass@1": p1, "ci95_low": lo,
                                 "ci95_high": hi, "pass@k": {"1": p1, "2": p2, "4": p4},
                                 "maj@k": {"1": p1, "2": m2, "4": m4}, "truncated_rate": 0.0, "no_answer_rate": 0.0,
                                 "mean_output_tokens": 40.0, "failed_requests": 0}}
                for name, (p1, lo, hi, p2, p4, m2, m4) in {
                    "teacher": (0.9, 0.8, 1.0, 0.95, 1.0, 0.9, 0.95),
                    "student": (0.41667, 0.25, 0.58333, 0.5625, 0.75, 0.41667, 0.5)}.items()},
}


def test_the_model_cards_numbers_are_the_evaluations():
    """model-index (what the Hub shows as the model's results): pass@1, pass@4 and maj@4 of the pushed student, each
    its own value in percent, named with the protocol; the card's table and its usage snippet quote the same."""
    from pipeline.push.cards import Facts, model_card

    facts = Facts(model_repo="me/tiny-r1", eval_results=EVAL_RESULTS, eval_model="student", teacher="org/teacher",
                  train_summary={"stage": "sft", "method": "full", "steps": 3}, method="full")
    text = model_card(facts)
    (index,) = _front_matter(text)["model-index"]
    assert index["name"] == "me/tiny-r1"
    got = {m["type"]: (m["value"], m["name"]) for r in index["results"] for m in r["metrics"]}
    protocol = "(%, n=4, T=0.8, top_p=0.9)"
    assert got == {"pass@1": (41.67, f"pass@1 {protocol}"), "pass@4": (75.0, f"pass@4 {protocol}"),
                   "maj@4": (50.0, f"maj@4 {protocol}")}
    assert {r["dataset"]["type"] for r in index["results"]} == {"openai/gsm8k"}
    assert "| gsm8k (6) | pass@1 (95% CI) | 90.0 (80.0-100.0) | 41.7 (25.0-58.3) |" in text
    assert "|  | pass@4 | 100.0 | 75.0 |" in text and "|  | maj@4 | 95.0 | 50.0 |" in text
    assert "4 sample(s) per problem, temperature 0.8, top_p 0.9, at most 1024 new tokens" in text
    assert "do_sample=True, temperature=0.8, top_p=0.9)" in text  # the usage snippet samples as evaluated
    assert "Think, then box it." in text


def test_each_card_carries_its_own_licence(tiny_model, tmp_path, monkeypatch, capsys):
    """push.license goes into the model card, push.dataset_license into both dataset cards."""
    from pipeline.push import stage as hub

    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_the_dry_run")
    rows = [{"id": f"p{i}", "sample": 0, "problem": f"What is {i} + 1?", "answer": str(i + 1), "teacher": "org/teacher",
             "completion": f"<think>{i}+1</think> \\boxed{{{i + 1}}}", "finish_reason": "stop", "error": None,
             "sampling": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 64, "seed": 0, "logprobs": 0}}
            for i in range(3)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "traces" / "dataset"))
    (tmp_path / "traces" / "summary.json").write_text(json.dumps({"rows": 3, "problems": 3, "n": 1, "errors": 0,
                                                                  "teacher": "org/teacher"}))
    kept = [{"messages": [{"role": "user", "content": r["problem"]}, {"role": "assistant", "content": r["completion"]}],
             "id": r["id"], "sample": 0} for r in rows]
    datasets.Dataset.from_list(kept).save_to_disk(str(tmp_path / "train" / "dataset"))
    (tmp_path / "train" / "report.json").write_text(json.dumps({"rows_in": 3, "rows_kept": 3, "problems_in": 3,
                                                                "problems_kept": 3, "config": {}}))
    shutil.copytree(tiny_model, tmp_path / "sft" / "model")
    (tmp_path / "sft" / "summary.json").write_text(json.dumps({"stage": "sft", "method": "full", "steps": 2}))
    recipe = load_recipe(None, [
        "--push.model_repo", "me/m", "--push.dataset_repo", "me/d", "--push.traces_repo", "me/t",
        "--push.model", str(tmp_path / "sft"), "--push.dataset", str(tmp_path / "train"),
        "--push.traces", str(tmp_path / "traces"), "--push.license", "mit", "--push.dataset_license", "cc-by-4.0",
        "--push.dry_run", "--push.dry_run_dir", str(tmp_path / "preview")])
    hub.run(recipe.push, recipe)
    licences = {kind: _front_matter((tmp_path / "preview" / kind / "README.md").read_text()).get("license")
                for kind in ("model", "dataset", "traces")}
    assert licences == {"model": "mit", "dataset": "cc-by-4.0", "traces": "cc-by-4.0"}


# ------------------------------------------------------------------------------------------------ recipe defaults

def test_an_rl_prompt_override_is_kept_beside_generates(tmp_path, monkeypatch, capsys):
    """rl takes generate's prompt only when it has none of its own: `--rl.prompt.system X` is what `distill config`
    shows and what rl builds its prompts from; without it rl gets generate's prompt."""
    from pipeline import cli
    from pipeline.train import rl

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "generate": {"problems": {"source": "gsm8k"}, "teacher": {"model": "t"}, "output": str(tmp_path / "g"),
                     "prompt": {"system": "generate's system", "instruction": "Box it."}},
        "sft": {"student": "s", "output": str(tmp_path / "sft")},
        "rl": {"output": str(tmp_path / "rl")}}))
    assert cli.main(["config", str(path), "--rl.prompt.system", "Think in French."]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["rl"]["prompt"]["system"] == "Think in French."
    assert shown["generate"]["prompt"]["system"] == "generate's system"

    used = []
    monkeypatch.setattr(rl, "run", lambda cfg, callbacks=None: used.append(cfg) or {})
    cli.call_stage("rl", load_recipe(path, ["--rl.prompt.system", "Think in French."]))
    cli.call_stage("rl", load_recipe(path, []))
    overridden, defaulted = (chat_messages("What is 1 + 1?", cfg.prompt) for cfg in used)
    assert overridden[0] == {"role": "system", "content": "Think in French."}
    assert defaulted == [{"role": "system", "content": "generate's system"},
                         {"role": "user", "content": "What is 1 + 1?\nBox it."}]


# ---------------------------------------------------------------------------------------------------- run

def test_a_changed_generate_key_reruns_filter_and_sft(tiny_model, tmp_path, capsys, monkeypatch):
    """generate (a stand-in teacher) -> filter -> sft, then the same recipe with another sampling temperature:
    generate asks again, and filter and sft, which read its output, run again too."""
    from pipeline.cli import main as cli_main

    problems = write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "problem": f"Write {i} as a number.",
                                                   "answer": str(i)} for i in range(1, 5)])
    run_dir = tmp_path / "run"
    with OpenAIStub() as stub:
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump({
            "generate": {"problems": {"source": problems},
                         "teacher": {"model": "stub-teacher", "backend": "openai", "base_urls": [stub.url]},
                         "sampling": {"n": 1, "max_tokens": 64}, "output": f"{run_dir}/traces", "progress": False},
            "filter": {"output": f"{run_dir}/train", "progress": False},
            "sft": {"student": str(tiny_model), "output": f"{run_dir}/sft", "max_steps": 1, "batch_size": 2,
                    "grad_accum": 1, "max_length": 128, "progress": False, "precision": "fp32"},
        }))
        assert cli_main(["run", str(path)]) == 0
        out = capsys.readouterr().out
        assert all(f"===== {s} =====" in out for s in ("generate", "filter", "sft"))
        asked = stub.arrived

        assert cli_main(["run", str(path), "--generate.sampling.temperature", "0.9"]) == 0
        out = capsys.readouterr().out
        for stage in ("generate", "filter", "sft"):
            assert f"===== {stage} =====" in out and f"run: {stage} is up to date" not in out, stage
        assert stub.arrived - asked == 4 and {b["temperature"] for b in stub.bodies[asked:]} == {0.9}
    traces = datasets.load_from_disk(str(run_dir / "traces" / "dataset"))
    assert {s["temperature"] for s in traces["sampling"]} == {0.9}


# ------------------------------------------------------------------------------------------------------ kd

def test_packed_kd_batches_restart_positions_at_each_sequence():
    """Padding-free packing: the position ids of a packed row restart at 0 where each packed example starts (so no
    example attends to another), the first label of each is masked, and the stored top-k rows stay with their
    tokens."""
    from pipeline.train import kd_data

    lengths = [5, 3, 4, 2, 6]
    rows = []
    for j, n in enumerate(lengths):
        ids = [100 * (j + 1) + i for i in range(n)]
        rows.append({"input_ids": ids, "labels": [-100] + ids[1:], "topk_ids": [[]] + [[t, t + 1] for t in ids[1:]],
                     "topk_logprobs": [[]] + [[-0.5, -1.5]] * (n - 1)})
    packed = kd_data.pack(datasets.Dataset.from_list(rows), max_length=10, seed=0)
    assert sorted(n for r in packed for n in r["seq_lengths"]) == sorted(lengths)
    collate = kd_data.KDCollator(pad_token_id=0, padding_free=True, topk=2)
    for row in packed:
        batch = collate([row])
        want = [i for n in row["seq_lengths"] for i in range(n)]
        assert batch["position_ids"].tolist() == [want], row["seq_lengths"]
        starts = [sum(row["seq_lengths"][:j]) for j in range(len(row["seq_lengths"]))]
        assert batch["cu_seq_lens_q"].tolist() == starts + [len(want)]
        labels = batch["labels"][0].tolist()
        assert all(labels[s] == -100 for s in starts)
        tok, top = batch["input_ids"][0].tolist(), batch["topk_ids"][0].tolist()
        assert all(top[i] == [t, t + 1] for i, t in enumerate(tok) if labels[i] != -100)

    # two packed rows in one batch: flattened, and each row's sequences keep their own restarts
    both = collate([packed[0], packed[1]])
    want = [i for r in (packed[0], packed[1]) for n in r["seq_lengths"] for i in range(n)]
    assert both["position_ids"].tolist() == [want]


# ----------------------------------------------------------------------------- the stored top-k of in-process vLLM

def test_vllm_top_k_is_the_k_best_log_probs_whatever_rank_vllm_reports():
    """vLLM returns each position's top-k plus the sampled token; the k kept are the k best by log-prob. Under
    ATEN_CPU_CAPABILITY=avx2 on an AVX-512 machine vLLM reported the sampled token below the top-4 at rank 0, 1 or 2
    (test_kd's vLLM -> filter -> kd test then stored it in place of the true 4th best: 0.87 nats off)."""
    from types import SimpleNamespace as NS

    from vllm.logprobs import Logprob

    from pipeline.backends.vllm_backend import to_result

    positions = [
        {111: Logprob(-5.1954, 1), 260: Logprob(-5.9073, 1), 377: Logprob(-5.8519, 2), 137: Logprob(-5.86, 3),
         155: Logprob(-5.9003, 4)},  # as seen: the sampled 260 claims rank 1
        {489: Logprob(-5.908, 0), 268: Logprob(-5.0408, 1), 30: Logprob(-5.809, 2), 488: Logprob(-5.8204, 3),
         331: Logprob(-5.8726, 4)},  # rank 0
        {7: Logprob(-0.5, 1), 8: Logprob(-1.5, 2), 9: Logprob(-2.5, 3), 10: Logprob(-3.5, 4)},  # sampled inside
    ]
    out = NS(outputs=[NS(logprobs=positions, text="x", finish_reason="length", token_ids=[260, 489, 8])],
             prompt_token_ids=[1, 2])
    r = to_result(GenRequest("p", 0, [], 0), out, 4)
    assert r.topk_ids == [[111, 377, 137, 155], [268, 30, 488, 331], [7, 8, 9, 10]]
    assert r.topk_logprobs == [[-5.1954, -5.8519, -5.86, -5.9003], [-5.0408, -5.809, -5.8204, -5.8726],
                               [-0.5, -1.5, -2.5, -3.5]]
