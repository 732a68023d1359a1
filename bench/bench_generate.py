"""Does the `generate` stage slow the teacher down? Pipeline throughput against bare vLLM calls.

    .venv/bin/python bench/bench_generate.py                     # tiny local model, both comparisons
    .venv/bin/python bench/bench_generate.py --logprobs 5        # the same with top-k logprobs stored
    .venv/bin/python bench/bench_generate.py --model /path/to/model --dtype bfloat16 --max-tokens 256

Two comparisons, same model, same prompts (problems rendered by the pipeline's own prompt code and the
model's chat template), same sampling (n, temperature, top_p, max_tokens, logprobs):

  vllm    (a) `pipeline.generate.stage.run(cfg)` with backend `vllm`, end to end (problems -> shards -> dataset)
          (b) bare `llm.generate(prompts, SamplingParams(n=N, ...))` on the same `vllm.LLM` engine
          (b') bare `llm.generate` of the exact request set the pipeline sends (N copies of each prompt, n=1)
  openai  (c) `pipeline.generate.stage.run(cfg)` with backend `openai` against a local vLLM server
          (d) a bare asyncio + `openai.AsyncOpenAI` loop: same server, same requests, same concurrency

Engine start is excluded from every figure: one `vllm.LLM` is built with the pipeline's own
`engine_kwargs` and handed to the pipeline through `make_teacher` (the only thing patched), and one
server (the pipeline's LocalVLLMServer) is started once and shared by (c) and (d). Each repeat rotates
the order of the paths; the table gives medians. See bench/README.md for what each figure covers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TARGET = 0.95  # pipeline tok/s over bare tok/s
DISTURBED = 0.05  # a run is "disturbed" when other processes took more than this share of the machine's CPU
DEGRADED = 0.33  # an openai run is "degraded" when the server batched fewer than this x concurrency tokens a step

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="local model folder (default: build the tiny random Qwen2 in a temp dir)")
    p.add_argument("--dtype", default="float32", help="engine dtype (default float32, right for the tiny model)")
    p.add_argument("--source", default="gsm8k", help="problem source for load_problems (default gsm8k)")
    p.add_argument("--prompts", type=int, default=64, help="problems (default 64)")
    p.add_argument("--n", type=int, default=4, help="samples per problem (default 4)")
    p.add_argument("--max-tokens", type=int, default=64, help="max tokens per completion (default 64)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--logprobs", type=int, default=0, help="top-k logprobs per position, stored by the pipeline (0: off)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight for (c) and (d) (default 64)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs of each path (default 7)")
    p.add_argument("--shard-size", type=int, default=64, help="pipeline rows per shard (default 64, its default)")
    p.add_argument("--no-progress", action="store_true", help="run the pipeline without its tqdm bar")
    p.add_argument("--compile", action="store_true", help="compiled mode (default: enforce_eager, starts faster)")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--kv-cache-gb", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE when it is not set")
    p.add_argument("--skip-vllm", action="store_true", help="skip (a)/(b)")
    p.add_argument("--skip-openai", action="store_true", help="skip (c)/(d)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--workdir", help="keep outputs and server.log here (default: a temp dir, removed)")
    p.add_argument("--verbose", action="store_true", help="show the pipeline's summaries and vLLM info logs")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ helpers

class ForeignCPU:
    """CPU seconds used by processes outside this benchmark's process tree (another engineer's tests,
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
        return sum(t) - t.idle - getattr(t, "iowait", 0.0), self._own()

    def seconds(self) -> float:
        busy, own = self._sample()
        return max(0.0, (busy - self.start[0]) - (own - self.start[1]))


class Run:
    """One timed run of one path."""

    def __init__(self, samples: int, tokens: int, seconds: float, **extra):
        self.samples, self.tokens, self.seconds, self.extra = samples, tokens, seconds, extra
        self.foreign_cpu_s = 0.0

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def disturbed(self) -> bool:
        return self.foreign_cpu_s > DISTURBED * self.seconds * (os.cpu_count() or 1)

    @property
    def degraded(self) -> bool:
        return bool(self.extra.get("degraded"))


def measured(fn):
    """Call fn() -> Run; attach the foreign CPU seconds seen meanwhile and the CPU seconds this process
    (the client: pipeline or bare loop, not the engine or server processes) spent."""
    import psutil

    me = psutil.Process()
    probe = ForeignCPU()
    c0 = sum(me.cpu_times()[:2])
    run = fn()
    run.extra["client_cpu_s"] = round(sum(me.cpu_times()[:2]) - c0, 3)
    run.foreign_cpu_s = probe.seconds()
    return run


def median_row(label: str, runs: list[Run], note: str, used: list[Run] | None = None) -> dict:
    """Medians over `used` (default: all runs); `runs` is every run, for the notes."""
    used = used or runs
    mid = sorted(used, key=lambda r: r.tok_s)[len(used) // 2]
    return {"path": label, "samples": mid.samples, "tokens": mid.tokens,
            "seconds": statistics.median(r.seconds for r in used),
            "tok_s": statistics.median(r.tok_s for r in used),
            "samples_s": statistics.median(r.samples / r.seconds for r in used),
            "all_runs_tok_s_median": statistics.median(r.tok_s for r in runs),
            "runs_used": len(used), "runs": len(runs),
            "runs_tok_s": [round(r.tok_s, 1) for r in runs],
            "runs_seconds": [round(r.seconds, 3) for r in runs],
            "runs_foreign_cpu_s": [round(r.foreign_cpu_s, 2) for r in runs],
            "client_cpu_s": statistics.median(r.extra.get("client_cpu_s", 0.0) for r in used),
            "disturbed_runs": sum(r.disturbed for r in runs),
            "degraded_runs": sum(r.degraded for r in runs),
            **({"runs_server_tok_per_step": [r.extra.get("tok_per_step") for r in runs]}
               if any("tok_per_step" in r.extra for r in runs) else {}),
            "note": note}


def make_cfg(args, model: str, output: Path, backend: str, base_urls=()):
    from pipeline.core.config import GenerateConfig, ProblemsConfig, SamplingConfig, TeacherConfig

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
    from pipeline.generate import stage as generate
    from pipeline.core.data import load_problems

    p = cfg.problems
    problems = load_problems(p.source, split=p.split, columns=p.columns, limit=p.limit, shuffle_seed=p.shuffle_seed)
    return [generate.build_messages(row["problem"], cfg) for row in problems]


@contextlib.contextmanager
def timed_teacher(make):
    """Patch `pipeline.generate.stage.make_teacher` so that it returns `make(original, ...)` and the time spent
    in `teacher.generate` is recorded. Yields a dict that receives `gen_s`."""
    from pipeline.generate import stage as generate

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
    """`generate.run(cfg)` end to end into a fresh output folder. The Run is timed on `teacher.generate`
    (the span of the pipeline's own tokens_per_s_this_run) and carries the whole run's wall as e2e_s."""
    from pipeline.generate import stage as generate

    shutil.rmtree(cfg.output, ignore_errors=True)
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with timed_teacher(make) as box, sink:
        t0 = time.perf_counter()
        summary = generate.run(cfg)
        wall = time.perf_counter() - t0
    if summary["errors"] or summary["generated_this_run"] != summary["rows"]:
        raise RuntimeError(f"the pipeline run was not a clean full run: {summary}")
    shutil.rmtree(cfg.output, ignore_errors=True)
    return Run(summary["generated_this_run"], summary["tokens_this_run"], box["gen_s"], e2e_s=round(wall, 4),
               pipeline_reported_tok_s=summary["tokens_per_s_this_run"])


def whole_run(r: Run) -> Run:
    """The same pipeline run, timed on the whole generate.run instead of teacher.generate."""
    w = Run(r.samples, r.tokens, r.extra["e2e_s"], **{k: v for k, v in r.extra.items() if k != "e2e_s"})
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
            flags = ("  DISTURBED" if r.disturbed else "") + ("  DEGRADED" if r.degraded else "")
            step = f"  server {r.extra['tok_per_step']:5.1f} tok/step" if "tok_per_step" in r.extra else ""
            wall = f"  (generate.run wall {r.extra['e2e_s']:.2f} s)" if "e2e_s" in r.extra else ""
            print(f"  repeat {i + 1}/{repeats}  {name:<27} {r.samples:>5} samples {r.tokens:>7} tok "
                  f"{r.seconds:7.2f} s {r.tok_s:8.1f} tok/s  client CPU {r.extra['client_cpu_s']:4.2f} s  "
                  f"foreign CPU {r.foreign_cpu_s:4.2f} s{step}{wall}{flags}", flush=True)
    return out


def finish_rows(rows: list[dict], gen: list[Run], whole: list[Run], base: list[Run]) -> None:
    """Ratios against the bare baseline rows[2]; only the generation row rows[0] is gated."""
    ref = rows[2]["tok_s"]
    for row, rs in ((rows[0], gen), (rows[1], whole)):
        row["ratio"] = row["tok_s"] / ref
        row["all_runs_ratio"] = row["all_runs_tok_s_median"] / rows[2]["all_runs_tok_s_median"]
        row["paired_ratios"] = [round(x.tok_s / y.tok_s, 3) for x, y in zip(rs, base)]
    rows[0]["gated"] = True
    rows[0]["pipeline_reported_tok_s"] = statistics.median(r.extra["pipeline_reported_tok_s"] for r in gen)
    rows[1]["fixed_s"] = round(statistics.median(r.extra["e2e_s"] - r.seconds for r in gen), 3)
    rows[1]["note"] += f"; {rows[1]['fixed_s']:.2f} s a run that does not grow with the run's length"


# ------------------------------------------------------------------------------------ vllm (a)/(b)

def bench_vllm(args, model: str, work: Path) -> list[dict]:
    from pipeline.backends.base import teacher_name
    from pipeline.backends.prompts import render_prompt_ids
    from pipeline.backends.vllm_backend import VLLMTeacher, engine_kwargs, set_cpu_env
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
        # the pipeline's own VLLMTeacher minus its engine construction: it gets the engine built above
        t = object.__new__(VLLMTeacher)
        t.cfg, t.sampling, t.name = tcfg, sampling, teacher_name(tcfg)
        t.llm, t.tokenizer = llm, llm.get_tokenizer()
        t.close = lambda: None  # keep the shared engine for the next run
        return t

    def bare(msgs, n_per_prompt: int, copies: int) -> Run:
        t0 = time.perf_counter()  # rendering counts here as it does inside the pipeline
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
    a_whole = [whole_run(r) for r in a]
    rows = [
        median_row("(a) pipeline, vllm: teacher.generate", a,
                   "renders prompts, enqueues, steps the engine, on_result (rows, tqdm, shard writes)"),
        median_row("(a) pipeline, vllm: whole generate.run", a_whole,
                   "+ load problems, last shard, assemble, save_to_disk"),
        median_row("(b) bare llm.generate(n=N)", b, "renders the prompts + llm.generate, one request per problem"),
        median_row("(b') bare llm.generate, N x n=1", b2, "the pipeline's request shape without pipeline code"),
    ]
    finish_rows(rows, a, a_whole, b)
    rows[3]["ratio"] = rows[3]["tok_s"] / rows[2]["tok_s"]
    return rows


# -------------------------------------------------------------------------------- openai (c)/(d)

def server_counters(url: str) -> tuple[float, float]:
    """(engine steps, generated tokens) so far, from the vLLM server's Prometheus /metrics."""
    text = urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    steps = tokens = 0.0
    for line in text.splitlines():
        m = re.match(r"^(vllm:iteration_tokens_total_count|vllm:generation_tokens_total)(\{[^}]*\})? (\S+)$", line)
        if m:
            if m.group(1) == "vllm:iteration_tokens_total_count":
                steps += float(m.group(3))
            else:
                tokens += float(m.group(3))
    return steps, tokens


def with_server_steps(fn, url: str, concurrency: int):
    """Wrap a path: read the server's step counter around the run (outside the timed span) and mark the
    run degraded when the server batched few tokens per engine step (see README: a vllm-cpu server state
    that hits both paths alike)."""

    def run() -> Run:
        s0, t0 = server_counters(url)
        r = fn()
        s1, t1 = server_counters(url)
        steps, toks = s1 - s0, t1 - t0
        r.extra["engine_steps"] = int(steps)
        r.extra["tok_per_step"] = round(toks / steps, 1) if steps else None
        r.extra["degraded"] = bool(steps) and toks / steps < DEGRADED * min(concurrency, r.samples)
        return r

    return run


def bench_openai(args, model: str, work: Path) -> list[dict]:
    import openai

    from pipeline.backends.server import LocalVLLMServer

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
                t0 = time.perf_counter()  # first request to last response
                await asyncio.gather(*(one(m) for m in msgs_list))
                dt = time.perf_counter() - t0
            finally:
                await client.close()
            return Run(len(msgs_list), tokens, dt)

        requests = [m for m in messages for _ in range(s.n)]  # one request per (problem, sample), as the pipeline
        plain = lambda original, *a, **kw: original(*a, **kw)  # noqa: E731  the real OpenAITeacher

        print("[openai] warm-up: one small bare run and one small pipeline run", flush=True)
        asyncio.run(bare_async(requests[: min(16, len(requests))]))
        warm = make_cfg(args, model, work / "openai-warm", "openai", [url])
        warm.problems.limit = min(4, args.prompts)
        run_pipeline(warm, plain, args.verbose)

        print(f"[openai] {args.repeats} timed repeats, order alternated", flush=True)
        runs = alternate(args.repeats, {
            "(c) pipeline generate.run": with_server_steps(lambda: run_pipeline(cfg, plain, args.verbose), url,
                                                           args.concurrency),
            "(d) bare AsyncOpenAI": with_server_steps(lambda: asyncio.run(bare_async(requests)), url,
                                                      args.concurrency),
        })

    c, d = runs["(c) pipeline generate.run"], runs["(d) bare AsyncOpenAI"]
    c_whole = [whole_run(r) for r in c]
    ok = lambda rs: [r for r in rs if not r.degraded]  # noqa: E731
    use_ok = bool(ok(c)) and bool(ok(d))
    pick = (lambda rs: ok(rs)) if use_ok else (lambda rs: rs)
    rows = [
        median_row("(c) pipeline, openai: teacher.generate", c,
                   "requests, parse responses, on_result (rows, tqdm, shard writes)", pick(c)),
        median_row("(c) pipeline, openai: whole generate.run", c_whole,
                   "+ preflight, load problems, last shard, assemble, save_to_disk", pick(c_whole)),
        median_row("(d) bare AsyncOpenAI", d, f"asyncio.gather under Semaphore({args.concurrency})", pick(d)),
    ]
    finish_rows(rows, c, c_whole, d)
    for r in rows:
        r["median_over"] = "runs the server batched normally" if use_ok else "all runs"
    return rows


# ------------------------------------------------------------------------------------------ report

def print_table(rows: list[dict]) -> None:
    head = (f"{'path':<42} {'samples':>7} {'out tok':>8} {'seconds':>8} {'tok/s':>8} {'samples/s':>9} "
            f"{'ratio':>6}  verdict")
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        ratio = f"{r['ratio']:.3f}" if "ratio" in r else "  base"
        verdict = ("PASS" if r["ratio"] >= TARGET else "FAIL") if r.get("gated") else ("info" if "ratio" in r else "")
        print(f"{r['path']:<42} {r['samples']:>7} {r['tokens']:>8} {r['seconds']:>8.2f} {r['tok_s']:>8.1f} "
              f"{r['samples_s']:>9.2f} {ratio:>6}  {verdict}")
    print(f"\nMedians over the repeats. ratio = tok/s over the bare baseline of its section ((b) for vllm, (d) for "
          f"openai). Gate: the teacher.generate rows, PASS when ratio >= {TARGET}. The whole-generate.run rows "
          f"add fixed costs (load problems, assemble, save_to_disk) that weigh on a run of seconds and not on a "
          f"real one: shown, not gated.")
    for r in rows:
        bits = [r["note"], f"tok/s per run {r['runs_tok_s']}",
                f"CPU seconds of this (client) process per run, median {r['client_cpu_s']:.2f}"]
        if "paired_ratios" in r:
            bits.append(f"ratio per repeat {r['paired_ratios']}")
        if "pipeline_reported_tok_s" in r:
            bits.append(f"the pipeline's own tokens_per_s_this_run {r['pipeline_reported_tok_s']}")
        if "runs_server_tok_per_step" in r:
            bits.append(f"server tokens per engine step {r['runs_server_tok_per_step']}")
        if r.get("median_over"):
            bits.append(f"median over {r['median_over']} ({r['runs_used']} of {r['runs']})")
            if "all_runs_ratio" in r:
                bits.append(f"over all runs: {r['all_runs_tok_s_median']:.1f} tok/s, ratio {r['all_runs_ratio']:.3f}")
        if r["disturbed_runs"]:
            bits.append(f"{r['disturbed_runs']} disturbed run(s), foreign CPU s {r['runs_foreign_cpu_s']}")
        print(f"  {r['path']}:\n      " + "\n      ".join(bits))
    disturbed = sum(r["disturbed_runs"] for r in rows)
    if disturbed:
        print(f"\nWARNING: {disturbed} timed run(s) shared the machine with other processes (more than "
              f"{DISTURBED:.0%} of its CPU went elsewhere): the figures are noisy; rerun on a quiet machine.")
    degraded = [f"{r['path'].split(':')[0]} {r['degraded_runs']}/{r['runs']}" for r in rows
                if r["degraded_runs"] and "whole" not in r["path"]]
    if degraded:
        print(f"\nnote: degraded server runs (fewer than {DEGRADED} x concurrency tokens per engine step): "
              f"{', '.join(degraded)}. A vllm-cpu server with a model this small sometimes falls into a state where "
              f"requests reach the engine a few at a time; it hits the bare client as often as the pipeline "
              f"(see bench/README.md), so the openai medians leave those runs out while each path keeps one.")


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
            from pipeline.demo.tiny_model import build_tiny_model

            model = str(build_tiny_model(work / "tiny-model"))
        import vllm

        setup = {"model": args.model or "tiny random Qwen2 (pipeline.demo.tiny_model)", "dtype": args.dtype,
                 "prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens,
                 "temperature": args.temperature, "top_p": args.top_p, "logprobs": args.logprobs,
                 "concurrency": args.concurrency, "repeats": args.repeats, "shard_size": args.shard_size,
                 "progress_bar": not args.no_progress, "enforce_eager": not args.compile,
                 "vllm": vllm.__version__, "cpus": os.cpu_count(), "python": platform.python_version(),
                 "date": time.strftime("%Y-%m-%d %H:%M"),
                 "command": " ".join(["bench/bench_generate.py"] + (sys.argv[1:] if argv is None else list(argv)))}
        print("setup: " + ", ".join(f"{k}={v}" for k, v in setup.items()), flush=True)
        print("timing: engine and server start excluded. (a)/(c): the span of teacher.generate inside "
              "generate.run (what the pipeline's own tok/s uses), and the whole generate.run. (b)/(d): the bare "
              "calls, from the first request to the last result.", flush=True)
        rows: list[dict] = []
        if not args.skip_vllm:
            rows += bench_vllm(args, model, work)
        if not args.skip_openai:
            rows += bench_openai(args, model, work)
        print_table(rows)
        if args.json:
            Path(args.json).write_text(json.dumps({"setup": setup, "target": TARGET, "rows": rows}, indent=2))
            print(f"\nfigures written to {args.json}")
        return 1 if any(r.get("gated") and r["ratio"] < TARGET for r in rows) else 0
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # vLLM spawns worker processes: the guard is required
    sys.exit(main())
