"""On-disk state of a `generate` output folder: crash-safe shards while running, one dataset when done.

    OUTPUT/run.json        the config fingerprint the shards were made with (written before any shard)
    OUTPUT/shards/*.parquet  finished rows, each file written to a temp name then renamed (atomic)
    OUTPUT/dataset/        the final `datasets` dataset (save_to_disk), renamed into place when complete
    OUTPUT/summary.json    written last: its presence with a matching fingerprint means "complete"

A crash or kill -9 can lose at most the rows not yet flushed to a shard; it can never leave a
`dataset/` or `summary.json` that looks complete.

The traces' `messages` is the prompt as sent (no assistant turn) and `completion` the raw text, as distill filter
reads them (DESIGN.md), so TRL's SFTTrainer given `dataset/` as it is would train on the prompt alone: `as_trl`
turns them into TRL's conversational prompt/completion columns, which it trains on the completion only.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..core.errors import DistillError
from ..core.io import save_dataset_atomically
from ..core.output import OutputMismatch, StageOutput

SAMPLING_TYPE = pa.struct([("temperature", pa.float64()), ("top_p", pa.float64()), ("max_tokens", pa.int64()),
                           ("seed", pa.int64()), ("logprobs", pa.int64())])
TRACE_SCHEMA = pa.schema([
    ("id", pa.string()), ("sample", pa.int32()), ("problem", pa.string()), ("answer", pa.string()),
    ("source", pa.string()), ("teacher", pa.string()),
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("completion", pa.string()), ("reasoning", pa.string()), ("final", pa.string()),
    ("finish_reason", pa.string()), ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()),
    ("completion_token_ids", pa.list_(pa.int32())),
    ("topk_ids", pa.list_(pa.list_(pa.int32()))), ("topk_logprobs", pa.list_(pa.list_(pa.float32()))),
    ("sampling", SAMPLING_TYPE), ("error", pa.string()), ("retries", pa.int32()),
])
TOPK_COLUMNS = ("topk_ids", "topk_logprobs")
Key = tuple[str, int]


OutputConfigMismatch = OutputMismatch  # the folder holds another config's traces (the protocol's own error)


class TraceStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.shards = self.root / "shards"
        self.dataset_dir = self.root / "dataset"
        self.summary_path = self.root / "summary.json"
        self.run_path = self.root / "run.json"
        # the stages' output protocol (core.output); a finished output is dataset/ beside summary.json
        self.output = StageOutput(self.root, "generate", needs=("dataset",), parts=("shards", "dataset", "summary.json"))

    # ---------------------------------------------------------------- config fingerprint
    def claim(self, fingerprint: dict, *, overwrite: bool) -> None:
        """Tie the folder to this config; refuse (naming the changed keys) or, with overwrite, wipe one made with
        another."""
        self.output.claim(fingerprint, overwrite=overwrite)
        self.shards.mkdir(exist_ok=True)
        for tmp in [*self.shards.glob(".*.tmp"), *self.root.glob(".dataset.tmp-*")]:  # left by a crash
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)

    def wipe(self) -> None:
        for p in (self.shards, self.dataset_dir):
            shutil.rmtree(p, ignore_errors=True)
        for p in (self.summary_path, self.run_path):
            p.unlink(missing_ok=True)

    # ---------------------------------------------------------------- shards
    def shard_files(self) -> list[Path]:
        return sorted(p for p in self.shards.glob("*.parquet") if not p.name.startswith("."))

    def write_shard(self, rows: list[dict]) -> Path:
        table = pa.Table.from_pylist(rows, schema=TRACE_SCHEMA)
        name = f"{time.time_ns():020d}-{os.getpid()}.parquet"
        tmp = self.shards / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.shards / name)
        return self.shards / name

    def mark_incomplete(self) -> None:
        self.summary_path.unlink(missing_ok=True)
        shutil.rmtree(self.dataset_dir, ignore_errors=True)

    def status(self) -> tuple[dict[Key, bool], dict[str, str]]:
        """What the shards hold: (id, sample) -> True if some row for it succeeded, False if all failed;
        and id -> the problem text those rows were generated for."""
        ok: dict[Key, bool] = {}
        texts: dict[str, str] = {}
        for f in self.shard_files():
            t = pq.read_table(f, columns=["id", "sample", "problem", "error"])
            ids = t["id"].to_pylist()
            for i, s, e in zip(ids, t["sample"].to_pylist(), t["error"].to_pylist()):
                ok[(i, s)] = ok.get((i, s), False) or e is None
            texts.update(zip(ids, t["problem"].to_pylist()))
        return ok, texts

    # ---------------------------------------------------------------- final dataset
    def assemble(self, keys: list[Key], *, keep_topk: bool, gold: dict[str, tuple] | None = None):
        """One row per requested key (a success beats a failure; later beats earlier), in `keys` order.
        `gold` (id -> (answer, source)) refreshes those columns from the current problems."""
        import datasets

        files = self.shard_files()
        table = pa.concat_tables([pq.read_table(f, schema=TRACE_SCHEMA) for f in files]) if files \
            else TRACE_SCHEMA.empty_table()
        ids, samples = table["id"].to_pylist(), table["sample"].to_pylist()
        oks = table["error"].is_null().to_pylist()
        best: dict[Key, int] = {}
        for i, key in enumerate(zip(ids, samples)):
            prev = best.get(key)
            if prev is None or oks[i] or not oks[prev]:
                best[key] = i
        missing = [k for k in keys if k not in best]
        if missing:
            raise DistillError(f"{len(missing)} requested rows have no result yet (first: {missing[0]}); "
                               f"rerun the same command to continue")
        table = table.take([best[k] for k in keys])
        if gold is not None:
            ids = table["id"].to_pylist()
            for col, j in (("answer", 0), ("source", 1)):
                values = pa.array([None if gold[i][j] is None else str(gold[i][j]) for i in ids], pa.string())
                table = table.set_column(table.schema.get_field_index(col), col, values)
        if not keep_topk:
            table = table.drop_columns(list(TOPK_COLUMNS))
        return datasets.Dataset(table)

    def save_final(self, dataset, summary: dict) -> None:
        self.summary_path.unlink(missing_ok=True)  # not complete while the dataset is being swapped
        save_dataset_atomically(dataset, self.dataset_dir)
        self.output.complete(summary)  # last (it holds the fingerprint)

    def load_final(self):
        import datasets

        return datasets.load_from_disk(str(self.dataset_dir))

    def complete_summary(self, fingerprint: dict) -> dict | None:
        """The summary of a finished run with this fingerprint, else None."""
        return self.output.finished(fingerprint)


def as_trl(dataset):
    """The traces as TRL's conversational prompt/completion dataset: prompt = the messages as sent, completion =
    [{"role": "assistant", "content": the teacher's raw text}]; failed requests (no completion) dropped. TRL's
    SFTTrainer trains it on the completion only (completion_only_loss, its default for prompt/completion)."""
    ok = dataset.filter(lambda r: r["error"] is None and r["completion"] is not None, desc="dropping failed rows")
    return ok.map(lambda r: {"prompt": r["messages"],
                             "completion": [{"role": "assistant", "content": r["completion"]}]},
                  remove_columns=["messages", "completion"], desc="prompt/completion columns")
