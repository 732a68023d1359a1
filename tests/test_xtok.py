"""Cross-tokenizer KD: byte alignment of two tokenisations, the span losses, the vocabulary check's routing, and a
student with another tokenizer that learns from a teacher (tiny local models; no downloads)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.core.config import load_recipe
from pipeline.demo.tiny_model import build_tiny_model
from pipeline.train import kd, xtok
from pipeline.train.common import TrainError
from pipeline.train.kd_losses import distillation_loss
from pipeline.train.xtok_losses import cross_tokenizer_loss, span_divergence

from test_kd import kd_config, sample_traces, train_teacher

END = "<|im_end|>"


# ------------------------------------------------------------------------------------- crafted tokenizers

def bytelevel(merges: list[tuple[str, str]], *, split_digits: bool = False):
    """GPT-2 style byte-level BPE with exactly these merges (digits stay together unless split_digits)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) \
        if split_digits else byte_level
    tok.decoder = decoders.ByteLevel()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END)
    out.add_special_tokens({"additional_special_tokens": [END]})
    return out


def sentencepiece_like(pieces: list[str]):
    """Llama-2 style: ▁ for spaces, a leading ▁ prepended, <0xNN> byte fallback for anything not in the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}}
    merges = []
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyz0123456789.,+=-{}\\", *pieces]:
        if piece not in vocab:
            vocab[piece] = len(vocab)
    for piece in pieces:  # each multi-character piece merges from its first character and the rest
        if len(piece) > 1:
            for i in range(1, len(piece) - 1):
                vocab.setdefault(piece[:i + 1], len(vocab))
            merges += [(piece[:i], piece[i]) for i in range(1, len(piece))]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END, unk_token="<unk>")
    out.add_special_tokens({"additional_special_tokens": [END]})
    return out


TEACHER = bytelevel([("a", "r"), ("ar", "i"), ("ari", "a"), ("aria", "n"), ("i", "s"), ("is", "m"), ("Ġ", "t"),
                     ("Ġt", "h"), ("Ġth", "e"), ("1", "2"), ("12", "3"), ("123", "4"), ("4", "5")])
STUDENT_BL = bytelevel([("r", "i"), ("ri", "a"), ("ria", "n"), ("rian", "i"), ("riani", "s"), ("rianis", "m"),
                        ("t", "h"), ("th", "e")], split_digits=True)
STUDENT_SP = sentencepiece_like(["▁the", "▁a", "rian", "ism", "12"])

TEXTS = ["arianism", " the arianism", "1234 + 45 = 1279", "emoji 😀 and 你好, x", "the  two\n\nspaces\t1234",
         "\\boxed{1279}"]


def teacher_ids(text: str, stop: bool = True) -> list[int]:
    return TEACHER(text, add_special_tokens=False)["input_ids"] + ([TEACHER.convert_tokens_to_ids(END)] if stop else [])


def check_spans(student_tok, text: str, a: xtok.Aligned, t_ids: list[int]) -> None:
    """Every span spells the same bytes on both sides, and the spans tile the whole text in order."""
    s_tab, t_tab = xtok.token_bytes(student_tok), xtok.token_bytes(TEACHER)
    s_seen, t_seen, s_text, t_text = [], [], b"", b""
    for s_pos, t_pos in a.groups[:-1]:  # the last one pairs the two end-of-turn tokens
        s_bytes = b"".join(s_tab[a.student_ids[p]] for p in s_pos)
        if not s_text and not text.startswith(" ") and s_bytes.startswith(b" ") and student_tok is STUDENT_SP:
            s_bytes = s_bytes[1:]  # SentencePiece's prepended space
        t_bytes = b"".join(t_tab[t_ids[j]] for j in t_pos)
        assert s_bytes == t_bytes, (s_pos, t_pos)
        s_seen += s_pos
        t_seen += t_pos
        s_text += s_bytes
        t_text += t_bytes
    assert s_text == t_text == text.encode()
    assert t_seen == list(range(len(t_ids) - 1)) and s_seen == sorted(s_seen)
    assert a.covered_bytes == a.content_bytes == len(text.encode())
    end_s, end_t = a.groups[-1]
    assert [a.student_ids[p] for p in end_s] == [student_tok.convert_tokens_to_ids(END)] and end_t == [len(t_ids) - 1]


# ------------------------------------------------------------------------------------------ alignment

def test_token_bytes_spell_the_text_for_bytelevel_and_byte_fallback_tokenizers():
    for tok in (TEACHER, STUDENT_BL, STUDENT_SP):
        table = xtok.token_bytes(tok)
        for text in TEXTS:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            spelled = b"".join(table[i] for i in ids)
            lead = b" " if tok is STUDENT_SP else b""
            assert spelled == lead + text.encode(), (tok, text)
    # byte fallback really happened: the emoji is four <0xNN> tokens on the SentencePiece side
    pieces = STUDENT_SP.convert_ids_to_tokens(STUDENT_SP("😀", add_special_tokens=False)["input_ids"])
    assert pieces[-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert xtok.token_bytes(TEACHER)[TEACHER.convert_tokens_to_ids(END)] == END.encode()


@pytest.mark.parametrize("student", [STUDENT_BL, STUDENT_SP], ids=["bytelevel-digits", "sentencepiece-fallback"])
@pytest.mark.parametrize("text", TEXTS)
def test_spans_cover_the_same_bytes_on_both_sides(student, text):
    t_ids = teacher_ids(text)
    a = xtok.align_completion(student, text, text + END, t_ids, xtok.token_bytes(TEACHER),
                              student_stop=student.convert_tokens_to_ids(END), teacher_stop=True)
    check_spans(student, text, a, t_ids)


def test_spans_group_differently_split_words_digits_and_bytes():
    def pieces(tok, ids, pos):
        return [tok.convert_ids_to_tokens(ids[p]) for p in pos]

    text = "arianism 1234 你"
    t_ids = teacher_ids(text)
    a = xtok.align_completion(STUDENT_BL, text, text + END, t_ids, xtok.token_bytes(TEACHER),
                              student_stop=STUDENT_BL.convert_tokens_to_ids(END), teacher_stop=True)
    got = [(pieces(STUDENT_BL, a.student_ids, s), pieces(TEACHER, t_ids, t)) for s, t in a.groups]
    assert (["a", "rianism"], ["arian", "ism"]) in got          # a word split differently on each side
    assert (["1", "2", "3", "4"], ["1234"]) in got              # digits one per token on the student's side only
    assert (["Ġ"], ["Ġ"]) in got                                # the space before the number, 1:1
    assert ([END], [END]) == got[-1]                            # the ends of turn are paired


def test_text_around_the_content_and_phantom_spaces_after_special_tokens():
    # the rendered turn puts "th" before the content "e arianism": the student's "the" straddles the content's start,
    # so the first span starts at the first byte both sides begin a token at, and nothing straddling is in a span
    content = "e arianism"
    t_ids = teacher_ids(content)
    a = xtok.align_completion(STUDENT_BL, content, "th" + content + END + "\n", t_ids, xtok.token_bytes(TEACHER),
                              student_stop=STUDENT_BL.convert_tokens_to_ids(END), teacher_stop=True)
    s_tab, t_tab = xtok.token_bytes(STUDENT_BL), xtok.token_bytes(TEACHER)
    pieces = [(b"".join(s_tab[a.student_ids[p]] for p in s), b"".join(t_tab[t_ids[j]] for j in t)) for s, t in a.groups]
    assert all(s == t for s, t in pieces[:-1]) and pieces[0][1] == b" "  # "e" is spelled only inside "the"
    assert a.covered_bytes == len(content) - 1
    # a legacy SentencePiece normaliser spells a space after every special token ("▁\n" after the end of turn):
    # only the text up to the content's end has to match
    text = "the arianism"
    t_ids = teacher_ids(text)
    a = xtok.align_completion(STUDENT_SP, text, text + END + "\n", t_ids, xtok.token_bytes(TEACHER),
                              student_stop=STUDENT_SP.convert_tokens_to_ids(END), teacher_stop=True)
    assert a.covered_bytes == a.content_bytes == len(text)
    check_spans(STUDENT_SP, text, a, t_ids)


def test_teacher_start_skips_what_its_prompt_already_wrote():
    # R1-style templates put "<think>\n" into the generation prompt: the teacher's tokens start after it
    content = "<think>\nthe arianism"
    opening = len("<think>\n")
    t_ids = teacher_ids(content[opening:])
    a = xtok.align_completion(STUDENT_BL, content, content + END, t_ids, xtok.token_bytes(TEACHER),
                              student_stop=STUDENT_BL.convert_tokens_to_ids(END), teacher_stop=True,
                              teacher_start=opening)
    s_tab, t_tab = xtok.token_bytes(STUDENT_BL), xtok.token_bytes(TEACHER)
    for s, t in a.groups[:-1]:
        assert b"".join(s_tab[a.student_ids[p]] for p in s) == b"".join(t_tab[t_ids[j]] for j in t)
    assert a.covered_bytes == len(content) - opening == a.content_bytes - opening


def stray_byte_ids(before: str, byte: int, after: str) -> tuple[list[int], bytes]:
    """The teacher's ids of `before`, one sampled token holding the lone byte `byte` (not UTF-8 on its own: what a
    real byte-level teacher writes when sampling leaves a character unfinished), `after`, and the raw bytes."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    stray = TEACHER.convert_tokens_to_ids(bytes_to_unicode()[byte])
    ids = teacher_ids(before, stop=False) + [stray] + teacher_ids(after)
    return ids, b"".join(xtok.token_bytes(TEACHER)[i] for i in ids[:-1])


@pytest.mark.parametrize("student", [STUDENT_BL, STUDENT_SP], ids=["bytelevel-digits", "sentencepiece-fallback"])
@pytest.mark.parametrize("before,byte,after", [("the answer is \\", 0x94, "{1234} arianism"),  # a stray byte
                                               ("x = 12", 0xE4, " the 45"),  # a character left unfinished
                                               ("\\boxed{12}", 0xBD, "")])  # at the very end
def test_a_stray_byte_is_aligned_around_not_dropping_the_completion(student, before, byte, after):
    """A sampled token that leaves the text without valid UTF-8 (the student reads U+FFFD there) costs only the span
    that holds it: every other teacher token is in a span that spells the same bytes on both sides. (Found on an
    AVX2 CPU, where the tiny test teacher happens to sample such a token: the whole completion used to fall out.)"""
    t_ids, raw = stray_byte_ids(before, byte, after)
    bad = xtok.invalid_utf8(raw)
    assert bad == [(len(before.encode()), len(before.encode()) + 1)]
    content = raw.decode("utf-8", errors="replace")
    assert content == before + "\ufffd" + after
    a = xtok.align_completion(student, content, content + END, t_ids, xtok.token_bytes(TEACHER),
                              student_stop=student.convert_tokens_to_ids(END), teacher_stop=True, teacher_bad=bad)
    s_tab, t_tab = xtok.token_bytes(student), xtok.token_bytes(TEACHER)
    stray = len(teacher_ids(before, stop=False))
    in_spans = [j for _, t in a.groups[:-1] for j in t]
    assert stray not in in_spans  # the two sides wrote different bytes there
    for n, (s_pos, t_pos) in enumerate(a.groups[:-1]):
        s_bytes = b"".join(s_tab[a.student_ids[p]] for p in s_pos)
        if n == 0 and student is STUDENT_SP and not content.startswith(" "):
            s_bytes = s_bytes.removeprefix(b" ")  # SentencePiece's prepended space
        assert s_bytes == b"".join(t_tab[t_ids[j]] for j in t_pos)
    # all but the span around the stray byte is covered, and the stop pair is kept
    assert a.covered_bytes + a.not_utf8_bytes == a.content_bytes == len(content.encode())
    assert 3 <= a.not_utf8_bytes <= 3 + max(len(t_tab[i]) for i in t_ids[:-1]) * 2
    assert set(in_spans) >= set(range(len(t_ids) - 1)) - {stray, stray - 1, stray + 1}
    assert a.groups[-1][1] == [len(t_ids) - 1]


def test_invalid_utf8_ranges_are_the_decoders_own():
    for raw in (b"ok", b"a\x94b", b"\xe4\xbd", b"\xe4\xbda\xff\xfe\xf0\x9f\x98\x80", "你好".encode() + b"\xc3"):
        bad = xtok.invalid_utf8(raw)
        assert raw.decode("utf-8", errors="replace").count("\ufffd") == len(bad)
        rebuilt, pos = b"", 0
        for a, b in bad:
            rebuilt += raw[pos:a] + "\ufffd".encode()
            pos = b
        assert rebuilt + raw[pos:] == raw.decode("utf-8", errors="replace").encode()


def test_the_teachers_prompt_overlap_is_an_opener_not_a_newline(pair):
    """Online, the teacher reads on after what its generation prompt already wrote of the answer (R1's "<think>\\n"),
    and only that: an answer that starts with a newline after ChatML's "assistant\\n" keeps its newline (found on
    an AVX2 CPU: the teacher scored the text with one newline fewer and its first byte fell out of the alignment)."""
    from transformers import AutoTokenizer

    from pipeline.train.xtok_data import prompt_overlap

    tok = AutoTokenizer.from_pretrained(pair["teacher"])
    user = [{"role": "user", "content": "1 + 1?"}]
    prompt = lambda: tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)  # noqa: E731
    assert prompt().endswith("assistant\n")
    for content in ("\n\n2", "\n2", "t\n2", "2"):
        assert prompt_overlap(tok, [*user, {"role": "assistant", "content": content}], prompt()) == 0, content
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
    r1 = [*user, {"role": "assistant", "content": "<think>\n1 + 1 = 2\n</think>\n\n2"}]
    assert prompt_overlap(tok, r1, prompt()) == len("<think>\n")
    # this template's finished turn does not hold its generation prompt: only the prompt's tail can tell, and a
    # newline alone is no opener
    assert prompt_overlap(tok, [*user, {"role": "assistant", "content": "\n\n2"}], prompt()) == 0


def test_spans_from_end_offsets():
    # a: |ab|c|def|   b: |a|bcd|ef|   a ends 2,3,6; b ends 1,4,6: the only common boundary is 6 -> one span
    assert xtok.spans([2, 3, 6], [1, 4, 6]) == [(range(0, 3), range(0, 3))]
    assert xtok.spans([1, 2, 3], [1, 3]) == [(range(0, 1), range(0, 1)), (range(1, 3), range(1, 2))]
    # the sides spell different text after byte 2: the rest is in no span
    assert xtok.spans([1, 2, 5], [1, 2, 4]) == [(range(0, 1), range(0, 1)), (range(1, 2), range(1, 2))]
    # side a starts at byte 2 (its first bytes belong to a token outside): b's tokens up to byte 2 are in no span,
    # nor is the span that would mix them with a's
    assert xtok.spans([4, 6], [1, 2, 4, 6], a_start=2) == [(range(0, 1), range(2, 3)), (range(1, 2), range(3, 4))]
    assert xtok.spans([3, 6], [1, 2, 4, 6], a_start=1) == [(range(0, 2), range(1, 4))]  # b's first token: before a


def test_truncated_teacher_has_no_end_pair_and_changed_text_is_an_error():
    text = "the arianism"
    a = xtok.align_completion(STUDENT_BL, text, text + END, teacher_ids(text, stop=False), xtok.token_bytes(TEACHER),
                              student_stop=STUDENT_BL.convert_tokens_to_ids(END), teacher_stop=False)
    assert all(STUDENT_BL.convert_ids_to_tokens(a.student_ids[s[0]]) != END for s, _ in a.groups)
    with pytest.raises(TrainError, match="chat template changes the assistant text"):
        xtok.align_completion(STUDENT_BL, text, text.upper() + END, teacher_ids(text), xtok.token_bytes(TEACHER),
                              student_stop=None, teacher_stop=True)


def test_shared_vocabulary_maps_same_bytes_and_the_stop_pair():
    mapping = xtok.shared_vocabulary(TEACHER, STUDENT_SP, pairs={TEACHER.convert_tokens_to_ids(END): 7})
    t, s = xtok.token_bytes(TEACHER), xtok.token_bytes(STUDENT_SP)
    matched = [(ti, si) for ti, si in enumerate(mapping) if si >= 0]
    assert matched and all(t[ti] == s[si] for ti, si in matched if ti != TEACHER.convert_tokens_to_ids(END))
    assert mapping[TEACHER.convert_tokens_to_ids(END)] == 7
    # "Ġthe" (bytes " the") is spelled by the SentencePiece side's "▁the"
    assert mapping[TEACHER.convert_tokens_to_ids("Ġthe")] == STUDENT_SP.convert_tokens_to_ids("▁the")
    # a token no student token spells maps to nothing
    assert mapping[TEACHER.convert_tokens_to_ids("arian")] == -1


# --------------------------------------------------------------------------------------------- losses

def test_uld_by_hand_for_a_span_split_on_the_teacher_side():
    # student: one token, p = [0.4, 0.3, 0.2, 0.1]; teacher: two tokens, the first written with p 0.5, then top-2
    # [0.6, 0.3] (rest 0.1). Span probabilities: teacher [0.3, 0.15] + rest 0.55; student top-2 [0.4, 0.3] + rest 0.3.
    p_s = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    got = span_divergence(p_s.log(), p_s.log(), torch.zeros(1), torch.tensor([[5, 9]]),
                          torch.tensor([[0.6, 0.3]]).log(), torch.tensor([math.log(0.5)]), loss="uld",
                          temperature=1.0, kind="forward_kl", beta=0.5, vocab_map=None, matched_weight=None)
    assert got.item() == pytest.approx(abs(0.3 - 0.4) + abs(0.15 - 0.3) + abs(0.55 - 0.3), abs=1e-6)


def test_hybrid_by_hand():
    # teacher top-2 ids [0, 1] with [0.5, 0.3] (rest 0.2); teacher id 0 -> student id 2, id 1 has no student twin.
    # student p = [0.1, 0.2, 0.6, 0.1]; single-token spans on both sides.
    p_s = torch.tensor([[0.1, 0.2, 0.6, 0.1]])
    vocab_map = torch.tensor([2, -1])
    args = dict(loss="hybrid", temperature=1.0, kind="forward_kl", beta=0.5, vocab_map=vocab_map)
    ids, lps = torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.3]]).log()
    # shared part: teacher [0.5 | 0.5], student [0.6 | 0.4] -> KL = 0.5 ln(0.5/0.6) + 0.5 ln(0.5/0.4)
    kl = 0.5 * math.log(0.5 / 0.6) + 0.5 * math.log(0.5 / 0.4)
    # unshared part: teacher [0.3] vs the student's largest unshared probability, top-2 of [0.1, 0.2, -, 0.1]
    # (student id 2 is shared) -> sorted [0.3, 0] vs [0.2, 0.1] -> 0.1 + 0.1
    got = span_divergence(p_s.log(), p_s.log(), torch.zeros(1), ids, lps, torch.zeros(1), matched_weight=0.25, **args)
    assert got.item() == pytest.approx(0.25 * kl + 0.75 * 0.2, abs=1e-6)
    alone = span_divergence(p_s.log(), p_s.log(), torch.zeros(1), ids, lps, torch.zeros(1), matched_weight=1.0, **args)
    assert alone.item() == pytest.approx(kl, abs=1e-6)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_identical_tokenizers_reproduce_the_same_tokenizer_kd_loss(kind, temperature):
    torch.manual_seed(0)
    n, v, k = 9, 40, 6
    z = torch.randn(n, v, requires_grad=True)
    teacher = torch.randn(n, v).log_softmax(-1)
    top = teacher.topk(k)
    targets = torch.randint(0, v, (n,))
    same = distillation_loss(z[None], targets[None], topk_ids=top.indices[None], topk_logprobs=top.values[None],
                             alpha=0.3, temperature=temperature, kind=kind, tail="bucket")
    ones = torch.ones(n, dtype=torch.bool)
    order = torch.randperm(n)  # spans numbered in another order than the rows: each row is found by its number
    cross = cross_tokenizer_loss(z, targets, order, ones, top.indices, top.values,
                                 teacher.gather(-1, targets[:, None]).squeeze(-1), order, ones, n, alpha=0.3,
                                 temperature=temperature, loss="hybrid", kind=kind, vocab_map=torch.arange(v),
                                 matched_weight=1.0)
    assert cross["loss"].item() == pytest.approx(same["loss"].item(), rel=1e-6)
    g_same, = torch.autograd.grad(same["loss"], z)
    g_cross, = torch.autograd.grad(cross["loss"], z)
    assert torch.allclose(g_same, g_cross, atol=1e-7)


def test_hybrid_gradient_is_finite_when_no_top_k_token_is_shared():
    # a span the student splits in two, where none of the teacher's top-k ids has a student twin
    z = torch.randn(2, 5, requires_grad=True)
    res = cross_tokenizer_loss(z, torch.tensor([1, 2]), torch.tensor([0, 0]), torch.tensor([False, True]),
                               torch.tensor([[3, 4]]), torch.tensor([[0.7, 0.2]]).log(), torch.tensor([0.7]).log(),
                               torch.tensor([0]), torch.tensor([True]), 1, alpha=1.0, loss="hybrid",
                               vocab_map=torch.tensor([0, 1, 2, -1, -1]), matched_weight=0.5)
    res["loss"].backward()
    assert torch.isfinite(res["loss"]) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_span_merge_uses_the_sequence_probability_and_stays_finite():
    # a two-token student span whose first token has probability 0.5 against a one-token teacher span: the student's
    # span distribution is 0.5 * its last distribution; the divergence is finite and pushes the first token up
    z = torch.tensor([[0.0, math.log(1.0)], [math.log(3.0), 0.0]], requires_grad=True)  # rows: p=[.5,.5], [.75,.25]
    targets = torch.tensor([0, 0])
    res = cross_tokenizer_loss(z, targets, torch.tensor([0, 0]), torch.tensor([False, True]),
                               torch.tensor([[0, 1]]), torch.tensor([[0.9, 0.1]]).log(), torch.tensor([0.9]).log(),
                               torch.tensor([0]), torch.tensor([True]), 1, alpha=1.0, loss="uld")
    # student span: [0.375, 0.125] + rest 0.5; teacher: [0.9, 0.1] + rest 0 -> 0.525 + 0.025 + 0.5
    assert res["kd"].item() == pytest.approx(1.05, abs=1e-6)
    res["loss"].backward()
    assert torch.isfinite(z.grad).all() and z.grad[0, 0] < 0  # raising the first token's logit lowers the loss


# ---------------------------------------------------------------------------------- the kd stage, end to end

@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A trained tiny teacher, a student with another tokenizer (300 tokens, other merges), traces with top-8."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("xtok")
    teacher = build_tiny_model(root / "teacher")
    train_teacher(teacher)
    student = build_tiny_model(root / "student", vocab_size=300, seed=3, split_digits=True)
    sample_traces(str(teacher), 48, seed=1).save_to_disk(str(root / "train"))
    held = sample_traces(str(teacher), 16, seed=2, k=None)
    sample_traces(str(teacher), 16, seed=2).save_to_disk(str(root / "held8"))
    return {"root": root, "teacher": str(teacher), "student": str(student), "train": str(root / "train"),
            "held": held, "held8": str(root / "held8")}


def xtok_config(pair, out: Path, **kv):
    """test_kd's kd config (its keys: student, train, teacher) with the cross-tokenizer path on."""
    return kd_config(pair, out, **{"max_steps": 40, "cross_tokenizer": "hybrid", **kv})


def sequence_kl(student: str, teacher: str, held) -> float:
    """E over held-out teacher samples y of log p_teacher(y) - log p_student(y), per byte of y: a divergence that needs
    no alignment (each model scores the text through its own tokens; the end of turn included on both sides)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    total, size = 0.0, 0
    for path in (teacher, student):
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        sign = 1.0 if path == teacher else -1.0
        with torch.no_grad():
            for row in held:
                if row["completion_token_ids"][-1] != tok.eos_token_id and path == teacher:
                    continue
                text = row["messages"][-1]["content"]
                q = tok.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
                p = tok(q, add_special_tokens=False)["input_ids"]
                c = tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids(END)]
                lp = model(torch.tensor([p + c])).logits[0, len(p) - 1:-1].log_softmax(-1)
                total += sign * lp.gather(-1, torch.tensor(c)[:, None]).sum().item()
                if path == teacher:
                    size += len(text.encode())
    return total / size


def span_divergence_on(model: str, data: str, pair, out: Path, loss: str) -> float:
    """The KD term (mean per span) of `model` against the teacher's stored top-k on `data`, without training."""
    p = kd.build(xtok_config(pair, out, student=model, data=data, alpha=1.0, cross_tokenizer=loss), verbose=False)
    tr, total, spans = p.trainer, 0.0, 0
    tr.model.eval()
    rows = [tr.train_dataset[i] for i in range(len(tr.train_dataset))]
    with torch.no_grad():
        for i in range(0, len(rows), 8):
            _, res = tr.compute_loss(tr.model, tr.data_collator(rows[i:i + 8]), return_outputs=True)
            total += res["kd"].item() * res["spans"].item()
            spans += res["spans"].item()
    return total / spans


def test_batches_line_up_spans_positions_and_teacher_rows(pair, tmp_path):
    """In a collated batch every span holds the same bytes on both sides, the teacher's rows are the stored top-k of
    the very tokens it wrote (offline) or the logits rows that predict them (online), and every span has exactly one
    last row on each side."""
    import datasets

    raw = datasets.load_from_disk(pair["train"]).select(range(4))
    for mode in ("offline", "online"):
        p = kd.build(xtok_config(pair, tmp_path / mode, mode=mode), verbose=False)
        batch = p.trainer.data_collator([p.trainer.train_dataset[i] for i in range(4)])
        s_tab, t_tab = xtok.token_bytes(p.pair.student), xtok.token_bytes(p.pair.teacher)
        n = int(batch["xt_spans"])
        group, last, t_group = batch["xt_group"], batch["xt_last"], batch["xt_t_group"]
        assert sorted(group[last].tolist()) == list(range(n)) == sorted(t_group[batch["xt_t_last"]].tolist())
        if mode == "offline":  # all teacher tokens are in spans, in text order: the rows are the stored ones
            teacher = [t for ids in raw["completion_token_ids"] for t in ids]
            stored = [r for rows in raw["topk_ids"] for r in rows]
            assert batch["xt_t_ids"].tolist() == stored
        else:
            pos, teacher = batch["xt_t_pos"], batch["xt_t_token"].tolist()
            assert (batch["xt_t_input_ids"][pos[:, 0], pos[:, 1] + 1] == batch["xt_t_token"]).all()
        assert len(teacher) == len(t_group)
        for g in range(n):
            s_bytes = b"".join(s_tab[i] for i in batch["input_ids"][group == g].tolist())
            t_bytes = b"".join(t_tab[teacher[k]] for k in (t_group == g).nonzero().flatten().tolist())
            assert s_bytes == t_bytes, (mode, g)


def test_offline_examples_keep_the_spans_of_a_completion_with_a_stray_byte(pair, tmp_path):
    """Through the encoder, on the fixture's own traces with one sampled byte that is not UTF-8 planted in a
    completion (a CPU-independent copy of what the tiny teacher samples on AVX2): that example keeps its spans."""
    import datasets
    from transformers import AutoTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from pipeline.train.templates import preflight
    from pipeline.train.xtok_data import encode, make_pair

    s_tok, t_tok = AutoTokenizer.from_pretrained(pair["student"]), AutoTokenizer.from_pretrained(pair["teacher"])
    rows = datasets.load_from_disk(pair["train"]).select(range(4)).to_list()
    row = rows[0]
    stray, at = t_tok.convert_tokens_to_ids(bytes_to_unicode()[0x94]), len(row["completion_token_ids"]) // 2
    planted = {"completion_token_ids": stray, "topk_ids": [stray, *row["topk_ids"][at][1:]],
               "topk_logprobs": row["topk_logprobs"][at]}
    for key, value in planted.items():
        row[key] = [*row[key][:at], value, *row[key][at:]]
    cfg = xtok_config(pair, tmp_path)
    p = make_pair(s_tok, t_tok, preflight(s_tok, rows[0]["messages"]).stop_ids[0], cfg)
    alone, _ = encode(datasets.Dataset.from_list(rows[1:]), p, cfg)
    enc, stats = encode(datasets.Dataset.from_list(rows), p, cfg)
    assert stats["completions_not_utf8"] == 1 and 0 < stats["not_utf8_share"] < 0.05
    assert round(stats["alignment_coverage"] + stats["not_utf8_share"], 6) == 1.0
    t_rows = enc[0]["xt_t_ids"]  # the stored rows of the tokens in spans: all but the few around the stray byte
    assert len(row["completion_token_ids"]) - 4 <= len(t_rows) < len(row["completion_token_ids"])
    assert enc[1:]["xt_group"] == alone["xt_group"]


def test_vocabulary_check_routes_and_names_the_option(pair, tmp_path):
    from transformers import AutoTokenizer

    student_tok = AutoTokenizer.from_pretrained(pair["student"])
    with pytest.raises(TrainError, match="kd.cross_tokenizer"):
        kd.check_vocabulary(xtok_config(pair, tmp_path / "a", cross_tokenizer=None), student_tok)
    size, check, _, teacher_tok = kd.check_vocabulary(xtok_config(pair, tmp_path / "b"), student_tok)
    assert (size, check) == (len(student_tok), "cross") and teacher_tok is not None
    same = AutoTokenizer.from_pretrained(pair["teacher"])  # teacher as its own student: the exact path
    cfg = xtok_config(pair, tmp_path / "c", student=pair["teacher"])
    assert kd.check_vocabulary(cfg, same)[1:] == ("full", pair["teacher"], None)
    with pytest.raises(TrainError, match="not on_policy"):
        kd.validate(xtok_config(pair, tmp_path / "d", mode="on_policy"))


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_cross_tokenizer_kd_trains_and_reports_the_alignment(pair, tmp_path, mode):
    """The alignment covers every byte of the completions but the spans around a byte that is not UTF-8 (the tiny
    teacher samples one on AVX2 kernels, none on AVX-512: 0.1% of the text, where the whole completion, 3%, used to
    fall out)."""
    summary = kd.run(xtok_config(pair, tmp_path / mode, mode=mode, max_steps=12))
    assert summary["vocab_check"] == "cross" and summary["cross_tokenizer"] == "hybrid"
    assert round(summary["alignment_coverage"] + summary["not_utf8_share"], 5) == 1.0
    assert summary["not_utf8_share"] < 0.005 and summary["split_spans"] > 0 < summary["spans"]
    assert 0 < summary["matched_weight"] < 1
    log = [json.loads(line) for line in (tmp_path / mode / "train_log.jsonl").read_text().splitlines()]
    kd_values = [r["kd"] for r in log if "kd" in r]
    assert kd_values[-1] < kd_values[0]
    assert (tmp_path / mode / "model" / "model.safetensors").exists()


def test_hybrid_kd_alone_lowers_the_held_out_sequence_kl(pair, tmp_path):
    """The student (another tokenizer) learns the teacher's distribution from the KD term alone (alpha 1: no CE on
    the teacher's text): the per-byte sequence KL on held-out teacher samples, which needs no alignment, falls well
    below where it started."""
    before = sequence_kl(pair["student"], pair["teacher"], pair["held"])
    kd.run(xtok_config(pair, tmp_path / "hybrid", alpha=1.0, max_steps=60))
    after = sequence_kl(str(tmp_path / "hybrid" / "model"), pair["teacher"], pair["held"])
    assert after < 0.5 * before, (before, after)


def test_uld_alone_lowers_the_held_out_uld_distance(pair, tmp_path):
    """ULD matches sorted probabilities, not tokens: on its own it cannot tell the student which token is likely (the
    sequence KL got worse here, 2.98 -> 3.41 nats/byte), but it does what it says: the held-out span distance between
    the two sides' sorted distributions falls well below its start."""
    before = span_divergence_on(pair["student"], pair["held8"], pair, tmp_path / "b", "uld")
    kd.run(xtok_config(pair, tmp_path / "uld", alpha=1.0, max_steps=60, cross_tokenizer="uld"))
    after = span_divergence_on(str(tmp_path / "uld" / "model"), pair["held8"], pair, tmp_path / "a", "uld")
    assert after < 0.5 * before, (before, after)


# ---------------------------------------------------------------------------------------- the real demo pair

DEMO_PAIR = Path(__file__).parent / "data" / "demo_pair"


@pytest.fixture(scope="module")
def demo_tokenizers(tmp_path_factory):
    """The CPU demo's teacher and student tokenizers (tests/data/demo_pair: gzipped, as prepare-models writes them)."""
    import gzip
    import shutil

    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("demo_pair")
    toks = {}
    for name in ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"):
        (root / name).mkdir()
        for f in ("tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(DEMO_PAIR / name / f, root / name / f)
        with gzip.open(DEMO_PAIR / name / "tokenizer.json.gz", "rb") as fi, open(root / name / "tokenizer.json", "wb") as fo:
            shutil.copyfileobj(fi, fo)
        toks[name] = AutoTokenizer.from_pretrained(root / name)
    return toks["qwen2.5-coder-0.5b-instruct"], toks["smollm2-135m-instruct"]


def test_the_demo_pairs_alignment_covers_the_demos_kept_completions(demo_tokenizers):
    """Qwen2.5 -> SmolLM2 on 120 completions the demo's filter kept: the spans cover at least 99% of the text (both
    tokenizers spell it byte for byte), and each span holds the same bytes on both sides."""
    import gzip

    from pipeline.train.templates import preflight, render
    from pipeline.train.xtok_data import teacher_turn_end

    teacher, student = demo_tokenizers
    t_tab, s_tab = xtok.token_bytes(teacher), xtok.token_bytes(student)
    t_stop = teacher_turn_end(teacher)
    rows = [json.loads(line) for line in gzip.open(DEMO_PAIR / "kept_completions.jsonl.gz", "rt")]
    s_stop = preflight(student, rows[0]["messages"]).stop_ids[0]
    covered = total = split = ends = 0
    for row in rows:
        ids = row["completion_token_ids"]
        stop = ids[-1] == t_stop
        content = b"".join(t_tab[i] for i in (ids[:-1] if stop else ids)).decode("utf-8")
        _, completion = render(student, [*row["messages"][:-1], {"role": "assistant", "content": content}])
        a = xtok.align_completion(student, content, completion, ids, t_tab, student_stop=s_stop, teacher_stop=stop)
        for s, t in a.groups[:-1] if stop else a.groups:
            assert b"".join(s_tab[a.student_ids[p]] for p in s) == b"".join(t_tab[ids[j]] for j in t)
        covered, total = covered + a.covered_bytes, total + a.content_bytes
        split += sum(len(s) > 1 or len(t) > 1 for s, t in a.groups)
        ends += stop and a.groups[-1] == ([a.student_ids.index(s_stop)], [len(ids) - 1])
    print(f"demo pair: {covered}/{total} bytes in spans, {split} spans split on a side")
    assert len(rows) == 120 and covered / total >= 0.99, covered / total
    assert split > 0 and ends == sum(r["completion_token_ids"][-1] == t_stop for r in rows) > 100
