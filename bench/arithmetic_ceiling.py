"""How far can a student's arithmetic carry it? From an evaluate output on the synthetic held-out set.

Every synthetic problem records the arithmetic that solves it (`expression`, e.g. "34 - 5 * 4"). Given a model's
measured share of written steps that hold, per operation (evaluate's written-arithmetic table), a model that always
chose the right steps would still answer a problem right only when each of its steps holds: the product of its
per-operation step accuracies over the operations of the expression. The mean over the problems is the pass@1 this
model could reach with a perfect method and its own arithmetic: its ceiling, unless training improves the
arithmetic itself. Printed beside the actual pass@1, and pass@1 on one-step and two-step problems.

    .venv/bin/python bench/arithmetic_ceiling.py runs/demo/eval                  # every model
    .venv/bin/python bench/arithmetic_ceiling.py runs/demo/eval --model student-after --benchmark synth-heldout
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.evaluate.failures import OPERATIONS, step_accuracy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("eval_dir", help="an evaluate output folder (its samples/ are read)")
    ap.add_argument("--problems", default=str(ROOT / "data/demo/synth/heldout.jsonl"),
                    help="the synthetic problems evaluated (JSONL with id, expression, steps)")
    ap.add_argument("--benchmark", default="synth-heldout", help="the benchmark name in the evaluate output")
    ap.add_argument("--model", action="append", help="model name(s) to report (default: every model)")
    args = ap.parse_args()

    import datasets

    problems = {p["id"]: p for p in map(json.loads, Path(args.problems).read_text().splitlines())}
    samples = datasets.load_from_disk(str(Path(args.eval_dir) / "samples"))
    by_model = defaultdict(list)
    for r in samples:
        if r["benchmark"] == args.benchmark and (not args.model or r["model"] in args.model):
            by_model[r["model"]].append(r)
    if not by_model:
        sys.exit(f"no samples of benchmark {args.benchmark!r} in {args.eval_dir}/samples; give --benchmark/--model")
    print(f"{'model':16s} {'pass@1':>7s} {'ceiling':>8s}  {'1-step':>9s} {'2-step':>9s}  "
          + "  ".join(f"{op:>13s}" for op in OPERATIONS))
    for model, recs in by_model.items():
        missing = [r["id"] for r in recs if r["id"] not in problems]
        if missing:
            sys.exit(f"{len(missing)} samples of {model} are not in {args.problems} (e.g. {missing[0]}); give --problems")
        steps = step_accuracy(recs)
        acc = {op: right / written if written else 1.0 for op, (right, written) in steps.items()}
        ceiling, by_steps = 0.0, defaultdict(lambda: [0, 0])
        for r in recs:
            p = problems[r["id"]]
            ceiling += math.prod(acc[op] for op in re.findall(r"[-+*/]", p["expression"]))
            by_steps[p["steps"]][0] += bool(r["correct"])
            by_steps[p["steps"]][1] += 1
        n = len(recs)
        cells = [f"{100 * a / w:4.0f}% ({a}/{w})" if w else "-" for a, w in steps.values()]
        print(f"{model:16s} {100 * sum(bool(r['correct']) for r in recs) / n:6.1f}% {100 * ceiling / n:7.1f}%  "
              + " ".join(f"{a:>4d}/{w:<4d}" for a, w in (by_steps[1], by_steps[2])) + "  "
              + "  ".join(f"{c:>13s}" for c in cells))
    print("ceiling: mean over problems of the product of the model's written-step accuracy for each operation of the "
          "problem's expression (an operation it never wrote counts as always right)")


if __name__ == "__main__":
    main()
