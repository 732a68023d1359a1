"""What does logit distillation cost over plain SFT? Step time and peak memory of `distill sft`, `distill kd` offline
top-k and `distill kd` online on the same data and steps, and the storage cost of the stored top-k columns.

    .venv/bin/python bench/bench_kd.py              # 4-layer Qwen2, vocab 32768, 2 repeats, a few minutes on 2 cores
    .venv/bin/python bench/bench_kd.py --quick      # smoke run: 2 layers, vocab 4096, 1 repeat, about a minute
    .venv/bin/python bench/bench_kd.py --vocab 151936 --k 20 --json /tmp/kd.json

The three configs run the pipeline's own stages, each in its own subprocess (so ru_maxrss is that config's peak):

  sft      pipeline.train.sft.run(SFTConfig): TRL SFTTrainer, CE on the assistant tokens
  offline  pipeline.train.kd.run(KDConfig mode=offline): the student alone, loss against the stored top-k
           (tail=bucket, alpha=0.5, T=1, forward KL: the defaults)
  online   pipeline.train.kd.run(KDConfig mode=online): the teacher forward beside the student, full-vocabulary loss
  kd-ce    (info) the kd trainer with alpha=0: CE alone through the same code (student forward with the logits
           of the trained positions only, plain cross entropy); offline / kd-ce is what the KD term itself costs

Same model, data, packing (TRL bfd, rows of --max-length tokens), batch size, accumulation and optimizer. The data
are synthetic reasoning chats whose completion_token_ids are exactly the chat template's tokens of the assistant
turn, so sft, online (which re-tokenise the text) and offline (which reads the teacher's ids) train the same tokens;
top-k ids and logprobs come from a forward of the teacher over each example. The vocabulary: the tiny BPE tokenizer
(1024 tokens) padded with added tokens to --vocab, so the vocabulary projection and softmax are the size of a real
model's (32768 is Llama 2's; Qwen2.5's is 151936) while the text stays the same. The teacher is the student's size
unless --teacher-layers / --teacher-hidden say otherwise.

Step time: the wall time between consecutive optimizer steps (data loading and collation included), median over
the steps after --warmup; tokens/s over the same steps (real tokens, counted in the collator). Storage: bytes per
completion token of the topk_ids + topk_logprobs columns, in the arrow files of a save_to_disk dataset (what
distill filter writes), in parquet (what generate's shards are), and in memory (arrow buffers).
Exit status 0 when every run finished (a ratio above the 1.3x goal is printed as ABOVE GOAL, not an error).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOAL = 1.3  # offline top-k step time over sft step time
DISTURBED = 0.05  # a run is disturbed when other processes took more than this share of the machine's CPU
CONFIGS = ("sft", "offline", "online", "kd-ce")
FULL = {"examples": 96, "layers": 4, "hidden": 256, "vocab": 32768, "max_length": 512, "steps": 12, "repeats": 2}
QUICK = {"examples": 32, "layers": 2, "hidden": 128, "vocab": 4096, "max_length": 256, "steps": 6, "repeats": 1}
ANSWER_MEDIAN, ANSWER_SIGMA, ANSWER_MIN, ANSWER_MAX = 170, 0.8, 30, 400  # assistant turn tokens (log-normal)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    for key in FULL:
        p.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"(default {FULL[key]})")
    p.add_argument("--teacher-layers", type=int, help="teacher layers (default: the student's)")
    p.add_argument("--teacher-hidden", type=int, help="teacher hidden size (default: the student's)")
    p.add_argument("--k", type=int, default=20, help="stored top-k per token (default 20, vLLM's max_logprobs)")
    p.add_argument("--batch-size", type=int, default=1, help="packed rows per micro-batch (default 1)")
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per step (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1: on a 2-core machine "
                                                          "shared with other jobs two threads can be 10x slower)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write every figure and per-run data to this JSON file")
    p.add_argument("--workdir", help="keep model, data and run outputs here (default: a temp dir, removed)")
    p.add_argument("--verbose", action="store_true", help="show the workers' output")
    # worker mode (internal)
    p.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--teacher", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ------------------------------------------------------------------------------------------ helpers

def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --------------------------------------------------------------------------------------- model + data

WORDS = "the answer is step first then add subtract multiply divide total each apples books".split()


def build_model(path: Path, *, layers: int, hidden: int, vocab: int, seed: int) -> Path:
    """The tiny Qwen2 of pipeline.demo.tiny_model, its tokenizer padded with added tokens to `vocab` entries."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.demo.tiny_model import build_tiny_model

    build_tiny_model(path, seed=seed, vocab_size=1024, layers=layers, hidden=hidden)
    tok = AutoTokenizer.from_pretrained(path)
    if vocab > len(tok):
        tok.add_tokens([f"<unused_{i}>" for i in range(vocab - len(tok))])
        tok.save_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        model.save_pretrained(path)
    return path


def _sentence(rng: random.Random) -> str:
    a, b = rng.randint(1, 999), rng.randint(1, 999)
    return rng.choice([f"{rng.choice(WORDS)} {a} + {b} = {a + b}.",
                       f"so {' '.join(rng.choices(WORDS, k=rng.randint(3, 8)))} {a + b}.",
                       f"wait, check: {a} - {b} is {a - b}, then {rng.choice(WORDS)} {rng.choice(WORDS)}."])


def build_data(path: Path, teacher: Path, n: int, k: int, seed: int) -> dict:
    """Chats + the teacher's tokens of each assistant turn + its top-k there; saved like a filter output."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.train.templates import render

    tok = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        target = min(ANSWER_MAX, max(ANSWER_MIN, round(rng.lognormvariate(math.log(ANSWER_MEDIAN), ANSWER_SIGMA))))
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        parts = [f"first add {a} + {b} = {a + b}."]
        while len(tok(" ".join(parts), add_special_tokens=False)["input_ids"]) < target:
            parts.append(_sentence(rng))
        question = f"A shop has {a} apples and gets {b} more. " + " ".join(_sentence(rng) for _ in range(4))
        messages = [{"role": "user", "content": question},
                    {"role": "assistant", "content": f"<think>\n{' '.join(parts)}\n</think>\n\n\\boxed{{{a + b}}}"}]
        prompt, completion = render(tok, messages)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        c = tok(completion, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0, len(p) - 1: len(p) - 1 + len(c)]
        top = logits.float().log_softmax(-1).topk(k, dim=-1)
        rows.append({"messages": messages, "id": str(i), "sample": 0, "completion_tokens": len(c),
                     "completion_token_ids": c, "topk_ids": top.indices.tolist(),
                     "topk_logprobs": top.values.tolist()})
    features = datasets.Features({
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "id": datasets.Value("string"), "sample": datasets.Value("int64"), "completion_tokens": datasets.Value("int64"),
        "completion_token_ids": datasets.List(datasets.Value("int32")),
        "topk_ids": datasets.List(datasets.List(datasets.Value("int32"))),
        "topk_logprobs": datasets.List(datasets.List(datasets.Value("float32")))})
    ds = datasets.Dataset.from_list(rows, features=features)
    ds.save_to_disk(str(path))
    return storage_cost(ds, path.parent / "storage")


def storage_cost(ds, work: Path) -> dict:
    """Bytes per completion token of the top-k columns: arrow files (save_to_disk), parquet, in-memory arrow."""
    tokens = sum(ds["completion_tokens"])
    topk = ds.select_columns(["topk_ids", "topk_logprobs"])
    rest = ds.remove_columns(["topk_ids", "topk_logprobs"])
    out = {"tokens": tokens, "k": len(ds[0]["topk_ids"][0])}
    for name, part in (("topk", topk), ("rest", rest)):
        part.flatten_indices().save_to_disk(str(work / f"{name}-arrow"))
        part.to_parquet(str(work / f"{name}.parquet"))
        out[f"{name}_arrow_bytes"] = dir_bytes(work / f"{name}-arrow")
        out[f"{name}_parquet_bytes"] = (work / f"{name}.parquet").stat().st_size
        out[f"{name}_memory_bytes"] = part.data.nbytes
    for kind in ("arrow", "parquet", "memory"):
        out[f"topk_{kind}_bytes_per_token"] = out[f"topk_{kind}_bytes"] / tokens
        out[f"rest_{kind}_bytes_per_token"] = out[f"rest_{kind}_bytes"] / tokens
    return out


# -------------------------------------------------------------------------------------------- worker

def worker(args) -> None:
    """One training run of args.worker in this process; timing, tokens and peak memory to args.result."""
    import torch
    from transformers import TrainerCallback
    from trl.trainer import sft_trainer

    from pipeline.core.config import KDConfig, SFTConfig
    from pipeline.train import kd, sft

    torch.set_num_threads(args.threads)
    seen = [0]  # real tokens collated so far (both stages collate through TRL's language-modelling collator)
    collate = sft_trainer.DataCollatorForLanguageModeling.torch_call

    def counting_collate(self, examples):
        out = collate(self, examples)
        seen[0] += int(out["attention_mask"].sum()) if "attention_mask" in out else out["input_ids"].shape[1]
        return out

    sft_trainer.DataCollatorForLanguageModeling.torch_call = counting_collate
    clock = {"ends": [], "tokens": [], "busy0": None}

    class Clock(TrainerCallback):
        def on_train_begin(self, targs, state, control, **kw):
            clock.update(t0=time.perf_counter(), busy0=machine_busy_s(), cpu0=time.process_time(),
                         rss_before_train=maxrss_mib())

        def on_step_end(self, targs, state, control, **kw):
            clock["ends"].append(time.perf_counter())
            clock["tokens"].append(seen[0])

        def on_train_end(self, targs, state, control, **kw):
            wall = time.perf_counter() - clock["t0"]
            own = time.process_time() - clock["cpu0"]
            busy = machine_busy_s() - clock["busy0"]
            clock.update(wall_s=wall, other=max(0.0, (busy - own) / (wall * (os.cpu_count() or 1))))

    common = dict(student=args.model, output=args.out, data=args.data, max_length=args.max_length, packing=True,
                  max_steps=args.steps, learning_rate=1e-4, batch_size=args.batch_size, grad_accum=args.grad_accum,
                  seed=args.seed, save_steps=10**6, logging_steps=10**6, progress=False, overwrite=True,
                  precision="fp32", warmup=0)
    if args.worker == "sft":
        summary = sft.run(SFTConfig(**common), callbacks=[Clock()])
    elif args.worker == "kd-ce":
        summary = kd.run(KDConfig(**common, mode="offline", teacher=args.teacher, alpha=0.0), callbacks=[Clock()])
    else:
        summary = kd.run(KDConfig(**common, mode=args.worker, teacher=args.teacher), callbacks=[Clock()])
    ends, tokens = clock["ends"], clock["tokens"]
    w = min(args.warmup, len(ends) - 2)
    steps = [b - a for a, b in zip(ends[w:], ends[w + 1:])]
    result = {"config": args.worker, "step_s": statistics.median(steps), "steps_timed": len(steps),
              "tok_s": (tokens[-1] - tokens[w]) / (ends[-1] - ends[w]),
              "tok_per_step": (tokens[-1] - tokens[w]) / len(steps), "step_times": steps,
              "maxrss_mib": maxrss_mib(), "rss_before_train_mib": clock["rss_before_train"],
              "other": clock["other"], "threads": torch.get_num_threads(),
              "summary": {k: summary.get(k) for k in ("steps", "tokens_per_epoch", "examples_trained", "topk",
                                                      "final_loss", "final_kd", "final_ce", "vocab_check")}}
    Path(args.result).write_text(json.dumps(result))


def run_worker(args, config: str, work: Path, idx: int) -> dict:
    result = work / f"run-{config}-{idx}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", config, "--model", str(work / "student"),
           "--teacher", str(work / "teacher"), "--data", str(work / "data"), "--out", str(work / f"run-{config}-{idx}"),
           "--result", str(result), "--max-length", str(args.max_length), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--grad-accum", str(args.grad_accum), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--seed", str(args.seed)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, stdout=None if args.verbose else subprocess.PIPE,
                          stderr=None if args.verbose else subprocess.STDOUT)
    if proc.returncode != 0 or not result.exists():
        tail = "" if args.verbose else "\n".join((proc.stdout or "").splitlines()[-30:])
        raise RuntimeError(f"worker {config} failed (exit {proc.returncode}):\n{tail}")
    r = json.loads(result.read_text())
    shutil.rmtree(work / f"run-{config}-{idx}", ignore_errors=True)  # a finished output would be reused, not retrained
    r["disturbed"] = r["other"] > DISTURBED
    return r


# ---------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-kd-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        build_model(work / "student", layers=args.layers, hidden=args.hidden, vocab=args.vocab, seed=args.seed)
        build_model(work / "teacher", layers=args.teacher_layers or args.layers,
                    hidden=args.teacher_hidden or args.hidden, vocab=args.vocab, seed=args.seed)
        storage = build_data(work / "data", work / "teacher", args.examples, args.k, args.seed)
        print(f"setup {time.perf_counter() - t0:.0f} s: student {args.layers} layers x {args.hidden}, teacher "
              f"{args.teacher_layers or args.layers} x {args.teacher_hidden or args.hidden}, vocab {args.vocab}, "
              f"{args.examples} examples ({storage['tokens']} completion tokens), top-{args.k}; "
              f"rows of {args.max_length} tokens, {args.batch_size} x {args.grad_accum} rows per step, "
              f"{args.steps} steps ({args.warmup} untimed), {args.threads} torch thread(s)", flush=True)
        runs = {c: [] for c in CONFIGS}
        for rep in range(args.repeats):
            order = CONFIGS[rep % len(CONFIGS):] + CONFIGS[:rep % len(CONFIGS)]
            for config in order:
                r = run_worker(args, config, work, rep)
                runs[config].append(r)
                print(f"  {config:8s} run {rep}: step {r['step_s']:.3f} s  {r['tok_s']:8.0f} tok/s  peak RSS "
                      f"{r['maxrss_mib']:6.0f} MiB  other CPU {r['other']:4.0%}"
                      f"{'  DISTURBED' if r['disturbed'] else ''}", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    med = {c: {k: statistics.median(r[k] for r in runs[c]) for k in ("step_s", "tok_s", "tok_per_step", "maxrss_mib")}
           for c in CONFIGS}
    base = med["sft"]
    print(f"\n{'config':14s} {'step s':>8s} {'tok/step':>9s} {'tok/s':>8s} {'peak RSS MiB':>13s} {'step / sft':>11s} "
          f"{'RSS / sft':>10s}")
    print("-" * 79)
    names = {"sft": "sft", "offline": f"offline top-{args.k}", "online": "online", "kd-ce": "kd-ce (info)"}
    for c in CONFIGS:
        m = med[c]
        print(f"{names[c]:14s} {m['step_s']:8.3f} {m['tok_per_step']:9.0f} {m['tok_s']:8.0f} {m['maxrss_mib']:13.0f} "
              f"{m['step_s'] / base['step_s']:11.2f} {m['maxrss_mib'] / base['maxrss_mib']:10.2f}")
    ratio = med["offline"]["step_s"] / base["step_s"]
    print(f"\nstorage of the top-{storage['k']} columns (topk_ids int32 + topk_logprobs float32) per completion token: "
          f"arrow files {storage['topk_arrow_bytes_per_token']:.1f} B, parquet "
          f"{storage['topk_parquet_bytes_per_token']:.1f} B, in memory {storage['topk_memory_bytes_per_token']:.1f} B "
          f"(the other columns: arrow {storage['rest_arrow_bytes_per_token']:.1f} B/token)")
    disturbed = sum(r["disturbed"] for rs in runs.values() for r in rs)
    print(f"offline top-{args.k} / sft step time = {ratio:.2f}x (goal <= {GOAL}x): "
          f"{'PASS' if ratio <= GOAL else 'ABOVE GOAL'}; online / sft = {med['online']['step_s'] / base['step_s']:.2f}x; "
          f"the KD term itself: offline / kd-ce = {med['offline']['step_s'] / med['kd-ce']['step_s']:.2f}x, "
          f"online / kd-ce = {med['online']['step_s'] / med['kd-ce']['step_s']:.2f}x"
          + (f"\nwarning: {disturbed} run(s) DISTURBED by other processes; rerun on a quiet machine" if disturbed else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": str(date.today()), "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                   "torch": torch.__version__},
            "args": {k: v for k, v in vars(args).items() if k not in ("worker", "model", "teacher", "data", "out",
                                                                      "result")},
            "storage": storage, "median": med, "offline_over_sft": ratio, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
