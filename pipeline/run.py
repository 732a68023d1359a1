"""`distill run RECIPE`: the recipe's stages in order, each skipped when its config and inputs are unchanged.

Every stage with an output folder gets a `.distill-run.json` there once it finishes: the hash of its effective
config chained with the hashes of the stages it reads from. A stage whose hash matches a finished output is
skipped with a one-line note; otherwise it runs, and the stage itself resumes from its own checkpoint (generate
from its shards, sft/kd from their trainer checkpoints) when its config is the one it was started with. A
changed upstream stage therefore re-runs everything downstream of it, and nothing else.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .core.config import ConfigError, Recipe, config_hash, without_operational
from .core.io import atomic_write_text
from .core.log import get_logger
from .core.stages import STAGES

logger = get_logger("run")

ORDER = list(STAGES)
INPUTS = {name: list(stage.inputs) for name, stage in STAGES.items() if stage.inputs}
COMPLETE = {name: stage.complete for name, stage in STAGES.items() if stage.complete}
MARKER = ".distill-run.json"


def stage_output(stage: str, section) -> Path | None:
    out = getattr(section, "output", None)
    return Path(out) if out and stage in COMPLETE else None


def effective(section) -> dict:
    """What decides a stage's output: its config without the operational keys (config.opt)."""
    return without_operational(section)


def run(recipe: Recipe, call_stage) -> dict:
    """`call_stage(stage, recipe) -> summary dict` runs one stage (the CLI's, with its defaults and errors)."""
    present = [s for s in ORDER if getattr(recipe, s) is not None]
    if not present:
        raise ConfigError("the recipe has no stage sections (generate, filter, sft, kd, rl, evaluate, push)")
    chain: dict[str, str] = {}
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    for stage in present:
        section = getattr(recipe, stage)
        upstream = {s: chain[s] for s in INPUTS.get(stage, []) if s in chain}
        key = config_hash({"stage": stage, "config": effective(section), "upstream": upstream})
        out = stage_output(stage, section)
        marker = out / MARKER if out else None
        if marker and marker.exists() and (out / COMPLETE[stage]).exists():
            old = json.loads(marker.read_text())
            if old.get("key") == key:
                logger.info(f"run: {stage} is up to date ({out}); skipped")
                chain[stage], results[stage], timings[stage] = key, old.get("summary", {}), 0.0
                continue
        print(f"\n===== {stage} =====")
        if hasattr(section, "overwrite"):
            section.overwrite = True  # a changed config replaces this stage's old output
        if marker:
            marker.unlink(missing_ok=True)
        started = time.monotonic()
        summary = call_stage(stage, recipe) or {}
        timings[stage] = round(time.monotonic() - started, 1)
        chain[stage], results[stage] = key, summary
        if marker and out.exists():
            atomic_write_text(marker, json.dumps({"key": key, "seconds": timings[stage],
                                                  "summary": brief(stage, summary)}, indent=2, default=str))
    table = summary_table(results, timings)
    print("\n" + table)
    return {"stages": present, "results": {s: brief(s, r) for s, r in results.items()}, "seconds": timings,
            "table": table}


def brief(stage: str, r: dict) -> dict:
    """The figures of a stage's summary that the final table shows (kept in the marker for skipped stages)."""
    keys = {
        "generate": ["rows", "errors", "completion_tokens_mean", "reused"],
        "filter": ["rows_in", "rows_kept", "problems_kept", "teacher_pass_at_1"],
        "sft": ["steps", "first_loss", "final_loss", "train_seconds", "model"],
        "kd": ["steps", "first_loss", "final_loss", "train_seconds", "model", "mode"],
        "rl": ["steps", "reward_start", "reward_end", "correct_start", "correct_end", "train_seconds", "model"],
        "evaluate": ["models", "benchmarks", "table"],
        "push": ["model_repo", "dry_run", "uploaded"],
    }[stage]
    return {k: r[k] for k in keys if k in r}


def summary_table(results: dict[str, dict], timings: dict[str, float]) -> str:
    lines = ["| stage | result | seconds |", "|---|---|---|"]
    for stage, r in results.items():
        b = brief(stage, r)
        if stage == "generate":
            what = f"{b.get('rows', '?')} traces ({b.get('errors', 0)} failed)"
        elif stage == "filter":
            what = (f"kept {b.get('rows_kept', '?')} of {b.get('rows_in', '?')} traces; teacher pass@1 "
                    f"{b.get('teacher_pass_at_1', '?')}")
        elif stage in ("sft", "kd"):
            what = f"{b.get('steps', '?')} steps, loss {_num(b.get('first_loss'))} -> {_num(b.get('final_loss'))}"
        elif stage == "rl":
            what = f"{b.get('steps', '?')} steps, reward {_num(b.get('reward_start'))} -> {_num(b.get('reward_end'))}"
        elif stage == "evaluate":
            what = "see the table below"
        else:
            what = ", ".join(f"{k}: {v}" for k, v in b.items())
        seconds = timings.get(stage, 0.0)
        lines.append(f"| {stage} | {what} | {'skipped' if seconds == 0.0 else seconds} |")
    text = "\n".join(lines)
    if results.get("evaluate", {}).get("table"):
        text += "\n\n" + results["evaluate"]["table"]
    return text


def _num(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "?"
