"""Checks made when the recipe is read, before any stage runs, so a GPU run does not fail hours in, after generate
and filter already ran: the packages the settings need (tensorboard, DeepSpeed, flash attention) and lengths that
fit the models' contexts (read from each model's config.json when it is a local folder or in the Hub cache; a
model that cannot be read offline is not checked). Each problem is one line: `PreflightError`."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from .config import Recipe
from .errors import DistillError

TRAIN_STAGES = ("sft", "kd", "rl")


class PreflightError(DistillError, ValueError):
    """A recipe setting this machine or the recipe's model cannot serve (one line, with the fix)."""


# --------------------------------------------------------------------------------------------- packages

def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def deepspeed_launch() -> bool:
    """Launched by accelerate with a DeepSpeed config (accelerate/zero2.yaml, zero3.yaml)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def check_packages(recipe: Recipe, stages: list[str]) -> None:
    for stage in stages:
        section = getattr(recipe, stage, None)
        if section is None or stage not in TRAIN_STAGES:
            continue
        if "tensorboard" in (section.report_to or []) and not _installed("tensorboard"):
            raise PreflightError(f"{stage}.report_to has tensorboard, which is not installed: pip install tensorboard "
                                 f"(or drop it from report_to)")
        if deepspeed_launch() and not _installed("deepspeed"):
            raise PreflightError(f"{stage}: launched with a DeepSpeed config, and deepspeed is not installed: pip "
                                 f"install deepspeed (or launch with recipes/accelerate/ddp.yaml or fsdp.yaml)")
        attn = section.attn_implementation or ""
        if attn.startswith("flash_attention") and not (_installed("flash_attn") or _installed("kernels")):
            raise PreflightError(f"{stage}.attn_implementation {attn} needs flash attention: pip install kernels "
                                 f"(transformers then loads kernels-community/flash-attn2), or pip install flash-attn "
                                 f"--no-build-isolation; or set attn_implementation: sdpa")


# ---------------------------------------------------------------------------------------------- context

def _local_config(model: str, revision: str | None = None) -> dict | None:
    """The model's config.json from its folder or the Hub cache (never the network); None when unreadable."""
    if not model or model.startswith("demo:"):
        return None
    path = Path(model).expanduser()
    if path.is_dir():
        file = path / "config.json"
    else:
        if path.exists() or model.count("/") != 1 or model.startswith((".", "/", "~")):
            return None  # a file, or a path that is not there yet (a training output): not checked
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(model, "config.json", revision=revision)
        except Exception:
            return None
        if not isinstance(found, str):
            return None
        file = Path(found)
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None


def model_context(model: str, revision: str | None = None) -> tuple[int, str] | None:
    """(tokens, how they were read) of a model's context, from max_position_embeddings and its RoPE scaling."""
    cfg = _local_config(model, revision)
    if not isinstance(cfg, dict):
        return None
    if "max_position_embeddings" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = cfg["text_config"]  # a multimodal config: the language model's part
    n = cfg.get("max_position_embeddings")
    if not isinstance(n, int) or n <= 0:
        return None
    how = f"max_position_embeddings {n}"
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if isinstance(scaling, dict):
        kind = scaling.get("rope_type") or scaling.get("type")
        factor = scaling.get("factor")
        if kind in ("linear", "dynamic", "yarn", "longrope", "llama3") and isinstance(factor, (int, float)) \
                and factor > 1:
            base = scaling.get("original_max_position_embeddings") or n
            if int(base * factor) > n:
                return int(base * factor), f"{how}, {kind} RoPE scaling x{factor:g}"
    return n, how


def _lengths(recipe: Recipe, stage: str) -> list[tuple[str, str, str | None, int | None, bool]]:
    """(key, model, revision, tokens, vllm engine) pairs the stage asks a model to handle."""
    section = getattr(recipe, stage, None)
    if section is None:
        return []
    if stage == "generate":
        t = section.teacher
        return [(f"generate.teacher.max_model_len", t.model, t.revision, t.max_model_len, t.backend != "transformers")]
    if stage == "evaluate":
        out = []
        for i, m in enumerate(section.models):
            if isinstance(m, str) or not m.max_model_len:
                continue
            out.append((f"evaluate.models[{i}].max_model_len ({m.name or m.model})", m.model, m.revision,
                        m.max_model_len, m.backend != "transformers"))
        return out
    if stage in ("sft", "kd"):
        # the default is a bound on examples, not a length asked for: a small model with a shorter context and short
        # examples trains as it is (a value the recipe sets is checked)
        if section.max_length == _default(type(section), "max_length"):
            return []
        out = [(f"{stage}.max_length", section.student, None, section.max_length, False)]
        if stage == "kd" and section.teacher and section.mode != "offline":
            out.append((f"kd.max_length (teacher {section.teacher})", section.teacher, None, section.max_length, False))
        return out
    if stage == "rl" and section.student:
        return [("rl.max_completion_length", section.student, None, section.max_completion_length, False)]
    return []


def _default(cls, name: str):
    import dataclasses

    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def check_context(recipe: Recipe, stages: list[str]) -> None:
    long_ok = os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0").lower() in ("1", "true")
    for stage in stages:
        for key, model, revision, tokens, engine in _lengths(recipe, stage):
            if not tokens or not isinstance(model, str):
                continue
            ctx = model_context(model, revision)
            if ctx is None or tokens <= ctx[0] or (engine and long_ok):
                continue
            fix = ("lower it, or train a model with a longer context (e.g. a RoPE-extended base such as "
                   "open-r1/Qwen2.5-Math-7B-RoPE-300k)" if not engine else
                   "lower it (or set VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 if the model extrapolates)")
            raise PreflightError(f"{key} {tokens} is over the context of {model}: {ctx[0]} tokens ({ctx[1]} in its "
                                 f"config.json); {fix}")


def check(recipe: Recipe, stages: list[str]) -> None:
    """Every preflight check for the stages about to run (raises PreflightError, one line)."""
    check_packages(recipe, stages)
    check_context(recipe, stages)
