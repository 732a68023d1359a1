"""Examples and batches for cross-tokenizer KD (kd.cross_tokenizer): the student's tokens, the teacher's, the spans.

Each example is the student's prompt (its own chat template) followed by its own tokens of the teacher's completion,
with labels on the completion, plus the spans that align those tokens with the teacher's (xtok.py):
    offline  the teacher's side is the ids it generated and the top-k it stored for each of them, so the student
             learns the exact text the teacher wrote (as the same-tokenizer offline path does).
    online   the teacher's side is its own prompt (its chat template) and its tokenisation of the assistant text; the
             teacher model scores it at training time.
Per-token columns (`xt_group`, `xt_last`) line up with `input_ids`; teacher rows are a list per example. Spans are
numbered per example; the collator renumbers them across the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import datasets

from ..core.config import KDConfig
from .common import TrainError, fit_length
from .templates import IGNORE, TemplateError, preflight, render
from .xtok import align_completion, invalid_utf8, shared_vocabulary, token_bytes

ONLINE_TOPK = 128  # a live teacher's distribution is kept as its top-128 plus the rest as one bucket


@dataclass
class Pair:
    """The two tokenizers and what the loss needs to know about them."""
    student: object
    teacher: object
    student_stop: int        # the student's end-of-turn token
    teacher_stop: int        # the teacher's end-of-turn token (online: appended after the teacher's text)
    vocab_map: list[int]     # teacher id -> student id with the same bytes (-1: none)
    matched_weight: float    # hybrid: weight of the shared-vocabulary term


def teacher_turn_end(teacher_tok) -> int:
    """The token that closes the teacher's assistant turn (its chat template's, read off a plain exchange: templates
    that strip past reasoning would refuse a real one), else its EOS."""
    if teacher_tok.chat_template:
        try:
            return preflight(teacher_tok, [{"role": "user", "content": "1 + 1?"},
                                           {"role": "assistant", "content": "2"}]).stop_ids[0]
        except (TrainError, TemplateError):
            pass
    if teacher_tok.eos_token_id is None:
        raise TrainError("the teacher's tokenizer has neither a chat template that ends a turn nor an EOS token")
    return teacher_tok.eos_token_id


def prompt_overlap(teacher_tok, msgs: list[dict], t_text: str) -> int:
    """How many leading characters of the answer the teacher's generation prompt already holds: a template whose
    generation prompt opens the answer (R1's "<think>\n") has the teacher read on from there (the student's bytes
    of that opening are trained by CE only). None where the template writes the answer after the whole generation
    prompt; an overlap of whitespace alone is no opener ("assistant\n" before an answer that starts with "\n")."""
    import jinja2

    content = msgs[-1]["content"]
    try:
        full = teacher_tok.apply_chat_template(msgs, tokenize=False)
        if full.startswith(t_text + content):
            return 0
    except jinja2.TemplateError:  # a template that refuses a finished turn: judge by the prompt alone
        pass
    return next((k for k in range(min(len(content), 64), 0, -1)
                 if t_text.endswith(content[:k]) and content[:k].strip()), 0)


def make_pair(student_tok, teacher_tok, student_stop: int, cfg: KDConfig) -> Pair:
    if cfg.mode != "offline" and not teacher_tok.chat_template:
        raise TrainError("kd.teacher has no chat template: online cross-tokenizer KD renders the teacher's own prompt; "
                         "use kd.mode offline (traces generated with top-k logprobs)")
    t_stop = teacher_turn_end(teacher_tok)
    mapping = shared_vocabulary(teacher_tok, student_tok, pairs={t_stop: student_stop})
    real = mapping[:len(teacher_tok)]
    weight = cfg.hybrid_matched_weight
    if weight is None:  # GOLD's rule: the shared share of the teacher's vocabulary
        weight = sum(m >= 0 for m in real) / max(len(real), 1)
    return Pair(student_tok, teacher_tok, student_stop, t_stop, mapping, float(weight))


def _chosen(token: int, ids: list[int], lps: list[float]) -> tuple[float, bool]:
    """The teacher's log-prob of the token it wrote: from its top-k row, else (sampled outside the stored top-k) the
    mass outside the top-k, an upper bound. Second value: whether it was outside."""
    for i, lp in zip(ids, lps):
        if i == token:
            return float(lp), False
    rest = -math.expm1(min(0.0, math.log(sum(math.exp(x) for x in lps)) if lps else -math.inf))
    return math.log(max(rest, 1e-12)), True


def encode(ds: datasets.Dataset, pair: Pair, cfg: KDConfig) -> tuple[datasets.Dataset, dict]:
    """Cross-tokenizer examples (offline from the stored top-k, or online) and alignment statistics."""
    offline = cfg.mode == "offline"
    t_table = token_bytes(pair.teacher)
    t_stops = {pair.teacher_stop, pair.teacher.eos_token_id} - {None}  # what ends a teacher's turn (not any special)
    prompts: dict[str, tuple[list[int], list[int]]] = {}

    def enc(row):
        msgs = row["messages"]
        key = repr(msgs[:-1])
        if key not in prompts:
            t_text = "" if offline else pair.teacher.apply_chat_template(msgs[:-1], tokenize=False,
                                                                         add_generation_prompt=True)
            t_prompt = pair.teacher(t_text, add_special_tokens=False)["input_ids"] if t_text else []
            prompts[key] = (t_text, t_prompt)
        t_text, t_prompt = prompts[key]
        t_start, bad_utf8, t_bad = 0, False, []
        if offline:
            c_ids = list(row["completion_token_ids"])
            stop = bool(c_ids) and c_ids[-1] in t_stops
            raw = b"".join(t_table[i] for i in (c_ids[:-1] if stop else c_ids))
            # a sampled stray byte token is not UTF-8: the student reads U+FFFD there, and the spans are matched
            # around it (xtok.align_completion), so the rest of the completion is still distilled
            t_bad = invalid_utf8(raw)
            content, bad_utf8 = raw.decode("utf-8", errors="replace"), bool(t_bad)
            t_ids = c_ids
        else:
            content = msgs[-1]["content"]
            lead = prompt_overlap(pair.teacher, msgs, t_text)
            t_start = len(content[:lead].encode("utf-8"))
            t_ids = pair.teacher(content[lead:], add_special_tokens=False)["input_ids"] + [pair.teacher_stop]
            stop = True
        student_msgs = [*msgs[:-1], {"role": "assistant", "content": content}]
        prompt, completion = render(pair.student, student_msgs)
        s_prompt = pair.student(prompt, add_special_tokens=False)["input_ids"]
        a = align_completion(pair.student, content, completion, t_ids, t_table, student_stop=pair.student_stop,
                             teacher_stop=stop, teacher_start=t_start, teacher_bad=t_bad)
        n = len(s_prompt)
        ids = s_prompt + a.student_ids
        groups = [(s, t) for s, t in a.groups if n + s[-1] < cfg.max_length] \
            if cfg.long_examples == "truncate" else a.groups
        group, last = [-1] * len(ids), [0] * len(ids)
        t_rows, t_group, t_last = [], [], []
        for g, (s_pos, t_pos) in enumerate(groups):
            for p in s_pos:
                group[n + p] = g
            last[n + s_pos[-1]] = 1
            t_rows += t_pos
            t_group += [g] * len(t_pos)
            t_last += [0] * (len(t_pos) - 1) + [1]
        out = {"input_ids": ids, "labels": [IGNORE] * n + a.student_ids, "xt_group": group, "xt_last": last,
               "xt_t_group": t_group, "xt_t_last": t_last, "length": len(ids), "spans": len(groups),
               "split_spans": sum(len(s) > 1 or len(t) > 1 for s, t in groups),
               "covered_bytes": a.covered_bytes, "content_bytes": a.content_bytes, "not_utf8_bytes": a.not_utf8_bytes,
               "outside_topk": 0,
               "bad_utf8": int(bad_utf8)}
        if offline:
            top_i, top_l = row["topk_ids"], row["topk_logprobs"]
            if top_i is None or len(top_i) != len(t_ids):
                raise TrainError(f"kd.data: example {row.get('id')!r} sample {row.get('sample')!r} has "
                                 f"{len(t_ids)} completion tokens but {0 if top_i is None else len(top_i)} top-k "
                                 f"rows; regenerate with --generate.sampling.logprobs K")
            chosen = [_chosen(t_ids[j], top_i[j], top_l[j]) for j in t_rows]
            out.update(xt_t_ids=[list(top_i[j]) for j in t_rows], xt_t_lps=[list(top_l[j]) for j in t_rows],
                       xt_t_chosen=[c for c, _ in chosen], outside_topk=sum(o for _, o in chosen))
        else:  # logits at teacher position p predict the token at p + 1
            out.update(xt_t_input_ids=t_prompt + t_ids, xt_t_pos=[len(t_prompt) + j - 1 for j in t_rows],
                       xt_t_token=[t_ids[j] for j in t_rows])
        return out

    encoded = ds.map(enc, remove_columns=ds.column_names, desc="aligning tokenizers", load_from_cache_file=False)
    encoded, stats = fit_length(encoded, cfg, ("input_ids", "labels", "xt_group", "xt_last"))
    covered, total = sum(encoded["covered_bytes"]), sum(encoded["content_bytes"])
    stats.update(spans=sum(encoded["spans"]), split_spans=sum(encoded["split_spans"]),
                 alignment_coverage=round(covered / total, 6) if total else 1.0,
                 not_utf8_share=round(sum(encoded["not_utf8_bytes"]) / total, 6) if total else 0.0,
                 teacher_tokens_outside_topk=sum(encoded["outside_topk"]), completions_not_utf8=sum(encoded["bad_utf8"]))
    if offline:
        stats["topk"] = max((len(r) for rows in encoded["xt_t_ids"][:50] for r in rows), default=0)
    drop = ["length", "spans", "split_spans", "covered_bytes", "content_bytes", "not_utf8_bytes", "outside_topk",
            "bad_utf8"]
    return encoded.remove_columns(drop), stats


@dataclass
class XtokCollator:
    """Padded student batches plus the spans renumbered across the batch; offline the teacher's top-k rows flattened,
    online the teacher's token ids (right-padded) and where each of its rows lies."""
    pad_token_id: int
    teacher_pad_id: int = 0

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        pad = lambda seq, fill, w=width: list(seq) + [fill] * (w - len(seq))  # noqa: E731
        batch = {"input_ids": torch.tensor([pad(e["input_ids"], self.pad_token_id) for e in examples]),
                 "attention_mask": torch.tensor([pad([1] * len(e["input_ids"]), 0) for e in examples]),
                 "labels": torch.tensor([pad(e["labels"], IGNORE) for e in examples])}
        groups, t_group, offset = [], [], 0
        for e in examples:
            groups.append(pad([g + offset if g >= 0 else -1 for g in e["xt_group"]], -1))
            t_group += [g + offset for g in e["xt_t_group"]]
            offset += len(set(e["xt_t_group"]))
        batch.update(xt_group=torch.tensor(groups), xt_last=torch.tensor([pad(e["xt_last"], 0) for e in examples],
                                                                          dtype=torch.bool),
                     xt_t_group=torch.tensor(t_group, dtype=torch.long),
                     xt_t_last=torch.tensor([x for e in examples for x in e["xt_t_last"]], dtype=torch.bool),
                     xt_spans=torch.tensor(offset))
        if "xt_t_ids" in examples[0]:
            rows = [r for e in examples for r in e["xt_t_ids"]]
            k = max((len(r) for r in rows), default=1)
            batch["xt_t_ids"] = torch.tensor([list(r) + [-1] * (k - len(r)) for r in rows], dtype=torch.long)
            batch["xt_t_lps"] = torch.tensor([list(r) + [-math.inf] * (k - len(r))
                                              for e in examples for r in e["xt_t_lps"]], dtype=torch.float32)
            batch["xt_t_chosen"] = torch.tensor([c for e in examples for c in e["xt_t_chosen"]], dtype=torch.float32)
        else:
            t_width = max(len(e["xt_t_input_ids"]) for e in examples)
            batch["xt_t_input_ids"] = torch.tensor([pad(e["xt_t_input_ids"], self.teacher_pad_id, t_width)
                                                    for e in examples])
            batch["xt_t_attention_mask"] = torch.tensor([pad([1] * len(e["xt_t_input_ids"]), 0, t_width)
                                                         for e in examples])
            batch["xt_t_pos"] = torch.tensor([[b, p] for b, e in enumerate(examples) for p in e["xt_t_pos"]],
                                             dtype=torch.long).reshape(-1, 2)
            batch["xt_t_token"] = torch.tensor([t for e in examples for t in e["xt_t_token"]], dtype=torch.long)
        return batch
