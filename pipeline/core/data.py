"""Load math problems into a uniform ``datasets.Dataset``.

Every loader returns the columns ``id``, ``problem``, ``answer`` (all str) and
``source`` first, then whatever extra columns the source had. Sources can be a
bundled benchmark name, a local file or ``save_to_disk`` folder, or a Hugging Face
dataset id. Bad rows raise a one-line ``ValueError`` naming the source and row.

The readers here are shared by every stage: ``load_file`` (a .jsonl/.json/.parquet file, each bad line named
``file: line N``), ``looks_like_path``/``missing_path`` (a missing local path is told as missing, never sent to the
Hub) and, for Hub ids, ``core.io.load_hub_dataset`` (offline or unreachable: one line within seconds).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DataError
from .io import HUB_PREFIX, load_hub_dataset, load_saved

# Benchmark name -> file name. The split is part of the name ("gsm8k" is the test set).
BENCHMARKS: dict[str, str] = {
    "gsm8k": "gsm8k_test.jsonl",
    "gsm8k_train": "gsm8k_train.jsonl",
    "math500": "math500_test.jsonl",
    "svamp": "svamp_test.jsonl",
    "olympiadbench": "olympiadbench_test.jsonl",
    "aime24": "aime24_test.jsonl",
    "aime25": "aime25_test.jsonl",
    "amc23": "amc23_test.jsonl",
}

# Known names whose files are not shipped: the problems are (c) MAA, licence unclear.
NOT_BUNDLED = frozenset({"aime24", "aime25", "amc23"})

CORE_COLUMNS = ("id", "problem", "answer", "source")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")

# Used only to make the "missing column" error suggest a likely mapping.
_ALIASES = {
    "problem": ("question", "Question", "prompt", "input", "query", "Problem"),
    "answer": ("final_answer", "Answer", "target", "gold", "label", "expected_answer"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def data_dir() -> Path:
    """The folder holding the bundled benchmark files (env ``DISTILL_DATA_DIR`` overrides)."""
    env = os.environ.get("DISTILL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "data" / "benchmarks"


def load_problems(
    source: str,
    *,
    split: str | None = None,
    columns: dict[str, str] | None = None,
    limit: int | None = None,
    shuffle_seed: int | None = None,
) -> datasets.Dataset:
    """Load problems from ``source`` and return a validated Dataset.

    ``source`` is tried, in order, as: a name in ``BENCHMARKS`` (``split`` may pick
    e.g. ``"train"`` for ``"gsm8k"``); an existing local ``.jsonl``/``.json``/``.parquet``
    file or ``save_to_disk`` folder; a Hugging Face dataset id ``"org/name"``.
    ``columns`` maps our column names to the source's (``{"problem": "question"}``).
    ``limit`` keeps the first rows, or a random subset when ``shuffle_seed`` is given.
    """
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")

    label, stem, rows, where = _read(str(source), split)
    rows = _normalise(rows, where, label=label, stem=stem, columns=columns or {})
    ds = datasets.Dataset.from_list(_arrow_safe(rows))

    if shuffle_seed is not None:
        ds = ds.shuffle(seed=shuffle_seed)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


# --- reading -----------------------------------------------------------------------


def _read(source: str, split: str | None) -> tuple[str, str, list[dict], list[str]]:
    """Return (label for errors, stem for ids/source column, rows, row positions)."""
    if source in BENCHMARKS or (split and f"{source}_{split}" in BENCHMARKS):
        name = _benchmark_name(source, split)
        path = _benchmark_path(name)
        rows, where = _read_file(path, label=name)
        return name, name, rows, where

    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir():
            return source, path.name, *_read_saved(path, split, label=source)
        if split is not None:
            raise DataError(f"{source}: split={split!r} does not apply to a single file")
        return source, path.stem, *_read_file(path, label=source)

    if looks_like_path(source):
        raise DataError(missing_path(source))
    hub_id = source[len(HUB_PREFIX):] if source.startswith(HUB_PREFIX) else source
    if _HUB_ID.match(hub_id):
        ds = load_hub_dataset(hub_id, split or "train")
        if len(ds) == 0:
            raise DataError(f"{source}: no rows (the Hub dataset's split {split or 'train'!r} is empty)")
        return source, hub_id.rsplit("/", 1)[1], *_rows_of(ds)
    raise DataError(
        f"{source!r} is not a benchmark name ({', '.join(BENCHMARKS)}), an existing "
        "file or folder, or a Hugging Face dataset id 'org/name'"
    )


def _benchmark_name(source: str, split: str | None) -> str:
    """Resolve ("gsm8k", "train") -> "gsm8k_train"; a split must match the file's."""
    if split is None:
        return source
    if f"{source}_{split}" in BENCHMARKS:
        return f"{source}_{split}"
    if source in BENCHMARKS and BENCHMARKS[source].endswith(f"_{split}.jsonl"):
        return source
    have = sorted(n for n in BENCHMARKS if n == source or n.startswith(f"{source}_"))
    raise DataError(
        f"benchmark {source!r} has no split {split!r} "
        f"(available: {', '.join(f'{n} -> {BENCHMARKS[n]}' for n in have)})"
    )


def _benchmark_path(name: str) -> Path:
    file_name = BENCHMARKS[name]
    dirs = [data_dir()]
    if name in NOT_BUNDLED:
        env = os.environ.get("DISTILL_BENCHMARKS_DIR")
        dirs = ([Path(env).expanduser()] if env else []) + dirs
    for folder in dirs:
        if (folder / file_name).is_file():
            return folder / file_name
    if name in NOT_BUNDLED:
        raise DataError(
            f"benchmark {name!r} is not bundled because of its licence (problems are (c) MAA); "
            f"set DISTILL_BENCHMARKS_DIR to a folder holding {file_name}"
        )
    raise DataError(
        f"bundled benchmark file {file_name} not found in {dirs[0]} "
        "(set DISTILL_DATA_DIR to the folder holding the bundled benchmarks)"
    )


def looks_like_path(source: str) -> bool:
    """True when `source` can only be a local path, so that a missing one is told as missing, never sent to the Hub.

    A Hub id is ``org/name``: one ``/``, no data-file suffix. Anything else that has a ``/`` is a path: a data-file
    suffix (``.jsonl``, ``.json``, ``.parquet``), a ``.``, ``/`` or ``~`` start, more than one ``/``, a backslash, or
    one ``/`` whose first part is an existing local folder (``data/no_such_problems`` while ``data/`` exists here;
    ``datasets.load_dataset`` likewise reads a local folder before it asks the Hub). ``hf://datasets/org/name`` is
    always the Hub.
    """
    if source.startswith(HUB_PREFIX):
        return False
    if (
        source.lower().endswith(FILE_SUFFIXES)
        or source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or "\\" in source
    ):
        return True
    head, sep, _ = source.partition("/")
    return bool(sep and head) and Path(head).is_dir()


def missing_path(source: str) -> str:
    """The one-line message for a local path that does not exist: what is missing, and where to look."""
    path = Path(source).expanduser()
    parent = path.parent
    where = "" if path.is_absolute() else f"; paths are relative to {Path.cwd()}"
    if parent.is_dir():
        try:
            names = [p.name for p in parent.iterdir()]
        except OSError:  # an unreadable folder: no suggestion
            names = []
        close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {close[0] if str(parent) == '.' else parent / close[0]}?"
        else:
            hint = f"{'the current folder' if str(parent) == '.' else f'{parent}/'} has nothing named {path.name}{where}"
    else:
        missing = parent
        while not missing.parent.is_dir() and missing.parent != missing:
            missing = missing.parent
        hint = f"{missing} does not exist either{where}"
    if _HUB_ID.match(source) and not source.lower().endswith(FILE_SUFFIXES):
        hint += f"; for the Hub dataset write {HUB_PREFIX}{source}"
    return f"no such file or folder {source} ({hint})"


def load_file(path: str | Path, *, label: str | None = None) -> datasets.Dataset:
    """A .jsonl/.json/.parquet file as a Dataset, for any stage: a malformed line is a `DataError` naming
    ``label: line N``, an empty file one naming the file (``label`` defaults to the path, e.g. ``"sft.data x.jsonl"``).
    """
    path = Path(path).expanduser()
    label = str(path) if label is None else label
    if not path.is_file():
        raise DataError(f"{label}: " + (f"{path} is a folder, not a file" if path.is_dir() else missing_path(str(path))))
    if path.suffix.lower() == ".parquet":
        table = _read_parquet(path, label=label)
        if table.num_rows == 0:
            _read_file(path, label=label)  # raises: the empty file named
        return datasets.Dataset(table)
    rows, _ = _read_file(path, label=label)
    try:
        return datasets.Dataset.from_list(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
        raise DataError(f"{label}: rows that cannot be held in one table (a field whose type differs between "
                        f"rows? {str(e).splitlines()[0][:200]})") from None


def read_file(path: Path, *, label: str) -> tuple[list[dict], list[str]]:
    """The rows of a .jsonl/.json/.parquet file and where each came from (``line N``, ``item N``, ``row N``); a bad
    line or an empty file is a `DataError` that names it."""
    return _read_file(Path(path), label=label)


def _read_file(path: Path, *, label: str) -> tuple[list[dict], list[str]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows, where = _read_jsonl(path, label=label)
    elif suffix == ".json":
        rows, where = _read_json(path, label=label)
    elif suffix == ".parquet":
        rows, where = _rows_of(_read_parquet(path, label=label))
    else:
        raise DataError(f"{label}: unsupported file type {suffix!r} (use {', '.join(FILE_SUFFIXES)})")
    if not rows:
        what = {".jsonl": "no JSON lines", ".json": "an empty JSON list", ".parquet": "0 rows"}[suffix]
        if path.stat().st_size == 0:
            what = "0 bytes"
        elif suffix != ".parquet" and not path.read_bytes().strip():
            what = "only blank lines"
        raise DataError(f"{label}: no rows (the file holds {what})")
    return rows, where


def _read_parquet(path: Path, *, label: str) -> pa.Table:
    if path.stat().st_size == 0:
        return pa.table({})
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
        raise DataError(f"{label}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") from None


def _decode(raw: bytes, *, label: str, first_line: int = 1) -> str:
    try:
        return raw.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as e:
        line = first_line + raw[: e.start].count(b"\n")
        raise DataError(f"{label}: line {line}: not UTF-8 text (byte {raw[e.start]:#04x}); save the file as UTF-8") \
            from None


def _read_jsonl(path: Path, *, label: str) -> tuple[list[dict], list[str]]:
    # Parsed by hand (not datasets' JSON builder) so every error can name its line.
    rows, where = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw, label=label, first_line=lineno)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{label}: line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{label}: line {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
            where.append(f"line {lineno}")
    return rows, where


def _read_json(path: Path, *, label: str) -> tuple[list[dict], list[str]]:
    """A .json file holding a list of objects; JSON Lines saved as .json also works."""
    text = _decode(path.read_bytes(), label=label)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("["):  # a broken list: its own position, not the JSON Lines reading's
            raise DataError(f"{label}: line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from None
        return _read_jsonl(path, label=label)
    if isinstance(data, dict):  # a single object is a one-line JSON Lines file
        return _read_jsonl(path, label=label)
    if not isinstance(data, list):
        raise DataError(f"{label}: expected a JSON list of objects, got {type(data).__name__}")
    for i, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{label}: item {i}: expected a JSON object, got {type(row).__name__}")
    return data, [f"item {i}" for i in range(1, len(data) + 1)]


def _read_saved(path: Path, split: str | None, *, label: str) -> tuple[list[dict], list[str]]:
    ds = load_saved(path, label=label, split=split)
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise DataError(f"{label}: choose a split with split=... (available: {', '.join(ds)})")
        ds = ds[split]
    elif split is not None:
        raise DataError(f"{label}: split={split!r} given but the folder holds a single Dataset")
    if len(ds) == 0:
        raise DataError(f"{label}: no rows (the dataset in the folder is empty)")
    return _rows_of(ds)


def _rows_of(table: datasets.Dataset | pa.Table) -> tuple[list[dict], list[str]]:
    rows = table.to_list() if isinstance(table, datasets.Dataset) else table.to_pylist()
    return rows, [f"row {i}" for i in range(1, len(rows) + 1)]


# --- validation and normalisation --------------------------------------------------


def _normalise(
    rows: list[dict], where: list[str], *, label: str, stem: str, columns: dict[str, str]
) -> list[dict]:
    if not rows:
        raise DataError(f"{label}: no rows")
    available = list(dict.fromkeys(k for row in rows for k in row))  # first-seen order
    rows = _rename(rows, columns, available, label)
    available = list(dict.fromkeys(k for row in rows for k in row))

    for col in ("problem", "answer"):
        if col not in available:
            guess = next((a for a in _ALIASES[col] if a in available), "<col>")
            raise DataError(
                f"{label}: no {col!r} column (available: {', '.join(available)}); "
                f"map one with columns: {{{col}: {guess}}}"
            )

    has_id = "id" in available
    extras = [c for c in available if c not in CORE_COLUMNS]
    seen: dict[str, str] = {}
    out = []
    for i, (row, at) in enumerate(zip(rows, where)):
        problem = row.get("problem")
        if not isinstance(problem, str):
            raise DataError(f"{label}: {at}: 'problem' must be a string, got {_kind(problem)}")
        if not problem.strip():
            raise DataError(f"{label}: {at}: empty 'problem'")

        answer = _as_text(row.get("answer"))
        if answer is None:
            got = _kind(row.get("answer"))
            raise DataError(f"{label}: {at}: 'answer' must be a string or number, got {got}")
        if not answer.strip():
            raise DataError(f"{label}: {at}: empty 'answer'")

        if has_id:
            id_ = _as_text(row.get("id"))
            if id_ is None or not id_.strip():
                got = repr(row.get("id"))
                raise DataError(f"{label}: {at}: 'id' must be a non-empty string or number, got {got}")
        else:
            id_ = f"{stem}-{i}"
        if id_ in seen:
            raise DataError(f"{label}: duplicate id {id_!r} at {seen[id_]} and {at}")
        seen[id_] = at

        source = stem if row.get("source") is None else str(row["source"])
        out.append(
            {"id": id_, "problem": problem, "answer": answer, "source": source}
            | {c: row.get(c) for c in extras}  # rows lacking an extra column get None
        )
    return out


def _rename(rows: list[dict], columns: dict[str, str], available: list[str], label: str) -> list[dict]:
    """Apply {ours: theirs}: copy each source column to our name, dropping the source name."""
    if not columns:
        return rows
    for ours, theirs in columns.items():
        if theirs not in available:
            raise DataError(
                f"{label}: columns maps {ours!r} to {theirs!r}, but there is no column {theirs!r} "
                f"(available: {', '.join(available)})"
            )
    sources = set(columns.values())
    # Renaming onto a column that stays would silently lose one of the two; refuse.
    for ours in columns:
        if ours in available and ours not in sources:
            raise DataError(
                f"{label}: columns maps {ours!r} to {columns[ours]!r}, but the source already has a "
                f"{ours!r} column; map it away too (e.g. 'orig_{ours}': '{ours}')"
            )
    return [
        {ours: row.get(theirs) for ours, theirs in columns.items()}
        | {k: v for k, v in row.items() if k not in sources and k not in columns}
        for row in rows
    ]


def _as_text(value: Any) -> str | None:
    """Strings as-is; numbers as text (18 -> "18", 2.0 -> "2", 0.5 -> "0.5"); else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):  # parquet/pandas write missing values as NaN
            return None
        return str(int(value)) if value.is_integer() else str(value)
    return None


def _kind(value: Any) -> str:
    return "nothing (missing or null)" if value is None else type(value).__name__


def _arrow_safe(rows: list[dict]) -> list[dict]:
    """JSON-encode extra columns whose values Arrow cannot hold in one column type.

    JSONL rows may mix e.g. ints and strings in one field; failing the whole load for
    an unused extra column would be unhelpful, and JSON text keeps the values readable.
    """
    for col in [c for c in rows[0] if c not in CORE_COLUMNS]:
        values = [row[col] for row in rows]
        try:
            pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            for row in rows:
                if row[col] is not None:
                    row[col] = json.dumps(row[col], ensure_ascii=False)
    return rows
