"""Does the `generate` stage slow the teacher down? Pipeline throughput against a bare vLLM call.

    .venv/bin/python bench/bench_generate.py                     # tiny local model, both comparisons
    .venv/bin/python bench/bench_generate.py --logprobs 5        # the same with top-k logprobs stored
    .venv/bin/python bench/bench_generate.py --model /path/to/model --dtype bfloat16 --max-tokens 256

Two comparisons, same model, same prompts (gsm8k problems rendered by the pipeline's own prompt code),
same sampling (n, temperature, top_p, max_tokens, logprobs):

  vllm    (a) `pipeline.generate.run(cfg)` with backend `vllm`, end to end (problems -> shards -> dataset)
          (b) bare `llm.generate(prompts, SamplingParams(n=N, ...))` on the same `vllm.LLM` engine
          (b') bare `llm.generate` of the exact request set the pipeline sends (N copies of each prompt, n=1)
  openai  (c) `pipeline.generate.run(cfg)` with backend `openai` against a local vLLM server
          (d) a bare asyncio + `openai.AsyncOpenAI` loop, same server, same requests, same concurrency

Engine start is excluded from every figure: one `vllm.LLM` is built with the pipeline's own
`engine_kwargs` and handed to the pipeline through `make_teacher` (the only thing patched), and one
server is started once and shared by (c) and (d). Each repeat alternates the order of the paths; the
table gives medians. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.95
DISTURBED = 0.05
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="local model folder (default: build the tiny random Qwen2 in a temp dir)")
    p.add_argument("--dtype", default="float32", help="engine dtype (float32 suits the tiny model on CPU)")
    p.add_argument("--source", default="gsm8k", help="problem source for load_problems (default gsm8k)")
    p.add_argument("--prompts", type=int, default=64, help="problems (default 64)")
    p.add_argument("--n", type=int, default=4, help="samples per problem (default 4)")
    p.add_argument("--max-tokens", type=int, default=64, help="max tokens per completion (default 64)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--logprobs", type=int, default=0, help="top-k logprobs per position (0: off)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight for (c) and (d) (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each path (default 3)")
    p.add_argument("--shard-size", type=int, default=64, help="pipeline rows per shard (default 64, its default)")
    p.add_argument("--no-progress", action="store_true", help="pipeline runs without its tqdm bar")
    p.add_argument("--compile", action="store_true", help="compiled mode (default: enforce_eager, starts faster)")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--kv-cache-gb", type=int, default=2)
    p.add_argument("--skip-vllm", action="store_true", help="skip (a)/(b)")
    p.add_argument("--skip-openai", action="store_true", help="skip (c)/(d)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--workdir", help="where outputs go (default: a temp dir, removed at the end)")
    p.add_argument("--verbose", action="store_true", help="show the pipeline's own summaries and vLLM info logs")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ helpers

class ForeignCPU:
    """CPU seconds spent by processes outside this benchmark's own process tree (another engineer's tests,
    say) while a run was timed: system-wide busy time minus what this process and its children used."""

    def __init__(self):
        import psutil

        self.psutil = psutil
        self.start = self._sample()

    def _own(self) -> float:
        me = self.psutil.Process()
        total = 0.0
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                pass
        return total

    def _sample(self) -> tuple[float, float]:
        t = self.psutil.cpu_times()
        busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        return busy, self._own()

    def seconds(self) -> float:
        busy, own = self._sample()
        return max(0.0, (busy - self.start[0]) - (own - self.start[1]))


def measured(fn):
    """Call fn() -> Run and attach the foreign CPU seconds seen meanwhile."""
    probe = ForeignCPU()
    run = fn()
    run.foreign_cpu_s = probe.seconds()
    return run


class Run:
    """One timed run of one path."""
    foreign_cpu_s = 0.0

    def __init__(self, samples: int, tokens: int, seconds: float, **extra):
        self.samples, self.tokens, self.seconds, self.extra = samples, tokens, seconds, extra

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def disturbed(self) -> bool:
        # more than 5% of the machine's CPU went to other processes while this run was timed
        return self.foreign_cpu_s > DISTURBED * self.seconds * (os.cpu_count() or 1)


def median_row(label: str, runs: list[Run], note: str = "") -> dict:
    i = sorted(range(len(runs)), key=lambda j: runs[j].tok_s)[len(runs) // 2]  # the median run by tok/s
    return {"path": label, "samples": runs[i].samples, "tokens": runs[i].tokens,
            "seconds": statistics.median(r.seconds for r in runs),
            "tok_s": statistics.median(r.tok_s for r in runs),
            "samples_s": statistics.median(r.samples / r.seconds for r in runs),
            "runs_tok_s": [round(r.tok_s, 1) for r in runs],
            "runs_foreign_cpu_s": [round(r.foreign_cpu_s, 2) for r in runs],
            "disturbed_runs": sum(r.disturbed for r in runs), "note": note}


def make_cfg(args, model: str, output: Path, backend: str, base_urls=()):
    from pipeline.config import GenerateConfig, ProblemsConfig, SamplingConfig, TeacherConfig

    teacher = TeacherConfig(model=model, backend=backend, base_urls=list(base_urls), dtype=args.dtype,
                            enforce_eager=not args.compile, max_model_len=args.max_model_len,
                            kv_cache_gb=args.kv_cache_gb, concurrency=args.concurrency)
    sampling = SamplingConfig(n=args.n, temperature=args.temperature, top_p=args.top_p,
                              max_tokens=args.max_tokens, seed=0, logprobs=args.logprobs)
    return GenerateConfig(problems=ProblemsConfig(source=args.source, limit=args.prompts), teacher=teacher,
                          output=str(output), sampling=sampling, shard_size=args.shard_size,
                          progress=not args.no_progress)


def prompt_messages(cfg) -> list[list[dict]]:
    """The chat messages of each problem, built by the pipeline's own code (one per problem)."""
    from pipeline import generate
    from pipeline.data import load_problems

    p = cfg.problems
    problems = load_problems(p.source, split=p.split, columns=p.columns, limit=p.limit, shuffle_seed=p.shuffle_seed)
    return [generate.build_messages(row["problem"], cfg) for row in problems]


@contextlib.contextmanager
def timed_teacher(make):
    """Patch `pipeline.generate.make_teacher` so that (1) it returns `make(...)` and (2) the time spent in
    `teacher.generate` is recorded. Yields a dict that receives `gen_s`."""
    from pipeline import generate

    box: dict = {}
    original = generate.make_teacher

    def patched(*a, **kw):
        teacher = make(original, *a, **kw)
        inner = teacher.generate

        def timed_generate(requests, on_result):
            t0 = time.perf_counter()
            try:
                return inner(requests, on_result)
            finally:
                box["gen_s"] = time.perf_counter() - t0

        teacher.generate = timed_generate
        return teacher

    generate.make_teacher = patched
    try:
        yield box
    finally:
        generate.make_teacher = original


def run_pipeline(cfg, make, verbose: bool) -> Run:
    """`generate.run(cfg)` end to end, returns a Run timed on `teacher.generate` with the e2e wall as extra."""
    from pipeline import generate

    shutil.rmtree(cfg.output, ignore_errors=True)
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with timed_teacher(make) as box, sink:
        t0 = time.perf_counter()
        summary = generate.run(cfg)
        wall = time.perf_counter() - t0
    if summary["errors"] or summary["generated_this_run"] != summary["rows"]:
        raise RuntimeError(f"pipeline run was not a clean full run: {summary}")
    shutil.rmtree(cfg.output, ignore_errors=True)
    return Run(summary["generated_this_run"], summary["tokens_this_run"], box["gen_s"], e2e_s=round(wall, 4),
               pipeline_reported_tok_s=summary["tokens_per_s_this_run"])


def whole_run(r: Run) -> Run:
    """The same pipeline run, timed on the whole generate.run instead of teacher.generate."""
    w = Run(r.samples, r.tokens, r.extra["e2e_s"])
    w.foreign_cpu_s = r.foreign_cpu_s
    return w


def alternate(repeats: int, paths: dict) -> dict[str, list[Run]]:
    """Run every path `repeats` times, rotating the order each repeat (ABC, BCA, CAB ...)."""
    names = list(paths)
    out: dict[str, list[Run]] = {k: [] for k in names}
    for i in range(repeats):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            r = measured(paths[name])
            out[name].append(r)
            print(f"  repeat {i + 1}/{repeats}  {name:<28} {r.samples:>5} samples {r.tokens:>7} tok "
                  f"{r.seconds:7.2f} s  {r.tok_s:8.1f} tok/s  foreign CPU {r.foreign_cpu_s:5.2f} s" +
                  ("  DISTURBED" if r.disturbed else "") +
                  (f"   (generate.run wall {r.extra['e2e_s']:.2f} s)" if "e2e_s" in r.extra else ""), flush=True)
    return out


# ------------------------------------------------------------------------------------ vllm (a)/(b)

def bench_vllm(args, model: str, work: Path) -> list[dict]:
    from pipeline.teachers.prompts import render_prompt_ids
    from pipeline.teachers.vllm_backend import VLLMTeacher, engine_kwargs, set_cpu_env
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    cfg = make_cfg(args, model, work / "vllm-out", "vllm")
    messages = prompt_messages(cfg)
    set_cpu_env(cfg.teacher)
    kwargs = engine_kwargs(cfg.teacher, cfg.sampling)
    print(f"\n[vllm] engine: LLM({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})", flush=True)
    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    print(f"[vllm] engine started in {time.perf_counter() - t0:.1f} s (excluded from every figure)", flush=True)
    tokenizer = llm.get_tokenizer()
    s = cfg.sampling

    def shared_teacher(original, tcfg, sampling, **kw):
        # the pipeline's own VLLMTeacher, minus the engine construction: it gets the engine built above
        t = object.__new__(VLLMTeacher)
        t.cfg, t.sampling, t.name = tcfg, sampling, tcfg.model
        t.llm, t.tokenizer = llm, llm.get_tokenizer()
        t.close = lambda: None  # keep the shared engine alive for the next run
        return t

    def bare(msgs, n_per_prompt: int, copies: int) -> Run:
        t0 = time.perf_counter()  # rendering counts, as it does inside the pipeline
        prompts = [TokensPrompt(prompt_token_ids=render_prompt_ids(tokenizer, m)) for m in msgs]
        prompts = [p for p in prompts for _ in range(copies)]
        params = SamplingParams(n=n_per_prompt, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                                logprobs=s.logprobs or None)
        outs = llm.generate(prompts, params, use_tqdm=False)
        dt = time.perf_counter() - t0
        comps = [c for o in outs for c in o.outputs]
        return Run(len(comps), sum(len(c.token_ids) for c in comps), dt)

    try:
        print("[vllm] warm-up: one bare run and one small pipeline run", flush=True)
        bare(messages, s.n, 1)
        warm = make_cfg(args, model, work / "vllm-warm", "vllm")
        warm.problems.limit = min(8, args.prompts)
        run_pipeline(warm, shared_teacher, args.verbose)

        print(f"[vllm] {args.repeats} timed repeats, order rotated each repeat", flush=True)
        runs = alternate(args.repeats, {
            "(a) pipeline generate.run": lambda: run_pipeline(cfg, shared_teacher, args.verbose),
            "(b) bare llm.generate n=N": lambda: bare(messages, s.n, 1),
            "(b') bare n=1 x N copies": lambda: bare(messages, 1, s.n),
        })
    finally:
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm

    a, b, b2 = runs["(a) pipeline generate.run"], runs["(b) bare llm.generate n=N"], runs["(b') bare n=1 x N copies"]
    a_e2e = [whole_run(r) for r in a]
    rows = [
        median_row("(a) pipeline, vllm: teacher.generate", a, "render + engine loop + on_result + shard writes"),
        median_row("(a) pipeline, vllm: whole generate.run", a_e2e, "+ load problems, final shard, assemble, save"),
        median_row("(b) bare llm.generate(n=N)", b, "render + llm.generate, one request per problem"),
        median_row("(b') bare llm.generate, N x n=1", b2, "the pipeline's request shape, no pipeline code"),
    ]
    base = rows[2]["tok_s"]
    rows[0]["ratio"] = rows[0]["tok_s"] / base
    rows[1]["ratio"] = rows[1]["tok_s"] / base
    rows[3]["ratio"] = rows[3]["tok_s"] / base
    rows[0]["gated"] = rows[1]["gated"] = True
    rows[0]["pipeline_reported_tok_s"] = statistics.median(r.extra["pipeline_reported_tok_s"] for r in a)
    for row, rs in ((rows[0], a), (rows[1], a_e2e)):
        row["paired_ratios"] = [round(x.tok_s / y.tok_s, 3) for x, y in zip(rs, b)]
    return rows


# -------------------------------------------------------------------------------- openai (c)/(d)

def bench_openai(args, model: str, work: Path) -> list[dict]:
    import openai

    from pipeline.teachers.server import LocalVLLMServer

    cfg = make_cfg(args, model, work / "openai-out", "openai")
    messages = prompt_messages(cfg)
    s = cfg.sampling
    server = LocalVLLMServer(cfg.teacher, work / "server.log", seed=s.seed, max_logprobs=s.logprobs)
    print(f"\n[openai] starting a vLLM server: {' '.join(server.cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    with server as url:
        print(f"[openai] server healthy in {time.perf_counter() - t0:.1f} s at {url} (excluded)", flush=True)
        cfg.teacher.base_urls = [url]

        def request_kwargs(msgs) -> dict:  # what OpenAITeacher sends to a vLLM server
            kw = dict(model=cfg.teacher.model, messages=msgs, n=1, temperature=s.temperature, top_p=s.top_p,
                      max_tokens=s.max_tokens,
                      extra_body={"return_token_ids": True, "return_tokens_as_token_ids": True})
            if s.logprobs:
                kw.update(logprobs=True, top_logprobs=s.logprobs)
            return kw

        async def bare_async(msgs_list) -> Run:
            client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", timeout=cfg.teacher.request_timeout)
            sem = asyncio.Semaphore(cfg.teacher.concurrency)
            tokens = 0

            async def one(msgs):
                nonlocal tokens
                async with sem:
                    resp = await client.chat.completions.create(**request_kwargs(msgs))
                tokens += resp.usage.completion_tokens

            try:
                t0 = time.perf_counter()
                await asyncio.gather(*(one(m) for m in msgs_list))
                dt = time.perf_counter() - t0
            finally:
                await client.close()
            return Run(len(msgs_list), tokens, dt)

        requests = [m for m in messages for _ in range(s.n)]  # one request per (problem, sample), as the pipeline
        bare = lambda: asyncio.run(bare_async(requests))  # noqa: E731
        plain = lambda original, *a, **kw: original(*a, **kw)  # noqa: E731  the real OpenAITeacher

        print("[openai] warm-up: one small bare run and one small pipeline run", flush=True)
        asyncio.run(bare_async(requests[: min(16, len(requests))]))
        warm = make_cfg(args, model, work / "openai-warm", "openai", [url])
        warm.problems.limit = min(4, args.prompts)
        run_pipeline(warm, plain, args.verbose)

        print(f"[openai] {args.repeats} timed repeats, order alternated", flush=True)
        runs = alternate(args.repeats, {
            "(c) pipeline generate.run": lambda: run_pipeline(cfg, plain, args.verbose),
            "(d) bare AsyncOpenAI": bare,
        })

    c, d = runs["(c) pipeline generate.run"], runs["(d) bare AsyncOpenAI"]
    c_e2e = [whole_run(r) for r in c]
    rows = [
        median_row("(c) pipeline, openai: teacher.generate", c, "requests + parse + on_result + shard writes"),
        median_row("(c) pipeline, openai: whole generate.run", c_e2e, "+ preflight, load, assemble, save"),
        median_row("(d) bare AsyncOpenAI", d, f"asyncio.gather, Semaphore({args.concurrency})"),
    ]
    base = rows[2]["tok_s"]
    for row, rs in ((rows[0], c), (rows[1], c_e2e)):
        row["ratio"] = row["tok_s"] / base
        row["gated"] = True
        row["paired_ratios"] = [round(x.tok_s / y.tok_s, 3) for x, y in zip(rs, d)]
    rows[0]["pipeline_reported_tok_s"] = statistics.median(r.extra["pipeline_reported_tok_s"] for r in c)
    return rows


# ------------------------------------------------------------------------------------------ report

def print_table(rows: list[dict]) -> None:
    head = f"{'path':<42} {'samples':>7} {'out tok':>8} {'seconds':>8} {'tok/s':>8} {'samples/s':>9} {'ratio':>6}  verdict"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        ratio = f"{r['ratio']:.3f}" if "ratio" in r else "  base"
        verdict = ("PASS" if r["ratio"] >= TARGET else "FAIL") if r.get("gated") else ""
        print(f"{r['path']:<42} {r['samples']:>7} {r['tokens']:>8} {r['seconds']:>8.2f} {r['tok_s']:>8.1f} "
              f"{r['samples_s']:>9.2f} {ratio:>6}  {verdict}")
    print("\nmedians over the repeats; ratio = tok/s / tok/s of the bare baseline of the same section "
          f"((b) for vllm, (d) for openai); PASS when ratio >= {TARGET}")
    for r in rows:
        extra = f"  per-run tok/s {r['runs_tok_s']}"
        if "paired_ratios" in r:
            extra += f", per-repeat ratios {r['paired_ratios']}"
        if "pipeline_reported_tok_s" in r:
            extra += f", pipeline's own tokens_per_s_this_run {r['pipeline_reported_tok_s']}"
        if r["disturbed_runs"]:
            extra += f", {r['disturbed_runs']} disturbed run(s) (foreign CPU s {r['runs_foreign_cpu_s']})"
        print(f"  {r['path']}: {r['note']}.{extra}")
    disturbed = sum(r["disturbed_runs"] for r in rows)
    if disturbed:
        print(f"\nWARNING: {disturbed} timed run(s) shared the machine with other processes (more than "
              f"{DISTURBED:.0%} of its CPU went elsewhere): the figures are noisy, rerun on a quiet machine.")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if args.skip_vllm and args.skip_openai:
        print("nothing to do: --skip-vllm and --skip-openai", file=sys.stderr)
        return 2

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-generate-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = args.model
        if model is None:
            from pipeline.tiny_model import build_tiny_model

            model = str(build_tiny_model(work / "tiny-model"))
        import vllm

        setup = {"model": args.model or "tiny random Qwen2 (pipeline.tiny_model)", "dtype": args.dtype,
                 "prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens,
                 "temperature": args.temperature, "top_p": args.top_p, "logprobs": args.logprobs,
                 "concurrency": args.concurrency, "repeats": args.repeats, "shard_size": args.shard_size,
                 "progress_bar": not args.no_progress, "enforce_eager": not args.compile,
                 "vllm": vllm.__version__, "cpus": os.cpu_count(), "python": platform.python_version(),
                 "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
        print("setup: " + ", ".join(f"{k}={v}" for k, v in setup.items()), flush=True)
        print("Timing: engine/server start excluded. (a)/(c) time `teacher.generate` inside generate.run "
              "(the span the pipeline's own tok/s uses) and also the whole generate.run; (b)/(d) time the bare "
              "calls from first request to last result.", flush=True)
        rows: list[dict] = []
        if not args.skip_vllm:
            rows += bench_vllm(args, model, work)
        if not args.skip_openai:
            rows += bench_openai(args, model, work)
        print_table(rows)
        if args.json:
            Path(args.json).write_text(json.dumps({"setup": setup, "target": TARGET, "rows": rows}, indent=2))
            print(f"\nfigures written to {args.json}")
        failed = [r["path"] for r in rows if r.get("gated") and r["ratio"] < TARGET]
        return 1 if failed else 0
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # vLLM spawns worker processes: the guard is required
    sys.exit(main())
