"""What does cross-tokenizer KD cost over SFT? Step time of `distill kd` with kd.cross_tokenizer against `distill sft` on
the same examples and batches, the share of a KD step spent in the span loss, and the one-off alignment.

    .venv/bin/python bench/bench_xtok.py --data runs/demo/train      # the CPU demo's pair and kept traces (top-k)
    .venv/bin/python bench/bench_xtok.py --tiny                      # two tiny models with different tokenizers

--data is a filter output whose traces carry top-k logprobs (the CPU demo's generate stores top-8); --student and
--teacher default to the demo's SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct. Both trainers get the same
examples in the same order, padded batches of --batch-size (cross-tokenizer KD does not pack), fp32, --steps
optimizer steps of which the first --warmup are not timed; step time is the median wall time between optimizer steps
(data loading and collation included). `loss share` is the part of a KD step spent in the span loss
(xtok_losses.cross_tokenizer_loss, forward only; its backward is inside the step). Alignment is done once per
dataset (xtok_data.encode), beside SFT's own tokenisation (common.encode_dataset). The goal is KD / SFT <= 1.5x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOAL = 1.5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a filter output with top-k logprobs (default with --tiny: made here)")
    p.add_argument("--student", default="demo:smollm2-135m-instruct")
    p.add_argument("--teacher", default="demo:qwen2.5-coder-0.5b-instruct")
    p.add_argument("--tiny", action="store_true", help="two tiny local models and traces sampled here")
    p.add_argument("--loss", default="hybrid", choices=("hybrid", "uld"))
    p.add_argument("--examples", type=int, default=64, help="examples used (the first N)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def resolve(name: str) -> str:
    if name.startswith("demo:"):
        from pipeline.demo.models import resolve_model

        return resolve_model(name)
    return name


def tiny_setup(root: Path) -> tuple[str, str, str]:
    """A tiny teacher, a student with another tokenizer, and kept-like traces: arithmetic chats whose completion ids
    are the teacher's tokens of the answer (+ its end of turn) and whose top-8 come from a teacher forward."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.demo.tiny_model import build_tiny_model

    teacher = build_tiny_model(root / "teacher", layers=4, hidden=128)
    student = build_tiny_model(root / "student", vocab_size=300, seed=3, split_digits=True, layers=4, hidden=128)
    tok = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    rows = []
    for i in range(64):
        a, b = 10 + 7 * i, 37 + 13 * i
        msgs = [{"role": "user", "content": f"What is {a} + {b}?"}]
        steps = " ".join(f"first {a} + {b} = {a + b}, then add each total step." for _ in range(1 + i % 5))
        text = f"<think>\n{steps}\n</think>\n\nthe answer is \\boxed{{{a + b}}}"
        p = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"]
        out = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([p + out])).logits[0, len(p) - 1:len(p) - 1 + len(out)]
        top = logits.log_softmax(-1).topk(8)
        rows.append({"messages": [*msgs, {"role": "assistant", "content": text}], "id": f"q{i}", "sample": 0,
                     "completion_token_ids": out, "topk_ids": top.indices.tolist(),
                     "topk_logprobs": top.values.tolist()})
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "data"))
    return str(root / "data"), str(student), str(teacher)


def step_clock():
    """A trainer callback recording the wall time between consecutive optimizer steps (`.times`)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times, self.last = [], None

        def on_step_begin(self, args, state, control, **kw):
            if self.last is None:
                self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.times.append(now - self.last)
            self.last = now

    return StepClock()


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from pipeline.core.config import load_recipe
    from pipeline.train import common, kd, sft, xtok_data, xtok_losses

    work = Path(tempfile.mkdtemp(prefix="bench-xtok-"))
    if args.tiny:
        data, student, teacher = tiny_setup(work)
    else:
        if not args.data:
            sys.exit("give --data (a filter output with top-k logprobs) or --tiny")
        data, student, teacher = args.data, resolve(args.student), resolve(args.teacher)
    import datasets

    from pipeline.train.common import load_training_set

    raw = load_training_set(data, "kd").select(range(min(args.examples, len(load_training_set(data, "kd")))))
    subset = work / "subset"
    raw.save_to_disk(str(subset))
    common_keys = {"student": student, "data": str(subset), "max_steps": args.steps, "learning_rate": 1e-5,
                   "batch_size": args.batch_size, "grad_accum": 1, "packing": False, "max_length": 1024,
                   "logging_steps": 1000, "save_steps": 100000, "progress": False, "precision": "fp32",
                   "lr_scheduler": "constant", "warmup": 0}

    def cfg(section: str, out: str, **extra):
        over = []
        for k, v in {**common_keys, **extra, "output": str(work / out)}.items():
            over += [f"--{section}.{k}", v if isinstance(v, str) else json.dumps(v)]
        return getattr(load_recipe(None, over), section)

    kd_cfg = cfg("kd", "kd", teacher=teacher, mode="offline", cross_tokenizer=args.loss)
    tok = common.load_tokenizer(kd_cfg, "kd")
    vocab = kd.check_vocabulary(kd_cfg, tok)
    if vocab[1] != "cross":
        sys.exit("teacher and student share a vocabulary: nothing cross-tokenizer to measure")
    pair = xtok_data.make_pair(tok, vocab[3], kd.preflight(tok, raw[0]["messages"]).stop_ids[0], kd_cfg)
    t = time.perf_counter()
    _, xt_stats = xtok_data.encode(raw, pair, kd_cfg)
    align_s = time.perf_counter() - t
    t = time.perf_counter()
    common.encode_dataset(raw, tok, cfg("sft", "sft-enc"))
    sft_encode_s = time.perf_counter() - t

    loss_time = []
    original = kd.cross_tokenizer_loss

    def timed_loss(*a, **k):
        start = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            loss_time.append(time.perf_counter() - start)

    kd.cross_tokenizer_loss = timed_loss
    clocks = {}
    for name in ("sft", "kd"):
        clock = step_clock()
        if name == "sft":
            sft.run(cfg("sft", "sft"), callbacks=[clock])
        else:
            kd.run(kd_cfg, callbacks=[clock])
        clocks[name] = clock.times[args.warmup:]
    kd.cross_tokenizer_loss = original
    step = {k: statistics.median(v) for k, v in clocks.items()}
    share = statistics.median(loss_time[args.warmup:]) / step["kd"]
    ratio = step["kd"] / step["sft"]
    figures = {"student": student, "teacher": teacher, "examples": len(raw), "batch_size": args.batch_size,
               "steps_timed": len(clocks["kd"]), "sft_step_s": round(step["sft"], 3), "kd_step_s": round(step["kd"], 3),
               "kd_over_sft": round(ratio, 3), "loss_share_of_kd_step": round(share, 3),
               "alignment_s": round(align_s, 2), "sft_tokenisation_s": round(sft_encode_s, 2),
               "alignment_coverage": xt_stats["alignment_coverage"], "spans": xt_stats["spans"],
               "split_spans": xt_stats["split_spans"], "loss": args.loss, "threads": args.threads}
    print(f"\ncross-tokenizer KD ({args.loss}) vs SFT, {len(raw)} examples, batches of {args.batch_size}, "
          f"{len(clocks['kd'])} timed steps, {args.threads} threads")
    print(f"  sft step {step['sft']:.2f} s   kd step {step['kd']:.2f} s   kd / sft = {ratio:.2f}x (goal <= {GOAL}x): "
          f"{'PASS' if ratio <= GOAL else 'ABOVE GOAL'}")
    print(f"  span loss (forward) {share:.1%} of a kd step")
    print(f"  alignment once: {align_s:.1f} s for {len(raw)} examples ({xt_stats['spans']} spans, "
          f"{xt_stats['split_spans']} split on a side, coverage {xt_stats['alignment_coverage']:.2%}); "
          f"sft's tokenisation {sft_encode_s:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
