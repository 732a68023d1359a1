"""Data for the kd stage: the vocabulary check, the offline examples built from the teacher's own tokens, packing,
and the collator that carries the stored top-k into each batch.

Offline examples are the student's prompt (the conversation up to the assistant turn, rendered with the generation
prompt through the student's chat template, as for sft) followed by the teacher's own completion token ids, not a
re-tokenisation of the rebuilt assistant text (which need not split into the same tokens). Every token column is
aligned with `input_ids`: row i of `topk_ids` / `topk_logprobs` is the teacher's top-k for the token at position i
(the one `labels[i]` names), so prompt positions hold empty rows, and a row is cut or packed together with its token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets

from ..core.config import TrainConfig
from ..core.stages import summary_path
from .common import TrainError, fit_length
from .templates import IGNORE, render

KD_COLUMNS = ("completion_token_ids", "topk_ids", "topk_logprobs")
OFFLINE_FEATURES = datasets.Features({
    "input_ids": datasets.List(datasets.Value("int32")), "labels": datasets.List(datasets.Value("int32")),
    "topk_ids": datasets.List(datasets.List(datasets.Value("int32"))),
    "topk_logprobs": datasets.List(datasets.List(datasets.Value("float32"))),
    "length": datasets.Value("int32"), "masked_slots": datasets.Value("int32"), "k": datasets.Value("int32"),
})


# ------------------------------------------------------------------------------------------ vocabulary

def same_vocab(teacher_tok, student_tok) -> bool:
    return teacher_tok.get_vocab() == student_tok.get_vocab()


def check_vocab(teacher_tok, student_tok, teacher: str, student: str) -> int:
    """Teacher and student must map every token id to the same token (special tokens included). Returns the shared
    vocabulary size (the tokenizer's length); models may pad their embedding beyond it (Qwen2.5 0.5B vs 72B), and
    the loss cuts those rows off."""
    t, s = teacher_tok.get_vocab(), student_tok.get_vocab()
    if t == s:
        return len(s)
    t_by_id, s_by_id = {i: tok for tok, i in t.items()}, {i: tok for tok, i in s.items()}
    first = min(i for i in set(t_by_id) | set(s_by_id) if t_by_id.get(i) != s_by_id.get(i))
    raise TrainError(f"teacher {teacher} and student {student} have different vocabularies ({len(t)} vs {len(s)} "
                     f"tokens; id {first} is {t_by_id.get(first)!r} vs {s_by_id.get(first)!r}): set kd.cross_tokenizer "
                     f"hybrid (or uld) to distil across tokenizers, or use distill sft")


def check_embedding_rows(model, vocab_size: int, name: str, role: str) -> None:
    rows = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None \
        else model.config.get_text_config().vocab_size
    if rows < vocab_size:
        raise TrainError(f"{role} {name} has {rows} output rows for a tokenizer of {vocab_size} tokens; the model "
                         f"and its tokenizer do not belong together")


def traces_teacher(data: str) -> str | None:
    """The teacher named by the traces behind a filter output (filter report -> generate summary), if any."""
    import json

    report = summary_path("filter", data)
    try:
        source = json.loads(report.read_text()).get("input") if report.is_file() else None
        summary = summary_path("generate", source) if source else None
        if summary is not None and summary.is_file():
            return json.loads(summary.read_text()).get("teacher")
        if source and (Path(source) / "dataset").is_dir():
            ds = datasets.load_from_disk(str(Path(source) / "dataset"))
            return ds[0]["teacher"] if "teacher" in ds.column_names and len(ds) else None
    except (OSError, ValueError, KeyError):
        return None
    return None


def load_teacher_tokenizer(name: str, *, trust_remote_code: bool, local_only: bool):
    """The teacher's tokenizer; `name` may carry `@revision` as generate records it. None when it cannot be had."""
    from transformers import AutoTokenizer

    model, revision = name, None
    if not Path(name).exists() and "@" in name:
        model, revision = name.rsplit("@", 1)
    try:
        return AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code,
                                             local_files_only=local_only)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------- offline data

def require_kd_columns(ds: datasets.Dataset, source: str) -> None:
    missing = [c for c in KD_COLUMNS if c not in ds.column_names]
    if missing:
        raise TrainError(f"kd.data {source} has no {', '.join(missing)} column(s): offline KD needs the teacher's "
                         f"token ids and top-k logprobs; generate with --generate.sampling.logprobs K, or use --kd.mode "
                         f"online with a kd.teacher")


def encode_offline(ds: datasets.Dataset, tokenizer, cfg: TrainConfig, vocab_size: int, *,
                   strict_ids: bool) -> tuple[datasets.Dataset, dict]:
    """Student prompt ids + the teacher's completion ids, labels on the completion, top-k rows aligned per token.

    Slots whose id is outside the shared vocabulary (a teacher's embedding padding rows) are dropped, so their mass
    counts in the tail; with `strict_ids` (the teacher's tokenizer could not be checked) such an id is an error."""
    first = ds[0]["messages"]
    if not first or first[-1].get("role") != "assistant":
        raise TrainError("the training conversations do not end with an assistant turn (raw traces?); "
                         "train on the output of distill filter")
    prompts: dict[str, list[int]] = {}  # samples of a problem share their prompt: tokenise it once

    def enc(row):
        where = f"example {row.get('id')!r} sample {row.get('sample')!r}"
        c_ids, ids, lps = row["completion_token_ids"], row["topk_ids"], row["topk_logprobs"]
        if not c_ids or ids is None or lps is None:
            raise TrainError(f"kd.data: {where} has no teacher token ids or top-k logprobs; generate with "
                             f"--generate.sampling.logprobs K")
        if not (len(c_ids) == len(ids) == len(lps)):
            raise TrainError(f"kd.data: {where} has {len(c_ids)} completion tokens but {len(ids)} top-k rows; every "
                             f"completion token needs its teacher top-k (regenerate these traces)")
        if max(c_ids) >= vocab_size:
            raise TrainError(f"kd.data: {where} has teacher token id {max(c_ids)} beyond the student's {vocab_size} "
                             f"tokens: the teacher's vocabulary is not the student's; use distill sft")
        if _uniform_in_vocab(ids, lps, vocab_size):  # the usual case: no need to look at each row
            rows_i, rows_l, masked = ids, lps, 0
        else:
            rows_i, rows_l, masked = _checked_rows(ids, lps, vocab_size, strict_ids, where)
        key = repr(row["messages"][:-1])
        if key not in prompts:
            prompt, _ = render(tokenizer, row["messages"])
            prompts[key] = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        p_ids = prompts[key]
        n = len(p_ids)
        return {"input_ids": p_ids + list(c_ids), "labels": [IGNORE] * n + list(c_ids),
                "topk_ids": [[]] * n + rows_i, "topk_logprobs": [[]] * n + rows_l,
                "length": n + len(c_ids), "masked_slots": masked, "k": max(map(len, rows_i))}

    encoded = ds.map(enc, remove_columns=ds.column_names, features=OFFLINE_FEATURES, desc="tokenising",
                     load_from_cache_file=False)
    encoded, stats = fit_length(encoded, cfg, ("input_ids", "labels", "topk_ids", "topk_logprobs"),
                                features=OFFLINE_FEATURES)
    stats.update(topk=max(encoded["k"]), topk_slots_outside_vocab=sum(encoded["masked_slots"]))
    return encoded.remove_columns(["length", "masked_slots", "k"]), stats


def _checked_rows(ids, lps, vocab_size: int, strict_ids: bool, where: str):
    """Rows with ids outside the vocabulary dropped (an error with strict_ids); every row must keep one entry."""
    rows_i, rows_l, masked = [], [], 0
    for j, (r_i, r_l) in enumerate(zip(ids, lps)):
        if len(r_i) != len(r_l):
            raise TrainError(f"kd.data: {where} position {j} has {len(r_i)} top-k ids but {len(r_l)} logprobs")
        if r_i and max(r_i) >= vocab_size:
            if strict_ids:
                raise TrainError(f"kd.data: {where} has top-k id {max(r_i)} beyond the student's {vocab_size} "
                                 f"tokens: the teacher's vocabulary is not the student's; use distill sft")
            keep = [k for k, t in enumerate(r_i) if t < vocab_size]
            masked += len(r_i) - len(keep)
            r_i, r_l = [r_i[k] for k in keep], [r_l[k] for k in keep]
        if not r_i:
            raise TrainError(f"kd.data: {where} has no top-k entry at completion position {j}; every trained "
                             f"token needs the teacher's distribution (regenerate with sampling.logprobs >= 1)")
        rows_i.append(r_i)
        rows_l.append(r_l)
    return rows_i, rows_l, masked


def _uniform_in_vocab(ids: list[list[int]], lps: list[list[float]], vocab_size: int) -> bool:
    """Every row holds the same number (>= 1) of ids and logprobs, and every id lies inside the vocabulary."""
    import numpy as np

    try:
        a, b = np.asarray(ids, dtype=np.int64), np.asarray(lps, dtype=np.float64)
    except ValueError:  # ragged rows
        return False
    return a.ndim == 2 and a.shape == b.shape and a.shape[1] > 0 and int(a.max()) < vocab_size


def stop_coverage(ds: datasets.Dataset, stop_ids: list[int]) -> tuple[int, int]:
    """(completions that end with one of the student's end-of-turn ids, completions)."""
    ends = [ids[-1] if ids else None for ids in ds["completion_token_ids"]]
    return sum(e in stop_ids for e in ends), len(ends)


def pack(ds: datasets.Dataset, max_length: int, seed: int) -> datasets.Dataset:
    """TRL's best-fit-decreasing packing, over every token-aligned column (the top-k rows move with their tokens)."""
    from trl.data_utils import pack_dataset

    return pack_dataset(ds.shuffle(seed=seed), max_length, "bfd")


# ---------------------------------------------------------------------------------------------- collator

@dataclass
class KDCollator:
    """TRL's language-modelling collator (padded, or padding-free rows with position_ids) plus, when the examples
    carry them, the top-k columns as [B, L, k] tensors (id -1 / logprob -inf where nothing is stored), laid out
    exactly like input_ids; and with `prompts`, the left-padded prompts that on-policy generation starts from."""
    pad_token_id: int
    padding_free: bool = False
    topk: int = 0
    prompts: bool = False

    def __post_init__(self):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self._base = DataCollatorForLanguageModeling(pad_token_id=self.pad_token_id, padding_free=self.padding_free)

    def __call__(self, examples: list[dict]) -> dict:
        import numpy as np
        import torch

        keys = ("input_ids", "labels", "seq_lengths")
        batch = self._base([{k: e[k] for k in keys if k in e} for e in examples])
        if self.topk and "topk_ids" in examples[0]:
            ids = [self._rows(e["topk_ids"], np.int64, -1) for e in examples]
            lps = [self._rows(e["topk_logprobs"], np.float32, -np.inf) for e in examples]
            if self.padding_free:
                ids, lps = [np.concatenate(ids)], [np.concatenate(lps)]
            width = batch["input_ids"].shape[1]
            batch["topk_ids"] = torch.from_numpy(np.stack([self._pad(a, width, -1) for a in ids]))
            batch["topk_logprobs"] = torch.from_numpy(np.stack([self._pad(a, width, -np.inf) for a in lps]))
        if self.prompts:
            heads = [e["input_ids"][:next(i for i, t in enumerate(e["labels"]) if t != IGNORE)] for e in examples]
            width = max(map(len, heads))
            batch["prompts"] = torch.tensor([[self.pad_token_id] * (width - len(h)) + list(h) for h in heads])
            batch["prompt_attention_mask"] = torch.tensor([[0] * (width - len(h)) + [1] * len(h) for h in heads])
        return batch

    def _rows(self, rows: list[list], dtype, fill):
        import numpy as np

        out = np.full((len(rows), self.topk), fill, dtype=dtype)
        full = [i for i, r in enumerate(rows) if len(r) == self.topk]
        if full:  # the usual case: every completion row holds k entries
            out[full] = np.asarray([rows[i] for i in full], dtype=dtype)
        for i, r in enumerate(rows):
            if 0 < len(r) < self.topk:
                out[i, :len(r)] = r
        return out

    @staticmethod
    def _pad(a, width: int, fill):
        import numpy as np

        if a.shape[0] == width:
            return a
        pad = np.full((width - a.shape[0], a.shape[1]), fill, dtype=a.dtype)
        return np.concatenate([a, pad])
