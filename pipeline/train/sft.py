"""`distill sft`: TRL's SFTTrainer fine-tunes the student on the kept traces (full or LoRA), loss on the answer.

Examples are tokenised here (prompt + completion through the chat template, checked by the preflight) and handed
to SFTTrainer as `input_ids` + `labels`, so what is trained is exactly what the preflight looked at.
"""

from __future__ import annotations

from pathlib import Path

from ..core.config import SFTConfig
from ..core.log import get_logger
from . import common
from .templates import preflight

logger = get_logger("sft")


def run(cfg: SFTConfig, callbacks: list | None = None) -> dict:
    from accelerate import PartialState
    from transformers import set_seed
    from trl import SFTTrainer

    state = PartialState()
    out = Path(cfg.output)
    raw = common.load_training_set(cfg.data, "sft") if cfg.data else None
    if raw is None:
        raise common.TrainError("sft.data is not set (a filter output folder); give --sft.data or a filter: section")
    fp = common.fingerprint(cfg, raw)
    done = common.finished_or_claimed(cfg, fp, "sft", state)
    if done is not None:
        return done

    tokenizer = common.load_tokenizer(cfg, "sft")
    pre = preflight(tokenizer, raw[0]["messages"])
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
    trainer = SFTTrainer(model=model, args=common.trainer_args(cfg, out), train_dataset=train,
                         processing_class=tokenizer, peft_config=common.peft_config(cfg),
                         callbacks=[common.log_callback(log_path), *(callbacks or [])])
    summary = common.train_and_save(trainer, cfg, "sft", tokenizer=tokenizer, pre=pre, out=out, fp=fp,
                                    data_stats=data_stats, log_path=log_path)
    if summary is None:
        return {}
    common.plot_loss(log_path, out / "loss.png", f"sft: {Path(cfg.student).name}")
    common.stage_output(out, "sft").complete(summary)  # last: the output is finished
    print_summary(summary, out)
    return summary


def print_summary(s: dict, out: Path) -> None:
    print(f"\nsft: trained {s['student']} ({s['method']}) for {s['steps']} steps, {s['epochs']} epochs, "
          f"{s['train_seconds']} s ({s['tokens_per_second']} tokens/s)")
    print(f"  loss {s['first_loss']} -> {s['final_loss']} (mean {s['train_loss']}); "
          f"{s['examples_trained']} examples of {s['examples_in']}")
    print(f"  model: {s['model']}   log: {out}/train_log.jsonl   curve: {out}/loss.png")
