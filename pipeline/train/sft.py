"""`distill sft`: TRL's SFTTrainer fine-tunes the student on the kept traces (full or LoRA), loss on the answer.

Examples are tokenised here (prompt + completion through the chat template, checked by the preflight) and handed
to SFTTrainer as `input_ids` + `labels`, so what is trained is exactly what the preflight looked at. The data may be
in any of TRL's formats or ShareGPT's (train/formats.py); sft.train_turns picks the assistant turns trained.
"""

from __future__ import annotations

from pathlib import Path

from ..core.config import SFTConfig
from ..core.log import get_logger
from . import common
from .templates import IGNORE, preflight

logger = get_logger("sft")


def run(cfg: SFTConfig, callbacks: list | None = None) -> dict:
    from transformers import set_seed

    state = common.distributed_state(cfg)
    out = Path(cfg.output)
    raw = common.load_training_set(cfg.data, "sft") if cfg.data else None
    if raw is None:
        raise common.TrainError("sft.data is not set (a filter output folder); give --sft.data or a filter: section")
    fp = common.fingerprint(cfg, raw)
    done = common.finished_or_claimed(cfg, fp, "sft", state)
    if done is not None:
        return done

    tokenizer = common.load_tokenizer(cfg, "sft")
    pre = preflight(tokenizer, raw[0]["messages"], cfg.train_turns)
    train, data_stats = common.encode_dataset(raw, tokenizer, cfg)
    if state.is_main_process:
        over = data_stats["examples_over_max_length"]
        logger.info(f"sft: {data_stats['examples_trained']} examples, {data_stats['tokens_per_epoch']} tokens per epoch; "
              f"assistant turn ends with {pre.turn_end!r}"
              + (f"; {over} examples over max_length {cfg.max_length} "
                 f"{'dropped' if cfg.long_examples == 'drop' else 'cut'}" if over else ""))

    set_seed(cfg.seed)  # LoRA and any new weights start the same on every rank and every run
    model = common.load_student(cfg, "sft")
    log_path = out / "train_log.jsonl"
    trainer = trainer_class()(model=model, args=common.trainer_args(cfg, out), train_dataset=train,
                              processing_class=tokenizer, peft_config=common.peft_config(cfg),
                              callbacks=[common.log_callback(log_path), *(callbacks or [])])
    summary = common.train_and_save(trainer, cfg, "sft", tokenizer=tokenizer, pre=pre, out=out, fp=fp,
                                    data_stats=data_stats, log_path=log_path)
    if summary is None:
        return {}
    common.plot_loss(log_path, out / "loss.png", f"sft: {Path(cfg.student).name}")
    common.finish(out, "sft", summary, cfg)  # last: the output is finished (then its checkpoints go)
    print_summary(summary, out)
    return summary


_TRAINER = None


def trainer_class():
    """SFTTrainer whose loss is the model's own next-token cross entropy over the trained tokens, from the logits of
    those positions only (the same loss: sum of -log p over the trained tokens / their count, tested against TRL's).
    Why not TRL's: its fused LM head computes, for every trained token, chunked log-probs plus entropy and top-1
    metrics; on the CPU demo (SmolLM2-135M, rows of 2 x 512 tokens) that made a step 1.4x a plain forward + backward
    (bench/README.md). Built on first use, so importing this module does not import TRL."""
    global _TRAINER
    if _TRAINER is None:
        import torch
        import torch.nn.functional as F
        from trl import SFTTrainer

        class _SFTTrainer(SFTTrainer):
            loss_is_scaled_for_ga = True  # compute_loss divides by the tokens of the whole accumulated step

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                if not hasattr(self, "_keeps"):
                    self._keeps = common.accepts_logits_to_keep(self.accelerator.unwrap_model(self.model))
                labels = inputs["labels"][:, 1:]  # logits at position i predict the token at i + 1
                keep = (labels != IGNORE).any(0).nonzero().flatten()
                feed = {k: v for k, v in inputs.items() if k != "labels"}
                logits = common.logits_at(model, feed, keep, self._keeps)
                target = labels[:, keep]
                trained = target != IGNORE
                z = logits[trained].float()  # the softmax in fp32 under bf16 autocast, as TRL's head does
                tokens = trained.sum()
                count = num_items_in_batch if num_items_in_batch is not None else tokens
                loss = F.cross_entropy(z, target[trained], reduction="sum") / torch.as_tensor(count).clamp(min=1)
                if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                    loss = loss * self.accelerator.num_processes
                mode = "train" if model.training else "eval"
                with torch.no_grad():
                    right = self.accelerator.gather_for_metrics((z.argmax(-1) == target[trained]).sum()).sum()
                    seen = self.accelerator.gather_for_metrics(tokens).sum()
                self._metrics[mode]["mean_token_accuracy"].append((right / seen.clamp(min=1)).item())
                return (loss, {"logits": logits}) if return_outputs else loss

        _TRAINER = _SFTTrainer
    return _TRAINER


def print_summary(s: dict, out: Path) -> None:
    print(f"\nsft: trained {s['student']} ({s['method']}) for {s['steps']} steps, {s['epochs']} epochs, "
          f"{s['train_seconds']} s ({s['tokens_per_second']} tokens/s)")
    print(f"  loss {s['first_loss']} -> {s['final_loss']} (mean {s['train_loss']}); "
          f"{s['examples_trained']} examples of {s['examples_in']}")
    print(f"  model: {s['model']}   log: {out}/train_log.jsonl   curve: {out}/loss.png")
