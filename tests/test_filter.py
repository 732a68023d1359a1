"""The filter stage on a hand-written traces dataset whose every row has a known fate."""

from __future__ import annotations

import json

import datasets
import pytest

from pipeline.filter import stage as filter_stage
from pipeline.filter import checks
from pipeline.core.config import load_recipe
from pipeline.core.data import load_problems

LOOP = "<think>\n" + "then add the apples to the books and count again " * 30 + "\n</think>\n\n\\boxed{10}"


def trace(id_, sample, problem, answer, completion, finish="stop", error=None, tokens=None):
    reasoning, final = "", completion
    if "</think>" in completion:
        reasoning, final = completion.split("</think>", 1)
        reasoning = reasoning.replace("<think>", "")
    return {"id": id_, "sample": sample, "problem": problem, "answer": answer,
            "completion": None if error else completion, "reasoning": None if error else reasoning.strip(),
            "final": None if error else final.strip(), "finish_reason": None if error else finish,
            "completion_tokens": tokens if tokens is not None else len(completion.split()),
            "completion_token_ids": list(range(tokens if tokens is not None else len(completion.split()))),
            "error": error}


P1, P2, P3 = "Tom has 2 apples and buys 2 more. How many?", "Half of one is?", "What is 5 + 5?"
ROWS = [
    # (row, expected first reason or None when kept)
    (trace("p1", 0, P1, "4", "<think>\n2 + 2 = 4 apples in total.\n</think>\n\nHe has \\boxed{4} apples."), None),
    (trace("p1", 1, P1, "4", "<think>\n2 + 2 = 4 apples in total.\n</think>\n\nHe has \\boxed{4} apples."), "duplicate"),
    (trace("p1", 2, P1, "4", "<think>\n2 + 2 = 4 apples in total.\n</think>\n\nHe has \\boxed{4} apples!"), "duplicate"),
    (trace("p1", 3, P1, "4", "<think>\n2 + 3 = 5.\n</think>\n\n\\boxed{5}"), "incorrect"),
    (trace("p2", 0, P2, "\\frac{1}{2}", "<think>\none divided by two\n</think>\n\n\\boxed{0.5}"), None),
    (trace("p2", 1, P2, "\\frac{1}{2}", "<think>\none divided by", finish="length"), "truncated"),
    (trace("p2", 2, P2, "\\frac{1}{2}", "<think>\nhalf\n</think>\n\n\\boxed{0.5} or maybe \\boxed{2}"), "malformed"),
    (trace("p2", 3, P2, "\\frac{1}{2}", "The answer is \\boxed{1/2}."), "no reasoning"),
    (trace("p3", 0, P3, "10", LOOP), "repetitive"),
    (trace("p3", 1, P3, "10", "", error="InternalServerError: 500 (after 6 retries)"), "generation error"),
    (trace("p3", 2, P3, "10", "<think>\nfive plus five: count five, then five more, which makes ten in all\n</think>\n\n\\boxed{10}"), None),
    (trace("p3", 3, P3, "10", "<think>\n5 + 5 = 10\n</think>\n\n\\boxed{10}"), None),
]


@pytest.fixture()
def traces_dir(tmp_path):
    gsm = load_problems("gsm8k", limit=1)
    rows = [r for r, _ in ROWS] + [trace("p4", 0, gsm[0]["problem"], gsm[0]["answer"],
                                         f"<think>\nwork\n</think>\n\n\\boxed{{{gsm[0]['answer']}}}")]
    path = tmp_path / "traces"
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def cfg(traces_dir, out, *extra):
    return load_recipe(None, ["--filter.input", traces_dir, "--filter.output", str(out), "--filter.progress", "false",
                              *extra]).filter


def test_every_row_gets_its_reason(traces_dir, tmp_path):
    out = tmp_path / "out"
    report = filter_stage.run(cfg(traces_dir, out, "--filter.decontaminate", "[gsm8k]"))
    expected = [reason for _, reason in ROWS] + ["contaminated"]
    want = {r: expected.count(r) for r in set(expected) if r}
    assert report["rejected"] == want
    assert report["rows_in"] == 13 and report["rows_kept"] == expected.count(None) == 4
    ds = datasets.load_from_disk(str(out / "dataset"))
    assert sorted(zip(ds["id"], ds["sample"])) == [("p1", 0), ("p2", 0), ("p3", 2), ("p3", 3)]
    row = ds[0]
    assert row["messages"] == [{"role": "user", "content": P1}, {
        "role": "assistant", "content": "<think>\n2 + 2 = 4 apples in total.\n</think>\n\nHe has \\boxed{4} apples."}]
    assert row["predicted"] == "4" and row["completion_token_ids"]  # KD columns carried over
    hits = report["decontamination"]["hits"]
    assert report["decontamination"]["problems_flagged"] == 1 and hits[0]["id"] == "p4"
    assert hits[0]["benchmark"] == "gsm8k" and len(hits[0]["ngram"].split()) == 8
    # teacher pass@1, the per-problem mean: p1 3 of 4; p2 2 of 4 (s1 has no answer, s2's last boxed answer 2
    # is wrong); p3 3 of its 3 answered samples (the failed request is not the teacher's fault); p4 1 of 1
    assert report["teacher_pass_at_1"] == pytest.approx((3 / 4 + 2 / 4 + 3 / 3 + 1) / 4, abs=1e-4)
    assert report["failing_checks"]["generation error"] == 1 and report["failing_checks"]["truncated"] == 1


def test_report_files(traces_dir, tmp_path):
    out = tmp_path / "out"
    filter_stage.run(cfg(traces_dir, out))
    md = (out / "report.md").read_text()
    assert "| duplicate | 2 |" in md and "| incorrect | 1 |" in md and "Not checked" in md
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["rows_kept"] == 5  # p4 kept: no decontamination asked


def test_switches_turn_rules_off(traces_dir, tmp_path):
    report = filter_stage.run(cfg(traces_dir, tmp_path / "o", "--filter.require_reasoning", "false",
                                  "--filter.check_format", "false", "--filter.dedup", "false"))
    assert "no reasoning" not in report["rejected"] and "duplicate" not in report["rejected"]
    # the malformed row's last answer (2) is wrong, so it now falls to the verifier instead
    assert report["rejected"]["incorrect"] == 2
    ds = datasets.load_from_disk(str(tmp_path / "o" / "dataset"))
    bare = ds.filter(lambda r: r["id"] == "p2" and r["sample"] == 3)[0]
    assert bare["messages"][1]["content"] == "The answer is \\boxed{1/2}."  # no empty think block


def test_per_problem_cap_and_pass_rate_band(traces_dir, tmp_path):
    report = filter_stage.run(cfg(traces_dir, tmp_path / "o", "--filter.max_per_problem", "1",
                                  "--filter.pass_rate_min", "0.6"))
    ds = datasets.load_from_disk(str(tmp_path / "o" / "dataset"))
    # p2 (solved in 2 of 4 samples) is out of the band; p3 keeps its shortest correct trace
    assert sorted(zip(ds["id"], ds["sample"])) == [("p1", 0), ("p3", 3), ("p4", 0)]
    assert report["rejected"]["over per-problem cap"] == 1 and report["rejected"]["pass rate out of band"] == 1


def test_reuse_and_refusal(traces_dir, tmp_path, capsys):
    out = tmp_path / "o"
    filter_stage.run(cfg(traces_dir, out))
    filter_stage.run(cfg(traces_dir, out))
    assert "reusing it" in capsys.readouterr().out
    with pytest.raises(filter_stage.FilterError, match="overwrite"):
        filter_stage.run(cfg(traces_dir, out, "--filter.max_per_problem", "1"))
    filter_stage.run(cfg(traces_dir, out, "--filter.max_per_problem", "1", "--filter.overwrite", "true"))
    ids = datasets.load_from_disk(str(out / "dataset"))["id"]
    assert len(ids) == len(set(ids)) > 0  # the new config's output replaced the old one: one trace per problem


@pytest.mark.parametrize("change, message", [
    (lambda ds: ds.remove_columns("answer"), "no column 'answer'"),
    (lambda ds: ds.remove_columns("sample").add_column("sample", ["x"] * len(ds)), "column 'sample' should be int"),
])
def test_malformed_traces_name_the_column(traces_dir, tmp_path, change, message):
    bad = tmp_path / "bad"
    change(datasets.load_from_disk(traces_dir)).save_to_disk(str(bad))
    with pytest.raises(filter_stage.FilterError, match=message) as e:
        filter_stage.run(cfg(str(bad), tmp_path / "o"))
    assert "\n" not in str(e.value)


def test_unfinished_generate_output_is_refused(tmp_path):
    (tmp_path / "gen" / "shards").mkdir(parents=True)
    with pytest.raises(filter_stage.FilterError, match="unfinished generate output"):
        filter_stage.run(cfg(str(tmp_path / "gen"), tmp_path / "o"))


# ------------------------------------------------------------------------------------------ checks

def test_repeat_ratio_separates_loops_from_reasoning():
    normal = ("First, Tom has 2 apples. He buys 2 more, so 2 + 2 = 4. Then he gives one away and keeps 3, "
              "so the total left is 3 apples, which we check by counting them one by one.")
    assert checks.repeat_ratio(normal, 8) == 0.0
    assert checks.repeat_ratio(LOOP, 8) > 0.9


def test_format_problems():
    assert checks.format_problem("<think>a</think>b", "a", "b") is None
    assert checks.format_problem("<think>a</think>x<think>b</think>", "a", "x") == "unbalanced think tags"
    assert checks.format_problem("</think>a<think>", "", "a") == "think tags out of order"
    assert checks.format_problem("x \\boxed{\\frac{1}{2}} so \\boxed{ \\frac{1}{2} }", "", "x \\boxed{\\frac{1}{2}} "
                                 "so \\boxed{ \\frac{1}{2} }") is None  # the same answer twice is fine
    assert checks.format_problem("\\boxed{1} no \\boxed{2}", "", "\\boxed{1} no \\boxed{2}") == "more than one final answer"


def test_duplicates_compare_with_kept_texts_only():
    a = "one two three four five six seven eight"
    assert checks.duplicate_groups([a, a, a + " nine", "something else entirely here now"], 0.7) == [None, 0, 0, None]
    assert checks.duplicate_groups([a, a + " nine"], None) == [None, None]


def test_filter_reads_the_generate_output_of_the_same_recipe(tiny_model, tmp_path):
    import subprocess
    import sys

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
generate:
  problems: {{source: gsm8k, limit: 4}}
  teacher: {{model: {tiny_model}, backend: transformers, dtype: float32}}
  sampling: {{n: 2, max_tokens: 8}}
  output: {tmp_path / 'traces'}
  progress: false
filter:
  output: {tmp_path / 'train'}
  progress: false
""")
    for stage in ("generate", "filter"):
        p = subprocess.run([sys.executable, "-m", "pipeline.cli", stage, str(recipe)], capture_output=True, text=True,
                           timeout=300)
        if stage == "filter" and p.returncode == 1:  # every random 8-token sample truncated: nothing kept
            assert "filter kept 0 of 8 traces" in p.stderr and "truncated" in p.stderr, p.stderr[-2000:]
            assert str(tmp_path / "traces") in p.stderr and not (tmp_path / "train" / "report.json").exists()
            return
        assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((tmp_path / "train" / "report.json").read_text())
    assert report["input"] == str(tmp_path / "traces") and report["rows_in"] == 8
    assert sum(report["rejected"].values()) + report["rows_kept"] == 8
    assert report["rejected"].get("truncated", 0) >= 1  # 8 random tokens rarely end with EOS


def test_output_into_the_traces_folder_is_refused(traces_dir):
    with pytest.raises(filter_stage.FilterError, match="traces folder itself"):
        filter_stage.run(cfg(traces_dir, traces_dir))


def test_require_boxed_is_a_format_rule_of_the_filter(tmp_path):
    """The verifier reads an unboxed answer; requiring a box is the filter's choice (filter.require_boxed)."""
    rows = [trace("q1", 0, "What is 2 + 2?", "4", "<think>\n2 + 2 = 4\n</think>\n\nThe answer is 4."),
            trace("q1", 1, "What is 2 + 2?", "4", "<think>\n2 plus 2 makes 4\n</think>\n\nSo $\\boxed{4}$."),
            trace("q2", 0, "What is 3 + 3?", "6", "<think>\n3 + 3 = 6\n</think>\n\nThe answer is 7.")]
    path = tmp_path / "traces"
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    loose = filter_stage.run(cfg(str(path), tmp_path / "a", "--filter.dedup", "false"))
    assert loose["rows_kept"] == 2 and loose["rejected"] == {"incorrect": 1}
    strict = filter_stage.run(cfg(str(path), tmp_path / "b", "--filter.dedup", "false",
                                  "--filter.require_boxed", "true"))
    assert strict["rows_kept"] == 1 and strict["rejected"] == {"no boxed answer": 2}
    assert strict["failing_checks"]["incorrect"] == 1  # every check is still counted on every row
    assert checks.has_boxed("so \\boxed{4}") and checks.has_boxed("\\fbox{4}") and not checks.has_boxed("4")


def test_prompt_builds_the_training_prompt_instead_of_the_teachers(tmp_path):
    """Context distillation: the teacher was asked for a terse style, the student trains on R1's prompt."""
    terse = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": f"{P3}\nOnly the equations."}]
    row = {**trace("p3", 0, P3, "10", "5 + 5 = 10\n\\boxed{10}"), "messages": terse}
    path = tmp_path / "traces"
    datasets.Dataset.from_list([row]).save_to_disk(str(path))

    def training_prompt(name, body):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(f"filter:\n  input: {path}\n  output: {tmp_path / name}\n  progress: false\n"
                          f"  require_reasoning: false\n{body}")
        filter_stage.run(load_recipe(str(recipe), []).filter)
        return datasets.load_from_disk(str(tmp_path / name / "dataset"))[0]["messages"][:-1]

    assert training_prompt("as-sent", "  user_turn: prompt\n") == terse
    assert training_prompt("r1", "  prompt: {}\n") == [
        {"role": "user", "content": f"{P3}\nPlease reason step by step, and put your final answer within \\boxed{{}}."}]
    assert training_prompt("own", "  prompt: {system: S, instruction: Go.}\n") == [
        {"role": "system", "content": "S"}, {"role": "user", "content": f"{P3}\nGo."}]
    with pytest.raises(ValueError, match="keep one"):
        training_prompt("both", "  prompt: {}\n  user_turn: prompt\n")


def test_a_set_prompt_changes_the_fingerprint(traces_dir, tmp_path):
    base = filter_stage.filter_fingerprint(cfg(traces_dir, tmp_path / "a"))
    assert filter_stage.filter_fingerprint(cfg(traces_dir, tmp_path / "a", "--filter.prompt.instruction", "Go.")) != base
