"""Does padding-free packing speed up `distill sft`? Tokens/s with packing against plain padded batches.

    .venv/bin/python bench/bench_sft.py              # 4-layer Qwen2, 3 repeats of each config, a few minutes on 2 cores
    .venv/bin/python bench/bench_sft.py --quick      # smoke run: smaller model and data, 1 repeat, under a minute
    .venv/bin/python bench/bench_sft.py --max-length 1024 --json /tmp/sft.json   # shorter packed rows, B = 3
    .venv/bin/python bench/bench_sft.py --wait-quiet 300 --retry-disturbed 3   # on a machine shared with others

Both configs run the pipeline's own `pipeline.train.sft.run(SFTConfig)` (TRL SFTTrainer over the pre-tokenised
input_ids + labels) for one epoch over the same seeded chat dataset, so they train the same real tokens:

  packed  `packing: true`: TRL padding-free best-fit packing (bfd), rows of up to --max-length tokens, batch_size 1
  padded  `packing: false`: plain right-padded batches of B examples; B is chosen so that a padded batch holds
          about as many real tokens as a packed row (round(max_length / mean example length)), unless given

Each run is its own subprocess (`--worker packed|padded`), so its peak RSS (ru_maxrss) is its own. tokens/s is
the real (non-pad) tokens of the epoch (`tokens_per_epoch` of the run's summary.json) over the trainer.train()
span, timed by a callback from on_train_begin to on_train_end (summary.json's `train_seconds`, rounded to 0.1 s,
also counts the trainer's set-up inside train(): about 0.3 s more). Repeats alternate the order of the configs; the table
shows medians. The worker also counts every batch the collator builds (rows, tensor slots, real tokens), which
gives the padding share and checks that both configs saw the same tokens, and the CPU other processes took
during training: a run where they took more than 5% of the machine is marked DISTURBED and left out of the
medians (while each config keeps an undisturbed run). On 2 cores a disturbed run is often 2 to 5 times slower
(torch's two OpenMP threads wait on each other when one loses its core), so use --wait-quiet and
--retry-disturbed on a shared machine. A sanity line checks that a packed row's loss (sdpa attention,
position_ids, no flash-attn) equals the token-weighted mean of its examples' losses computed one by one.

Exit status: 0 when every run finished and the packing check passed (a ratio under the 1.5x goal is printed
as BELOW GOAL, not an error), 1 otherwise.
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

GOAL = 1.5  # packed tokens/s over padded tokens/s
DISTURBED = 0.05  # a run is "disturbed" when other processes took more than this share of the machine's CPU
CHECK_TOL = 1e-4

# assistant turn lengths in tokens: log-normal (median 170, sigma 0.8, the long tail of reasoning traces), cut to
# [30, 600]; user turns 45..110 tokens (about 60..130 with the chat template)
ANSWER_MEDIAN, ANSWER_SIGMA, ANSWER_MIN, ANSWER_MAX = 170, 0.8, 30, 600
PROMPT_MIN, PROMPT_MAX = 45, 110

FULL = {"examples": 96, "layers": 4, "hidden": 256, "vocab": 1024, "max_length": 2048, "repeats": 3}
QUICK = {"examples": 32, "layers": 2, "hidden": 128, "vocab": 512, "max_length": 1024, "repeats": 1}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    p.add_argument("--repeats", type=int, help=f"runs of each config (default {FULL['repeats']})")
    p.add_argument("--examples", type=int, help=f"training examples (default {FULL['examples']})")
    p.add_argument("--layers", type=int, help=f"Qwen2 layers (default {FULL['layers']})")
    p.add_argument("--hidden", type=int, help=f"hidden size, a multiple of 32 (default {FULL['hidden']})")
    p.add_argument("--vocab", type=int, help=f"tokenizer vocabulary (default {FULL['vocab']})")
    p.add_argument("--max-length", type=int, help=f"tokens per packed row, and max_length of both (default "
                                                  f"{FULL['max_length']})")
    p.add_argument("--padded-batch-size", type=int, help="examples per padded batch (default: round(max_length / "
                                                         "mean example length))")
    p.add_argument("--seed", type=int, default=0, help="data, model and training seed (default 0)")
    p.add_argument("--wait-quiet", type=float, default=0, help="before each run, wait up to this many seconds "
                                                               "for the machine to be under 10%% busy for 5 s "
                                                               "(default 0: no wait)")
    p.add_argument("--retry-disturbed", type=int, default=0, help="rerun a DISTURBED run up to this many times "
                                                                  "(default 0); the discarded runs are listed")
    p.add_argument("--skip-check", action="store_true", help="skip the packed-loss sanity check")
    p.add_argument("--json", help="also write the figures and per-run data to this JSON file")
    p.add_argument("--workdir", help="keep model, data and run outputs here (default: a temp dir, removed)")
    p.add_argument("--verbose", action="store_true", help="show the workers' output")
    # internal: one training run in this process
    p.add_argument("--worker", choices=["packed", "padded"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
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


def wait_quiet(limit_s: float, busy_max: float = 0.10, quiet_s: int = 5) -> float:
    """Wait (up to limit_s) until the machine was under busy_max busy for quiet_s seconds in a row; the busy share
    of the last second."""
    share, streak, t_end = 1.0, 0, time.monotonic() + limit_s
    while True:
        b0 = machine_busy_s()
        time.sleep(1.0)
        share = (machine_busy_s() - b0) / (os.cpu_count() or 1)
        streak = streak + 1 if share < busy_max else 0
        if streak >= quiet_s or time.monotonic() >= t_end:
            return share


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def pct(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# --------------------------------------------------------------------------------------------- data

WORDS = "the answer is step first then add subtract multiply divide total each apples books".split()


def _sentence(rng: random.Random) -> str:
    a, b = rng.randint(1, 999), rng.randint(1, 999)
    op, val = rng.choice([("+", a + b), ("-", a - b), ("*", a * b)])
    return rng.choice([
        f"{rng.choice(WORDS)} {a} {op} {b} = {val}.",
        f"so {' '.join(rng.choices(WORDS, k=rng.randint(3, 8)))} {val}.",
        f"wait, check: {a} {op} {b} is {val}, then {rng.choice(WORDS)} {rng.choice(WORDS)}.",
    ])


def make_rows(n: int, seed: int, tokenizer) -> list[dict]:
    """n chat examples (user problem, assistant <think> reasoning + boxed answer) with the target length spread."""
    rng = random.Random(seed)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def grow(target: int, first: str) -> list[str]:
        parts, tokens = [first], count(first)
        while tokens < target:
            s = _sentence(rng)
            parts.append(s)
            tokens += count(" " + s)
        return parts

    rows = []
    for i in range(n):
        answer_target = min(ANSWER_MAX, max(ANSWER_MIN, round(rng.lognormvariate(math.log(ANSWER_MEDIAN),
                                                                                 ANSWER_SIGMA))))
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        prompt = " ".join(grow(rng.randint(PROMPT_MIN, PROMPT_MAX) - 31,
                               f"A shop has {a} {rng.choice(['apples', 'books'])}.")) + \
            f" Each day it adds {b} more. What is the total?"
        tail = f"\n</think>\n\nThe answer is \\boxed{{{a + b}}}."
        reasoning = " ".join(grow(answer_target - count(tail) - 2, f"first add {a} + {b} = {a + b}."))
        rows.append({"id": str(i), "messages": [{"role": "user", "content": prompt},
                                                {"role": "assistant", "content": f"<think>\n{reasoning}{tail}"}]})
    return rows


# ------------------------------------------------------------------------------------------- worker

def worker(args) -> None:
    """One sft.run in this process; writes its summary, batch counts, timing and memory to args.result."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import TrainerCallback
    from trl.trainer import sft_trainer

    from pipeline.core.config import SFTConfig
    from pipeline.train import sft

    batches = []  # (examples or rows, tensor slots, real tokens, sequences) per batch the collator builds
    collate = sft_trainer.DataCollatorForLanguageModeling.torch_call

    def counting_collate(self, examples):
        out = collate(self, examples)
        real = (int(out["attention_mask"].sum()) if "attention_mask" in out
                else sum(len(e["input_ids"]) for e in examples))
        seqs = sum(len(e["seq_lengths"]) for e in examples) if "seq_lengths" in examples[0] else len(examples)
        batches.append((len(examples), out["input_ids"].numel(), real, seqs))
        return out

    sft_trainer.DataCollatorForLanguageModeling.torch_call = counting_collate

    span = {}

    class Span(TrainerCallback):
        def on_train_begin(self, targs, state, control, model=None, **kw):
            span.update(t0=time.perf_counter(), busy0=machine_busy_s(), cpu0=time.process_time(),
                        maxrss_begin=maxrss_mib(), rss_begin=rss_mib(),
                        attn=getattr(model.config, "_attn_implementation", None))

        def on_train_end(self, targs, state, control, **kw):
            wall = time.perf_counter() - span["t0"]
            own = time.process_time() - span["cpu0"]
            busy = machine_busy_s() - span["busy0"]
            span.update(wall_s=wall, own_cpu_s=own, other=max(0.0, (busy - own) / (wall * (os.cpu_count() or 1))))

    packed = args.worker == "packed"
    cfg = SFTConfig(student=args.model, output=args.out, data=args.data, max_length=args.max_length, packing=packed,
                    epochs=1.0, max_steps=-1, learning_rate=1e-4, batch_size=args.batch_size, grad_accum=1,
                    seed=args.seed, save_steps=10**6, logging_steps=10**6, progress=False, overwrite=True,
                    precision="fp32")
    summary = sft.run(cfg, callbacks=[Span()])
    result = {"config": args.worker, "batch_size": args.batch_size, "summary": summary, "span": span,
              "batches": batches, "maxrss_mib": maxrss_mib(), "torch_threads": torch.get_num_threads()}
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------- packing check

def packing_check(model_dir: Path, data_dir: Path, max_length: int) -> dict:
    """One bfd-packed row through TRL's padding-free collator and the model as SFTTrainer.compute_loss calls it
    (every collator key, use_cache=False; sdpa, no flash-attn), against the same examples run one by one: the
    row's loss must equal the token-weighted mean of theirs, and its logits theirs. Also the same row with the
    model's default use_cache=True, where transformers skips the packed-sequence mask (negative control)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from pipeline.train.templates import encode

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()
    rows = datasets.load_from_disk(str(data_dir))
    enc = [encode(tok, rows[i]["messages"]) for i in range(min(len(rows), 24))]
    ds = datasets.Dataset.from_dict({"input_ids": [e.input_ids for e in enc], "labels": [e.labels for e in enc]})
    packed_rows = pack_dataset(ds, max_length, "bfd")
    row = max(packed_rows, key=lambda r: len(r["seq_lengths"]))  # the row with the most examples
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)([row])
    with torch.no_grad():
        out = model(**batch, use_cache=False)
        crossed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        total, n_tok, start, logit_diff, crossed_diff = 0.0, 0, 0, 0.0, 0.0
        for n in row["seq_lengths"]:
            ids = torch.tensor([row["input_ids"][start:start + n]])
            labels = torch.tensor([row["labels"][start:start + n]])
            alone = model(input_ids=ids, labels=labels, use_cache=False)
            k = int((labels[:, 1:] != -100).sum())
            total += alone.loss.item() * k
            n_tok += k
            logit_diff = max(logit_diff, (out.logits[0, start:start + n] - alone.logits[0]).abs().max().item())
            crossed_diff = max(crossed_diff, (crossed[start:start + n] - alone.logits[0]).abs().max().item())
            start += n
    separate = total / n_tok
    diff = abs(out.loss.item() - separate)
    return {"examples": len(row["seq_lengths"]), "row_tokens": len(row["input_ids"]), "loss_tokens": n_tok,
            "packed_loss": out.loss.item(), "separate_loss": separate, "abs_diff": diff,
            "logits_max_abs_diff": logit_diff, "use_cache_true_logits_max_abs_diff": crossed_diff,
            "ok": diff <= CHECK_TOL and logit_diff <= CHECK_TOL * 100, "attn": model.config._attn_implementation}


# --------------------------------------------------------------------------------------------- main

def run_worker(args, config: str, model_dir: Path, data_dir: Path, batch_size: int, work: Path, idx: int) -> dict:
    out, result = work / f"run-{config}-{idx}", work / f"run-{config}-{idx}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", config, "--model", str(model_dir),
           "--data", str(data_dir), "--out", str(out), "--batch-size", str(batch_size),
           "--max-length", str(args.max_length), "--seed", str(args.seed), "--result", str(result)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    result.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True,
                          stdout=None if args.verbose else subprocess.PIPE,
                          stderr=None if args.verbose else subprocess.STDOUT)
    if proc.returncode != 0 or not result.exists():
        tail = "" if args.verbose else "\n".join((proc.stdout or "").splitlines()[-30:])
        raise RuntimeError(f"worker {config} failed (exit {proc.returncode}):\n{tail}")
    r = json.loads(result.read_text())
    r["process_s"] = time.perf_counter() - t0
    s, b = r["summary"], r["batches"]
    r["tokens"] = s["tokens_per_epoch"]
    r["train_seconds"] = r["span"]["wall_s"]  # summary.json's train_seconds is rounded to 0.1 s
    r["tok_s"] = s["tokens_per_epoch"] / r["train_seconds"]
    r["seen_tokens"] = sum(x[2] for x in b)
    r["slots"] = sum(x[1] for x in b)
    r["pad_share"] = 1 - r["seen_tokens"] / r["slots"]
    r["steps"] = s["steps"]
    r["seqs"] = sum(x[3] for x in b)
    r["disturbed"] = r["span"]["other"] > DISTURBED
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return r


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from pipeline.demo.tiny_model import build_tiny_model
    from pipeline.train.templates import IGNORE, encode

    datasets.disable_progress_bars()
    t_start = time.perf_counter()
    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tmp := tempfile.mkdtemp(prefix="bench-sft-"))
    args.keep_outputs = bool(args.workdir)
    try:
        model_dir = build_tiny_model(work / "model", seed=args.seed, vocab_size=args.vocab, layers=args.layers,
                                     hidden=args.hidden)
        tok = AutoTokenizer.from_pretrained(model_dir)
        rows = make_rows(args.examples, args.seed, tok)
        data_dir = work / "data"
        shutil.rmtree(data_dir, ignore_errors=True)
        datasets.Dataset.from_list(rows).save_to_disk(str(data_dir))

        encoded = [encode(tok, r["messages"]) for r in rows]
        lengths = [len(e.input_ids) for e in encoded]
        answers = [sum(1 for t in e.labels if t != IGNORE) for e in encoded]
        prompts = [e.prompt_len for e in encoded]
        mean_len = statistics.mean(lengths)
        padded_bs = args.padded_batch_size or max(1, round(args.max_length / mean_len))
        mcfg = AutoConfig.from_pretrained(model_dir)
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(mcfg).parameters())

        print(f"model : random Qwen2, {args.layers} layers, hidden {args.hidden}, {mcfg.num_attention_heads} heads "
              f"x 32, intermediate {mcfg.intermediate_size}, vocab {mcfg.vocab_size}, {params / 1e6:.2f} M params, "
              f"fp32, torch {torch.__version__} ({torch.get_num_threads()} threads)")
        print(f"data  : {args.examples} chat examples (seed {args.seed}), {sum(lengths)} tokens per epoch; example "
              f"tokens p10/p50/p90/max {pct(lengths, .1)}/{pct(lengths, .5)}/{pct(lengths, .9)}/{max(lengths)}, "
              f"mean {mean_len:.0f}")
        print(f"        assistant (loss) tokens p10/p50/p90/max {pct(answers, .1)}/{pct(answers, .5)}/"
              f"{pct(answers, .9)}/{max(answers)} (log-normal, median {ANSWER_MEDIAN}, sigma {ANSWER_SIGMA}, cut to "
              f"[{ANSWER_MIN}, {ANSWER_MAX}]); prompt tokens {min(prompts)}..{max(prompts)}")
        print(f"runs  : packed = packing true (bfd, padding-free), batch_size 1 x max_length {args.max_length}; "
              f"padded = packing false, batch_size {padded_bs}; one epoch, grad_accum 1, {args.repeats} repeat(s) "
              f"each, order alternating")

        check = None
        if not args.skip_check:
            check = packing_check(model_dir, data_dir, args.max_length)
            print(f"check : one packed row ({check['examples']} examples, {check['row_tokens']} tokens, "
                  f"{check['attn']}, use_cache=False as SFTTrainer passes): loss {check['packed_loss']:.6f}, "
                  f"examples alone {check['separate_loss']:.6f} (token-weighted), |diff| {check['abs_diff']:.1e}, "
                  f"logits max |diff| {check['logits_max_abs_diff']:.1e}: {'OK' if check['ok'] else 'MISMATCH'}")
            print(f"        control: the same row with the model's default use_cache=True (transformers then skips "
                  f"the packed-sequence mask) has logits max |diff| {check['use_cache_true_logits_max_abs_diff']:.2f}")
        print(flush=True)

        runs: dict[str, list[dict]] = {"packed": [], "padded": []}
        discarded: list[dict] = []
        for rep in range(args.repeats):
            order = ["packed", "padded"] if rep % 2 == 0 else ["padded", "packed"]
            for config in order:
                for attempt in range(args.retry_disturbed + 1):
                    if args.wait_quiet > 0:
                        share = wait_quiet(args.wait_quiet)
                        if share >= 0.10:
                            print(f"  (machine still {share:.0%} busy after waiting {args.wait_quiet:.0f} s)")
                    r = run_worker(args, config, model_dir, data_dir, 1 if config == "packed" else padded_bs, work,
                                   rep)
                    print(f"  run {rep + 1} {config:6s}: {r['train_seconds']:6.1f} s  {r['tok_s']:8.1f} tok/s  "
                          f"{r['steps']:4d} steps  {r['tokens'] / r['span']['own_cpu_s']:7.1f} tok/CPU-s  "
                          f"peak RSS {r['maxrss_mib']:6.0f} MiB  other load {r['span']['other']:4.0%}"
                          f"{'  DISTURBED' if r['disturbed'] else ''}", flush=True)
                    if not r["disturbed"] or attempt == args.retry_disturbed:
                        break
                    discarded.append(r)
                    print("    (discarded, rerunning)")
                runs[config].append(r)

        # medians over the undisturbed runs while both configs have one (over all runs otherwise)
        clean = all(any(not r["disturbed"] for r in rs) for rs in runs.values())
        used = {c: [r for r in rs if not (clean and r["disturbed"])] for c, rs in runs.items()}

        def med(config, key, pool=used):
            return statistics.median(r[key] for r in pool[config])

        print()
        header = (f"{'config':8s} {'batch':>9s} {'steps':>5s} {'real tok/step':>13s} {'pad':>6s} {'train s':>8s} "
                  f"{'tok/s':>8s} {'peak RSS':>9s} {'+in train':>9s}")
        print(header)
        print("-" * len(header))
        table = {}
        for config in ("packed", "padded"):
            r0 = runs[config][0]
            batch = f"1 x {args.max_length}" if config == "packed" else f"{padded_bs} ex"
            grow = statistics.median(r["maxrss_mib"] - r["span"]["maxrss_begin"] for r in used[config])
            table[config] = {"batch": batch, "steps": r0["steps"],
                             "real_tokens_per_step": r0["seen_tokens"] / r0["steps"],
                             "pad_share": r0["pad_share"], "train_seconds": med(config, "train_seconds"),
                             "tok_s": med(config, "tok_s"), "peak_rss_mib": med(config, "maxrss_mib"),
                             "rss_growth_in_training_mib": grow, "examples_per_row": r0["seqs"] / len(r0["batches"])}
            t = table[config]
            print(f"{config:8s} {batch:>9s} {t['steps']:5d} {t['real_tokens_per_step']:13.0f} {t['pad_share']:6.1%} "
                  f"{t['train_seconds']:8.1f} {t['tok_s']:8.1f} {t['peak_rss_mib']:6.0f} MiB {grow:5.0f} MiB")
        ratio = table["packed"]["tok_s"] / table["padded"]["tok_s"]
        ratio_all = med("packed", "tok_s", runs) / med("padded", "tok_s", runs)
        per_rep = [p["tok_s"] / q["tok_s"] for p, q in zip(runs["packed"], runs["padded"])]
        rep_note = [f"{x:.2f}" + ("*" if p["disturbed"] or q["disturbed"] else "")
                    for x, p, q in zip(per_rep, runs["packed"], runs["padded"])]
        n_dist = sum(r["disturbed"] for rs in runs.values() for r in rs)
        same = {r["seen_tokens"] for rs in runs.values() for r in rs} == {sum(lengths)}
        print()
        print(f"ratio : packed / padded tokens/s = {ratio:.2f}x (goal >= {GOAL}x)"
              f"{'' if ratio >= GOAL else '  <- BELOW GOAL'}; per repeat " + ", ".join(rep_note)
              + (f" (* disturbed); medians leave the {n_dist} disturbed run(s) out, over all runs "
                 f"{ratio_all:.2f}x" if clean and n_dist else ""))
        print(f"tokens: {'same' if same else 'DIFFERENT'} real tokens trained by every run ({sum(lengths)}); "
              f"packed rows hold {table['packed']['examples_per_row']:.1f} examples on average; padded batches are "
              f"{table['padded']['pad_share']:.0%} padding; peak RSS includes the worker's imports and "
              f"tokenisation, '+in train' is its growth during trainer.train()")
        attn = {r["span"]["attn"] for rs in runs.values() for r in rs}
        print(f"attn  : {', '.join(sorted(map(str, attn)))}; {time.perf_counter() - t_start:.0f} s in all")
        if discarded:
            print(f"reruns: {len(discarded)} DISTURBED run(s) discarded and rerun (--retry-disturbed)")
        disturbed = sum(r["disturbed"] for rs in runs.values() for r in rs)
        if disturbed:
            print(f"WARNING: {disturbed} run(s) DISTURBED (other processes took more than {DISTURBED:.0%} of the "
                  f"machine's CPU during training): the figures are noisy; rerun on a quiet machine "
                  f"(--wait-quiet 300 --retry-disturbed 3 helps).")
        ok = same and (check is None or check["ok"])
        if args.json:
            Path(args.json).write_text(json.dumps({
                "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                "settings": {k: getattr(args, k) for k in ("examples", "layers", "hidden", "vocab", "max_length",
                                                           "repeats", "seed")} | {"padded_batch_size": padded_bs},
                "data": {"tokens_per_epoch": sum(lengths), "lengths": lengths, "assistant_tokens": answers},
                "check": check, "table": table, "ratio": ratio, "ratio_all_runs": ratio_all,
                "medians_leave_out_disturbed": clean and bool(n_dist), "per_repeat_ratios": per_rep,
                "runs": {c: [{k: v for k, v in r.items() if k != "batches"} for r in rs] for c, rs in runs.items()},
                "discarded_disturbed_runs": [{k: v for k, v in r.items() if k != "batches"} for r in discarded],
            }, indent=2, default=str))
        if not ok:
            print("FAIL: " + ("the packed loss does not match the per-example losses" if check and not check["ok"]
                              else "the runs did not train the same tokens"))
        return 0 if ok else 1
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
