"""The dataset formats sft and kd train on, read into one `messages` column of ChatML turns ({role, content}).

    messages            TRL conversational: [{role, content}, ...] (also ShareGPT {from, value} turns under it)
    conversations       ShareGPT: [{from, value}, ...] with human/gpt or user/assistant, and an optional `system`
                        column (OpenThoughts-114k, Bespoke-Stratos-17k)
    prompt, completion  TRL prompt/completion: both plain strings (one user turn, one assistant turn) or both
                        conversational (lists of turns); only the completion's assistant turns are trained

TRL's own helpers do what they can: `is_conversational` / `is_conversational_from_value` tell the format and
`maybe_convert_to_chatml` turns {from, value} into {role, content}. What TRL lacks, and is written here:
- ShareGPT's role names: TRL renames the keys but keeps `human` / `gpt`, which a chat template renders as roles
  of those names (and the turn would not count as the assistant's); they become user / assistant here;
- the `system` column of OpenThoughts / Bespoke-Stratos: TRL ignores it; it becomes the first turn here;
- plain-string prompt/completion: TRL concatenates them as raw text; here they are one user and one assistant
  turn through the student's chat template, since the student is served through it (evaluate, vLLM);
- every row checked before training, the first bad one named by its row number (TRL checks the first row only,
  and a bad row later fails inside `map` with no row).
"""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa

from ..backends.prompts import CHAT_ROLES
from ..core.errors import DistillError

FORMATS = "messages ([{role, content}]), conversations ([{from, value}], ShareGPT) or prompt + completion (TRL)"
VERSION = 1  # bump when a conversion changes (it is part of the converted data's fingerprint)
MESSAGE = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]


class FormatError(DistillError, ValueError):
    """A training set in no format sft/kd read, or a row that cannot be trained (named by its row number)."""


def detect(ds: datasets.Dataset) -> str:
    cols = ds.column_names
    if "messages" in cols:
        return "messages"
    if "conversations" in cols:
        return "conversations"
    if "prompt" in cols and "completion" in cols:
        return "prompt_completion"
    return ""


def _turns(value, role: str | None, where: str) -> list[dict]:
    """One column's value as ChatML turns: a list of turns ({role, content} or {from, value}), or a plain string
    (one turn of `role`)."""
    from trl.data_utils import maybe_convert_to_chatml

    if isinstance(value, str) and role is not None:
        return [{"role": role, "content": value}]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise FormatError(f"{where}: expected a list of turns, found {type(value).__name__}")
    # Arrow gives every turn every field of the column's struct (None where a row has no such key); TRL's
    # converter would then overwrite a role with a missing `from`
    turns = [{k: v for k, v in t.items() if v is not None} for t in value]
    turns = maybe_convert_to_chatml({"messages": turns})["messages"]
    out = []
    for j, t in enumerate(turns):
        r, content = t.get("role"), t.get("content")
        if not isinstance(r, str) or not isinstance(content, str):
            raise FormatError(f"{where}: turn {j} has no role/content (or from/value) strings: {sorted(t)}")
        out.append({"role": CHAT_ROLES.get(r, r), "content": content})  # TRL keeps human/gpt
    return out


def to_messages(ds: datasets.Dataset, source: str, key: str) -> datasets.Dataset:
    """`ds` with a `messages` column of ChatML turns (and `prompt_turns` for prompt/completion: how many leading
    turns are the prompt). Already ChatML `messages` with no `system` column: returned as it is. Every row then
    has to end with an assistant turn, else a FormatError naming the row."""
    from ..core.config import config_hash
    from ..core.io import data_fingerprint

    fmt = detect(ds)
    if not fmt:
        raise FormatError(f"{key} {source} has no 'messages' column (nor conversations, nor prompt + completion): "
                          f"use {FORMATS}; columns: {', '.join(ds.column_names)}")
    system = "system" in ds.column_names and fmt != "prompt_completion"
    if fmt == "messages" and not system and _is_chatml(ds.features["messages"]):
        _check_rows(ds, source, key, None)
        return ds

    def convert(row, i):
        where = f"{key} {source} row {i}"
        if fmt == "prompt_completion":
            prompt = _turns(row["prompt"], "user", f"{where} prompt")
            messages = prompt + _turns(row["completion"], "assistant", f"{where} completion")
            out = {"messages": messages, "prompt_turns": len(prompt)}
        else:
            messages = _turns(row[fmt], None, where)
            sys_text = row.get("system") if system else None
            if sys_text and not (messages and messages[0]["role"] == "system"):
                messages = [{"role": "system", "content": sys_text}] + messages
            out = {"messages": messages}
        return out

    drop = [c for c in ("conversations", "prompt", "completion", "system", "messages") if c in ds.column_names]
    features = ds.features.copy()
    for c in drop:
        del features[c]
    features["messages"] = MESSAGE
    if fmt == "prompt_completion":
        features["prompt_turns"] = datasets.Value("int32")
    out = ds.map(convert, with_indices=True, remove_columns=drop, features=features, load_from_cache_file=False,
                 desc=f"reading {fmt}", new_fingerprint=config_hash({"data": data_fingerprint(ds), "format": fmt,
                                                                    "version": VERSION}))
    _check_rows(out, source, key, "prompt_turns" if fmt == "prompt_completion" else None)
    return out


def _is_chatml(feature) -> bool:
    """A list-of-struct feature whose turns hold role and content (and no ShareGPT from/value)."""
    inner = feature[0] if isinstance(feature, list) and feature else getattr(feature, "feature", None)
    return isinstance(inner, dict) and {"role", "content"} <= set(inner) and not {"from", "value"} & set(inner)


def _check_rows(ds: datasets.Dataset, source: str, key: str, prompt_col: str | None) -> None:
    """Every row ends with an assistant turn (and, for prompt/completion, the completion holds one): read from the
    Arrow columns in batches, roles only, so a large set is checked in seconds."""
    cols = ["messages"] + ([prompt_col] if prompt_col else [])
    start = 0
    for batch in ds.select_columns(cols).with_format("arrow").iter(batch_size=8192):
        col = batch.column("messages")
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        lengths = np.asarray(col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        flat = col.flatten()
        roles = flat.flatten()[flat.type.get_field_index("role")].to_pylist() if len(flat) else []
        ends = np.cumsum(lengths)
        firsts = batch.column(prompt_col).to_pylist() if prompt_col else None
        for r in range(len(lengths)):
            i = start + r
            n = int(lengths[r])
            if n == 0:
                raise FormatError(f"{key} {source} row {i} has no turns")
            last = roles[ends[r] - 1]
            if last != "assistant":
                raise FormatError(f"{key} {source} row {i} ends with a {last!r} turn, not an assistant turn (a "
                                  f"prompt without its answer: raw traces?); every training conversation must end "
                                  f"with the assistant's answer (train on the output of distill filter)")
            if firsts is not None and firsts[r] >= n:
                raise FormatError(f"{key} {source} row {i} has an empty completion")
        start += len(lengths)
