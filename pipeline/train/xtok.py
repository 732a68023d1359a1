"""Cross-tokenizer alignment: the teacher's tokens and the student's tokens of the same text, matched by bytes.

Teacher and student write the same completion with different tokens ("arianism" vs "arian" + "ism", one token
for "你好" vs four byte tokens). Every token of either side covers a range of the text's UTF-8 bytes; a byte
offset where both sides end a token is a common boundary, and the tokens between two consecutive common
boundaries form a span that covers exactly the same bytes on both sides. Spans are what cross-tokenizer KD
compares (`xtok_losses.py`): where a side splits a span into several tokens, its distribution over the span is the
sequence probability of that split (TRL GOLD's extended ULD, "bayesian" merge).

Tokens that map 1:1 with the same bytes on both sides form the shared vocabulary (`shared_vocabulary`), on which
a direct KL is possible (GOLD's hybrid loss); the student's end-of-turn token and the teacher's stop token are
the same event whatever their strings, so they are paired too.

TRL has the grouping (GOLD's `ULDLoss._align_by_byte_offsets`) but reads offsets off the fast tokenizer's
character offsets and supports ByteLevel tokenizers only. Here the bytes of each token id come straight from the
vocabulary (ByteLevel pieces through the GPT-2 byte table, SentencePiece pieces with "▁" and <0xNN> byte
fallback), because the teacher's side is its generated ids, not a re-tokenisation of the text: sampling produces
non-canonical splits that a tokenizer would never output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .common import TrainError

_METASPACE = "\u2581"  # SentencePiece's "▁": a space


def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def _scheme(tokenizer) -> str:
    """'bytelevel' (GPT-2 style: every byte is a printable character), 'metaspace' (SentencePiece: ▁ for a space,
    <0xNN> byte fallback), or 'plain' (pieces are the text itself)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TrainError(f"{getattr(tokenizer, 'name_or_path', 'a tokenizer')}: cross-tokenizer KD needs a fast "
                         f"tokenizer (tokenizer.json)")
    spec = json.loads(backend.to_str())
    blob = json.dumps({k: spec.get(k) for k in ("pre_tokenizer", "decoder", "normalizer")}, ensure_ascii=False)
    if '"ByteLevel"' in blob:
        return "bytelevel"
    if '"Metaspace"' in blob or _METASPACE in blob or '"ByteFallback"' in blob:
        return "metaspace"
    return "plain"


def _table(tokenizer) -> tuple[bytes, ...]:
    scheme = _scheme(tokenizer)
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    by_id = {i: piece for piece, i in tokenizer.get_vocab().items()}
    table: list[bytes] = [b""] * (max(by_id) + 1 if by_id else 0)
    decoder = _byte_decoder() if scheme == "bytelevel" else None
    for i, piece in by_id.items():
        if i in added:
            table[i] = added[i].encode("utf-8")
        elif scheme == "bytelevel" and all(c in decoder for c in piece):
            table[i] = bytes(decoder[c] for c in piece)
        elif scheme == "metaspace" and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            table[i] = bytes([int(piece[3:5], 16)])
        elif scheme == "metaspace":
            table[i] = piece.replace(_METASPACE, " ").encode("utf-8")
        else:
            table[i] = piece.encode("utf-8")
    return tuple(table)


def token_bytes(tokenizer) -> tuple[bytes, ...]:
    """The UTF-8 bytes each token id stands for (special and added tokens: their text), indexed by id; built once
    per tokenizer object (a 152k vocabulary takes about a second)."""
    table = getattr(tokenizer, "_distill_token_bytes", None)
    if table is None:
        table = _table(tokenizer)
        tokenizer._distill_token_bytes = table
    return table


def ends(ids: list[int], table: tuple[bytes, ...]) -> list[int]:
    """Cumulative byte end offset of each token."""
    out, pos = [], 0
    for i in ids:
        pos += len(table[i])
        out.append(pos)
    return out


def spans(a_ends: list[int], b_ends: list[int], a_start: int = 0, b_start: int = 0) -> list[tuple[range, range]]:
    """Tokens of side a and side b grouped into spans between common byte boundaries: [(a tokens, b tokens)].

    Side a's first token starts at byte a_start, side b's at b_start: bytes before the first common boundary at or
    after both starts belong to one side only and are in no span. A span's tokens cover the same bytes on both sides
    whenever both sides spell the same bytes. Zero-width tokens join the span they end in. Tokens of one side with no
    common end after them (the sides spell different text) are left out, so a caller measures coverage by what the
    spans hold."""
    a, b = [a_start, *a_ends], [b_start, *b_ends]  # each side's start as a virtual token ending there
    common = sorted(set(a) & set(b))
    out, ia, ib = [], 0, 0
    for end in common:
        ja, jb = ia, ib
        while ja < len(a) and a[ja] <= end:
            ja += 1
        while jb < len(b) and b[jb] <= end:
            jb += 1
        if ja > ia and jb > ib and ia > 0 and ib > 0:  # a span holding a virtual start is not a common span
            out.append((range(ia - 1, ja - 1), range(ib - 1, jb - 1)))
        ia, ib = max(ja, 1), max(jb, 1)
    return out


def shared_vocabulary(teacher_tok, student_tok, *, pairs: dict[int, int] | None = None) -> list[int]:
    """teacher id -> student id of the token with the same bytes (-1: none), as a list indexed by teacher id.
    `pairs` adds explicit equivalences (the teacher's stop token -> the student's end of turn)."""
    t_table, s_table = token_bytes(teacher_tok), token_bytes(student_tok)
    s_special = {i for i, t in student_tok.added_tokens_decoder.items() if t.special}
    t_special = {i for i, t in teacher_tok.added_tokens_decoder.items() if t.special}
    by_bytes: dict[tuple[bool, bytes], int] = {}
    for i, b in enumerate(s_table):
        if b:
            by_bytes.setdefault((i in s_special, b), i)  # the first id of a duplicated spelling
    mapping, taken = [-1] * len(t_table), set((pairs or {}).values())
    for i, b in enumerate(t_table):  # one teacher id per student id, or the student's probability would count twice
        s_id = by_bytes.get((i in t_special, b), -1) if b else -1
        if s_id >= 0 and s_id not in taken:
            mapping[i] = s_id
            taken.add(s_id)
    for t, s_id in (pairs or {}).items():
        if t < len(mapping):
            mapping[t] = s_id
    return mapping


def invalid_utf8(raw: bytes) -> list[tuple[int, int]]:
    """The byte ranges [start, end) of `raw` that are not UTF-8, each of which `raw.decode("utf-8", "replace")`
    writes as one U+FFFD (3 bytes): the decoder's own error ranges, so the two agree by construction."""
    bad: list[tuple[int, int]] = []
    pos = 0
    while pos < len(raw):
        try:
            raw[pos:].decode("utf-8")
            break
        except UnicodeDecodeError as e:
            bad.append((pos + e.start, pos + e.end))
            pos += e.end
    return bad


def _replaced_ends(t_ends: list[int], bad: list[tuple[int, int]]) -> list[float]:
    """Teacher token ends in raw bytes -> ends in the bytes of the replaced text (each bad range is 3 bytes of
    U+FFFD). An end inside a bad range has no counterpart: it gets a fractional offset, never a common boundary, so
    the token joins the span that ends after the bad range."""
    out, k, shift = [], 0, 0
    for e in t_ends:
        while k < len(bad) and bad[k][1] <= e:
            shift += 3 - (bad[k][1] - bad[k][0])
            k += 1
        inside = k < len(bad) and bad[k][0] < e
        out.append(bad[k][0] + shift + 0.5 if inside else e + shift)
    return out


@dataclass
class Aligned:
    """One training example for cross-tokenizer KD (token positions relative to each side's own sequence)."""
    student_ids: list[int]       # the student's tokens of the completion (content + the template's closing text)
    teacher_ids: list[int]       # the teacher's content tokens (+ its stop token when it ended with one)
    groups: list[tuple[list[int], list[int]]]  # per span: (student positions, teacher positions), in text order
    covered_bytes: int           # content bytes inside spans
    content_bytes: int
    not_utf8_bytes: int = 0      # content bytes in spans left out because they hold a teacher byte that is not UTF-8


def align_completion(student_tok, content: str, completion: str, teacher_ids: list[int], teacher_table, *,
                     student_stop: int | None, teacher_stop: bool, teacher_start: int = 0,
                     teacher_bad: list[tuple[int, int]] = ()) -> Aligned:
    """Align the student's tokenisation of `completion` (its chat template's rendering of the assistant turn, which
    holds `content`) with the teacher's ids of `content` from byte `teacher_start` on (its last id a stop token when
    `teacher_stop`; the teacher's prompt may already hold the content's first bytes, as R1's `<think>` does).

    The student's tokens inside the content are grouped with the teacher's by common byte boundaries; the student's
    first end-of-turn token after the content is paired with the teacher's stop token.

    `teacher_bad`: byte ranges of the teacher's content tokens that are not UTF-8 (a sampled stray byte token), in
    which case `content` is their decoding with U+FFFD for each range: the spans are matched around them, and the
    spans that hold one (the two sides wrote different bytes there) are left out of the alignment."""
    s_ids = student_tok(completion, add_special_tokens=False)["input_ids"]
    s_table = token_bytes(student_tok)
    at = completion.find(content)
    if at < 0:
        raise TrainError("the student's chat template changes the assistant text (it is not found verbatim in the "
                         "rendered turn), so its tokens cannot be matched with the teacher's; set kd.chat_template: "
                         "fallback")
    start = len(completion[:at].encode("utf-8"))
    content_len = len(content.encode("utf-8"))
    stream = b"".join(s_table[i] for i in s_ids)
    head = completion.encode("utf-8")[:start + content_len]
    # SentencePiece may spell a space the text does not have before its first token (and legacy normalisers after
    # special tokens, which only matters past the content): the text up to the content's end must match
    lead = next((n for n in (0, 1) if stream[n:n + len(head)] == head and not stream[:n].strip(b" ")), None)
    t_content = teacher_ids[:-1] if teacher_stop else teacher_ids
    t_ends = [teacher_start + e for e in ends(t_content, teacher_table)]
    fffd = []  # the replaced ranges, in content bytes
    if teacher_bad:
        t_ends = _replaced_ends(t_ends, [(teacher_start + a, teacher_start + b) for a, b in teacher_bad])
        shift = 0
        for a, b in teacher_bad:
            fffd.append((teacher_start + a + shift, teacher_start + a + shift + 3))
            shift += 3 - (b - a)
    s_pos, s_ends, s_first = [], [], None
    if lead is not None:
        pos = -lead
        for p, i in enumerate(s_ids):
            b0, pos = max(pos, 0), pos + len(s_table[i])  # the phantom leading space belongs to the first token
            if start < pos <= start + content_len:
                if b0 < start:  # a token straddling the content's start: its bytes are not all content
                    continue
                s_first = b0 - start if s_first is None else s_first
                s_pos.append(p)
                s_ends.append(pos - start)
    groups, covered, not_utf8 = [], 0, 0
    for a, b in spans(s_ends, t_ends, s_first or 0, teacher_start):
        lo, hi = (t_ends[b[0] - 1] if b[0] else teacher_start), t_ends[b[-1]]
        if any(x < hi and lo < y for x, y in fffd):
            not_utf8 += int(hi - lo)
        else:
            groups.append(([s_pos[j] for j in a], list(b)))
            covered += int(hi - lo)
    if teacher_stop and student_stop is not None:
        after = [p for p, i in enumerate(s_ids) if i == student_stop and (not s_pos or p > s_pos[-1])]
        if after:
            groups.append(([after[0]], [len(teacher_ids) - 1]))
    return Aligned(list(s_ids), list(teacher_ids), groups, covered, content_len, not_utf8)
