"""Where does an SFT step's time go on CPU? `distill sft` step time with TRL's fused LM-head loss against the project's
loss (the model's own CE from the trained positions' logits), each in fp32 and in bf16 autocast, on the same batches.

    .venv/bin/python bench/bench_sft_step.py --data runs/demo/train           # the CPU demo's student and kept traces
    .venv/bin/python bench/bench_sft_step.py --data DIR --student MODEL --steps 8 --batch-size 2 --max-length 512

Every config is its own subprocess (one at a time) running `pipeline.train.sft.run` for --steps optimizer steps on the
first --examples examples (packed rows of --max-length tokens, --batch-size rows a step, the demo's layout); the
first --warmup steps are not timed; step time is the median wall time between optimizer steps. `trl` swaps the stage's
trainer for TRL's own SFTTrainer (its fused head: chunked log-probs + entropy + top-1 for every trained token);
`ours` is the stage as shipped. Both compute the same loss (tests/test_sft.py checks value and gradients).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [("trl", "fp32"), ("trl", "bf16"), ("ours", "fp32"), ("ours", "bf16")]

WORKER = r"""
import json, sys, time
sys.path.insert(0, {root!r})
from pipeline.core.config import load_recipe
from pipeline.train import sft
from transformers import TrainerCallback
loss, precision, args = {loss!r}, {precision!r}, {args!r}
if loss == "trl":
    from trl import SFTTrainer
    sft.trainer_class = lambda: SFTTrainer
times, last = [], [None]
class Clock(TrainerCallback):
    def on_step_begin(self, a, s, c, **k):
        last[0] = last[0] or time.perf_counter()
    def on_step_end(self, a, s, c, **k):
        now = time.perf_counter(); times.append(now - last[0]); last[0] = now
summary = sft.run(load_recipe(None, args + ["--sft.precision", precision]).sft, callbacks=[Clock()])
print("RESULT " + json.dumps({{"times": times, "tokens_per_epoch": summary["tokens_per_epoch"]}}))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a filter output (or any training set distill sft reads)")
    p.add_argument("--student", default="demo:smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args(argv)
    student = a.student
    if student.startswith("demo:"):
        sys.path.insert(0, str(ROOT))
        from pipeline.demo.models import resolve_model

        student = resolve_model(student)
    results = {}
    for loss, precision in CONFIGS:
        out = tempfile.mkdtemp(prefix=f"bench-sft-{loss}-{precision}-")
        args = ["--sft.student", student, "--sft.data", a.data, "--sft.output", out, "--sft.max_steps", str(a.steps),
                "--sft.learning_rate", "1e-4", "--sft.batch_size", str(a.batch_size), "--sft.grad_accum", "1",
                "--sft.max_length", str(a.max_length), "--sft.packing", "true", "--sft.progress", "false",
                "--sft.save_steps", "100000", "--sft.logging_steps", "100000"]
        code = WORKER.format(root=str(ROOT), loss=loss, precision=precision, args=args)
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{loss}/{precision} failed:\n{proc.stderr[-3000:]}")
        times = json.loads(line[7:])["times"][a.warmup:]
        results[f"{loss}/{precision}"] = round(statistics.median(times), 3)
        print(f"{loss:5s} {precision}  median step {results[f'{loss}/{precision}']:.2f} s  "
              f"({', '.join(f'{t:.2f}' for t in times)})", flush=True)
    base = results["trl/fp32"]
    print("\nratios to TRL's loss in fp32 (the demo recipe before): " +
          ", ".join(f"{k} {base / v:.2f}x" for k, v in results.items()))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
