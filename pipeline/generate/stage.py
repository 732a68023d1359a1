"""Stage `generate`: problems -> teacher traces (one row per (id, sample)), sharded, resumable, idempotent.

    distill generate recipes/demo.yaml --generate.sampling.n 8
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from ..backends.base import GenRequest, GenResult, make_teacher, sample_seed, split_reasoning, teacher_name
from ..backends.prompts import chat_messages
from ..backends.server import serving_urls
from ..core.config import GenerateConfig
from ..core.data import load_problems
from ..core.log import get_logger
from .store import Key, OutputConfigMismatch, TraceStore

logger = get_logger("generate")


def run(cfg: GenerateConfig) -> dict:
    """Generate (or reuse) the traces dataset at `cfg.output`; returns the summary."""
    started = time.monotonic()
    problems = load_problems(cfg.problems.source, split=cfg.problems.split, columns=cfg.problems.columns,
                             limit=cfg.problems.limit, shuffle_seed=cfg.problems.shuffle_seed)
    requests = build_requests(problems, cfg)
    keys = [(r.id, r.sample) for r in requests]
    current = {row["id"]: row for row in problems}
    fingerprint = output_fingerprint(cfg)
    request_hash = keys_hash(keys, problems)
    store = TraceStore(cfg.output)

    done = store.complete_summary(fingerprint)
    if done and done.get("keys_hash") == request_hash and not (cfg.retry_failed and done["errors"]):
        logger.info(f"generate: {cfg.output} is complete for this config ({done['rows']} rows); reusing it")
        if cfg.push_to_hub:
            push(store.load_final(), cfg.push_to_hub)
        return {**done, "generated_this_run": 0, "reused_rows": done["rows"], "reused": True}

    store.claim(fingerprint, overwrite=cfg.overwrite)
    status, stored_texts = store.status()
    changed = [i for i, text in stored_texts.items() if i in current and current[i]["problem"] != text]
    if changed:
        if not cfg.overwrite:
            raise OutputConfigMismatch(f"the text of {len(changed)} problems (first: {changed[0]}) changed since "
                                       f"{cfg.output} was generated; pass --generate.overwrite true to discard "
                                       f"the old rows, or choose another generate.output")
        store.wipe()
        store.claim(fingerprint, overwrite=False)
        status = {}
    pending = [r for r in requests
               if (r.id, r.sample) not in status or (cfg.retry_failed and not status[(r.id, r.sample)])]
    skipped = len(requests) - len(pending)
    if skipped:
        logger.info(f"generate: resuming, {skipped} of {len(requests)} rows already in {store.shards}")

    stats = RunStats(samples=len(pending), max_tokens=cfg.sampling.max_tokens)
    if pending:
        store.mark_incomplete()  # an older complete dataset/ must not outlive a run that extends it
        by_problem = current
        with teacher_urls(cfg) as urls:
            teacher = make_teacher(cfg.teacher, cfg.sampling, base_urls=urls)
            name = teacher_name(cfg.teacher)
            buffer: list[dict] = []
            bar = progress_bar(stats, disable=not cfg.progress)
            last_flush = last_draw = time.monotonic()

            def redraw() -> None:
                nonlocal last_draw
                if time.monotonic() - last_draw >= 0.5:
                    draw(bar, stats)
                    last_draw = time.monotonic()

            def on_tokens(tokens: int | None) -> None:
                stats.engine(tokens)
                redraw()

            def on_result(result: GenResult) -> None:
                nonlocal last_flush
                req = by_key[(result.id, result.sample)]
                buffer.append(trace_row(by_problem[result.id], req, result, name, cfg))
                stats.add(result)
                redraw()
                # flush by size, and by time so a slow run keeps its progress too
                if len(buffer) >= cfg.shard_size or time.monotonic() - last_flush > 60:
                    store.write_shard(buffer)
                    buffer.clear()
                    last_flush = time.monotonic()

            by_key = {(r.id, r.sample): r for r in pending}
            teacher.on_tokens = on_tokens
            try:
                stats.start = time.monotonic()  # throughput counts generation, not model loading
                bar.reset(total=stats.expected())  # the bar's clock too
                teacher.generate(pending, on_result)
            finally:
                stats.end = time.monotonic()
                if buffer:  # finished rows are complete: keep them even on Ctrl-C or an error
                    store.write_shard(buffer)
                draw(bar, stats)
                bar.close()
                teacher.close()

    gold = {i: (row["answer"], row.get("source")) for i, row in current.items()}
    dataset = store.assemble(keys, keep_topk=cfg.sampling.logprobs > 0, gold=gold)
    summary = summarize(dataset, cfg, stats, wall_s=time.monotonic() - started, reused=skipped)
    summary.update(keys_hash=request_hash, fingerprint=fingerprint)
    store.save_final(dataset, summary)
    print_summary(summary, cfg.output)
    if cfg.push_to_hub:
        push(dataset, cfg.push_to_hub)
    return summary


def push(dataset, repo_id: str) -> None:
    dataset.push_to_hub(repo_id)  # the token comes from the environment or `hf auth login`, never from us
    logger.info(f"generate: pushed {len(dataset)} rows to the Hub dataset {repo_id}")


def build_messages(problem: str, cfg: GenerateConfig) -> list[dict]:
    return chat_messages(problem, cfg.prompt)


def build_requests(problems, cfg: GenerateConfig) -> list[GenRequest]:
    return [GenRequest(row["id"], s, build_messages(row["problem"], cfg), sample_seed(cfg.sampling.seed, row["id"], s))
            for row in problems for s in range(cfg.sampling.n)]


def output_fingerprint(cfg: GenerateConfig) -> dict:
    """What decides the content of a row. Leaves out n and the problem subset (asking for more samples or
    problems reuses the rows already made) and operational knobs (backend, URLs, concurrency)."""
    s = asdict(cfg.sampling)
    s.pop("n")
    return {"problems": {"source": cfg.problems.source, "split": cfg.problems.split, "columns": cfg.problems.columns},
            "teacher": {"model": cfg.teacher.model, "revision": cfg.teacher.revision, "dtype": cfg.teacher.dtype,
                        "max_model_len": cfg.teacher.max_model_len, "request_seed": cfg.teacher.request_seed},
            "prompt": asdict(cfg.prompt), "sampling": s}


def keys_hash(keys: list[Key], problems) -> str:
    """What was asked for: the (id, sample) keys and the problems' text and gold answers."""
    blob = json.dumps([keys, list(problems["problem"]), [str(a) for a in problems["answer"]]])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def teacher_urls(cfg: GenerateConfig):
    """Base URLs for the openai backend: the configured ones, or a local vLLM server started for the run."""
    return serving_urls(cfg.teacher, Path(cfg.output) / "server.log", seed=cfg.sampling.seed,
                        max_logprobs=cfg.sampling.logprobs)


def trace_row(problem: dict, req: GenRequest, res: GenResult, teacher: str, cfg: GenerateConfig) -> dict:
    completion = reasoning = final = None
    if res.error is None:
        completion, reasoning, final = split_reasoning(res.completion or "", res.reasoning_field)
    s = cfg.sampling
    return {
        "id": req.id, "sample": req.sample, "problem": problem["problem"], "answer": problem["answer"],
        "source": problem.get("source"), "teacher": teacher, "messages": req.messages,
        "completion": completion, "reasoning": reasoning, "final": final, "finish_reason": res.finish_reason,
        "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
        "completion_token_ids": res.completion_token_ids, "topk_ids": res.topk_ids,
        "topk_logprobs": res.topk_logprobs,
        "sampling": {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens, "seed": s.seed,
                     "logprobs": s.logprobs},
        "error": res.error, "retries": res.retries,
    }


class RunStats:
    """Counters of a run: the finished samples and their tokens (what the summary reports), and the
    progress estimate. With every request queued at once, finished samples arrive late and say little
    about speed, so progress is counted in generated tokens: the backend's live count of them (unfinished
    requests included; `engine`) where it reports one, else the finished samples' tokens. The run is
    expected to generate the finished tokens plus, for each sample left, the mean of the finished
    successful samples (`max_tokens` until one finishes): rate = generated / seconds,
    ETA = (expected - generated) / rate."""

    def __init__(self, samples: int = 0, max_tokens: int = 0, clock=time.monotonic):
        self.clock = clock
        self.start = clock()  # reset when generation starts
        self.end: float | None = None
        self.samples = self.errors = self.tokens = self.retries = 0
        self.expected_samples, self.max_tokens = samples, max_tokens
        self.engine_tokens: int | None = None

    def add(self, r: GenResult) -> None:
        self.samples += 1
        self.errors += r.error is not None
        self.tokens += r.completion_tokens or 0
        self.retries += r.retries

    def engine(self, tokens: int | None) -> None:
        """The backend's count of tokens generated so far; None: it can no longer tell."""
        self.engine_tokens = tokens

    def seconds(self) -> float:
        return max((self.end or self.clock()) - self.start, 1e-9)

    def generated(self) -> int:
        if self.engine_tokens is None or self.samples >= self.expected_samples:
            return self.tokens  # once every sample is in, their own counts are exact
        return max(self.engine_tokens, self.tokens)

    def expected(self) -> int:
        left = max(self.expected_samples - self.samples, 0)
        ok = self.samples - self.errors
        per_sample = self.tokens / ok if ok else self.max_tokens
        # every sample left needs at least one more token, however short the finished ones were
        return max(round(self.tokens + left * per_sample), self.generated() + left)

    def rate(self) -> float:
        return self.generated() / self.seconds()

    def eta(self) -> float | None:
        rate = self.rate()
        return (self.expected() - self.generated()) / rate if rate else None

    def postfix(self) -> dict:
        source = "engine" if self.engine_tokens is not None else "finished"
        return {"tok/s": f"{self.rate():.0f} ({source})", "samples": f"{self.samples}/{self.expected_samples}",
                "errors": self.errors}


BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} tok [{elapsed}<{remaining}{postfix}]"


def progress_bar(stats: RunStats, *, disable: bool = False, **kw) -> tqdm:
    """The generate bar counts tokens (`RunStats`): generated of expected. With smoothing 0 tqdm's rate is
    generated / elapsed, so its own ETA is (expected - generated) / rate, the same as `RunStats.eta`."""
    return tqdm(total=stats.expected(), unit="tok", unit_scale=True, smoothing=0, desc="generate",
                bar_format=BAR_FORMAT, disable=disable, **kw)


def draw(bar: tqdm, stats: RunStats) -> None:
    bar.total = stats.expected()
    bar.n = stats.generated()
    bar.set_postfix(stats.postfix())  # redraws


def summarize(dataset, cfg: GenerateConfig, stats: RunStats, *, wall_s: float, reused: int) -> dict:
    errors = [e for e in dataset["error"] if e is not None]
    finish = dataset["finish_reason"]
    out_tokens = sum(t or 0 for t in dataset["completion_tokens"])
    return {
        "rows": len(dataset), "problems": len(set(dataset["id"])), "n": cfg.sampling.n,
        "ok": len(dataset) - len(errors), "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "truncated": sum(f == "length" for f in finish),
        "prompt_tokens": sum(t or 0 for t in dataset["prompt_tokens"]), "completion_tokens": out_tokens,
        "generated_this_run": stats.samples, "reused_rows": reused, "retries_this_run": stats.retries,
        "tokens_this_run": stats.tokens, "wall_s": round(wall_s, 2),
        "tokens_per_s_this_run": round(stats.tokens / stats.seconds(), 1) if stats.samples else None,
        "teacher": teacher_name(cfg.teacher), "backend": cfg.teacher.backend,
    }


def print_summary(s: dict, output: str) -> None:
    print(f"\ngenerate: done -> {output}/dataset")
    lines = [("rows", f"{s['rows']} ({s['problems']} problems x n={s['n']})"), ("ok", s["ok"]),
             ("errors", s["errors"]), ("truncated (finish_reason=length)", s["truncated"]),
             ("tokens in / out", f"{s['prompt_tokens']} / {s['completion_tokens']}"),
             ("generated this run", f"{s['generated_this_run']} (reused {s['reused_rows']})"),
             ("wall time", f"{s['wall_s']} s"), ("tokens/s this run", s["tokens_per_s_this_run"])]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"  {k:<{width}}  {v}")
    if s["errors"]:
        print(f"  failed rows keep their error; retry only them with --generate.retry_failed true. "
              f"First: {s['error_examples'][0]}")
