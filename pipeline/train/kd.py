"""`distill kd`: logit distillation (Hinton soft targets) of the student from a teacher that shares its vocabulary.

The loss over the trained (assistant) tokens is `alpha * T^2 * D(p_teacher^T || p_student^T) + (1 - alpha) * CE`
(pipeline/train/kd_losses.py), both terms averaged over the same tokens. Three ways to get the teacher's side:

    offline    the top-k logprobs `generate` stored per completion token (no teacher at training time). The student
               reads its prompt and then the teacher's own completion ids, so every position lines up with its row.
    online     the teacher is loaded beside the student (frozen, eval mode) and scores the same batch: full vocabulary.
    on_policy  as online, but on a share `lmbda` of the steps the student first samples the completion itself and
               the teacher scores that (generalised KD, Agarwal et al. 2024; TRL GKDTrainer's sampler).

With `cross_tokenizer` (uld or hybrid) teacher and student may have different tokenizers: both tokenisations of
the completion are aligned by bytes into spans (xtok.py, xtok_data.py) and the loss compares span distributions
(xtok_losses.py); offline and online.

TRL has no trainer for stored top-k logprobs, and its GKDTrainer ignores the temperature in its loss, has no CE
term and refuses teachers whose embedding carries extra padding rows (Qwen2.5 0.5B vs 72B). So one trainer, a
subclass of SFTTrainer (checkpoints, LoRA, accelerate/DeepSpeed as in sft), computes our loss in all three modes and
takes GKDTrainer's on-policy sampling as it is. Outputs and resume work exactly as for sft.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

from ..core.config import KDConfig
from ..core.log import get_logger
from . import common, kd_data
from .common import TrainError
from .kd_losses import distillation_loss
from .templates import IGNORE, preflight
from .xtok_losses import cross_tokenizer_loss

logger = get_logger("kd")

BATCH_ONLY = ("labels", "topk_ids", "topk_logprobs", "prompts", "prompt_attention_mask", "sampled")


@dataclasses.dataclass
class Prepared:
    """Everything a kd run trains with, built by `build` (the benchmark and tests use it without training)."""
    trainer: object
    tokenizer: object
    preflight: object
    data_stats: dict
    vocab_size: int
    vocab_check: str  # full: the teacher's tokenizer was compared; partial: only the stored ids were range-checked;
    #                   cross: the tokenizers differ and kd.cross_tokenizer aligns them
    teacher: str | None
    packing: bool
    pair: object = None  # xtok_data.Pair on the cross-tokenizer path


def run(cfg: KDConfig, callbacks: list | None = None) -> dict:
    validate(cfg)
    state = common.distributed_state(cfg)
    out = Path(cfg.output)
    raw = load_data(cfg)
    # the vocabulary check comes before anything is written, cleared or loaded beyond the tokenizers
    tokenizer = common.load_tokenizer(cfg, "kd")
    vocab = check_vocabulary(cfg, tokenizer, verbose=state.is_main_process)
    fp = common.fingerprint(cfg, raw)
    done = common.finished_or_claimed(cfg, fp, "kd", state)
    if done is not None:
        return done
    log_path = out / "train_log.jsonl"
    p = build(cfg, raw, callbacks=[common.log_callback(log_path), *(callbacks or [])], verbose=state.is_main_process,
              tokenizer=tokenizer, vocab=vocab)
    trainer, tokenizer, pre, data_stats = p.trainer, p.tokenizer, p.preflight, p.data_stats
    summary = common.train_and_save(trainer, cfg, "kd", tokenizer=tokenizer, pre=pre, out=out, fp=fp,
                                    data_stats=data_stats, log_path=log_path, series=("loss", "kd", "ce"))
    if summary is None:
        return {}
    summary.update({
        "mode": cfg.mode, "teacher": p.teacher, "vocab_check": p.vocab_check, "vocab_size": p.vocab_size,
        "temperature": cfg.temperature, "alpha": cfg.alpha, "divergence": cfg.divergence,
        **({"beta": cfg.beta} if cfg.divergence == "jsd" else {}),
        **({"tail": cfg.tail} if cfg.mode == "offline" else {}),
        **({"lmbda": cfg.lmbda, "max_new_tokens": cfg.max_new_tokens} if cfg.mode == "on_policy" else {}),
        "packing": p.packing,
        **({"cross_tokenizer": cfg.cross_tokenizer, "matched_weight": p.pair.matched_weight}
           if p.pair is not None else {}),
    })
    common.plot_loss(log_path, out / "loss.png", f"kd ({cfg.mode}): {Path(cfg.student).name}")
    common.finish(out, "kd", summary, cfg)  # last: the output is finished (then its checkpoints go)
    print_summary(summary, out)
    return summary


def load_data(cfg: KDConfig):
    if not cfg.data:
        raise TrainError("kd.data is not set (a filter output folder); give --kd.data or a filter: section")
    raw = common.load_training_set(cfg.data, "kd")
    if cfg.mode == "offline":
        kd_data.require_kd_columns(raw, cfg.data)
    return raw


def build(cfg: KDConfig, raw=None, *, callbacks: list | None = None, verbose: bool = True, tokenizer=None,
          vocab: tuple | None = None) -> Prepared:
    """Vocabulary check (unless done: `vocab`), examples, student (and teacher), collator and trainer; no training."""
    from transformers import set_seed

    validate(cfg)
    raw = load_data(cfg) if raw is None else raw
    # vocabulary first: nothing is encoded or loaded until teacher and student are known to share token ids
    tokenizer = tokenizer or common.load_tokenizer(cfg, "kd")
    vocab_size, vocab_check, teacher_name, teacher_tok = vocab or check_vocabulary(cfg, tokenizer, verbose=verbose)
    pre = preflight(tokenizer, raw[0]["messages"], cfg.train_turns)
    pair = None
    if vocab_check == "cross":
        from . import xtok_data

        pair = xtok_data.make_pair(tokenizer, teacher_tok, pre.stop_ids[0], cfg)
        train, data_stats = xtok_data.encode(raw, pair, cfg)
        if data_stats["alignment_coverage"] + data_stats["not_utf8_share"] < 0.99 and verbose:
            logger.warning(f"kd: the two tokenizations agree on only {data_stats['alignment_coverage']:.1%} of the "
                           f"completion bytes (a tokenizer that normalises text?); the rest is trained by CE only")
        if data_stats["completions_not_utf8"] and verbose:
            logger.warning(f"kd: {data_stats['completions_not_utf8']} teacher completions hold bytes that are not "
                           f"UTF-8 (a sampled stray byte token); the spans around them ({data_stats['not_utf8_share']:.2%}"
                           f" of the text) are trained by CE only")
    elif cfg.mode == "offline":
        train, data_stats = kd_data.encode_offline(raw, tokenizer, cfg, vocab_size, strict_ids=vocab_check != "full")
        stopped, total = kd_data.stop_coverage(raw, pre.stop_ids)
        data_stats["completions_ending_with_turn_end"] = stopped
        if stopped == 0 and verbose:
            logger.warning(f"kd: warning: none of the {total} teacher completions ends with the student's end-of-turn token "
                  f"{pre.turn_end!r} (truncated traces, or another chat template?): the student will not learn to stop")
    else:
        train, data_stats = common.encode_dataset(raw, tokenizer, cfg)
    # on-policy samples per prompt and cross-tokenizer spans per example: padded batches
    packing = cfg.packing and cfg.mode != "on_policy" and pair is None
    if packing:
        train = kd_data.pack(train, cfg.max_length, cfg.seed)
    if verbose:
        over = data_stats["examples_over_max_length"]
        logger.info(f"kd ({cfg.mode}): {data_stats['examples_trained']} examples, {data_stats['tokens_per_epoch']} tokens "
              f"per epoch" + (f", top-{data_stats['topk']} teacher logprobs" if cfg.mode == "offline" else "")
              + f"; vocabulary check {vocab_check}" + ("" if packing else "; no packing")
              + (f"; {cfg.cross_tokenizer} over {data_stats['spans']} spans ({data_stats['split_spans']} split on a "
                 f"side), alignment covers {data_stats['alignment_coverage']:.2%} of the text, shared-vocabulary "
                 f"weight {pair.matched_weight:.3f}" if pair is not None else "")
              + (f"; {over} examples over max_length {cfg.max_length} "
                 f"{'dropped' if cfg.long_examples == 'drop' else 'cut'}" if over else ""))

    set_seed(cfg.seed)
    model = common.load_student(cfg, "kd")
    kd_data.check_embedding_rows(model, vocab_size, cfg.student, "kd.student")
    teacher = load_teacher(cfg, len(teacher_tok) if pair is not None else vocab_size) if cfg.mode != "offline" else None
    if pair is not None:
        from .xtok_data import XtokCollator

        collator = XtokCollator(tokenizer.pad_token_id, teacher_tok.pad_token_id or 0)
    else:
        collator = kd_data.KDCollator(tokenizer.pad_token_id, padding_free=packing,
                                      topk=data_stats.get("topk", 0), prompts=cfg.mode == "on_policy")
    trainer = trainer_class()(model=model, args=training_args(cfg, Path(cfg.output)), train_dataset=train,
                              processing_class=tokenizer, data_collator=collator, peft_config=common.peft_config(cfg),
                              callbacks=callbacks, kd=cfg, teacher=teacher, vocab_size=vocab_size,
                              stop_ids=pre.stop_ids, pair=pair)
    return Prepared(trainer, tokenizer, pre, data_stats, vocab_size, vocab_check, teacher_name, packing, pair)


# ------------------------------------------------------------------------------------------ checks

def validate(cfg: KDConfig) -> None:
    for key, value in (("alpha", cfg.alpha), ("beta", cfg.beta), ("lmbda", cfg.lmbda)):
        if not 0.0 <= value <= 1.0:
            raise TrainError(f"kd.{key} must be in [0, 1], got {value}")
    for key, value in (("temperature", cfg.temperature), ("sampling_temperature", cfg.sampling_temperature)):
        if value <= 0:
            raise TrainError(f"kd.{key} must be > 0, got {value}")
    if cfg.mode != "offline" and not cfg.teacher:
        raise TrainError(f"kd.mode {cfg.mode} needs a live teacher: set kd.teacher (a Hub id or local folder), or "
                         f"use kd.mode offline with traces generated with --generate.sampling.logprobs K")
    if cfg.cross_tokenizer and cfg.mode == "on_policy":
        raise TrainError("kd.cross_tokenizer works with kd.mode offline or online, not on_policy (the student's samples "
                         "would need aligning at every step); use kd.mode online")
    if cfg.hybrid_matched_weight is not None and not 0.0 <= cfg.hybrid_matched_weight <= 1.0:
        raise TrainError(f"kd.hybrid_matched_weight must be in [0, 1], got {cfg.hybrid_matched_weight}")
    if cfg.train_turns == "all" and (cfg.mode != "online" or cfg.cross_tokenizer):
        why = ("the offline traces hold the teacher's tokens of the last turn alone" if cfg.mode == "offline" else
               "on_policy samples the last turn" if cfg.mode == "on_policy" else
               "the cross-tokenizer alignment covers the last turn")
        raise TrainError(f"kd.train_turns all works with kd.mode online and one tokenizer only ({why}); use "
                         f"kd.train_turns last")
    if cfg.teacher_dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise TrainError(f"kd.teacher_dtype {cfg.teacher_dtype!r} is not one of auto, float32, bfloat16, float16")


def check_vocabulary(cfg: KDConfig, tokenizer, *, verbose: bool = True) -> tuple[int, str, str | None, object]:
    """(student vocabulary size, 'full', 'partial' or 'cross', the teacher checked against, the teacher's tokenizer
    on the cross path else None).

    online / on_policy: kd.teacher's tokenizer. offline: kd.teacher if given, else the teacher recorded with the
    traces (filter report -> generate summary) when its tokenizer is on this machine; without one the check is
    partial: the stored ids must lie inside the student's vocabulary (checked while encoding). Tokenizers that agree
    take the exact token-by-token path; tokenizers that differ take the cross-tokenizer path when
    kd.cross_tokenizer is set, else they stop with the option to set."""
    name = cfg.teacher or (kd_data.traces_teacher(cfg.data) if cfg.mode == "offline" else None)
    if name is None and cfg.cross_tokenizer:
        raise TrainError("kd.cross_tokenizer needs the teacher's tokenizer, and no teacher is recorded with the traces; "
                         "set kd.teacher (a Hub id or local folder)")
    if name is None:
        if verbose:
            logger.warning("kd: vocabulary check partial: no teacher named (kd.teacher) or recorded with the traces; only "
                  "checking that the stored token ids lie inside the student's vocabulary")
        return len(tokenizer), "partial", None, None
    teacher_tok = kd_data.load_teacher_tokenizer(name, trust_remote_code=cfg.trust_remote_code,
                                                 local_only=cfg.teacher is None)
    if teacher_tok is None:
        if cfg.teacher is not None:
            raise TrainError(f"kd.teacher {name}: cannot load its tokenizer (a Hub id or a local model folder)")
        if verbose:
            logger.warning(f"kd: vocabulary check partial: the traces' teacher {name} is not on this machine (set kd.teacher "
                  f"to check it); only checking that the stored token ids lie inside the student's vocabulary")
        if cfg.cross_tokenizer:
            raise TrainError(f"kd.cross_tokenizer needs the teacher's tokenizer; the traces' teacher {name} is not on "
                             f"this machine: set kd.teacher to it (a Hub id or local folder)")
        return len(tokenizer), "partial", name, None
    if kd_data.same_vocab(teacher_tok, tokenizer):
        if cfg.cross_tokenizer and verbose:
            logger.info(f"kd: teacher and student share one vocabulary: exact token-by-token KD (kd.cross_tokenizer "
                        f"{cfg.cross_tokenizer} is not needed)")
        return len(tokenizer), "full", name, None
    if cfg.cross_tokenizer:
        return len(tokenizer), "cross", name, teacher_tok
    return kd_data.check_vocab(teacher_tok, tokenizer, name, cfg.student), "full", name, None


def teacher_dtype(cfg: KDConfig):
    import torch

    if cfg.teacher_dtype == "auto":
        return torch.bfloat16 if common.mixed_precision(cfg) == "bf16" else torch.float32
    return getattr(torch, cfg.teacher_dtype)


def load_teacher(cfg: KDConfig, vocab_size: int):
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": teacher_dtype(cfg), "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        teacher = AutoModelForCausalLM.from_pretrained(cfg.teacher, **kwargs)
    except (OSError, ValueError) as e:
        raise TrainError(f"kd.teacher {cfg.teacher}: cannot load the model ({str(e).splitlines()[0]})") from None
    kd_data.check_embedding_rows(teacher, vocab_size, cfg.teacher, "kd.teacher")
    teacher.eval().requires_grad_(False)
    return teacher


def training_args(cfg: KDConfig, out: Path):
    """sft's arguments; the dataset is prepared here (packed or not) and collated by KDCollator."""
    return common.trainer_args(dataclasses.replace(cfg, packing=False), out, remove_unused_columns=False,
                               dataset_kwargs={"skip_prepare_dataset": True})


# ----------------------------------------------------------------------------------------- trainer

def _make_trainer_class():
    from trl import SFTTrainer

    class _KDTrainer(SFTTrainer):
        """SFTTrainer whose loss is `distillation_loss`: offline from the batch's top-k, else from the teacher."""

        loss_is_scaled_for_ga = True  # compute_loss scales for gradient accumulation itself

        def __init__(self, *args, kd: KDConfig, teacher=None, vocab_size: int, stop_ids: list[int], pair=None,
                     **kwargs):
            super().__init__(*args, **kwargs)
            self.kd, self.vocab_size, self.pair = kd, vocab_size, pair
            if pair is not None:
                import torch

                self._vocab_map = torch.tensor(pair.vocab_map, dtype=torch.long, device=self.accelerator.device)
            self.teacher = None
            if teacher is not None:
                if self.is_deepspeed_enabled:
                    from trl.models import prepare_deepspeed

                    self.teacher = prepare_deepspeed(teacher, self.accelerator)
                else:  # moved to the device, never wrapped for DDP (it has no gradients to reduce)
                    self.teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
                self.teacher.eval()
            self._student_keeps = common.accepts_logits_to_keep(self.accelerator.unwrap_model(self.model))
            self._teacher_keeps = teacher is not None and common.accepts_logits_to_keep(teacher)
            if kd.mode == "on_policy":
                from transformers import GenerationConfig

                self.generation_kwargs = {
                    "max_new_tokens": kd.max_new_tokens, "temperature": kd.sampling_temperature, "do_sample": True,
                    "top_k": 0, "top_p": 1.0, "use_cache": not self.args.gradient_checkpointing,
                    "pad_token_id": self.processing_class.pad_token_id, "eos_token_id": stop_ids}
                self.generation_config = GenerationConfig(**self.generation_kwargs)
                self._coin = random.Random(kd.seed)  # the same draw on every rank: they generate together

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.kd.mode == "on_policy" and self._coin.random() < self.kd.lmbda:
                os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
                from trl.experimental.gkd import GKDTrainer
                from trl.models.utils import unwrap_model_for_generation

                with unwrap_model_for_generation(
                        model, self.accelerator, generation_kwargs=self.generation_kwargs,
                        gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs) as unwrapped:
                    ids, mask, labels = GKDTrainer.generate_on_policy_outputs(unwrapped, inputs,
                                                                              self.generation_config)
                inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels, "sampled": True}
                self._metrics["train"]["on_policy"].append(1.0)
            elif self.kd.mode == "on_policy":
                self._metrics["train"]["on_policy"].append(0.0)
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            if self.pair is not None:
                return self._cross_tokenizer_loss(model, inputs, return_outputs, num_items_in_batch)
            kd = self.kd
            labels = inputs["labels"][:, 1:]  # logits at position i predict the token at i + 1
            feed = {k: v for k, v in inputs.items() if k not in BATCH_ONLY}
            keep = (labels != IGNORE).any(0).nonzero().flatten()  # positions whose next token is trained
            logits = common.logits_at(model, feed, keep, self._student_keeps)
            if kd.mode == "offline":
                teacher = {"topk_ids": inputs["topk_ids"][:, 1:][:, keep],
                           "topk_logprobs": inputs["topk_logprobs"][:, 1:][:, keep]}
            else:
                with torch.no_grad():
                    teacher = {"teacher_logits": common.logits_at(self.teacher, feed, keep, self._teacher_keeps)}
            # on the student's own samples only the teacher supervises: a CE term there would train the student
            # to repeat whatever it sampled
            sampled = bool(inputs.get("sampled", False))
            res = distillation_loss(logits, labels[:, keep], alpha=1.0 if sampled else kd.alpha,
                                    temperature=kd.temperature,
                                    kind=kd.divergence, beta=kd.beta, tail=kd.tail, vocab_size=self.vocab_size,
                                    **teacher)
            loss = res["loss"]
            if num_items_in_batch is not None and kd.mode != "on_policy":
                # a sum over this micro-batch's tokens / the tokens of the whole accumulated step (as SFTTrainer)
                loss = loss * res["tokens"] / num_items_in_batch
                if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                    loss = loss * self.accelerator.num_processes
            else:  # on-policy batches change their tokens after the count: mean per micro-batch
                loss = loss / getattr(self, "current_gradient_accumulation_steps", 1)
            if model.training:
                gather = self.accelerator.gather_for_metrics
                for key in ("kd",) if sampled else ("kd", "ce"):
                    self._metrics["train"][key].append(gather(res[key].detach().reshape(1)).mean().item())
            return (loss, {"logits": logits, **res}) if return_outputs else loss

        def _cross_tokenizer_loss(self, model, inputs, return_outputs, num_items_in_batch):
            import torch

            from .xtok_data import ONLINE_TOPK

            kd = self.kd
            labels = inputs["labels"][:, 1:]  # logits at position i predict the token at i + 1
            keep = (labels != IGNORE).any(0).nonzero().flatten()
            feed = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
            logits = common.logits_at(model, feed, keep, self._student_keeps)
            kept = labels[:, keep]
            trained = kept != IGNORE
            group = inputs["xt_group"][:, 1:][:, keep][trained]
            last = inputs["xt_last"][:, 1:][:, keep][trained]
            if kd.mode == "offline":
                t_ids, t_lps, t_chosen = inputs["xt_t_ids"], inputs["xt_t_lps"], inputs["xt_t_chosen"]
            else:
                with torch.no_grad():
                    pos = inputs["xt_t_pos"]
                    t_keep = pos[:, 1].unique()  # sorted
                    t_feed = {"input_ids": inputs["xt_t_input_ids"], "attention_mask": inputs["xt_t_attention_mask"]}
                    t_logits = common.logits_at(self.teacher, t_feed, t_keep, self._teacher_keeps)
                    rows = t_logits[pos[:, 0], torch.searchsorted(t_keep, pos[:, 1].contiguous())]
                    log_p = torch.log_softmax(rows[:, :len(self.pair.teacher)].float(), dim=-1)
                    t_chosen = log_p.gather(-1, inputs["xt_t_token"][:, None]).squeeze(-1)
                    t_lps, t_ids = log_p.topk(min(ONLINE_TOPK, log_p.shape[-1]), dim=-1)
            res = cross_tokenizer_loss(
                logits[trained], kept[trained], group, last, t_ids, t_lps, t_chosen, inputs["xt_t_group"],
                inputs["xt_t_last"], int(inputs["xt_spans"]), alpha=kd.alpha, temperature=kd.temperature,
                loss=kd.cross_tokenizer, kind=kd.divergence, beta=kd.beta, vocab_map=self._vocab_map,
                matched_weight=self.pair.matched_weight, vocab_size=self.vocab_size)
            loss = res["loss"]
            if num_items_in_batch is not None:  # as the same-tokenizer path: tokens of this micro-batch / the step's
                loss = loss * res["tokens"] / num_items_in_batch
                if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                    loss = loss * self.accelerator.num_processes
            if model.training:
                gather = self.accelerator.gather_for_metrics
                for key in ("kd", "ce"):
                    self._metrics["train"][key].append(gather(res[key].detach().reshape(1)).mean().item())
            return (loss, {"logits": logits, **res}) if return_outputs else loss

    return _KDTrainer


_TRAINER = None


def trainer_class():
    """The KD trainer (built on first use, so importing this module does not import TRL)."""
    global _TRAINER
    if _TRAINER is None:
        _TRAINER = _make_trainer_class()
    return _TRAINER


def print_summary(s: dict, out: Path) -> None:
    print(f"\nkd ({s['mode']}): trained {s['student']} ({s['method']}) for {s['steps']} steps, {s['epochs']} epochs, "
          f"{s['train_seconds']} s ({s['tokens_per_second']} tokens/s); teacher {s['teacher']}, "
          f"vocabulary check {s['vocab_check']}")
    print(f"  loss {s['first_loss']} -> {s['final_loss']} (kd {s['first_kd']} -> {s['final_kd']}, "
          f"ce {s['first_ce']} -> {s['final_ce']}); T={s['temperature']} alpha={s['alpha']} {s['divergence']}"
          + (f" tail={s['tail']}" if "tail" in s else ""))
    print(f"  model: {s['model']}   log: {out}/train_log.jsonl   curve: {out}/loss.png")
