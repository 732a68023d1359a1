"""What the training stages (sft, kd, rl) share: data, model, tokenised examples, trainer arguments, outputs.

Output folder of a training stage:
    checkpoints/     trainer checkpoints (resume points; removed when training finishes, unless keep_checkpoints)
    model/           the trained student: weights (safetensors, in the base model's dtype unless save_dtype says
                     otherwise; no pickle), tokenizer + chat template, generation config (appears when done)
    train_log.jsonl  one line per logging step; loss.png at the end; runs/ with TensorBoard events when asked
    summary.json     written last: its presence means the stage finished
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import time
from pathlib import Path

import datasets

from ..core.config import OptimConfig, TrainConfig, config_hash, without_operational
from ..core.errors import DistillError
from ..core.io import atomic_write_text, data_fingerprint, load_dataset_folder_or_hub
from ..core.log import get_logger
from ..core.output import OutputMismatch, StageOutput
from ..core.stages import summary_path
from . import formats
from .templates import IGNORE, Preflight, TemplateError, encode, resolve_chat_template

logger = get_logger("train")


class TrainError(DistillError, ValueError):
    """A training input or output that cannot be used as it is (one line, with the fix)."""


# ----------------------------------------------------------------------------------------------- data

def load_training_set(source: str, stage: str) -> datasets.Dataset:
    """A filter output folder, a save_to_disk folder, a JSONL/Parquet file or a Hub dataset id, in any of the
    formats of train/formats.py, read into a `messages` column of ChatML turns (every row ending with the
    assistant's answer, else a one-line error naming the row)."""
    path = Path(source)
    key = f"{stage}.data"
    if path.is_file():
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
        if kind is None:
            raise TrainError(f"{key} {source}: use a .jsonl, .json or .parquet file, or a dataset folder")
        ds = _load_file(path, kind, f"{key} {source}")
    else:
        if (path / "dataset").is_dir():
            if (path / "shards").is_dir():
                raise TrainError(f"{source} is a generate output (raw traces); train on the output of distill filter")
            if not summary_path("filter", path).exists():
                raise TrainError(f"{source} is an unfinished filter output (no report.json); rerun distill filter")
            path = path / "dataset"
        ds = load_dataset_folder_or_hub(source, path, key, "a distill filter output or a save_to_disk "
                                        "folder", TrainError)
    if len(ds) == 0:
        raise TrainError(f"{key} {source} has no examples; loosen the filter or generate more traces")
    try:
        return formats.to_messages(ds, source, key)
    except formats.FormatError as e:
        raise TrainError(str(e)) from None


def _load_file(path: Path, kind: str, label: str) -> datasets.Dataset:
    """datasets' own builder (Arrow-cached, memory-light); what it cannot read is read again by core.data's reader,
    whose error names the file (and the line of a malformed one) in one line, where datasets raises a traceback
    (StopIteration for an empty file, DatasetGenerationError without the line for a bad one)."""
    from ..core.data import load_file

    import logging

    quiet = logging.getLogger("datasets.packaged_modules.json.json")  # logs the parse error before raising it
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception:  # noqa: BLE001 - whatever the builder raises, the reader below says it in one line
        try:
            return load_file(path, label=label)
        except DistillError as e:
            raise TrainError(str(e)) from None
    finally:
        quiet.setLevel(level)


def encode_dataset(ds: datasets.Dataset, tokenizer, cfg: TrainConfig) -> tuple[datasets.Dataset, dict]:
    """input_ids + labels (loss on the assistant turns train_turns names) for every example; long ones dropped or
    cut."""
    turns = getattr(cfg, "train_turns", "last")
    has_prompt = "prompt_turns" in ds.column_names

    def enc(row, i):
        try:
            e = encode(tokenizer, row["messages"], turns, row["prompt_turns"] if has_prompt else 0)
        except TemplateError as err:
            raise TrainError(f"{cfg.data} row {i}: {err}") from None
        return {"input_ids": e.input_ids, "labels": e.labels, "length": len(e.input_ids)}

    encoded = ds.map(enc, with_indices=True, remove_columns=ds.column_names, desc="tokenising",
                     load_from_cache_file=False)
    encoded, stats = fit_length(encoded, cfg, ("input_ids", "labels"))
    return encoded.remove_columns("length"), stats


def fit_length(encoded: datasets.Dataset, cfg: TrainConfig, columns: tuple[str, ...],
               features=None) -> tuple[datasets.Dataset, dict]:
    """Examples over max_length dropped, or cut (`columns`: the token-aligned ones), and the length figures every
    training stage reports. `encoded` holds a `length` column and `labels`."""
    lengths = encoded["length"]
    long = [i for i, n in enumerate(lengths) if n > cfg.max_length]
    if cfg.long_examples == "drop":
        encoded = encoded.select(sorted(set(range(len(encoded))) - set(long)))
    elif long:
        cut = cfg.max_length
        encoded = encoded.map(lambda r: {c: r[c][:cut] for c in columns}, features=features,
                              desc="cutting long examples", load_from_cache_file=False)
    if len(encoded) == 0:
        raise TrainError(f"every example is longer than max_length {cfg.max_length} tokens (longest {max(lengths)}); "
                         f"raise max_length")
    trained = [min(n, cfg.max_length) for n in encoded["length"]]
    stats = {"examples_in": len(lengths), "examples_over_max_length": len(long),
             f"examples_{'dropped' if cfg.long_examples == 'drop' else 'truncated'}": len(long),
             "examples_trained": len(encoded), "tokens_per_epoch": sum(trained),
             "loss_tokens_per_epoch": sum(sum(1 for t in labels if t != IGNORE) for labels in encoded["labels"]),
             "longest_example": max(lengths)}
    return encoded, stats


# ---------------------------------------------------------------------------------------------- model

def load_tokenizer(cfg: OptimConfig, stage: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(cfg.student, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise TrainError(f"{stage}.student {cfg.student}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None
    tok.chat_template = resolve_chat_template(tok, cfg.chat_template, cfg.student)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # padded positions carry no loss, any id will do
    return tok


def mixed_precision(cfg: OptimConfig) -> str:
    """auto: bf16 autocast where the hardware computes bf16 natively (a GPU that supports it; a CPU with avx512_bf16
    or AMX, where a SmolLM2-135M step ran 1.5x fp32's and the demo student learned as well: bench/README.md), else
    fp32 (a CPU without it would emulate bf16, slower than fp32)."""
    import torch

    if cfg.precision != "auto":
        return cfg.precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    from ..core.hardware import cpu_has_bf16

    return "bf16" if cpu_has_bf16() else "fp32"


def load_student(cfg: OptimConfig, stage: str, *, dtype=None):
    import torch
    from transformers import AutoModelForCausalLM

    if dtype is None:  # full training keeps fp32 master weights; a frozen LoRA base can sit in bf16
        dtype = torch.bfloat16 if cfg.lora.enabled and mixed_precision(cfg) == "bf16" else torch.float32
    kwargs = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(cfg.student, **kwargs)
    except (OSError, ValueError) as e:
        raise TrainError(f"{stage}.student {cfg.student}: cannot load the model ({str(e).splitlines()[0]})") from None


def peft_config(cfg: OptimConfig):
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig

    targets = cfg.lora.target_modules
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, task_type="CAUSAL_LM",
                      target_modules="all-linear" if targets == ["all-linear"] else targets)


def trainer_args(cfg: TrainConfig, out: Path, args_cls=None, **extra):
    """TRL's SFT training arguments from the recipe (checkpoints under out/checkpoints)."""
    from trl import SFTConfig as TRLSFTConfig

    return (args_cls or TRLSFTConfig)(max_length=cfg.max_length, packing=cfg.packing, packing_strategy="bfd",
                                      **optimiser_args(cfg, out), **extra)


def optimiser_args(cfg: OptimConfig, out: Path) -> dict:
    """The transformers TrainingArguments every training stage shares, from the recipe."""
    import torch

    precision = mixed_precision(cfg)
    if "tensorboard" in cfg.report_to:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "runs"))
    return dict(
        output_dir=str(out / "checkpoints"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup if cfg.warmup < 1 else int(cfg.warmup),
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        gradient_checkpointing=cfg.gradient_checkpointing, bf16=precision == "bf16", fp16=precision == "fp16",
        seed=cfg.seed, data_seed=cfg.seed, save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps, logging_first_step=True, report_to=cfg.report_to or "none",
        disable_tqdm=not cfg.progress, eval_strategy="no", dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(), ddp_find_unused_parameters=False, ddp_timeout=cfg.ddp_timeout)


def distributed_state(cfg: OptimConfig):
    """accelerate's process state, its process group made with the recipe's ddp_timeout. First thing a training
    stage does: TrainingArguments passes ddp_timeout only when it makes the process group itself, and the stage
    needs one before (ranks wait for rank 0's output checks, rl's pass-rate sampling ...)."""
    from datetime import timedelta

    from accelerate import PartialState

    return PartialState(timeout=timedelta(seconds=cfg.ddp_timeout))


def accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def logits_at(model, feed: dict, keep, accepts: bool):
    """Logits at the positions `keep` only (the vocabulary projection of the other positions is skipped)."""
    if accepts:
        return model(**feed, use_cache=False, logits_to_keep=keep).logits
    return model(**feed, use_cache=False).logits[:, keep]


# -------------------------------------------------------------------------------------------- outputs

def fingerprint(cfg: OptimConfig, data: datasets.Dataset) -> str:
    """What decides the trained weights: every training key and the data (not paths or logging knobs)."""
    d = without_operational(cfg)
    for k in ("output", "data"):  # where it reads and writes, not what it makes
        d.pop(k, None)
    d["data_fingerprint"] = data_fingerprint(data)
    return config_hash(d)


def finished_or_claimed(cfg: OptimConfig, fp: str, stage: str, state) -> dict | None:
    """The finished summary when this exact training is done already (said once), else None: the output is
    then claimed for this run on every rank (see prepare_output)."""
    out = Path(cfg.output)
    done = prepare_output(out, fp, cfg, stage, main=state.is_main_process)
    state.wait_for_everyone()
    if done is not None and state.is_main_process:
        logger.info(f"{stage}: {out}/model is already trained with this config and data; nothing to do "
              f"(another {stage}.output, or removing this one, retrains)")
    return done


def finish(out: Path, stage: str, summary: dict, cfg: OptimConfig) -> None:
    """Mark the output finished (last of all its files), then drop the checkpoints: they only serve a resume, and
    for the CPU demo's 135M student two of them take 3 GB."""
    stage_output(out, stage).complete(summary)
    if not cfg.keep_checkpoints and (out / "checkpoints").is_dir():
        for d in (out / "checkpoints").glob("checkpoint-*"):  # not the rest: rl logs its completions there
            shutil.rmtree(d, ignore_errors=True)


def stage_output(out: Path, stage: str) -> StageOutput:
    """A training output folder: model/ beside summary.json makes it finished (see core.output)."""
    return StageOutput(out, stage, needs=("model",), parts=("checkpoints", "model", "runs", ".model.tmp", "summary.json",
                                                             "train_log.jsonl", "loss.png"))


def prepare_output(out: Path, fp: str, cfg: OptimConfig, stage: str, *, main: bool) -> dict | None:
    """The finished summary when this exact training is done already. A run of the same training resumes from
    its checkpoints; another config's output is refused, or cleared with overwrite."""
    output = stage_output(out, stage)
    done = output.finished(fp)
    if done is not None:
        return done
    try:
        output.claim(fp, overwrite=cfg.overwrite, write=main)
    except OutputMismatch as e:
        raise TrainError(str(e)) from None
    return None


def last_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint under out/checkpoints. Why not transformers' get_last_checkpoint: it returns the
    highest-numbered folder even when a crash (a full disk, a kill) cut its save short, and resuming from that one
    fails. Trainer._save_checkpoint writes trainer_state.json after the weights, optimizer, scheduler and RNG state,
    so a checkpoint whose trainer_state.json reads as JSON is whole."""
    ckpt = out / "checkpoints"
    found = sorted((int(m.group(1)), d) for d in (ckpt.iterdir() if ckpt.is_dir() else [])
                   if d.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", d.name)))
    for _, d in reversed(found):
        try:
            json.loads((d / "trainer_state.json").read_text())
            return str(d)
        except (OSError, ValueError):
            logger.warning(f"{d} is incomplete (its save was cut short); resuming from an earlier checkpoint")
    return None


def log_callback(path: Path):
    """Appends each logged step to train_log.jsonl (rank 0), dropping lines past the step a resume starts at."""
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero and path.exists():
                lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= state.global_step]
                atomic_write_text(path, "".join(ln + "\n" for ln in lines))

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs:
                with path.open("a") as f:
                    f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")

    return JsonlLog()


def param_checksum(model) -> str:
    """sha256 over the trainable weights' bytes: equal on every rank iff the ranks trained the same model. Sharded
    weights are checksummed whole (collective: every rank calls this, in the same parameter order): an FSDP2
    DTensor through full_tensor(), a ZeRO-3 placeholder gathered by DeepSpeed (its own data is empty)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(full_weight(p).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def full_weight(p):
    """The whole value of parameter `p` as a plain tensor, however it is sharded (a collective when it is)."""
    if hasattr(p, "ds_id"):  # DeepSpeed ZeRO-3: gathered for the duration of the block
        import deepspeed

        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            return p.detach().clone()
    data = p.detach()
    if hasattr(data, "full_tensor"):  # torch.distributed DTensor (FSDP2, tensor parallel)
        data = data.full_tensor()
    return data


def save_student(trainer, cfg: OptimConfig, tokenizer, pre: Preflight, out: Path) -> Path:
    """The trained student as a plain folder any loader serves: merged weights (or the adapter alone), tokenizer
    with the trained chat template, a generation config that stops on the turn's end. Renamed into place."""
    from transformers import GenerationConfig

    tmp = out / ".model.tmp"
    if trainer.accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # collective under ZeRO-3 / FSDP (gathers the shards)
    if not trainer.accelerator.is_main_process:
        trainer.accelerator.wait_for_everyone()
        return out / "model"
    if cfg.lora.enabled and cfg.lora.merge:
        from peft import PeftModel

        base = load_student(cfg, "train", dtype="auto")
        merged = PeftModel.from_pretrained(base, str(tmp)).merge_and_unload()
        shutil.rmtree(tmp)
        merged.save_pretrained(str(tmp))
    # the trainer's pickled arguments are for resuming (checkpoints/ keep theirs), not part of a published model:
    # the Hub flags a pickle in a model folder as unsafe to load
    (tmp / "training_args.bin").unlink(missing_ok=True)
    cast_saved_weights(tmp, save_dtype(cfg), keep_fp32=getattr(trainer.accelerator.unwrap_model(trainer.model),
                                                                "_keep_in_fp32_modules", None) or ())
    tokenizer.eos_token = pre.turn_end
    tokenizer.save_pretrained(str(tmp))
    try:
        gen = GenerationConfig.from_pretrained(cfg.student)
    except OSError:
        gen = GenerationConfig()
    gen.eos_token_id = pre.stop_ids if len(pre.stop_ids) > 1 else pre.stop_ids[0]
    gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(str(tmp))
    final = out / "model"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    trainer.accelerator.wait_for_everyone()
    return final


DTYPES = ("float32", "bfloat16", "float16")


def save_dtype(cfg: OptimConfig) -> str:
    """The dtype the student is saved in: save_dtype, or with auto the base model's own (its config's `dtype`, or
    `torch_dtype` as older configs name it), float32 when it names none. Training itself keeps fp32 master weights
    (mixed precision), so without this a bf16 base would be published at twice its size."""
    if cfg.save_dtype != "auto":
        return cfg.save_dtype
    from transformers import AutoConfig

    try:
        conf = AutoConfig.from_pretrained(cfg.student, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError):
        return "float32"
    for c in (conf, getattr(conf, "get_text_config", lambda: conf)()):
        d = getattr(c, "dtype", None) or getattr(c, "torch_dtype", None)
        name = str(d).removeprefix("torch.") if d is not None else None
        if name in DTYPES:
            return name
    return "float32"


def cast_saved_weights(folder: Path, dtype: str, keep_fp32=()) -> None:
    """Every floating tensor of the folder's *.safetensors in `dtype` (modules the model class keeps in fp32 stay
    there), and config.json saying so. Done on the saved files, so it works alike for sharded, ZeRO-3/FSDP-gathered,
    merged and adapter-only saves, with no second copy of the model in memory beyond one shard."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    target = getattr(torch, dtype)
    sizes = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            meta = h.metadata() or {"format": "pt"}
        tensors = load_file(str(f))
        changed = False
        for name, t in tensors.items():
            if t.is_floating_point() and t.dtype != target and not any(m in name for m in keep_fp32):
                tensors[name] = t.to(target)
                changed = True
        if changed:
            save_file(tensors, str(f), metadata=meta)
        sizes[f.name] = sum(t.numel() * t.element_size() for t in tensors.values())
    for index in folder.glob("*.safetensors.index.json"):
        d = json.loads(index.read_text())
        d.setdefault("metadata", {})["total_size"] = sum(sizes.get(n, 0) for n in set(d.get("weight_map", {}).values()))
        atomic_write_text(index, json.dumps(d, indent=2, sort_keys=True) + "\n")
    conf = folder / "config.json"
    if conf.is_file():
        d = json.loads(conf.read_text())
        d["dtype"] = dtype
        if "torch_dtype" in d:
            d["torch_dtype"] = dtype
        atomic_write_text(conf, json.dumps(d, indent=2, sort_keys=True) + "\n")


def train_and_save(trainer, cfg: OptimConfig, stage: str, *, tokenizer, pre: Preflight, out: Path, fp: str,
                   data_stats: dict, log_path: Path, series: tuple[str, ...] = ("loss",)) -> dict | None:
    """Train (resuming from the last checkpoint), save the student and return the summary fields every training
    stage shares; None on ranks other than the main one."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    resume = last_checkpoint(out) if cfg.resume else None
    if resume and state.is_main_process:
        logger.info(f"{stage}: resuming from {resume}")
    timer = Timer()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = timer.seconds
    checksum = param_checksum(trainer.accelerator.unwrap_model(trainer.model))
    checksums = gather_object([checksum]) if state.num_processes > 1 else [checksum]
    model_dir = save_student(trainer, cfg, tokenizer, pre, out)
    if not state.is_main_process:
        return None
    rows = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln] if log_path.exists() else []
    points = {k: [r[k] for r in rows if k in r] for k in series}
    epochs = trainer.state.epoch or 0
    return {
        "stage": stage, "fingerprint": fp, "student": cfg.student, "data": getattr(cfg, "data", None), "model": str(model_dir),
        "method": "lora" + ("-merged" if cfg.lora.merge else "-adapter") if cfg.lora.enabled else "full",
        **data_stats, "steps": trainer.state.global_step, "epochs": round(epochs, 3),
        **{f"{edge}_{k}": (v[0] if edge == "first" else v[-1]) if v else None
           for k, v in points.items() for edge in ("first", "final")},
        "train_loss": round(result.training_loss, 4), "train_seconds": seconds,
        **({"tokens_per_second": round(data_stats["tokens_per_epoch"] * epochs / max(seconds, 1e-9), 1)}
           if "tokens_per_epoch" in data_stats else {}),
        "turn_end": pre.turn_end, "stop_ids": pre.stop_ids, "precision": mixed_precision(cfg),
        "ranks": state.num_processes, "rank_checksums": checksums, "resumed_from": resume,
    }


def plot_loss(log_path: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln] if log_path.exists() else []
    series = {k: [(r["step"], r[k]) for r in rows if k in r] for k in ("loss", "kd", "ce")}
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, pts in series.items():
        if pts:
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=k, marker="." if len(pts) < 30 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 1)
