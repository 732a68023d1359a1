"""Stage `evaluate`: models x math benchmarks -> pass@1 (95% CI), pass@k, maj@k, truncation and length,
side by side, with every sample kept for inspection.

    distill evaluate recipes/tiny-evaluate.yaml --evaluate.limit 20

Each model is loaded once (through the same backends as `generate`: in-process vLLM, an OpenAI-compatible
server, transformers), answers every benchmark, and is closed before the next one. The state of each
(model, benchmark) pair lives in OUTPUT/pairs/MODEL/BENCHMARK (its samples and metrics, written atomically),
so a rerun reuses finished pairs, asks only for missing or failed samples, and re-scores without generating
when only the scoring changed (ks, verify, bootstrap). results.json is written last.
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from ..backends.base import GenRequest, GenResult, make_teacher, sample_seed, split_reasoning, teacher_name
from ..backends.prompts import chat_messages
from ..backends.server import serving_urls
from ..core.config import BenchmarkConfig, EvalModelConfig, EvaluateConfig, SamplingConfig
from ..core.data import BENCHMARKS, load_problems, looks_like_path
from ..core.errors import DistillError
from ..core.io import atomic_write_text, save_dataset_atomically, weights_id
from ..core.log import get_logger
from ..verify import VERIFIER_ID, start_default_pool
from . import failures
from .contamination import canonical_source, check_contamination
from .report import markdown_table, print_summary, write_report
from .scoring import benchmark_metrics, verify_records
from .store import Benchmark, Key, Pair, current_records, final_samples, load_state, save_pair

logger = get_logger("evaluate")


class EvaluateError(DistillError, ValueError):
    """A config or input the stage cannot use; a one-line message with the fix."""


def run(cfg: EvaluateConfig) -> dict:
    """Evaluate every model on every benchmark; returns the results (as in OUTPUT/results.json) and the Markdown
    table ("table")."""
    started = time.monotonic()
    if cfg.verify.workers is None:
        start_default_pool()  # the verifier starts while the models generate
    models = resolve_models(cfg)
    sampling = resolve_sampling(cfg)
    ks = resolve_ks(cfg.ks, sampling.n)
    benches = load_benchmarks(cfg)
    check_contamination(cfg.decontamination_report, benches, force=cfg.force)
    out = Path(cfg.output)
    pairs = [plan_pair(cfg, out, m, b, sampling, ks) for m in models for b in benches]  # refuses before any work
    by_model = [[p for p in pairs if p.model is m] for m in models]
    for i, (m, mine) in enumerate(zip(models, by_model)):
        if any(p.metrics is None and p.pending() for p in mine):
            preflight(m, sampling, i)  # a bad model path or a dead server stops here, before hours of generation
    for m, mine in zip(models, by_model):
        reused = [p.bench.name for p in mine if p.metrics is not None]
        if reused:
            logger.info(f"evaluate: {m.name}: reusing finished results on {', '.join(reused)}")
        to_generate = [p for p in mine if p.metrics is None and p.pending()]
        if to_generate:
            generate_model(m, to_generate, cfg, sampling, out)
        for p in mine:
            if p.metrics is None:  # every sample is on disk; the scoring or a gold answer changed
                finish_pair(p, current_records(p, {}), cfg)

    results = {
        "models": [{"name": m.name, "model": teacher_name(m), "backend": m.backend} for m in models],
        "benchmarks": [{"name": b.name, "source": b.cfg.source, "split": b.cfg.split, "n_problems": len(b.problems),
                        "contamination": b.contamination} for b in benches],
        "sampling": {**asdict(sampling), "greedy": cfg.greedy}, "ks": ks,
        "prompt": asdict(cfg.prompt), "verify": {"timeout_s": cfg.verify.timeout_s, "verifier": VERIFIER_ID},
        "results": {m.name: {p.bench.name: p.metrics for p in pairs if p.model is m} for m in models},
        "wall_s": None,
    }
    save_outputs(out, results, pairs)
    results["wall_s"] = round(time.monotonic() - started, 2)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))  # last: the output is complete
    print_summary(results, str(out))
    return {**results, "table": markdown_table(results)}  # the table for `distill run`'s summary


# ------------------------------------------------------------------------------------------ config

def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "x"


def resolve_models(cfg: EvaluateConfig) -> list[EvalModelConfig]:
    if not cfg.models:
        raise EvaluateError("evaluate.models is empty; list the models to evaluate ({model: ..., name: ...})")
    for m in cfg.models:
        m.name = m.name or teacher_name(m)
    _unique([m.name for m in cfg.models], "evaluate.models", "name")
    return list(cfg.models)


def _unique(names: list[str], where: str, key: str) -> None:
    seen: dict[str, str] = {}
    for name in names:
        if slug(name) in seen:
            raise EvaluateError(f"{where}: two entries are labelled {seen[slug(name)]!r} and {name!r}; give each "
                                f"its own {key}")
        seen[slug(name)] = name


def resolve_sampling(cfg: EvaluateConfig) -> SamplingConfig:
    s = cfg.sampling
    n = s.n if s.n is not None else (1 if cfg.greedy else 4)
    temperature = 0.0 if cfg.greedy else s.temperature
    top_p = 1.0 if cfg.greedy else s.top_p
    return SamplingConfig(n=n, temperature=temperature, top_p=top_p, max_tokens=s.max_tokens, seed=s.seed, logprobs=0)


def resolve_ks(ks: list[int], n: int) -> list[int]:
    """The asked k up to n (powers of two and n by default)."""
    if any(k < 1 for k in ks):
        raise EvaluateError(f"evaluate.ks: every k must be at least 1, got {ks}")
    if not ks:
        ks = [2**i for i in range(n.bit_length()) if 2**i <= n] + [n]
    kept = sorted({k for k in ks if k <= n})
    if len(kept) < len(set(ks)):
        logger.warning(f"evaluate: skipping k > n={n} in evaluate.ks ({sorted(set(ks) - set(kept))})")
    return kept or [1]


# -------------------------------------------------------------------------------------- benchmarks

def bench_label(b: BenchmarkConfig) -> str:
    if b.name:
        return b.name
    key = canonical_source(b.source, b.split)
    if key in BENCHMARKS:
        return key
    path = Path(b.source).expanduser()
    base = (path.stem if path.is_file() else path.name) if path.exists() else b.source.rsplit("/", 1)[-1]
    return f"{base}_{b.split}" if b.split else base


def load_benchmarks(cfg: EvaluateConfig) -> list[Benchmark]:
    if not cfg.benchmarks:
        raise EvaluateError("evaluate.benchmarks is empty; list benchmark names (gsm8k, math500 ...) or files")
    out = []
    for i, b in enumerate(cfg.benchmarks):
        label = bench_label(b)
        limit = b.limit if b.limit is not None else cfg.limit
        try:
            problems = load_problems(b.source, split=b.split, columns=b.columns, limit=limit,
                                     shuffle_seed=b.shuffle_seed)
        except Exception as e:  # a bad name, file or Hub id: one line, before any model is loaded
            raise EvaluateError(f"evaluate.benchmarks[{i}] ({label}): {_first_line(e)}") from None
        if len(problems) == 0:
            raise EvaluateError(f"evaluate.benchmarks[{i}] ({label}): no problems selected")
        out.append(Benchmark(label, b, problems))
    _unique([b.name for b in out], "evaluate.benchmarks", "name")
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


# ------------------------------------------------------------------------------------------- pairs

def plan_pair(cfg: EvaluateConfig, out: Path, model: EvalModelConfig, bench: Benchmark, sampling: SamplingConfig,
              ks: list[int]) -> Pair:
    """What is already done for (model, benchmark): finished metrics, reusable samples, or nothing."""
    problems = bench.problems
    fp = {"model": {"model": model.model, "revision": model.revision, "dtype": model.dtype,
                    "max_model_len": model.max_model_len, "request_seed": model.request_seed,
                    "weights": weights_id(model.model)},
          "benchmark": {"source": bench.cfg.source, "split": bench.cfg.split, "columns": bench.cfg.columns},
          "prompt": asdict(cfg.prompt),
          "sampling": {k: v for k, v in asdict(sampling).items() if k not in ("n", "logprobs")}}
    scoring = {"ks": ks, "bootstrap": cfg.bootstrap, "seed": sampling.seed, "timeout_s": cfg.verify.timeout_s,
               "verifier": VERIFIER_ID, "failures": failures.FAILURES_ID}
    blob = json.dumps([sampling.n, list(problems["id"]), list(problems["problem"]), list(problems["answer"])])
    pair = Pair(model, bench, out / "pairs" / slug(model.name) / slug(bench.name), fp, scoring,
                hashlib.sha256(blob.encode()).hexdigest()[:16], n=sampling.n)
    load_state(pair, overwrite=cfg.overwrite)
    return pair


def preflight(model: EvalModelConfig, sampling: SamplingConfig, index: int) -> None:
    """Check that the model can be loaded (or its server answers) before any generation starts."""
    where = f"evaluate.models[{index}]"
    if model.backend == "openai" and not model.launch_server:
        from ..backends.openai_backend import OpenAITeacher, TeacherServerError

        try:
            OpenAITeacher(model, sampling, base_urls=model.base_urls)  # asks each server for its models
        except TeacherServerError as e:
            raise TeacherServerError(f"model {model.name!r}: {str(e).replace('teacher.', where + '.')}") from None
        return
    local = Path(model.model).expanduser()
    if not local.exists() and looks_like_path(model.model):
        raise EvaluateError(f"model {model.name!r}: no such folder {model.model}; set {where}.model to a local "
                            f"model folder or a Hub id")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model.model, revision=model.revision, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise EvaluateError(f"model {model.name!r}: cannot load {model.model!r} ({_first_line(e)}); set "
                            f"{where}.model to a local model folder or a Hub id") from None


def generate_model(model: EvalModelConfig, pairs: list[Pair], cfg: EvaluateConfig, sampling: SamplingConfig,
                   out: Path) -> None:
    """Load the model once, generate the missing samples of each benchmark, score and save each pair."""
    log = out / "logs" / f"{slug(model.name)}-server.log"
    with serving_urls(model, log, seed=sampling.seed, stage="evaluate") as urls:
        logger.info(f"evaluate: loading {model.name} ({model.backend})")
        teacher = make_teacher(model, sampling, base_urls=urls)
        try:
            for pair in pairs:
                records = generate_pair(teacher, pair, cfg, sampling)
                finish_pair(pair, records, cfg)
        finally:
            teacher.close()
            del teacher
            free_memory()


def generate_pair(teacher, pair: Pair, cfg: EvaluateConfig, sampling: SamplingConfig) -> list[dict]:
    rows = {row["id"]: row for row in pair.bench.problems}
    requests = [GenRequest(i, s, chat_messages(rows[i]["problem"], cfg.prompt), sample_seed(sampling.seed, i, s))
                for i, s in pair.pending()]
    fresh: dict[Key, dict] = {}
    bar = tqdm(total=len(requests), unit="sample", desc=f"{pair.model.name} / {pair.bench.name}",
               disable=not cfg.progress)

    def on_result(res: GenResult) -> None:
        fresh[(res.id, res.sample)] = record(pair, rows[res.id], res)
        bar.update(1)

    try:
        teacher.generate(requests, on_result)
    except BaseException:
        if fresh:  # keep what finished: a rerun asks only for the rest
            save_pair(pair, current_records(pair, fresh, partial=True), metrics=None)
        raise
    finally:
        bar.close()
    return current_records(pair, fresh)


def record(pair: Pair, problem: dict, res: GenResult) -> dict:
    completion = None if res.error is not None else split_reasoning(res.completion or "", res.reasoning_field)[0]
    return {"model": pair.model.name, "benchmark": pair.bench.name, "id": res.id, "sample": res.sample,
            "problem": problem["problem"], "answer": problem["answer"], "completion": completion,
            "predicted": None, "correct": False, "verify_reason": None, "failure": None,
            "finish_reason": res.finish_reason, "completion_tokens": res.completion_tokens, "error": res.error}


def finish_pair(pair: Pair, records: list[dict], cfg: EvaluateConfig) -> None:
    """Verify every sample, compute the metrics, save the pair as complete."""
    verify_records(records, cfg.verify, progress=cfg.progress)
    for r in records:
        r["failure"] = failures.classify(r)
    pair.metrics = benchmark_metrics(records, pair.scoring["ks"], n_boot=cfg.bootstrap, seed=pair.scoring["seed"],
                                     verify=cfg.verify)
    save_pair(pair, records, metrics=pair.metrics)
    if pair.metrics["failed_requests"]:
        first = next(r["error"] for r in records if r["error"] is not None)
        logger.warning(f"evaluate: {pair.model.name} / {pair.bench.name}: {pair.metrics['failed_requests']} requests failed "
              f"(counted as wrong; a rerun asks for them again). First: {first}")


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# ----------------------------------------------------------------------------------------- outputs

def save_outputs(out: Path, results: dict, pairs: list[Pair]) -> None:
    """samples/ (the records of every pair), results.md, results.png and failures.png; results.json is removed first so an
    interrupted write never leaves a complete-looking output."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").unlink(missing_ok=True)
    save_dataset_atomically(final_samples(pairs), out / "samples")
    write_report(out, results)
