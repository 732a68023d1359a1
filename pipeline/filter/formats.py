"""Traces from elsewhere: a dataset in a known public format -> rows of the traces contract (DESIGN.md).

    read(source) -> datasets.Dataset                 the input as stored (file, save_to_disk folder, Hub id)
    rename(ds, columns, source)                      filter.columns: {ours: theirs}, before anything looks at it
    detect(ds, name, source) -> format               filter.format, or the format the columns show
    convert(ds, format, source) -> Converted         one row per (problem, generation) in the traces contract

Formats (each the schema of its dataset card):
- distill            this project's own traces (distill generate): read as they are, nothing converted;
- openr1             open-r1/OpenR1-Math-220k: problem, answer, generations (list), correctness_math_verify,
                     correctness_llama, finish_reasons / is_reasoning_complete (lists, one per generation);
- openthoughts       open-thoughts/OpenThoughts-114k, bespokelabs/Bespoke-Stratos-17k: system, conversations
                     (list of {from, value}); the assistant's <|begin_of_thought|>...<|end_of_thought|> is the
                     reasoning, <|begin_of_solution|>...<|end_of_solution|> the final text; no gold column;
- numina             AI-MO/NuminaMath-CoT: problem, solution (the completion, no reasoning block; the gold is
                     the last \\boxed{} of it), messages, source;
- messages           TRL conversational: messages (user + assistant turns);
- prompt_completion  TRL prompt/completion, plain strings or conversational lists of messages.
For messages and prompt_completion the gold is an `answer` column, else the last \\boxed{} of a `solution`
column. A row with no gold gets answer None (the stage says what to set). Think tags are split as generate
splits them (backends.base.split_reasoning); boxed answers are read by checks.last_boxed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from ..backends.base import split_reasoning
from ..backends.prompts import CHAT_ROLES
from ..core import data as core_data
from ..core.io import data_fingerprint
from .checks import last_boxed
from .errors import FilterError

FORMATS = ("distill", "openr1", "openthoughts", "numina", "messages", "prompt_completion")
VERSION = 1  # bump when a conversion changes: outputs made from converted traces are then out of date

# what each format needs, for detection and for the one-line "no column" error
NEEDS = {"openr1": ("problem", "generations"), "openthoughts": ("conversations",), "numina": ("problem", "solution"),
         "messages": ("messages",), "prompt_completion": ("prompt", "completion")}
CARDS = {"openr1": "OpenR1-Math-220k", "openthoughts": "OpenThoughts-114k / Bespoke-Stratos-17k",
         "numina": "NuminaMath-CoT", "messages": "TRL conversational messages",
         "prompt_completion": "TRL prompt/completion", "distill": "distill generate traces"}
# the dataset's own per-generation verdicts (openr1): our trace column -> the dataset's column
VERDICT_COLUMNS = {"dataset_correct_math_verify": "correctness_math_verify", "dataset_correct_llama": "correctness_llama"}
ID_COLUMNS = ("id", "uuid", "problem_id")
THOUGHT = ("<|begin_of_thought|>", "<|end_of_thought|>")
SOLUTION = ("<|begin_of_solution|>", "<|end_of_solution|>")


@dataclass
class Converted:
    traces: datasets.Dataset
    format: str
    rows_read: int  # rows of the input (a row of openr1 holds several generations)
    has_reasoning: bool = True  # False: the format has no reasoning block (numina), the "no reasoning" check is off
    verdicts: dict[str, str] = field(default_factory=dict)  # trace column -> the dataset's verdict column present
    finish_from: str | None = None  # the dataset's column the finish_reason comes from


# ------------------------------------------------------------------------------------------------ reading

def read(source: str, scratch=None) -> datasets.Dataset | None:
    """A .jsonl/.json/.parquet file through core.data's readers (each bad line named), else None (the caller
    reads folders and Hub ids). With `scratch` (a callable that gives a folder for temporary files), a Parquet
    file of plain columns is streamed into an Arrow file there and memory-mapped instead: the same rows and
    values, without holding the input in memory."""
    path = Path(source).expanduser()
    if not path.is_file():
        return None
    if scratch is not None and path.suffix.lower() == ".parquet":
        mapped = _parquet_mapped(path, scratch)
        if mapped is not None:
            return mapped
    rows, _ = core_data._read_file(path, label=source)
    if not rows:
        raise FilterError(f"filter.input {source}: no rows")
    try:
        return datasets.Dataset.from_list(rows)
    except (ValueError, TypeError) as e:  # pyarrow's ArrowInvalid / ArrowTypeError: a column of mixed types
        raise FilterError(f"filter.input {source}: rows that Arrow cannot hold in one table "
                          f"({str(e).splitlines()[0][:200]})") from None


def _plain(t) -> bool:
    """An Arrow type whose Python values read back the same after from_list's own inference."""
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _plain(t.value_type)
    if pa.types.is_struct(t):
        return all(_plain(t.field(k).type) for k in range(t.num_fields))
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
            or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t))


def _parquet_mapped(path: Path, scratch) -> datasets.Dataset | None:
    """The Parquet file's rows in a memory-mapped Arrow file under scratch(); None (read it the usual way, which
    names any problem): empty, unreadable, or a column type other than plain strings, numbers, lists, structs."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow.remove_metadata()  # no datasets/pandas metadata: values as plain Python
        if pf.metadata.num_rows == 0 or not schema.names or len(set(schema.names)) != len(schema.names) \
                or not all(_plain(f.type) for f in schema):
            return None
        fd, dest = tempfile.mkstemp(suffix=".arrow", prefix="input-", dir=scratch())
        os.close(fd)
        with pa.OSFile(dest, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in pf.iter_batches(batch_size=1000):
                writer.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=schema))
        return datasets.Dataset.from_file(dest)
    except (pa.ArrowException, OSError, ValueError, TypeError):
        return None


def input_fingerprint(ds: datasets.Dataset, source: str) -> str:
    """The input's content: its Arrow files (folders, the Hub cache) or the bytes of the file it was read from."""
    path = Path(source).expanduser()
    if path.is_file():  # (a file is read in memory, or memory-mapped from a scratch copy: its bytes either way)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    return data_fingerprint(ds)


def rename(ds: datasets.Dataset, columns: dict[str, str], source: str) -> datasets.Dataset:
    """filter.columns {ours: theirs}: the input's column `theirs` is read as `ours`."""
    if not columns:
        return ds
    have = ds.column_names
    for ours, theirs in columns.items():
        if theirs not in have:
            raise FilterError(f"filter.columns maps {ours!r} to {theirs!r}, but {source} has no column {theirs!r} "
                              f"(columns: {', '.join(have)})")
        if ours in have and ours not in columns.values() and ours != theirs:
            raise FilterError(f"filter.columns maps {ours!r} to {theirs!r}, but {source} already has a column "
                              f"{ours!r}; map it away too (e.g. orig_{ours}: {ours})")
    return ds.rename_columns({theirs: ours for ours, theirs in columns.items() if ours != theirs})


def detect(ds: datasets.Dataset, name: str, source: str) -> str:
    """The format filter.format names (its columns checked), or with `auto` the one the columns show."""
    cols = set(ds.column_names)
    if name != "auto":
        missing = [c for c in NEEDS.get(name, ()) if c not in cols]
        if missing:
            raise FilterError(f"filter.input {source} read as {name} ({CARDS[name]}) has no column '{missing[0]}' "
                              f"(columns: {', '.join(ds.column_names)}); map one with filter.columns: "
                              f"{{{missing[0]}: <column>}}")
        return name
    if cols & {"reasoning", "final", "finish_reason"}:
        return "distill"  # the schema check names whatever else is missing
    for fmt in ("openr1", "openthoughts", "numina", "messages", "prompt_completion"):
        if all(c in cols for c in NEEDS[fmt]):
            return fmt
    raise FilterError(f"filter.input {source}: the columns ({', '.join(ds.column_names)}) are in no format filter "
                      f"reads; name one with filter.format ({', '.join(FORMATS)}) and map its columns with "
                      f"filter.columns (e.g. {{messages: conversation}})")


# ------------------------------------------------------------------------------------------------ converting

def convert(ds: datasets.Dataset, fmt: str, source: str, *, progress: bool = True) -> Converted:
    """One traces row per (problem, generation): id (the input's id/uuid column, else one per distinct problem
    text), sample (0.. within the id), problem, answer (None: no gold), messages (the prompt), completion,
    reasoning, final, finish_reason, and for openr1 the dataset's own verdicts."""
    per_row = {"openr1": _openr1, "openthoughts": _openthoughts, "numina": _numina, "messages": _messages,
               "prompt_completion": _prompt_completion}[fmt]
    cols = ds.column_names
    id_col = next((c for c in ID_COLUMNS if c in cols), None)
    stem = _stem(source)
    verdicts = {ours: theirs for ours, theirs in VERDICT_COLUMNS.items() if fmt == "openr1" and theirs in cols}
    ids: dict[str, str] = {}  # problem text -> id, when the input has no id column
    samples: dict[str, int] = {}
    counter = [0]

    def explode(batch: dict) -> dict:
        out: dict[str, list] = {k: [] for k in ("id", "sample", "problem", "answer", "messages", "completion",
                                                "reasoning", "final", "finish_reason", *verdicts)}
        size = len(next(iter(batch.values())))
        for k in range(size):
            row = {c: batch[c][k] for c in batch}
            at = counter[0]
            counter[0] += 1
            for t in per_row(row, f"{source}: row {at + 1}"):
                problem = t["problem"]
                if id_col is not None and row.get(id_col) not in (None, ""):
                    id_ = str(row[id_col])
                else:
                    id_ = ids.setdefault(problem, f"{stem}-{len(ids)}")
                out["id"].append(id_)
                out["sample"].append(samples.get(id_, 0))
                samples[id_] = samples.get(id_, 0) + 1
                for key in out:
                    if key not in ("id", "sample"):
                        out[key].append(t.get(key))
        return out

    features = datasets.Features({
        "id": datasets.Value("string"), "sample": datasets.Value("int64"), "problem": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "completion": datasets.Value("string"), "reasoning": datasets.Value("string"),
        "final": datasets.Value("string"), "finish_reason": datasets.Value("string"),
        **{c: datasets.Value("bool") for c in verdicts}})
    fingerprint = hashlib.sha256(json.dumps([ds._fingerprint, fmt, VERSION]).encode()).hexdigest()[:16]
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    was_enabled = is_progress_bar_enabled()
    if not progress:
        disable_progress_bar()
    try:
        traces = ds.map(explode, batched=True, batch_size=1000, remove_columns=cols, features=features,
                        load_from_cache_file=False, new_fingerprint=fingerprint, desc=f"reading {fmt} traces",
                        keep_in_memory=not ds.cache_files)
    finally:
        if was_enabled:
            enable_progress_bar()
    finish_from = None
    if fmt == "openr1":
        finish_from = next((c for c in ("finish_reasons", "is_reasoning_complete") if c in cols), None)
    return Converted(traces, fmt, len(ds), has_reasoning=fmt != "numina", verdicts=verdicts, finish_from=finish_from)


def _openr1(row: dict, where: str) -> list[dict]:
    gold = _gold(row.get("answer"))
    prompt = [{"role": "user", "content": _need_text(row, "problem", where)}]
    finish, complete = row.get("finish_reasons") or [], row.get("is_reasoning_complete") or []
    out = []
    for j, generation in enumerate(row.get("generations") or []):
        completion, reasoning, final = split_reasoning(generation or "")
        if j < len(finish) and finish[j]:
            finish_reason = finish[j]
        elif j < len(complete) and complete[j] is not None:
            finish_reason = "stop" if complete[j] else "length"
        else:
            finish_reason = "stop"  # the dataset does not say; the format check still sees an unclosed think
        t = {"problem": prompt[0]["content"], "answer": gold, "messages": prompt, "completion": completion,
             "reasoning": reasoning, "final": final, "finish_reason": finish_reason}
        for ours, theirs in VERDICT_COLUMNS.items():
            labels = row.get(theirs) or []
            t[ours] = bool(labels[j]) if j < len(labels) and labels[j] is not None else None
        out.append(t)
    return out


def _openthoughts(row: dict, where: str) -> list[dict]:
    turns = [_turn(m, where) for m in row.get("conversations") or []]
    system = row.get("system")
    if system and not any(m["role"] == "system" for m in turns):
        turns = [{"role": "system", "content": system}] + turns
    prompt, text = _split_turns(turns, "conversations", where)
    complete = all(not (o in text and c not in text) for o, c in (THOUGHT, SOLUTION))
    text = text.replace(THOUGHT[0], "<think>").replace(THOUGHT[1], "</think>")
    text = text.replace(SOLUTION[0], "").replace(SOLUTION[1], "")
    completion, reasoning, final = split_reasoning(text)
    return [{"problem": _last_user(prompt, "conversations", where), "answer": _gold_of(row), "messages": prompt,
             "completion": completion, "reasoning": reasoning, "final": final,
             "finish_reason": "stop" if complete else "length"}]


def _numina(row: dict, where: str) -> list[dict]:
    problem = _need_text(row, "problem", where)
    solution = row.get("solution") or ""
    gold = _gold(row["answer"]) if row.get("answer") not in (None, "") else (last_boxed(solution) or None)
    return [{"problem": problem, "answer": gold, "messages": [{"role": "user", "content": problem}],
             "completion": solution, "reasoning": "", "final": solution.strip(), "finish_reason": "stop"}]


def _messages(row: dict, where: str) -> list[dict]:
    turns = [_turn(m, where) for m in row.get("messages") or []]
    prompt, text, reasoning_field = _split_turns(turns, "messages", where, with_reasoning=True)
    return [_trace(prompt, text, reasoning_field, row, "messages", where)]


def _prompt_completion(row: dict, where: str) -> list[dict]:
    p, c = row.get("prompt"), row.get("completion")
    prompt = [{"role": "user", "content": p}] if isinstance(p, str) else [_turn(m, where) for m in p or []]
    if isinstance(c, str):
        text, reasoning_field = c, None
    else:
        turns = [_turn(m, where) for m in c or []]
        said = [m for m in turns if m["role"] == "assistant"]
        if not said:
            raise FilterError(f"{where}: 'completion' has no assistant turn (TRL prompt/completion: a string or "
                              f"a list of assistant messages)")
        text = "\n\n".join(m["content"] for m in said)
        reasoning_field = said[-1].get("reasoning")
    return [_trace(prompt, text, reasoning_field, row, "prompt", where)]


# ------------------------------------------------------------------------------------------------ helpers

def _trace(prompt: list[dict], text: str, reasoning_field: str | None, row: dict, column: str, where: str) -> dict:
    completion, reasoning, final = split_reasoning(text or "", reasoning_field)
    return {"problem": _last_user(prompt, column, where), "answer": _gold_of(row),
            "messages": [{"role": m["role"], "content": m["content"]} for m in prompt], "completion": completion,
            "reasoning": reasoning, "final": final, "finish_reason": "stop"}


def _turn(m, where: str) -> dict:
    if not isinstance(m, dict):
        raise FilterError(f"{where}: a turn should be a {{role, content}} (or {{from, value}}) object, got "
                          f"{type(m).__name__}")
    role = CHAT_ROLES.get(str(m.get("role", m.get("from"))).lower(), str(m.get("role", m.get("from"))))
    content = m.get("content", m.get("value"))
    if isinstance(content, list):  # content parts: [{type: text, text: ...}]
        content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    turn = {"role": role, "content": content or ""}
    reasoning = m.get("reasoning_content") or m.get("reasoning") or m.get("thinking")
    if reasoning:
        turn["reasoning"] = reasoning
    return turn


def _split_turns(turns: list[dict], column: str, where: str, with_reasoning: bool = False):
    """(the turns before the last assistant turn, its text[, its separate reasoning field])."""
    last = next((i for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] == "assistant"), None)
    if last is None:
        raise FilterError(f"{where}: '{column}' has no assistant turn (roles: "
                          f"{', '.join(m['role'] for m in turns) or 'none'}); traces need the teacher's answer")
    prompt = [{"role": m["role"], "content": m["content"]} for m in turns[:last]]
    if with_reasoning:
        return prompt, turns[last]["content"], turns[last].get("reasoning")
    return prompt, turns[last]["content"]


def _last_user(prompt: list[dict], column: str, where: str) -> str:
    users = [m["content"] for m in prompt if m["role"] == "user" and m["content"].strip()]
    if not users:
        raise FilterError(f"{where}: '{column}' has no user turn before the assistant's; the problem is the user turn")
    return users[-1]


def _need_text(row: dict, column: str, where: str) -> str:
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        raise FilterError(f"{where}: '{column}' should be a non-empty string, got {value!r:.60}")
    return value


def _gold_of(row: dict) -> str | None:
    """The gold of a row: an `answer` column, else the last \\boxed{} of a `solution` column, else None."""
    if row.get("answer") not in (None, ""):
        return _gold(row["answer"])
    if isinstance(row.get("solution"), str):
        return last_boxed(row["solution"]) or None
    return None


def _gold(value) -> str | None:
    """A gold value as text; a worked solution (it holds a \\boxed{}) gives its last box."""
    text = core_data._as_text(value)
    if text is None or not text.strip():
        return None
    return last_boxed(text) or text if "\\boxed" in text or "\\fbox" in text else text


def _stem(source: str) -> str:
    name = source.rstrip("/").rsplit("/", 1)[-1]
    return Path(name).stem or "traces"
