"""Stage `filter`: teacher traces -> a chat-format training set of verified, well-formed, deduplicated
traces, and a report that says why every other row was dropped.

    distill filter recipes/demo.yaml --filter.max_per_problem 1
    distill filter --filter.input open-r1/OpenR1-Math-220k --filter.output out/openr1   # a public trace set

Traces in a public format (OpenR1-Math-220k, OpenThoughts, NuminaMath-CoT, TRL messages / prompt-completion) are
turned into the traces contract first (formats.py); the project's own traces are read as they are.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import datasets

from ..backends.prompts import chat_messages
from ..core.config import FilterConfig, config_hash, without_operational
from ..core.data import load_problems
from ..core.io import load_dataset_folder_or_hub, save_dataset_atomically
from ..core.log import get_logger
from ..core.output import OutputMismatch, StageOutput
from ..verify import VERIFIER_ID, VerifyPool, VerifyResult, default_pool, start_default_pool
from ..verify.pool import default_workers
from . import checks, formats
from .errors import FilterError
from .report import write_report

logger = get_logger("filter")

# column -> accepted Arrow-backed Python types, for the one-line schema error
REQUIRED = {"id": "string", "sample": "int", "problem": "string", "answer": "string", "completion": "string",
            "reasoning": "string", "final": "string", "finish_reason": "string"}
KD_COLUMNS = ("completion_token_ids", "topk_ids", "topk_logprobs")
REASONS = ("generation error", "contaminated", "truncated", "no reasoning", "malformed", "no boxed answer", "too short",
           "too long", "repetitive", "no gold answer", "incorrect", "duplicate", "pass rate out of band", "over per-problem cap")
NO_GOLD = "no gold answer"
# what to change when a reason drops every row (the zero-kept error names the top reason's fix)
FIXES = {
    "generation error": "rerun distill generate to retry the failed requests",
    "contaminated": "check filter.decontaminate",
    "truncated": "raise the teacher's max_tokens, or set filter.require_complete false",
    "no reasoning": "set filter.require_reasoning false for traces without a reasoning block",
    "malformed": "set filter.check_format false",
    "no boxed answer": "set filter.require_boxed false",
    "too short": "lower filter.min_tokens", "too long": "raise filter.max_tokens",
    "repetitive": "raise filter.max_repeat_ratio",
    NO_GOLD: "map a gold column with filter.columns: {answer: <column>}, or set filter.require_correct false",
    "incorrect": "check the gold column (filter.columns: {answer: <column>}), or set filter.require_correct false",
    "duplicate": "set filter.dedup false or filter.near_dup_threshold null",
    "pass rate out of band": "widen filter.pass_rate_min / filter.pass_rate_max",
    "over per-problem cap": "raise filter.max_per_problem",
}


def run(cfg: FilterConfig) -> dict:
    scratch = Scratch()
    try:
        return _run(cfg, scratch)
    finally:
        scratch.remove()


class Scratch:
    """A temporary folder (under TMPDIR), made on first use, for the memory-mapped copy of a Parquet input and
    the Arrow files made from it; removed when the stage ends."""

    def __init__(self):
        self.path: str | None = None

    def __call__(self) -> str:
        if self.path is None:
            import tempfile

            self.path = tempfile.mkdtemp(prefix="distill-filter-")
        return self.path

    def remove(self) -> None:
        if self.path is not None:
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


def _run(cfg: FilterConfig, scratch: Scratch) -> dict:
    if not cfg.input:
        raise FilterError("filter.input is not set (and the recipe has no generate section to take it from)")
    out = Path(cfg.output)
    source = Path(cfg.input)
    output = StageOutput(out, "filter", done="report.json", needs=("dataset",),
                         parts=("dataset", "report.json", "report.md", "report.png"))
    if source.exists() and (out.resolve() in (source.resolve(), (source / "dataset").resolve())
                            or (out / "shards").exists()):
        raise FilterError(f"filter.output {out} is the traces folder itself; choose another folder")
    if cfg.require_correct and cfg.verify.workers is None:
        start_default_pool()  # the verifier starts while the traces load
    raw = formats.rename(load_traces(cfg.input, scratch), cfg.columns, cfg.input)
    fmt = formats.detect(raw, cfg.format, cfg.input)
    if fmt == "distill":  # the project's own traces: read as they are
        check_schema(raw, cfg.input)
        traces, read = raw, formats.Converted(raw, fmt, len(raw))
        fingerprint = {"config": filter_fingerprint(cfg), "input": formats.input_fingerprint(traces, cfg.input)}
    else:
        read = formats.convert(raw, fmt, cfg.input, progress=cfg.progress)
        traces = read.traces
        fingerprint = {"config": filter_fingerprint(cfg), "input": formats.input_fingerprint(raw, cfg.input),
                       "format": f"{fmt}-{formats.VERSION}"}
    check_gold(traces, fmt, cfg)
    done = output.finished(fingerprint)
    if done is not None:
        logger.info(f"filter: {out} is up to date with its input and config; reusing it")
        return done
    try:
        output.claim(fingerprint, overwrite=cfg.overwrite)
    except OutputMismatch as e:
        raise FilterError(str(e)) from None

    # Short columns as Python lists (one Arrow conversion each); the long texts are read in batches and, for
    # the duplicate check, per chunk of problems: no column of text is held as Python objects.
    small = [c for c in ("id", "answer", "finish_reason", "error", "completion_tokens", *read.verdicts)
             if c in traces.column_names]
    cols = {c: column(traces, c) for c in small}
    n = len(traces)
    first_reason: list[str | None] = [None] * n
    failing = Counter()

    def fail(i: int, reason: str) -> None:
        assert reason in REASONS, reason  # a reason the report does not list would vanish from it
        failing[reason] += 1
        if first_reason[i] is None:
            first_reason[i] = reason

    # ---- row-level checks (every check is counted on every row; the first failure is the row's reason)
    errors = cols.get("error") or [None] * n
    contamination = decontamination_hits(cols["id"], column(traces, "problem") if cfg.decontaminate else [], cfg)
    flagged = {h["id"] for h in contamination}
    gold = [a is not None and str(a).strip() != "" for a in cols["answer"]]
    checked = [i for i in range(n) if gold[i]]
    # the other row-level checks run in a thread while this one hands the answers to the verifier's workers
    background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="filter-checks")
    try:
        others = background.submit(row_checks, traces, cols, errors, flagged, read, cfg, fail)
        verdicts = [VerifyResult(False, None, NO_GOLD)] * n
        for i, v in zip(checked, verify_rows(traces, cols["answer"], checked, cfg)):
            verdicts[i] = v
        tokens = others.result()
    finally:
        background.shutdown(wait=False, cancel_futures=True)  # interrupted: do not wait for the other checks
    for i in range(n):  # the last row-level check: the answer (same order of checks as before)
        if errors[i] is not None:
            continue
        if cfg.require_correct and not gold[i]:
            fail(i, NO_GOLD)
        elif cfg.require_correct and not verdicts[i].correct:
            fail(i, "incorrect")

    # ---- problem-level: pass rate over the teacher's answered samples of a problem (failed requests are
    # an outage, not the teacher's skill)
    by_problem = checks.group_by(cols["id"])
    answered = {pid: [i for i in rows if errors[i] is None and gold[i]] for pid, rows in by_problem.items()}
    pass_rate = {pid: sum(verdicts[i].correct for i in rows) / len(rows) for pid, rows in answered.items() if rows}

    # ---- among the rows still standing: duplicates, pass-rate band, per-problem cap
    if cfg.dedup:
        for i in duplicates(traces, by_problem, first_reason, cfg.near_dup_threshold):
            fail(i, "duplicate")
    rng = random.Random(cfg.seed)
    for pid, rows in by_problem.items():
        alive = [i for i in rows if first_reason[i] is None]
        lo, hi = cfg.pass_rate_min, cfg.pass_rate_max
        rate = pass_rate.get(pid, 0.0)
        if (lo is not None and rate < lo) or (hi is not None and rate > hi):
            for i in alive:
                fail(i, "pass rate out of band")
            alive = []
        if cfg.selection != "all" and cfg.max_per_problem is not None and len(alive) > cfg.max_per_problem:
            ranked = sorted(alive, key=lambda i: (tokens[i], i)) if cfg.selection == "shortest" \
                else rng.sample(alive, len(alive))
            for i in ranked[cfg.max_per_problem:]:
                fail(i, "over per-problem cap")

    kept = [i for i in range(n) if first_reason[i] is None]
    report = {
        "fingerprint": fingerprint, "input": cfg.input, "output": str(out),
        "format": fmt, "format_name": formats.CARDS[fmt], "input_rows": read.rows_read,
        "rows_in": n, "rows_kept": len(kept), "problems_in": len(by_problem),
        "problems_kept": len({cols["id"][i] for i in kept}),
        "rejected": {r: c for r in REASONS if (c := sum(x == r for x in first_reason))},
        "failing_checks": {r: failing[r] for r in REASONS if failing[r]},
        "verify_reasons": dict(Counter(v.reason for v in verdicts)),
        "teacher_pass_at_1": round(statistics.fmean(pass_rate.values()), 4) if pass_rate else None,
        "teacher_sample_accuracy": round(sum(v.correct for v, e in zip(verdicts, errors) if e is None)
                                         / max(1, sum(e is None and g for e, g in zip(errors, gold))), 4)
        if n and any(gold) else None,
        "pass_rates": pass_rate,
        "kept_tokens": summarize_lengths([tokens[i] for i in kept]),
        "decontamination": {"benchmarks": list(cfg.decontaminate), "ngram": cfg.decontam_ngram,
                            "problems_flagged": len(flagged), "hits": contamination},
        "config": asdict(cfg),
    }
    if not read.has_reasoning:
        report["checks_not_applied"] = {"no reasoning": f"{fmt} traces carry no reasoning block: the solution is "
                                                        f"the assistant turn, as written"}
    if read.verdicts or read.finish_from:
        report["dataset_verdicts"] = dataset_verdicts(cols, read, verdicts, errors)
    if not kept:  # nothing to train on: no output that a next stage could take for a finished one
        write_report(out, report, [])
        raise FilterError(zero_kept(report))
    train = build_training_set(traces, kept, verdicts, cfg)
    save(output, train, report, kept_tokens=[tokens[i] for i in kept])
    print_summary(report)
    return report


def load_traces(source: str, scratch=None) -> datasets.Dataset:
    from_file = formats.read(source, scratch)  # .jsonl / .json / .parquet
    if from_file is not None:
        return from_file
    path = Path(source)
    if (path / "dataset").is_dir():
        path = path / "dataset"
    elif (path / "shards").is_dir():
        raise FilterError(f"{source} is an unfinished generate output (no dataset/ yet); "
                          f"finish it by rerunning distill generate")
    return load_dataset_folder_or_hub(source, path, "filter.input", "a distill generate output or a save_to_disk "
                                      "folder", FilterError)


def check_gold(traces: datasets.Dataset, fmt: str, cfg: FilterConfig) -> None:
    """Traces without any gold answer cannot be checked: say what to set, before any work."""
    if not (cfg.require_correct or cfg.pass_rate_min is not None or cfg.pass_rate_max is not None) or not len(traces):
        return
    if any(a is not None and str(a).strip() for a in traces["answer"]):
        return
    need = "filter.require_correct" if cfg.require_correct else "filter.pass_rate_min/pass_rate_max"
    raise FilterError(f"traces {cfg.input} ({formats.CARDS[fmt]}) have no gold answer to check the teacher's against "
                      f"({need}): map a gold column with filter.columns: {{answer: <column>}}, or set "
                      f"filter.require_correct false (and no pass_rate band) to keep traces unverified")


def dataset_verdicts(cols: dict, read: formats.Converted, verdicts, errors) -> dict:
    """The dataset's own verdicts beside ours, over the rows that carry one: agreement counts."""
    out = {}
    for ours, theirs in read.verdicts.items():
        pairs = [(bool(lab), v.correct) for lab, v, e in zip(cols[ours], verdicts, errors)
                 if lab is not None and e is None and v.reason != NO_GOLD]
        if not pairs:  # a column of nulls (correctness_llama where the judge did not run): nothing to compare
            continue
        out[theirs] = {"against": "our verifier", "rows": len(pairs), "agree": sum(a == b for a, b in pairs),
                       "both correct": sum(a and b for a, b in pairs),
                       "dataset only": sum(a and not b for a, b in pairs),
                       "ours only": sum(b and not a for a, b in pairs),
                       "both incorrect": sum(not a and not b for a, b in pairs)}
    if read.finish_from:
        out[read.finish_from] = {"against": "used as finish_reason (filter.require_complete)",
                                 **dict(Counter(f or "unknown" for f in cols["finish_reason"]))}
    return out


def zero_kept(r: dict) -> str:
    top = sorted(r["rejected"].items(), key=lambda kv: -kv[1])
    reasons = ", ".join(f"{reason} {count}" for reason, count in top[:3])
    fix = FIXES.get(top[0][0], "loosen the check") if top else "check the input"
    return (f"filter kept 0 of {r['rows_in']} traces of {r['input']} (read as {r['format']}); dropped: {reasons}; "
            f"{fix} (details: {r['output']}/report.md)")


def check_schema(ds: datasets.Dataset, source: str) -> None:
    for col, kind in REQUIRED.items():
        if col not in ds.features:
            raise FilterError(f"traces {source} have no column '{col}' (a traces dataset needs "
                              f"{', '.join(REQUIRED)}, as distill generate writes)")
        feature = ds.features[col]
        dtype = getattr(feature, "dtype", None)
        ok = (dtype in ("string", "large_string") if kind == "string"
              else dtype is not None and dtype.startswith(("int", "uint")))
        if col == "answer" and dtype is not None and dtype.startswith(("int", "float")):
            ok = True  # numeric golds are fine, they are compared as text
        if not ok:
            raise FilterError(f"traces {source}: column '{col}' should be {kind}, found {feature}")


def filter_fingerprint(cfg: FilterConfig) -> str:
    d = without_operational(cfg)
    for k in ("output", "input", "format"):  # where it reads and writes, not what it makes (the format read is in
        d.pop(k)                             # the fingerprint of converted traces)
    if not d["columns"]:  # unset: outputs made before the key existed stay current
        d.pop("columns")
    if d["prompt"] is None:  # unset it changes nothing: outputs made before the key existed stay current
        d.pop("prompt")
    d["verifier"] = VERIFIER_ID  # a new verifier's verdicts make a new training set
    return config_hash(d)


def column(ds: datasets.Dataset, name: str) -> list:
    """One column as a Python list, converted from Arrow at once (a `Dataset[name]` is a lazy Column whose
    every `[i]` is a separate Arrow read)."""
    return ds.with_format("arrow")[name].to_pylist()


def column_at(ds: datasets.Dataset, name: str, rows: list[int]) -> list:
    return ds.with_format("arrow").select_columns([name])[rows][name].to_pylist() if rows else []


VERIFY_CHUNK = 8192  # answers handed to the verifier per call: the final texts are read a chunk at a time


def verify_rows(traces: datasets.Dataset, answers: list, rows: list[int], cfg: FilterConfig) -> list[VerifyResult]:
    """The verdicts of the given rows (gold: the answer column, as text; answer: the final text), a chunk of rows
    at a time (a problem's samples are next to each other, so the verifier's gold-grouping is kept)."""
    bar = None
    if cfg.progress and rows:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), desc="verify", unit="ans")
    # verify_many's pool: the shared one (all cores), or one of filter.verify.workers for every chunk
    workers = cfg.verify.workers
    own = workers is not None and workers != default_workers()
    pool = VerifyPool(workers) if own else default_pool()
    out: list[VerifyResult] = []
    try:
        for at in range(0, len(rows), VERIFY_CHUNK):
            chunk = rows[at:at + VERIFY_CHUNK]
            finals = column_at(traces, "final", chunk)
            out += verify_pairs([str(answers[i]) for i in chunk], [f or "" for f in finals], pool, cfg)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        if own:
            pool.close()
    return out


def verify_pairs(golds: list[str], finals: list[str], pool: VerifyPool, cfg: FilterConfig) -> list[VerifyResult]:
    """verify_many over the distinct (gold, final) pairs (a duplicated generation is checked once)."""
    index: dict[tuple[str, str], int] = {}
    where = [index.setdefault(pair, len(index)) for pair in zip(golds, finals)]
    distinct = list(index)
    del index
    results = pool.verify_many([g for g, _ in distinct], [f for _, f in distinct], timeout_s=cfg.verify.timeout_s)
    return [results[k] for k in where]


ROW_BATCH = 1000


def row_checks(traces: datasets.Dataset, cols: dict, errors: list, flagged: set, read: formats.Converted,
               cfg: FilterConfig, fail) -> list[int]:
    """Every row-level check but the answer's, on the texts read a batch at a time; returns the token counts."""
    n = len(traces)
    require_reasoning = cfg.require_reasoning and read.has_reasoning
    counts = cols.get("completion_tokens") or [None] * n
    id_lengths = [None] * n
    if "completion_token_ids" in traces.column_names and any(c is None for c in counts):
        import pyarrow.compute as pc

        id_lengths = pc.list_value_length(traces.with_format("arrow")["completion_token_ids"]).to_pylist()
    tokens: list[int] = []
    texts = traces.select_columns(["completion", "reasoning", "final"]).with_format(None)
    for start in range(0, n, ROW_BATCH):
        batch = texts[start:start + ROW_BATCH]
        for k, (completion, reasoning, final) in enumerate(zip(batch["completion"], batch["reasoning"],
                                                               batch["final"])):
            i = start + k
            completion, reasoning, final = completion or "", reasoning or "", final or ""
            # completion length in teacher tokens (from the counts or the ids; words when neither is there)
            tokens.append(counts[i] if counts[i] is not None else id_lengths[i] if id_lengths[i] is not None
                          else len(completion.split()))
            if errors[i] is not None:  # no text to check: one reason, not a failure of every check
                fail(i, "generation error")
                continue
            if cols["id"][i] in flagged:
                fail(i, "contaminated")
            if cfg.require_complete and cols["finish_reason"][i] != "stop":
                fail(i, "truncated")
            if require_reasoning and not reasoning.strip():
                fail(i, "no reasoning")
            if cfg.check_format and checks.format_problem(completion, reasoning, final):
                fail(i, "malformed")
            if cfg.require_boxed and not checks.has_boxed(final):
                fail(i, "no boxed answer")
            if cfg.min_tokens is not None and tokens[i] < cfg.min_tokens:
                fail(i, "too short")
            if cfg.max_tokens is not None and tokens[i] > cfg.max_tokens:
                fail(i, "too long")
            if cfg.max_repeat_ratio is not None and \
                    checks.repeat_ratio(completion, cfg.repeat_ngram) > cfg.max_repeat_ratio:
                fail(i, "repetitive")
    return tokens


def duplicates(traces: datasets.Dataset, by_problem: dict, first_reason: list, threshold: float | None,
               chunk_rows: int = 4096) -> list[int]:
    """The rows still standing that duplicate an earlier one of their problem (checks.duplicate_groups), the
    completions read for a chunk of problems at a time (a problem with one row standing has nothing to compare)."""
    groups = [alive for rows in by_problem.values() if len(alive := [i for i in rows if first_reason[i] is None]) > 1]
    out: list[int] = []
    at = 0
    while at < len(groups):
        chunk, size = [], 0
        while at < len(groups) and (not chunk or size + len(groups[at]) <= chunk_rows):
            chunk.append(groups[at])
            size += len(groups[at])
            at += 1
        texts = iter(column_at(traces, "completion", [i for alive in chunk for i in alive]))
        for alive in chunk:
            dups = checks.duplicate_groups([next(texts) or "" for _ in alive], threshold)
            out += [i for i, dup in zip(alive, dups) if dup is not None]
    return out


def decontamination_hits(ids: list[str], problems: list[str], cfg: FilterConfig) -> list[dict]:
    if not cfg.decontaminate:
        return []
    index = checks.ContaminationIndex(cfg.decontam_ngram)
    for name in cfg.decontaminate:
        bench = load_problems(name)
        index.add(name, bench["id"], bench["problem"])
    hits, seen = [], set()
    for id_, problem in zip(ids, problems):
        if id_ in seen:
            continue
        seen.add(id_)
        hits += [{"id": id_, **h} for h in index.hits(problem)]
    return hits


def assistant_text(reasoning: str, final: str) -> str:
    reasoning, final = (reasoning or "").strip(), (final or "").strip()
    return f"<think>\n{reasoning}\n</think>\n\n{final}" if reasoning else final


def build_training_set(traces: datasets.Dataset, kept: list[int], verdicts, cfg: FilterConfig) -> datasets.Dataset:
    rows = traces.select(kept)
    carried = [c for c in KD_COLUMNS if c in rows.column_names]

    def to_chat(row, idx):
        if cfg.prompt is not None:
            prompt = chat_messages(row["problem"], cfg.prompt)
        elif cfg.user_turn == "prompt" and row.get("messages"):
            prompt = [dict(m) for m in row["messages"]]
        else:
            prompt = [{"role": "user", "content": row["problem"]}]
        return {"messages": prompt + [{"role": "assistant", "content": assistant_text(row["reasoning"], row["final"])}],
                "predicted": verdicts[kept[idx]].predicted}

    keep_cols = ["id", "sample", "problem", "answer", "completion_tokens", *carried]
    rows = rows.map(to_chat, with_indices=True, remove_columns=[c for c in rows.column_names if c not in keep_cols],
                    desc="training set", load_from_cache_file=False) if len(rows) else \
        datasets.Dataset.from_dict({"messages": [], "predicted": [], **{c: [] for c in keep_cols if c in rows.column_names}})
    order = ["messages", "id", "sample", "predicted", "problem", "answer", "completion_tokens", *carried]
    return rows.select_columns([c for c in order if c in rows.column_names])


def summarize_lengths(lengths: list[int]) -> dict:
    if not lengths:
        return {"count": 0}
    return {"count": len(lengths), "mean": round(statistics.fmean(lengths), 1), "median": statistics.median(lengths),
            "min": min(lengths), "max": max(lengths)}


def save(output: StageOutput, train: datasets.Dataset, report: dict, *, kept_tokens: list[int]) -> None:
    """Dataset first (renamed into place), report.json last: its presence means the output is complete."""
    save_dataset_atomically(train, output.root / "dataset")
    write_report(output.root, report, kept_tokens)
    output.complete(report)  # last: the output is finished


def print_summary(r: dict) -> None:
    print(f"\nfilter: kept {r['rows_kept']} of {r['rows_in']} traces ({r['problems_kept']} of {r['problems_in']} "
          f"problems) -> {r['output']}/dataset")
    if r["format"] != "distill":
        print(f"  read as {r['format']} ({r['format_name']}): {r['input_rows']} rows -> {r['rows_in']} traces")
    print(f"  teacher pass@1 over the input: {r['teacher_pass_at_1']}")
    for column, v in r.get("dataset_verdicts", {}).items():
        if "agree" in v:
            print(f"  the dataset's {column} vs our verifier: agree on {v['agree']} of {v['rows']} (both correct "
                  f"{v['both correct']}, dataset only {v['dataset only']}, ours only {v['ours only']}, both "
                  f"incorrect {v['both incorrect']})")
    for check, why in r.get("checks_not_applied", {}).items():
        print(f"  not checked, {check}: {why}")
    for reason, count in r["rejected"].items():
        print(f"  dropped, {reason}: {count}")
    if r["decontamination"]["benchmarks"]:
        print(f"  decontamination against {', '.join(r['decontamination']['benchmarks'])}: "
              f"{r['decontamination']['problems_flagged']} problems flagged")
    print(f"  report: {r['output']}/report.md, report.png")
