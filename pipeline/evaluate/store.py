"""On-disk state of the evaluate stage, one folder per (model, benchmark) pair:

    OUTPUT/pairs/MODEL/BENCHMARK/samples/    one record per (id, sample), save_to_disk, renamed into place
    OUTPUT/pairs/MODEL/BENCHMARK/pair.json   written last: the fingerprint, and the metrics once complete

A pair is reused when nothing that decides its samples or metrics changed; otherwise the samples on disk are
reused as far as they go (only missing or failed samples are asked for again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from ..core.config import BenchmarkConfig, EvalModelConfig
from ..core.io import atomic_write_text, changed_keys, save_dataset_atomically
from ..core.output import OutputMismatch as OutputConfigMismatch

RECORD_FEATURES = datasets.Features({
    "model": datasets.Value("string"), "benchmark": datasets.Value("string"), "id": datasets.Value("string"),
    "sample": datasets.Value("int32"), "problem": datasets.Value("string"), "answer": datasets.Value("string"),
    "completion": datasets.Value("string"), "predicted": datasets.Value("string"), "correct": datasets.Value("bool"),
    "verify_reason": datasets.Value("string"), "failure": datasets.Value("string"),
    "finish_reason": datasets.Value("string"), "completion_tokens": datasets.Value("int32"), "error": datasets.Value("string"),
})


@dataclass
class Benchmark:
    name: str
    cfg: BenchmarkConfig
    problems: datasets.Dataset
    contamination: str = "not checked"


Key = tuple[str, int]  # (problem id, sample)


@dataclass
class Pair:
    """One (model, benchmark): its identity, and what an earlier run left in `dir`."""
    model: EvalModelConfig
    bench: Benchmark
    dir: Path
    fingerprint: dict  # what decides a sample's content (not n or the problem subset)
    scoring: dict  # what decides the metrics, given the samples
    keys_hash: str  # the samples asked for, with their problems' text and gold answers
    n: int  # samples per problem
    done: dict[Key, bool] = field(default_factory=dict)  # samples on disk -> whether the request succeeded
    discard_old: bool = False  # what is on disk was made with another config (overwrite): replace it
    metrics: dict | None = None  # set when finished (reused, or scored this run)

    @property
    def keys(self) -> list[Key]:
        return [(i, s) for i in self.bench.problems["id"] for s in range(self.n)]

    def pending(self) -> list[Key]:
        """Samples to generate: never asked, or asked and failed."""
        return [k for k in self.keys if not self.done.get(k)]


def load_state(pair: Pair, *, overwrite: bool) -> None:
    """What an earlier run left for this pair: finished metrics (`pair.metrics`, when nothing that decides them
    changed and no request failed), else which samples are on disk (`pair.done`). Refuses a pair made with
    another config or other problem text unless overwrite (then its old samples are discarded)."""
    state_path = pair.dir / "pair.json"
    if not state_path.exists():
        pair.discard_old = (pair.dir / "samples").exists()  # left by a crash between two writes: unknown origin
        return
    state = json.loads(state_path.read_text())
    if state.get("fingerprint") != pair.fingerprint:
        if not overwrite:
            changed = ", ".join(changed_keys(state.get("fingerprint") or {}, pair.fingerprint)) or "format"
            raise OutputConfigMismatch(f"{pair.dir} holds {pair.model.name} on {pair.bench.name} made with another "
                                       f"config (changed: {changed}); pass --evaluate.overwrite true to redo it, "
                                       f"or choose another evaluate.output")
        pair.discard_old = True
        return
    if (state.get("complete") and state.get("keys_hash") == pair.keys_hash and state.get("scoring") == pair.scoring
            and not state["metrics"]["failed_requests"]):
        pair.metrics = state["metrics"]
        return
    problems = pair.bench.problems
    texts = dict(zip(problems["id"], problems["problem"]))
    stored = datasets.load_from_disk(str(pair.dir / "samples")).select_columns(["id", "sample", "problem", "error"])
    for i, s, text, error in zip(stored["id"], stored["sample"], stored["problem"], stored["error"]):
        if i in texts and text != texts[i]:
            if not overwrite:
                raise OutputConfigMismatch(f"the text of problem {i} of {pair.bench.name} changed since {pair.dir} "
                                           f"was made; pass --evaluate.overwrite true to redo it, or choose another "
                                           f"evaluate.output")
            pair.done, pair.discard_old = {}, True
            return
        pair.done[(i, s)] = pair.done.get((i, s), False) or error is None


def current_records(pair: Pair, fresh: dict[Key, dict], *, partial: bool = False) -> list[dict]:
    """The pair's records in (problem, sample) order: fresh ones, else those on disk (with today's gold answer,
    so an edited gold is simply re-scored). With partial, keys without either are left out."""
    stored: dict[Key, dict] = {}
    need = [k for k in pair.keys if k not in fresh and pair.done.get(k) is not None]
    if need and not pair.discard_old:
        ds = datasets.load_from_disk(str(pair.dir / "samples"))
        want = set(need)
        rows = [j for j, key in enumerate(zip(ds["id"], ds["sample"])) if key in want]
        gold = dict(zip(pair.bench.problems["id"], pair.bench.problems["answer"]))
        for r in ds.select(rows).to_list():
            stored[(r["id"], r["sample"])] = {**r, "answer": gold[r["id"]], "model": pair.model.name,
                                              "benchmark": pair.bench.name}
    out = []
    for key in pair.keys:
        r = fresh.get(key) or stored.get(key)
        if r is None and not partial:
            raise RuntimeError(f"no result for sample {key} of {pair.bench.name}")  # a backend skipped a request
        if r is not None:
            out.append(r)
    return out


def save_pair(pair: Pair, records: list[dict], *, metrics: dict | None) -> None:
    """Samples first (renamed into place), then pair.json, complete only with metrics. Samples on disk that
    this run does not use (a smaller limit or n) are kept for a later run, unless made with another config."""
    pair.dir.mkdir(parents=True, exist_ok=True)
    state_path = pair.dir / "pair.json"
    state_path.unlink(missing_ok=True)
    # every column, so that samples saved before a column existed (failure) still combine with new ones
    ds = datasets.Dataset.from_list([{k: r.get(k) for k in RECORD_FEATURES} for r in records],
                                    features=RECORD_FEATURES)
    if (pair.dir / "samples").exists() and not pair.discard_old:
        old = datasets.load_from_disk(str(pair.dir / "samples"))
        for column in RECORD_FEATURES.keys() - set(old.column_names):
            old = old.add_column(column, [None] * len(old), feature=RECORD_FEATURES[column])
        old = old.select_columns(list(RECORD_FEATURES))
        have = {(r["id"], r["sample"]) for r in records}
        extra = [j for j, key in enumerate(zip(old["id"], old["sample"])) if key not in have]
        if extra:
            ds = datasets.concatenate_datasets([ds, old.select(extra)])
    save_dataset_atomically(ds, pair.dir / "samples")
    pair.discard_old = False
    pair.done = {(r["id"], r["sample"]): r["error"] is None for r in records}
    state = {"fingerprint": pair.fingerprint, "scoring": pair.scoring, "keys_hash": pair.keys_hash,
             "complete": metrics is not None, "metrics": metrics}
    atomic_write_text(state_path, json.dumps(state, indent=2))


def final_samples(pairs: list[Pair]) -> datasets.Dataset:
    """The records of every pair that this run asked for (models, then benchmarks)."""
    parts = []
    for p in pairs:
        ds = datasets.load_from_disk(str(p.dir / "samples"))
        keys = p.keys
        if len(ds) != len(keys):  # samples kept from a larger run
            at = {key: j for j, key in enumerate(zip(ds["id"], ds["sample"]))}
            ds = ds.select([at[k] for k in keys])
        parts.append(ds)
    return datasets.concatenate_datasets(parts)
