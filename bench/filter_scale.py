"""`distill filter` at scale: rows/s and peak memory of the real stage on an OpenR1-Math-220k-style input.

    .venv/bin/python bench/filter_scale.py                          # N = 10k, 50k, 100k problems x 2 generations
    .venv/bin/python bench/filter_scale.py --n 2000 5000            # smaller, while developing
    .venv/bin/python bench/filter_scale.py --compare 0c08a0d        # also the code of that commit, in the same run
    .venv/bin/python bench/filter_scale.py --n 20000 --format jsonl --workers 2 --keep

Input (seeded, written once per (N, seed, format) under --workdir and reused): the columns of the dataset card
open-r1/OpenR1-Math-220k ("default" config): problem, solution, answer, problem_type, question_type, source,
uuid, is_reasoning_complete, generations (2 per problem: `<think>...</think>` reasoning, then a final text with
a \\boxed{} answer), correctness_math_verify, correctness_llama (null), finish_reasons, correctness_count,
messages (user problem + the first generation, as on the card). Lengths: reasoning a few hundred to a few
thousand characters (log-normal, median ~1,400), problems 100-600. Answers: integers, decimals, fractions,
roots, pi, tuples, intervals, text choices, expressions; about 70% of generations correct (half of them in
an equivalent form: 0.5 for \\frac{1}{2}, \\dfrac, x = 3 for 3), 20% wrong, 3% with no boxed answer, 4%
truncated (unclosed think, finish_reasons "length", is_reasoning_complete false), 4% exact duplicates of
the first generation, 2% near duplicates (a few words changed), 1% degenerate loops.

Each run is `distill filter --filter.input FILE --filter.output DIR --filter.progress false
--filter.overwrite true` as a subprocess (the real CLI, the real verifier pool, default workers: all cores).
Measured: wall time of the subprocess (start-up included), trace rows (2 N) / s; memory by polling /proc
every 0.1 s over the whole process tree (and the CPU seconds of every process of it, from /proc/PID/stat:
the verifier's workers are not children that getrusage sees; rows per CPU-second of the tree is the figure
that other load on the machine disturbs least) (the stage, the verifier's template and its workers): the peak of
the stage process's own RSS and its anonymous part (RSS less the pages of memory-mapped files, which
the kernel can drop and read again), and the peak of the tree's summed PSS (forked workers share pages; PSS counts
each shared page once across them); `getrusage(RUSAGE_CHILDREN).ru_maxrss` is printed too (the largest
single process reaped). With --compare REV, the code of REV (git archive into a temp folder, run with
PYTHONPATH pointing at it) runs on the same inputs, alternating with the working tree, so the ratios are
measured together. Both outputs' datasets must be equal (the rows kept and their contents), else the script
says so and exits 1.
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
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORDS = ("we", "the", "let", "so", "then", "now", "number", "sum", "product", "equation", "value", "term", "side",
         "triangle", "circle", "angle", "root", "factor", "divide", "multiply", "both", "sides", "by", "gives",
         "which", "means", "that", "is", "are", "of", "and", "for", "case", "check", "wait", "hmm", "maybe", "again",
         "substitute", "into", "simplify", "expand", "solve", "for", "x", "y", "n", "k", "integer", "prime", "even",
         "odd", "greater", "less", "than", "equal", "to", "area", "length", "total", "first", "second", "next",
         "step", "condition", "since", "therefore", "hence", "thus", "if", "not", "possible", "consider", "modulo",
         "remainder", "square", "cube", "function", "sequence", "limit", "derivative", "minimum", "maximum")
OPENERS = ("Okay, so I need to figure out", "Alright, let's see.", "Let me start by reading the problem again.",
           "Hmm, let me think about this.", "First, I should understand what is being asked.")
PROBLEM_STARTS = ("Find all real numbers", "Let $n$ be a positive integer such that", "In triangle $ABC$,",
                  "Compute the value of", "How many integers", "A sequence is defined by", "Determine the largest",
                  "Solve the equation", "The sum of", "Let $f(x)$ be a function with")


def answer_forms(rng: random.Random) -> tuple[str, str, str]:
    """(gold, an equivalent form, a wrong answer)."""
    a, b = rng.randint(2, 999), rng.randint(2, 60)
    kind = rng.random()
    if kind < 0.40:
        return str(a), rng.choice([str(a), f"{a}", f"x = {a}", f"{a}.0"]), str(a + rng.choice([-2, -1, 1, 3, 10]))
    if kind < 0.50:
        v = f"{a}.{b % 10}{rng.randint(1, 9)}"
        return v, v, f"{a}.{(b + 3) % 10}"
    if kind < 0.62:
        b = b if math.gcd(a, b) == 1 else b + 1 if math.gcd(a, b + 1) == 1 else 1
        if b == 1:
            return str(a), str(a), str(a + 1)
        return (f"\\frac{{{a}}}{{{b}}}", rng.choice([f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}", f"\\frac{{{a}}}{{{b}}}"]),
                f"\\frac{{{a + 1}}}{{{b}}}")
    if kind < 0.70:
        s = rng.choice([2, 3, 5, 6, 7])
        return f"{b}\\sqrt{{{s}}}", f"{b} \\sqrt{{{s}}}", f"{b + 1}\\sqrt{{{s}}}"
    if kind < 0.76:
        return f"\\frac{{{b}\\pi}}{{3}}", f"\\frac{{{b}}}{{3}}\\pi", f"\\frac{{{b}\\pi}}{{6}}"
    if kind < 0.84:
        return f"({b}, {a})", f"({b},{a})", f"({a}, {b})"
    if kind < 0.89:
        return f"[{b}, {a})", f"[{b},{a})", f"({b}, {a}]"
    if kind < 0.94:
        c = rng.choice("ABCDE")
        return f"\\text{{({c})}}", f"\\text{{({c})}}", f"\\text{{({'ABCDE'[('ABCDE'.index(c) + 1) % 5]})}}"
    return f"x^2+{b}x+{a}", f"x^{{2}} + {b}x + {a}", f"x^2+{b}x-{a}"


def sentence(rng: random.Random) -> str:
    k = rng.randint(6, 18)
    words = [rng.choice(WORDS) if rng.random() > 0.15 else str(rng.randint(0, 999)) for _ in range(k)]
    if rng.random() < 0.25:
        words.append(f"${rng.randint(1, 99)} \\cdot {rng.randint(1, 99)} = {rng.randint(1, 9999)}$")
    return " ".join(words).capitalize() + rng.choice((".", ".", ".", "?", ":"))


def reasoning_text(rng: random.Random, chars: int) -> str:
    parts = [rng.choice(OPENERS)]
    size = len(parts[0])
    while size < chars:
        s = sentence(rng)
        parts.append(s)
        size += len(s) + 1
        if rng.random() < 0.12:
            parts.append("\n\n")
    return " ".join(parts).replace(" \n\n ", "\n\n")


def final_text(rng: random.Random, shown: str | None, reasoning: str) -> str:
    summary = " ".join(reasoning.split()[:rng.randint(20, 80)])
    if shown is None:
        return f"{summary}\n\nSo that is what the problem gives."
    return f"{summary}\n\nTherefore, the answer is:\n\n**Final Answer**\n\\[\n\\boxed{{{shown}}}\n\\]"


def make_row(rng: random.Random, i: int) -> dict:
    gold, same, wrong = answer_forms(rng)
    problem = rng.choice(PROBLEM_STARTS) + " " + " ".join(sentence(rng) for _ in range(rng.randint(2, 8)))
    gens, labels, finish, complete = [], [], [], []
    for j in range(2):
        u = rng.random()
        if j == 1 and u < 0.04:  # an exact duplicate of the first generation
            gens.append(gens[0]), labels.append(labels[0]), finish.append(finish[0]), complete.append(complete[0])
            continue
        if j == 1 and u < 0.06:  # a near duplicate: a few words changed
            words = gens[0].split(" ")
            for _ in range(3):
                words[rng.randrange(len(words))] = rng.choice(WORDS)
            gens.append(" ".join(words)), labels.append(labels[0]), finish.append(finish[0])
            complete.append(complete[0])
            continue
        chars = int(min(6000, max(300, rng.lognormvariate(math.log(1400), 0.7))))
        reasoning = reasoning_text(rng, chars)
        v = rng.random()
        if v < 0.04:  # truncated: the think never closes
            gens.append(f"<think>\n{reasoning}"), labels.append(False), finish.append("length")
            complete.append(False)
            continue
        if v < 0.05:  # a degenerate loop
            loop = " ".join(reasoning.split()[:30])
            reasoning = " ".join([loop] * (chars // max(1, len(loop)) + 2))
        shown = None if v < 0.08 else same if v < 0.78 else wrong
        gens.append(f"<think>\n{reasoning}\n</think>\n\n{final_text(rng, shown, reasoning)}")
        labels.append(shown is not None and shown == same), finish.append("stop"), complete.append(True)
    return {"problem": problem, "solution": f"{' '.join(sentence(rng) for _ in range(4))} \\boxed{{{gold}}}",
            "answer": gold, "problem_type": rng.choice(["Algebra", "Geometry", "Number Theory", "Combinatorics"]),
            "question_type": "math-word-problem", "source": rng.choice(["olympiads", "cn_contest", "aops_forum"]),
            "uuid": f"{rng.getrandbits(64):016x}-{i:08d}", "is_reasoning_complete": complete, "generations": gens,
            "correctness_math_verify": labels, "correctness_llama": None, "finish_reasons": finish,
            "correctness_count": sum(labels),
            "messages": [{"role": "user", "content": problem}, {"role": "assistant", "content": gens[0]}]}


def build_input(n: int, seed: int, fmt: str, workdir: Path) -> Path:
    path = workdir / f"openr1_n{n}_s{seed}.{fmt}"
    if path.exists():
        return path
    rng = random.Random(seed)
    tmp = path.with_suffix(path.suffix + ".tmp")
    t0 = time.monotonic()
    if fmt == "jsonl":
        with open(tmp, "w") as f:
            for i in range(n):
                f.write(json.dumps(make_row(rng, i)) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer = None
        for start in range(0, n, 2000):
            table = pa.Table.from_pylist([make_row(rng, i) for i in range(start, min(n, start + 2000))])
            if writer is None:
                schema = table.schema.set(table.schema.get_field_index("correctness_llama"),
                                          pa.field("correctness_llama", pa.list_(pa.bool_())))
                schema = schema.set(schema.get_field_index("finish_reasons"),
                                    pa.field("finish_reasons", pa.list_(pa.string())))
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table.cast(writer.schema))
        writer.close()
    tmp.rename(path)
    print(f"  built {path.name}: {path.stat().st_size / 2**20:.0f} MiB in {time.monotonic() - t0:.0f} s", flush=True)
    return path


# ------------------------------------------------------------------------------------------------ measuring

def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _mem_kb(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, anonymous) of one process in KiB; zeros when it is gone."""
    rss = pss = anon = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Anonymous:"):
                    anon = int(line.split()[1])
    except OSError:
        pass
    return rss, pss, anon


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one process so far (None: gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_filter(code_root: Path, src: Path, out: Path, workers: int | None) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main())", "filter",
           "--filter.input", str(src), "--filter.output", str(out), "--filter.progress", "false",
           "--filter.overwrite", "true"]
    if workers:
        cmd += ["--filter.verify.workers", str(workers)]
    env = dict(os.environ, PYTHONPATH=str(code_root), TQDM_DISABLE="1", HF_DATASETS_OFFLINE="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=code_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_main = peak_tree = peak_anon = peak_anon_tree = procs = 0
    cpu: dict[int, float] = {}  # the last CPU seconds seen of every process of the tree
    while proc.poll() is None:
        pids = _tree(proc.pid)
        mems = [_mem_kb(p) for p in pids]
        peak_main = max(peak_main, mems[0][0])
        peak_tree = max(peak_tree, sum(m[1] for m in mems))
        peak_anon = max(peak_anon, mems[0][2])
        peak_anon_tree = max(peak_anon_tree, sum(m[2] for m in mems))
        procs = max(procs, len(pids))
        for p in pids:
            c = _cpu_s(p)
            if c is not None:
                cpu[p] = c
        time.sleep(0.1)
    wall = time.monotonic() - t0
    log = proc.stdout.read()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"distill filter failed ({proc.returncode}) with {code_root}:\n{log[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    return {"wall_s": wall, "rows_in": report["rows_in"], "rows_kept": report["rows_kept"],
            "peak_rss_main_mb": peak_main / 1024, "peak_pss_tree_mb": peak_tree / 1024,
            "peak_anon_main_mb": peak_anon / 1024, "peak_anon_tree_mb": peak_anon_tree / 1024, "max_procs": procs,
            "ru_maxrss_mb": after.ru_maxrss / 1024, "tree_cpu_s": sum(cpu.values()),
            "cpu_s": (after.ru_utime + after.ru_stime)
            - (before.ru_utime + before.ru_stime), "rejected": report["rejected"]}


def same_output(a: Path, b: Path) -> str | None:
    import datasets

    da, db = datasets.load_from_disk(str(a / "dataset")), datasets.load_from_disk(str(b / "dataset"))
    if da.column_names != db.column_names:
        return f"columns differ: {da.column_names} vs {db.column_names}"
    if len(da) != len(db):
        return f"{len(da)} vs {len(db)} rows kept"
    for col in da.column_names:
        if da[col] != db[col]:
            return f"column {col} differs"
    ra, rb = (json.loads((p / "report.json").read_text()) for p in (a, b))
    for key in ("rows_in", "rows_kept", "rejected", "failing_checks", "verify_reasons", "pass_rates",
                "dataset_verdicts", "kept_tokens"):
        if ra.get(key) != rb.get(key):
            return f"report {key} differs"
    return None


def export(rev: str, into: Path) -> Path:
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "pipeline"], check=True,
                          capture_output=True).stdout
    dest = into / f"rev-{rev}"
    dest.mkdir(parents=True, exist_ok=True)
    import io

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest)
    return dest


def cpu_name() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return f"{name}, {os.cpu_count()} cores, {'avx512' if 'avx512f' in info else 'no avx512'}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 50_000, 100_000], help="problems (x 2 generations)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    ap.add_argument("--compare", metavar="REV", help="also run the code of this git revision (the 'before')")
    ap.add_argument("--workers", type=int, help="filter.verify.workers (default: the stage's default, all cores)")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "filter_scale"))
    ap.add_argument("--json", help="write all figures here")
    ap.add_argument("--keep", action="store_true", help="keep the outputs under --workdir")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    codes = [("after" if args.compare else "current", ROOT)]
    if args.compare:
        codes.insert(0, (f"before ({args.compare})", export(args.compare, work)))
    print(f"cpu: {cpu_name()}; python {platform.python_version()}", flush=True)
    results = []
    ok = True
    for k, n in enumerate(args.n):
        src = build_input(n, args.seed, args.format, work)
        outs = {}
        order = codes if k % 2 == 0 else codes[::-1]  # alternate which side goes first
        for label, code in order:
            out = work / f"out-{n}-{label.split()[0]}"
            r = run_filter(code, src, out, args.workers)
            r.update(n=n, code=label, rows_per_s=r["rows_in"] / r["wall_s"])
            results.append(r)
            outs[label] = out
            print(f"  N={n:>7} {label:<22} {r['rows_in']:>7} rows in {r['wall_s']:7.1f} s = {r['rows_per_s']:7.0f} "
                  f"rows/s  peak RSS stage {r['peak_rss_main_mb']:6.0f} MiB, tree PSS {r['peak_pss_tree_mb']:6.0f} "
                  f"MiB ({r['max_procs']} procs), anon stage {r['peak_anon_main_mb']:.0f} MiB, ru_maxrss "
                  f"{r['ru_maxrss_mb']:6.0f} MiB, cpu {r['cpu_s']:.0f} s (tree {r['tree_cpu_s']:.0f} s), "
                  f"kept {r['rows_kept']}", flush=True)
        if len(outs) == 2:
            diff = same_output(*outs.values())
            if diff:
                print(f"  N={n}: OUTPUTS DIFFER: {diff}")
                ok = False
            else:
                print(f"  N={n}: outputs identical (dataset and report counts)")
        if not args.keep:
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)
    print()
    print(f"{'N problems':>10} {'rows':>7} {'code':<22} {'seconds':>8} {'rows/s':>8} {'rows/cpu-s':>10} {'RSS MiB':>8} "
          f"{'anon MiB':>9} {'tree PSS':>9} {'tree anon':>9}")
    for r in results:
        print(f"{r['n']:>10} {r['rows_in']:>7} {r['code']:<22} {r['wall_s']:8.1f} {r['rows_per_s']:8.0f} "
              f"{r['rows_in'] / max(r['tree_cpu_s'], 1e-9):10.0f} "
              f"{r['peak_rss_main_mb']:8.0f} {r['peak_anon_main_mb']:9.0f} {r['peak_pss_tree_mb']:9.0f} "
              f"{r['peak_anon_tree_mb']:9.0f}")
    if args.compare:
        for n in args.n:
            b, a = (next(r for r in results if r["n"] == n and r["code"].startswith(k)) for k in ("before", "after"))
            print(f"N={n}: after/before rows/s {a['rows_per_s'] / b['rows_per_s']:.2f}x, tree CPU s "
                  f"{b['tree_cpu_s']:.0f} -> {a['tree_cpu_s']:.0f}, peak RSS "
                  f"{b['peak_rss_main_mb']:.0f} -> {a['peak_rss_main_mb']:.0f} MiB (anonymous "
                  f"{b['peak_anon_main_mb']:.0f} -> {a['peak_anon_main_mb']:.0f}), tree PSS "
                  f"{b['peak_pss_tree_mb']:.0f} -> {a['peak_pss_tree_mb']:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "results": results}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
