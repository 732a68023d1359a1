"""What makes the CPU demo's student learn: one knob at a time from the demo recipe as it was (bench/sweep_base.yaml).

The teacher's traces are generated once, 320 problems x 4 samples (the largest setting any row uses); each row
reads the first N problems and their first n samples, as if generate had been asked for just those, then runs
filter -> sft -> evaluate with its knob changed and reports the student's held-out pass@1 with its 95%
interval, its failure breakdown and the time of its stages. Stage outputs are shared between rows whose
upstream settings agree (a row that only changes the evaluation dtype reuses the base row's model), and a
rerun skips what is finished, so the sweep can be stopped and continued.

    .venv/bin/python bench/sweep_demo.py --list                 # the rows
    .venv/bin/python bench/sweep_demo.py                        # every row (hours on 2 cores)
    .venv/bin/python bench/sweep_demo.py --rows base,epochs-3   # some rows
    .venv/bin/python bench/sweep_demo.py --table                # the table of the rows measured so far

Outputs under --out (default runs/sweep): traces/ (the one generation), f-*/ s-*/ e-*/ (filter, sft, evaluate
outputs named by a hash of their settings), sweep.jsonl (one line per measured row) and sweep.md (the table).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "bench" / "sweep_base.yaml"  # recipes/demo-cpu.yaml before the sweep (the demo now takes its findings)
PROBLEMS, SAMPLES = 320, 4  # generated once (the largest setting any row uses); rows take a prefix of each

# name -> (what changes, overrides). Overrides: {"problems": N, "samples": n, "filter": {...}, "sft": {...},
# "eval": {...}}; a row reads the traces of the first N problems and their first n samples, as if generate had
# been asked for exactly those. The base row is the demo recipe as it stood before the sweep.
BASE_ROW = {"problems": 160, "samples": 2}
FP32 = {"precision": "fp32"}  # the base row's SFT as it was; from train-bf16 on, rows train in bf16 autocast
BF16 = {"precision": "bf16"}
ROWS: dict[str, tuple[str, dict]] = {
    "base": ("the demo recipe before the sweep: 160 problems x 2 samples, every correct one kept, 2 epochs, "
             "lr 1e-4, packed rows of 2 x 512 tokens, fp32", {"sft": FP32}),
    "eval-fp32": ("base, the student evaluated in float32 (auto is bfloat16 on this avx512_bf16 CPU)",
                  {"sft": FP32, "eval": {"dtype": "float32"}}),
    "lr-2e-4": ("base with learning rate 2e-4 (fp32)", {"sft": {**FP32, "learning_rate": 2.0e-4}}),
    "train-bf16": ("base in bf16 autocast: the base of every row below", {"sft": BF16}),
    "epochs-3": ("3 epochs", {"sft": {**BF16, "epochs": 3}}),
    "problems-320": ("twice the problems (320 x 2 samples: twice the generation)", {"problems": 320, "sft": BF16}),
    "problems-320-n1": ("320 problems x 1 sample (the base row's generation budget)",
                        {"problems": 320, "samples": 1, "sft": BF16}),
    "problems-320-e1": ("twice the problems (320 x 2 samples), 1 epoch: the SFT steps of the base row",
                        {"problems": 320, "sft": {**BF16, "epochs": 1}}),
    "samples-4": ("4 samples per problem, every correct one kept (twice the generation)", {"samples": 4, "sft": BF16}),
    "padded": ("padded batches of 4 examples instead of packed rows of 2 x 512 tokens",
               {"sft": {**BF16, "packing": False, "batch_size": 4}}),
    "epochs-5": ("5 epochs", {"sft": {**BF16, "epochs": 5}}),
    "lr-5e-5": ("learning rate 5e-5", {"sft": {**BF16, "learning_rate": 5.0e-5}}),
    "lr-2e-4-bf16": ("learning rate 2e-4", {"sft": {**BF16, "learning_rate": 2.0e-4}}),
    "samples-1": ("1 sample per problem (half the generation)", {"samples": 1, "sft": BF16}),
    "problems-80": ("half the problems (80 x 2 samples)", {"problems": 80, "sft": BF16}),
    "samples-4-keep-2": ("4 samples per problem, the 2 shortest correct kept",
                         {"samples": 4, "filter": {"max_per_problem": 2}, "sft": BF16}),
    "random": ("4 samples per problem, 2 correct kept at random (not the shortest)",
               {"samples": 4, "filter": {"max_per_problem": 2, "selection": "random"}, "sft": BF16}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names (default: all)")
    ap.add_argument("--out", default="runs/sweep", help="sweep folder")
    ap.add_argument("--heldout", type=int, default=100, help="held-out synthetic problems evaluated")
    ap.add_argument("--list", action="store_true", help="print the rows and exit")
    ap.add_argument("--table", action="store_true", help="print the table of measured rows and exit")
    args = ap.parse_args()
    out = Path(args.out)
    if args.list:
        for name, (what, over) in ROWS.items():
            print(f"{name:18s} {what}   {json.dumps(over)}")
        return
    if not args.table:
        names = [r.strip() for r in args.rows.split(",") if r.strip()]
        unknown = [n for n in names if n not in ROWS]
        if unknown:
            sys.exit(f"unknown rows {unknown}; --list shows them")
        base = yaml.safe_load(BASE.read_text())
        traces, gen_s = generate_once(base, out)
        for name in names:
            row = run_row(name, base, out, traces, gen_s, args.heldout)
            with open(out / "sweep.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"[sweep] {name}: pass@1 {row['pass@1']:.1%} ({row['ci95_low']:.1%}-{row['ci95_high']:.1%}), "
                  f"sft {row['sft_min']:.1f} min", flush=True)
    table = markdown(latest_rows(out))
    (out / "sweep.md").write_text(table + "\n")
    print(table)


def distill(*args: str) -> float:
    """Run one `distill` command; its wall time in seconds. A failing stage stops the sweep with its output."""
    t = time.time()
    subprocess.run([sys.executable, "-m", "pipeline.cli", *args], check=True, cwd=ROOT)
    return time.time() - t


def timed_once(folder: Path, *args: str) -> float:
    """A stage run through `distill`, its seconds remembered beside its output so that a row reusing the output
    reports the time it took to make, not the skip."""
    clock = Path(str(folder) + ".seconds")
    seconds = distill(*args)
    if not clock.exists():
        clock.write_text(f"{seconds:.1f}")
    return float(clock.read_text())


def write_recipe(recipe: dict, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return str(path)


def tag(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


def generate_once(base: dict, out: Path) -> tuple[Path, float]:
    recipe = copy.deepcopy(base)
    recipe["generate"]["problems"]["limit"] = PROBLEMS
    recipe["generate"]["sampling"]["n"] = SAMPLES
    recipe["generate"]["output"] = str(out / "traces")
    seconds = timed_once(out / "traces", "generate", write_recipe(recipe, out / "recipes" / "generate.yaml"))
    return out / "traces", seconds


def subset(traces: Path, problems: int, samples: int, out: Path) -> Path:
    """The traces of the first `problems` problems and their first `samples` samples, as a dataset folder the filter
    reads: a sample of what generate writes when asked for exactly that (samples are drawn independently)."""
    import datasets

    folder = out / f"traces-{problems}x{samples}"
    if not folder.exists():
        ds = datasets.load_from_disk(str(traces / "dataset"))
        keep = set(list(dict.fromkeys(ds["id"]))[:problems])
        ds.filter(lambda r: r["id"] in keep and r["sample"] < samples).save_to_disk(str(folder))
    return folder


def run_row(name: str, base: dict, out: Path, traces: Path, gen_s: float, heldout: int) -> dict:
    what, over = ROWS[name]
    recipe = copy.deepcopy(base)
    problems, samples = over.get("problems", BASE_ROW["problems"]), over.get("samples", BASE_ROW["samples"])
    f_over = {"max_per_problem": samples, **over.get("filter", {})}  # every correct sample unless the row caps it
    s_over = over.get("sft", {})
    e_over = over.get("eval", {})
    data_key = (problems, samples, f_over)
    f_dir, s_dir = out / f"f-{tag(data_key)}", out / f"s-{tag(data_key, s_over)}"
    e_dir = out / f"e-{tag(data_key, s_over, e_over, heldout)}"

    recipe["generate"]["output"] = str(traces)
    recipe["filter"].update(f_over, output=str(f_dir), input=str(subset(traces, problems, samples, out)))
    recipe["sft"].update(s_over, output=str(s_dir), data=str(f_dir))
    student = {"name": "student-after", "model": str(s_dir / "model"), "backend": "vllm", "dtype": "auto",
               "max_model_len": 1024, "enforce_eager": True, **e_over}
    heldout_bench = next(b for b in base["evaluate"]["benchmarks"] if b["name"] == "synth-heldout")
    recipe["evaluate"].update(models=[student], benchmarks=[{**heldout_bench, "limit": heldout}], output=str(e_dir))
    path = write_recipe(recipe, out / "recipes" / f"{name}.yaml")

    filter_s = timed_once(f_dir, "filter", path)
    sft_s = timed_once(s_dir, "sft", path)
    eval_s = timed_once(e_dir, "evaluate", path)
    sft = json.loads((s_dir / "summary.json").read_text())
    res = json.loads((e_dir / "results.json").read_text())["results"]["student-after"]["synth-heldout"]
    share = problems * samples / (PROBLEMS * SAMPLES)  # of the one generation: what generate would have cost
    return {"row": name, "what": what, "overrides": over, "pass@1": res["pass@1"], "ci95_low": res["ci95_low"],
            "ci95_high": res["ci95_high"], "failures": res["failures"], "n_problems": res["n_problems"],
            "kept": sft["examples_trained"], "steps": sft["steps"], "final_loss": sft["final_loss"],
            "tokens_per_second": sft["tokens_per_second"], "generate_min": round(gen_s * share / 60, 1),
            "filter_s": round(filter_s), "sft_min": round(sft_s / 60, 1), "eval_min": round(eval_s / 60, 1)}


def latest_rows(out: Path) -> list[dict]:
    path = out / "sweep.jsonl"
    rows = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        r = json.loads(line)
        rows[r["row"]] = r  # the latest measurement of each row
    return [rows[n] for n in ROWS if n in rows]


def markdown(rows: list[dict]) -> str:
    head = ("| row | what changes | kept traces | sft steps | held-out pass@1 (95% CI) | arithmetic | method | "
            "truncated+loop | no answer | generate* min | sft min | eval min |")
    lines = [head, "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        f, n = r["failures"], sum(r["failures"].values())
        pct = lambda k: f"{100 * f[k] / n:.0f}%"
        lines.append(f"| {r['row']} | {r['what']} | {r['kept']} | {r['steps']} | {100 * r['pass@1']:.1f} "
                     f"({100 * r['ci95_low']:.1f}-{100 * r['ci95_high']:.1f}) | {pct('arithmetic')} | {pct('method')} | "
                     f"{100 * (f['truncated'] + f['loop']) / n:.0f}% | {pct('no answer')} | {r['generate_min']} | "
                     f"{r['sft_min']} | {r['eval_min']} |")
    lines.append("\n*generate: the share of the one 4-samples-per-problem generation that the row's setting needs "
                 "(its problems x samples kept per problem).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
