"""`distill filter` on public trace sets (hand-made rows in each dataset card's schema), read from JSONL, save_to_disk
folders and Parquet with no key but --filter.input: the format told from the columns, every row's fate known."""

from __future__ import annotations

import json
import subprocess
import sys

import datasets
import pytest

from pipeline.core.config import load_recipe
from pipeline.filter import formats
from pipeline.filter import stage as filter_stage


def think(reasoning: str, final: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n\n{final}"


# ---- OpenR1-Math-220k (dataset card open-r1/OpenR1-Math-220k, "default" config): one row per problem, a list of
# generations with the dataset's own per-generation labels (correctness_math_verify, is_reasoning_complete,
# finish_reasons: null in most rows, correctness_llama: null unless the llama judge ran).
def openr1_row(uuid, problem, answer, gens, labels, finish=None, complete=None):
    return {"problem": problem, "solution": f"Worked solution. \\boxed{{{answer}}}", "answer": answer,
            "problem_type": "Algebra", "question_type": "math-word-problem", "source": "olympiads", "uuid": uuid,
            "is_reasoning_complete": complete if complete is not None else [True] * len(gens),
            "generations": gens, "correctness_math_verify": labels, "correctness_llama": None,
            "finish_reasons": finish, "correctness_count": sum(labels),
            "messages": [{"role": "user", "content": problem}, {"role": "assistant", "content": gens[0]}]}


OPENR1 = [
    openr1_row("u1", "What is 2 + 3?", "5", [think("2 plus 3 is 5", "The answer is \\boxed{5}."),
                                             think("add three to two and get five", "\\boxed{5}")], [True, True]),
    openr1_row("u2", "What is 10 / 4?", "\\frac{5}{2}", [think("10 over 4 is 2.5", "\\boxed{2.5}"),
                                                       think("10 over 4 is 2", "\\boxed{2}")], [True, False]),
    openr1_row("u3", "Compute 7 * 6.", "42", [think("7 times 6 is 42", "\\boxed{42}"), "<think>\n7 times 6 is"],
               [True, False], finish=["stop", "length"]),
    # the dataset's label and ours differ both ways: 1/2 is 0.5 (its verifier said no), 3 is not 0.5 (it said yes)
    openr1_row("u4", "Half of one is?", "0.5", [think("one half", "\\boxed{\\frac{1}{2}}"),
                                               think("I think it is three", "\\boxed{3}")], [False, True]),
    openr1_row("u5", "What is 9 - 4?", "5", [think("nine minus four leaves five", "\\boxed{5}"),
                                            "<think>\nnine minus four is, let me think about it for a long"],
               [True, False], complete=[True, False]),
]
# (id, sample) -> first reason (None: kept)
OPENR1_FATE = {("u1", 0): None, ("u1", 1): None, ("u2", 0): None, ("u2", 1): "incorrect", ("u3", 0): None,
               ("u3", 1): "truncated", ("u4", 0): None, ("u4", 1): "incorrect", ("u5", 0): None,
               ("u5", 1): "truncated"}

# ---- OpenThoughts-114k / Bespoke-Stratos-17k (cards open-thoughts/OpenThoughts-114k,
# bespokelabs/Bespoke-Stratos-17k): system + conversations [{from, value}], thought and solution tags, no gold.
OT_SYSTEM = "Your role as an assistant involves thoroughly exploring questions through a systematic long thinking process"


def ot_row(problem, thought, solution, close_solution=True, metadata=None):
    value = (f"<|begin_of_thought|>\n\n{thought}\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n{solution}"
             + ("\n\n<|end_of_solution|>" if close_solution else ""))
    row = {"system": OT_SYSTEM, "conversations": [{"from": "user", "value": problem},
                                                  {"from": "assistant", "value": value}]}
    return row | ({"ground_truth_solution": metadata} if metadata is not None else {})


OPENTHOUGHTS = [
    ot_row("What is 2 + 2?", "Two and two make four.", "The answer is \\boxed{4}"),
    ot_row("What is 3 + 3?", "Three and three make six.", "So \\boxed{6}", close_solution=False),
    ot_row("What is 4 + 4?", "", "\\boxed{8}"),
    ot_row("What is 5 + 5?", "Five and five make ten.", "\\boxed{10}"),
    ot_row("What is 6 + 6?", "Six and six make twelve.", "\\boxed{13}"),
]
OT_FATE = [None, "truncated", "no reasoning", None, None]  # with filter.require_correct false

# ---- NuminaMath-CoT (card AI-MO/NuminaMath-CoT): problem, solution (CoT, the answer boxed), messages, source.
NUMINA = [{"problem": p, "solution": s, "source": "synthetic_math",
           "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": s}]} for p, s in [
    ("Find x if x + 1 = 3.", "Subtract 1 from both sides: x = 2. So the answer is $\\boxed{2}$."),
    ("Find y if 2y = 8.", "Divide both sides by 2 to get y = 4, hence \\boxed{4}."),
    ("Prove that the sum of two even numbers is even.", "Write them as 2a and 2b; the sum 2(a + b) is even."),
    ("Find z if z - 1 = 1.", "z = 2, so \\boxed{2}; or, checking again, \\boxed{3}."),
    ("Find y if 2y = 8.", "Divide both sides by 2 to get y = 4, hence \\boxed{4}."),  # the same again
]]
NUMINA_FATE = [None, None, "no gold answer", "malformed", "duplicate"]

# ---- TRL conversational language modelling (TRL docs, "Dataset formats": {"messages": [{role, content}, ...]}),
# with an `answer` column for the gold.
MESSAGES = [
    {"messages": [{"role": "user", "content": "What is 1 + 1?"},
                  {"role": "assistant", "content": think("one and one", "\\boxed{2}")}], "answer": "2"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 * 3?"},
                  {"role": "assistant", "content": think("two threes", "\\boxed{6}")}], "answer": "6"},
    {"messages": [{"role": "user", "content": "What is 8 - 5?"},
                  {"role": "assistant", "content": "It is \\boxed{3}."}], "answer": "3"},
    {"messages": [{"role": "user", "content": "What is 9 + 9?"},
                  {"role": "assistant", "content": think("nine and nine", "\\boxed{19}")}], "answer": "18"},
]
MESSAGES_FATE = [None, None, "no reasoning", "incorrect"]

# ---- TRL prompt/completion (TRL docs, "Dataset formats"): standard (strings) and conversational (lists), the gold
# from a `solution` column's last box.
PC_STANDARD = [
    {"prompt": "What is 4 * 4?", "completion": think("four fours", "\\boxed{16}"), "solution": "4 * 4 = \\boxed{16}"},
    {"prompt": "What is 5 * 5?", "completion": think("five fives", "\\boxed{24}"), "solution": "5 * 5 = \\boxed{25}"},
]
PC_CONVERSATIONAL = [
    {"prompt": [{"role": "user", "content": "What is 4 * 4?"}],
     "completion": [{"role": "assistant", "content": think("four fours", "\\boxed{16}")}], "solution": "\\boxed{16}"},
    {"prompt": [{"role": "user", "content": "What is 5 * 5?"}],
     "completion": [{"role": "assistant", "content": think("five fives", "\\boxed{25}")}], "solution": "\\boxed{25}"},
]


def write(rows, tmp_path, kind, name="traces"):
    if kind == "jsonl":
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "parquet":
        path = tmp_path / f"{name}.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        path = tmp_path / name
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def run_filter(source, out, *extra):
    cfg = load_recipe(None, ["--filter.input", source, "--filter.output", str(out), "--filter.progress", "false",
                             "--filter.verify.workers", "1", *extra]).filter
    return filter_stage.run(cfg)


def rejected(fates):
    return {r: sum(f == r for f in fates) for r in set(fates) if r}


def kept(out):
    return datasets.load_from_disk(str(out / "dataset"))


@pytest.mark.parametrize("kind", ["jsonl", "disk", "parquet"])
def test_openr1_one_row_per_generation_and_the_datasets_verdicts_beside_ours(tmp_path, kind, capsys):
    out = tmp_path / "out"
    report = run_filter(write(OPENR1, tmp_path, kind), out)
    assert report["format"] == "openr1" and report["input_rows"] == 5 and report["rows_in"] == 10
    assert report["rejected"] == rejected(OPENR1_FATE.values())
    ds = kept(out)
    assert sorted(zip(ds["id"], ds["sample"])) == sorted(k for k, f in OPENR1_FATE.items() if f is None)
    row = ds.filter(lambda r: r["id"] == "u1" and r["sample"] == 1)[0]
    assert row["messages"] == [{"role": "user", "content": "What is 2 + 3?"},
                               {"role": "assistant", "content": think("add three to two and get five", "\\boxed{5}")}]
    # the fixture's labels against our verifier: u4 differs both ways; the truncated ones are wrong by both
    v = report["dataset_verdicts"]["correctness_math_verify"]
    assert v == {"against": "our verifier", "rows": 10, "agree": 8, "both correct": 5, "dataset only": 1,
                 "ours only": 1, "both incorrect": 3}
    assert "correctness_llama" not in report["dataset_verdicts"]  # all null in the fixture: nothing to compare
    assert report["dataset_verdicts"]["finish_reasons"] == {"against": "used as finish_reason "
                                                            "(filter.require_complete)", "stop": 8, "length": 2}
    printed = capsys.readouterr().out
    assert "read as openr1 (OpenR1-Math-220k): 5 rows -> 10 traces" in printed
    assert "correctness_math_verify vs our verifier: agree on 8 of 10" in printed
    md = (out / "report.md").read_text()
    assert "Read as `openr1`" in md and "| correctness_math_verify | 10 | 8 | 5 | 1 | 1 | 3 |" in md


def test_openr1_output_is_reused_and_refingerprinted_on_new_input(tmp_path, capsys):
    src, out = write(OPENR1, tmp_path, "jsonl"), tmp_path / "out"
    first = run_filter(src, out)
    assert first["fingerprint"]["format"] == f"openr1-{formats.VERSION}"
    run_filter(src, out)
    assert "reusing it" in capsys.readouterr().out
    write(OPENR1[:4], tmp_path, "jsonl")  # the same file, other content
    with pytest.raises(filter_stage.FilterError, match="overwrite"):
        run_filter(src, out)


@pytest.mark.parametrize("kind", ["jsonl", "disk"])
def test_openthoughts_without_gold_says_what_to_set(tmp_path, kind):
    src = write(OPENTHOUGHTS, tmp_path, kind)
    with pytest.raises(filter_stage.FilterError, match="no gold answer") as e:
        run_filter(src, tmp_path / "out")
    message = str(e.value)
    assert "\n" not in message and "filter.require_correct false" in message and "filter.columns" in message
    assert not (tmp_path / "out").exists()  # stopped before any work

    out = tmp_path / "unverified"
    report = run_filter(src, out, "--filter.require_correct", "false")
    assert report["format"] == "openthoughts" and report["rejected"] == rejected(OT_FATE)
    assert report["teacher_pass_at_1"] is None and report["verify_reasons"] == {"no gold answer": 5}
    ds = kept(out)
    assert ds["problem"] == ["What is 2 + 2?", "What is 5 + 5?", "What is 6 + 6?"]
    assert ds[0]["messages"] == [{"role": "user", "content": "What is 2 + 2?"},
                                 {"role": "assistant", "content": think("Two and two make four.",
                                                                        "The answer is \\boxed{4}")}]


def test_openthoughts_with_a_gold_column_mapped(tmp_path):
    rows = [ot_row("What is 2 + 2?", "Two and two make four.", "\\boxed{4}", metadata="2 + 2 = \\boxed{4}"),
            ot_row("What is 6 + 6?", "Six and six make twelve.", "\\boxed{13}", metadata="It is \\boxed{12}.")]
    out = tmp_path / "out"
    report = run_filter(write(rows, tmp_path, "jsonl"), out, "--filter.columns", "{answer: ground_truth_solution}")
    assert report["rejected"] == {"incorrect": 1} and kept(out)["answer"] == ["4"]


@pytest.mark.parametrize("kind", ["jsonl", "disk"])
def test_numina_gold_from_the_solution_and_no_reasoning_block(tmp_path, kind, capsys):
    out = tmp_path / "out"
    report = run_filter(write(NUMINA, tmp_path, kind), out)
    assert report["format"] == "numina" and report["rejected"] == rejected(NUMINA_FATE)
    assert "no reasoning" in report["checks_not_applied"]
    ds = kept(out)
    assert ds["answer"] == ["2", "4"] and ds["id"] == ["traces-0", "traces-1"]
    assert ds[0]["messages"][1] == {"role": "assistant", "content": NUMINA[0]["solution"]}  # as written, no think
    assert "not checked, no reasoning" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["jsonl", "disk"])
def test_trl_messages(tmp_path, kind):
    out = tmp_path / "out"
    report = run_filter(write(MESSAGES, tmp_path, kind), out)
    assert report["format"] == "messages" and report["rejected"] == rejected(MESSAGES_FATE)
    ds = kept(out)
    assert [m[0]["content"] for m in ds["messages"]] == ["What is 1 + 1?", "What is 2 * 3?"]  # the last user turn
    assert ds[1]["messages"][1] == {"role": "assistant", "content": think("two threes", "\\boxed{6}")}
    prompt = run_filter(write(MESSAGES, tmp_path, kind, "again"), tmp_path / "p", "--filter.user_turn", "prompt")
    assert prompt["rows_kept"] == 2
    assert kept(tmp_path / "p")[1]["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("rows", [PC_STANDARD, PC_CONVERSATIONAL], ids=["standard", "conversational"])
@pytest.mark.parametrize("kind", ["jsonl", "disk"])
def test_trl_prompt_completion(tmp_path, kind, rows):
    out = tmp_path / "out"
    report = run_filter(write(rows, tmp_path, kind), out)
    want = {"incorrect": 1} if rows is PC_STANDARD else {}
    assert report["format"] == "prompt_completion" and report["rejected"] == want
    ds = kept(out)
    assert ds[0]["messages"] == [{"role": "user", "content": "What is 4 * 4?"},
                                 {"role": "assistant", "content": think("four fours", "\\boxed{16}")}]
    assert ds[0]["answer"] == "16"


def test_messages_without_gold_and_a_named_format(tmp_path):
    rows = [{"messages": r["messages"]} for r in MESSAGES]
    with pytest.raises(filter_stage.FilterError, match="TRL conversational messages.*no gold answer"):
        run_filter(write(rows, tmp_path, "jsonl"), tmp_path / "out")
    with pytest.raises(filter_stage.FilterError, match="read as openr1 .* no column 'problem'") as e:
        run_filter(write(rows, tmp_path, "jsonl"), tmp_path / "out", "--filter.format", "openr1")
    assert "\n" not in str(e.value)
    with pytest.raises(filter_stage.FilterError, match="in no format filter reads"):
        run_filter(write([{"question": "q", "text": "t"}], tmp_path, "jsonl", "odd"), tmp_path / "out")
    bad = [{"messages": [{"role": "user", "content": "What is 1 + 1?"}], "answer": "2"}]
    with pytest.raises(filter_stage.FilterError, match="row 1: 'messages' has no assistant turn"):
        run_filter(write(bad, tmp_path, "jsonl", "bad"), tmp_path / "out")


def test_zero_kept_is_a_one_line_error_and_no_finished_output(tmp_path):
    rows = [r | {"answer": "1000"} for r in MESSAGES]  # every gold wrong
    out = tmp_path / "out"
    with pytest.raises(filter_stage.FilterError) as e:
        run_filter(write(rows, tmp_path, "jsonl"), out)
    message = str(e.value)
    assert "\n" not in message and message.startswith("filter kept 0 of 4 traces")
    assert "dropped: incorrect 3, no reasoning 1; check the gold column" in message
    assert not (out / "dataset").exists() and not (out / "report.json").exists() and (out / "report.md").exists()


def test_distill_run_stops_at_a_filter_that_keeps_nothing(tmp_path):
    rows = [r | {"answer": "1000"} for r in MESSAGES]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
filter:
  input: {write(rows, tmp_path, "jsonl")}
  output: {tmp_path / 'train'}
  progress: false
  verify: {{workers: 1}}
sft:
  student: {tmp_path / 'no-such-model'}
  output: {tmp_path / 'sft'}
""")
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(recipe)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 1, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert "filter kept 0 of 4 traces" in last and "Traceback" not in p.stderr
    assert not (tmp_path / "sft").exists()


def test_filter_then_sft_on_a_public_format(tiny_model, tmp_path):
    from pipeline.train import sft

    rows = [{"messages": [{"role": "user", "content": f"What is {a} + {a}?"},
                          {"role": "assistant", "content": think(f"{a} and {a}", f"\\boxed{{{2 * a}}}")}],
             "answer": str(2 * a)} for a in range(1, 7)]
    run_filter(write(rows, tmp_path, "jsonl"), tmp_path / "train")
    cfg = load_recipe(None, ["--sft.student", tiny_model, "--sft.data", str(tmp_path / "train"), "--sft.output",
                             str(tmp_path / "sft"), "--sft.max_steps", "2", "--sft.batch_size", "2", "--sft.grad_accum",
                             "1", "--sft.max_length", "128", "--sft.progress", "false", "--sft.precision", "fp32",
                             "--sft.save_steps", "1000"]).sft
    summary = sft.run(cfg)
    assert summary["steps"] == 2 and (tmp_path / "sft" / "model").is_dir()


def test_detection_from_columns():
    def fmt(cols):
        return formats.detect(datasets.Dataset.from_dict({c: ["x"] for c in cols}), "auto", "src")
    assert fmt(["id", "sample", "problem", "answer", "completion", "reasoning", "final", "finish_reason"]) == "distill"
    assert fmt(["problem", "solution", "answer", "generations"]) == "openr1"
    assert fmt(["system", "conversations"]) == "openthoughts"
    assert fmt(["problem", "solution", "messages", "source"]) == "numina"
    assert fmt(["messages"]) == "messages" and fmt(["prompt", "completion"]) == "prompt_completion"


def test_a_hub_id_is_read_through_datasets(tmp_path, monkeypatch):
    """A Hub id goes to datasets.load_dataset(id, split="train") (core.io's reader); here it answers from memory."""
    asked = []

    def load_dataset(source, split=None, **kw):
        asked.append((source, split))
        return datasets.Dataset.from_list(OPENR1)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    report = run_filter("open-r1/OpenR1-Math-220k", tmp_path / "out")
    assert asked == [("open-r1/OpenR1-Math-220k", "train")]
    assert report["format"] == "openr1" and report["rows_kept"] == 6


def test_own_traces_from_a_jsonl_file_are_read_as_they_are_and_reused(tmp_path, capsys):
    rows = [{"id": "q1", "sample": s, "problem": "What is 2 + 2?", "answer": "4", "completion": c, "reasoning": r,
             "final": f, "finish_reason": "stop"}
            for s, (r, f) in enumerate([("two and two", "\\boxed{4}"), ("two plus two", "\\boxed{5}")])
            for c in [think(r, f)]]
    src, out = write(rows, tmp_path, "jsonl"), tmp_path / "out"
    report = run_filter(src, out)
    assert report["format"] == "distill" and report["rejected"] == {"incorrect": 1} and "format" not in report["fingerprint"]
    run_filter(src, out)
    assert "reusing it" in capsys.readouterr().out


def test_parquet_is_memory_mapped_with_the_same_rows_and_the_scratch_folder_goes(tmp_path, monkeypatch):
    import datetime
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    src = write(OPENR1, tmp_path, "parquet")
    (tmp_path / "scratch").mkdir()
    mapped = formats.read(src, lambda: str(tmp_path / "scratch"))
    assert mapped.cache_files and mapped.to_list() == formats.read(src).to_list()
    assert formats.input_fingerprint(mapped, src) == formats.input_fingerprint(formats.read(src), src)  # its bytes
    odd = tmp_path / "odd.parquet"  # a type from_list would infer otherwise: read the usual way
    pq.write_table(pa.table({"problem": ["p"], "when": [datetime.datetime(2020, 1, 1)]}), odd)
    assert not formats.read(str(odd), lambda: str(tmp_path)).cache_files
    scratch_dirs = []
    real = filter_stage.Scratch.__call__
    monkeypatch.setattr(filter_stage.Scratch, "__call__", lambda self: scratch_dirs.append(real(self)) or self.path)
    run_filter(src, tmp_path / "out")
    assert scratch_dirs and not any(Path(d).exists() for d in scratch_dirs)


def test_verdicts_do_not_depend_on_how_the_answers_are_chunked(tmp_path, monkeypatch):
    src = write(OPENR1, tmp_path, "parquet")
    whole = run_filter(src, tmp_path / "whole")
    monkeypatch.setattr(filter_stage, "VERIFY_CHUNK", 3)
    chunked = run_filter(src, tmp_path / "chunked")
    for key in ("rejected", "failing_checks", "verify_reasons", "pass_rates", "dataset_verdicts"):
        assert chunked[key] == whole[key], key
    assert kept(tmp_path / "chunked").to_list() == kept(tmp_path / "whole").to_list()
