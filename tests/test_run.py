"""`distill run` through every stage on the tiny model, then the skip / re-run rules."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.cli import main as cli_main

from openai_stub import OpenAIStub


def recipe(tiny_model, run_dir) -> dict:
    teacher = {"model": str(tiny_model), "backend": "transformers", "dtype": "float32", "batch_size": 8}
    return {
        "generate": {"problems": {"source": "gsm8k", "limit": 4}, "teacher": teacher,
                     "sampling": {"n": 2, "max_tokens": 24, "temperature": 1.0, "top_p": 1.0, "logprobs": 4},
                     "output": f"{run_dir}/traces", "progress": False},
        # the random model writes gibberish: keep every trace so the later stages have data
        "filter": {"output": f"{run_dir}/train", "require_correct": False, "require_complete": False,
                   "require_reasoning": False, "check_format": False, "max_repeat_ratio": None, "dedup": False,
                   "near_dup_threshold": None, "progress": False},
        "sft": {"student": str(tiny_model), "output": f"{run_dir}/sft", "max_steps": 3, "batch_size": 2,
                "grad_accum": 1, "max_length": 256, "learning_rate": 1e-3, "progress": False},
        "kd": {"student": str(tiny_model), "output": f"{run_dir}/kd", "mode": "offline", "max_steps": 3,
               "batch_size": 2, "grad_accum": 1, "max_length": 256, "learning_rate": 1e-3, "progress": False},
        "evaluate": {"models": [{"name": "before", **teacher},
                                {"name": "after-sft", **teacher, "model": f"{run_dir}/sft/model"},
                                {"name": "after-kd", **teacher, "model": f"{run_dir}/kd/model"}],
                     "benchmarks": [{"source": "svamp", "limit": 3}], "sampling": {"n": 2, "max_tokens": 16},
                     "output": f"{run_dir}/eval", "bootstrap": 200, "progress": False},
        "push": {"model_repo": "me/tiny-distilled", "dataset_repo": "me/tiny-train", "dry_run": True},
    }


@pytest.mark.slow
def test_run_goes_through_every_stage_then_skips_what_is_current(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_the_dry_run")
    run_dir = tmp_path / "run"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(tiny_model, run_dir)))

    assert cli_main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    for stage in ("generate", "filter", "sft", "kd", "evaluate", "push"):
        assert f"===== {stage} =====" in out
    table = out[out.rindex("| stage | result | seconds |"):]
    assert "| generate | 8 traces (0 failed)" in table and "kept 8 of 8 traces" in table
    assert "| sft | 3 steps, loss" in table and "| kd | 3 steps, loss" in table
    for name in ("before", "after-sft", "after-kd"):
        assert name in table  # the evaluation table, one column per model
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(results["results"]) == {"before", "after-sft", "after-kd"}
    assert results["results"]["after-kd"]["svamp"]["n_problems"] == 3
    card = (run_dir / "kd" / "push-preview").rglob("README.md")  # push reads kd.output when there is a kd stage
    assert any("me/tiny-train" in p.read_text() for p in card)

    # the same command again: every stage is current
    assert cli_main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    for stage in ("generate", "filter", "sft", "kd", "evaluate"):
        assert f"run: {stage} is up to date" in out and f"===== {stage} =====" not in out

    # a changed sft config re-runs sft and what reads it (evaluate, push), nothing upstream, not kd
    assert cli_main(["run", str(path), "--sft.max_steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "===== sft =====" in out and "===== evaluate =====" in out and "===== push =====" in out
    for stage in ("generate", "filter", "kd"):
        assert f"run: {stage} is up to date" in out
    assert json.loads((run_dir / "sft" / "summary.json").read_text())["steps"] == 4


def test_run_skips_current_stages_fast(tiny_model, tmp_path, capsys, monkeypatch):
    """generate (a stand-in teacher server) -> filter (its answers verify) -> sft (2 steps) -> evaluate -> push
    (dry run); the same command again runs nothing; a changed sft key re-runs sft and what reads it only."""
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_the_dry_run")
    run_dir = tmp_path / "run"
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"Write {i} as a number.", "answer": str(i)})
                                + "\n" for i in range(1, 7)))
    with OpenAIStub() as stub:
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump({
            "generate": {"problems": {"source": str(problems)},
                         "teacher": {"model": "stub-teacher", "backend": "openai", "base_urls": [stub.url]},
                         "sampling": {"n": 2, "max_tokens": 64}, "output": f"{run_dir}/traces", "progress": False},
            "filter": {"output": f"{run_dir}/train", "progress": False},
            "sft": {"student": str(tiny_model), "output": f"{run_dir}/sft", "max_steps": 2, "batch_size": 2,
                    "grad_accum": 1, "max_length": 256, "progress": False},
            "evaluate": {"models": [{"name": "after-sft", "model": f"{run_dir}/sft/model", "backend": "transformers",
                                     "dtype": "float32"}],
                         "benchmarks": [{"name": "local", "source": str(problems), "limit": 2}], "greedy": True,
                         "sampling": {"max_tokens": 8}, "output": f"{run_dir}/eval", "progress": False},
            "push": {"model_repo": "me/tiny-distilled", "dry_run": True},
        }))
        assert cli_main(["run", str(path)]) == 0
        out = capsys.readouterr().out
        for stage in ("generate", "filter", "sft", "evaluate", "push"):
            assert f"===== {stage} =====" in out, stage
        table = out[out.rindex("| stage | result | seconds |"):]
        assert "| generate | 12 traces (0 failed)" in table and "| sft | 2 steps, loss" in table
        # every answer verifies; the second sample of each problem is the same text and goes as a duplicate
        assert "| filter | kept 6 of 12 traces; teacher pass@1 1.0" in table
        asked = stub.arrived
        assert asked == 12

        assert cli_main(["run", str(path)]) == 0  # every stage is current: nothing runs, the teacher is not asked
        out = capsys.readouterr().out
        for stage in ("generate", "filter", "sft", "evaluate"):
            assert f"run: {stage} is up to date" in out and f"===== {stage} =====" not in out, stage
        assert stub.arrived == asked

        assert cli_main(["run", str(path), "--sft.max_steps", "3"]) == 0
        out = capsys.readouterr().out
        assert "===== sft =====" in out and "===== evaluate =====" in out and "===== push =====" in out
        for stage in ("generate", "filter"):
            assert f"run: {stage} is up to date" in out and f"===== {stage} =====" not in out, stage
        assert stub.arrived == asked
    assert json.loads((run_dir / "sft" / "summary.json").read_text())["steps"] == 3
