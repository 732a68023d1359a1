"""The stage table: every stage's name, run module, inputs, completion file and the upstream defaults it takes
from the recipe (its config section is the Recipe field of the same name). The CLI (`distill STAGE`), `distill run` and `distill config` all read it; a new stage is one
entry here plus its module."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any, Callable

from .config import Recipe


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    help: str
    module: str  # the module under pipeline/ with run(section) (push: run(section, recipe))
    inputs: tuple[str, ...] = ()  # stages whose outputs it reads: a change there re-runs it under `distill run`
    complete: str | None = None  # the file in its output folder that says the stage finished
    defaults: Callable[[Any, Recipe], None] | None = None  # fills keys left unset from the recipe's other stages
    wants_recipe: bool = False

    def run(self, section, recipe: Recipe) -> dict:
        module = importlib.import_module(f"..{self.module}", __package__)
        result = module.run(section, recipe) if self.wants_recipe else module.run(section)
        return result if isinstance(result, dict) else {}


def _filter_defaults(section, recipe: Recipe) -> None:
    if section.input is None and recipe.generate is not None:
        section.input = recipe.generate.output  # the traces this recipe generates


def _train_defaults(section, recipe: Recipe) -> None:
    if section.data is None and recipe.filter is not None:
        section.data = recipe.filter.output  # the training set this recipe's filter writes


def _rl_defaults(section, recipe: Recipe) -> None:
    train = recipe.kd or recipe.sft
    if section.student is None and train is not None:
        section.student = str(Path(train.output) / "model")  # the distilled student this recipe trains
    if recipe.generate is not None:  # the problem pool and prompt the student was distilled on
        if section.problems is None:
            section.problems = dataclasses.replace(recipe.generate.problems)
        if section.prompt is None:
            section.prompt = dataclasses.replace(recipe.generate.prompt)


def _evaluate_defaults(section, recipe: Recipe) -> None:
    report = summary_path("filter", recipe.filter.output) if recipe.filter is not None else None
    if section.decontamination_report is None and report is not None and report.exists():
        section.decontamination_report = str(report)  # check against this recipe's own training problems


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("generate", "teacher writes chain-of-thought traces for a problem set -> traces dataset",
          "generate.stage", complete="summary.json"),
    Stage("filter", "keep verified-correct, well-formed, deduplicated traces -> chat training set + report",
          "filter.stage", inputs=("generate",), complete="report.json", defaults=_filter_defaults),
    Stage("sft", "fine-tune the student on the kept traces with TRL (full or LoRA) -> trained model + loss curve",
          "train.sft", inputs=("filter",), complete="summary.json", defaults=_train_defaults),
    Stage("kd", "logit distillation (Hinton soft targets) from a live teacher or stored top-k logprobs -> trained "
          "model", "train.kd", inputs=("filter",), complete="summary.json", defaults=_train_defaults),
    Stage("rl", "reinforcement learning (TRL GRPO) of the distilled student, rewarded by the verifier -> trained "
          "model + reward curve", "train.rl", inputs=("sft", "kd"), complete="summary.json", defaults=_rl_defaults),
    Stage("evaluate", "score models (teacher, students) on math benchmarks side by side -> results table, chart, "
          "samples", "evaluate.stage", inputs=("sft", "kd", "rl"), complete="results.json", defaults=_evaluate_defaults),
    # push fills its own defaults (push.stage.fill_defaults): its cards tell the whole recipe's story
    Stage("push", "publish the student and the datasets to the Hugging Face Hub with cards (--dry-run: stage and "
          "show only)", "push.stage", inputs=("sft", "kd", "rl", "evaluate", "filter", "generate"), wants_recipe=True),
]}
ORDER = list(STAGES)


def with_defaults(recipe: Recipe) -> Recipe:
    """The recipe with every stage's upstream defaults filled in (what `distill config` shows)."""
    for stage in STAGES.values():
        section = getattr(recipe, stage.name)
        if section is not None and stage.defaults is not None:
            stage.defaults(section, recipe)
    return recipe


def summary_path(stage: str, folder) -> Path:
    """Where a finished output of `stage` keeps its summary, the file it writes last (how one stage reads
    another's figures without knowing its layout)."""
    return Path(folder) / STAGES[stage].complete


def finished_summary(stage: str, folder) -> dict | None:
    """The summary of a finished output of `stage` in folder, else None."""
    path = summary_path(stage, folder)
    return json.loads(path.read_text()) if path.is_file() else None
