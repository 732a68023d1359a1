"""Logit-distillation losses (Hinton et al., 2015) for the KD stage.

Pure torch and stateless: the KD trainer calls `distillation_loss` on logits it has already shifted so that
position i predicts labels[:, i]. The loss over the trained tokens is

    alpha * T^2 * D(p_teacher^T || p_student^T) + (1 - alpha) * CE,      p^T = softmax(logits / T)

with both terms averaged over the same tokens. The T^2 keeps the soft-target gradients on the same scale as the
CE's when T changes, so alpha keeps its meaning (Hinton et al., section 2).

The teacher is either full logits (online) or the top-k log-probabilities that vLLM stored at generation time
(offline). The teacher is always detached: distillation never trains it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("forward_kl", "reverse_kl", "jsd")
TAILS = ("renormalize", "bucket")


def _check(temperature: float, kind: str, beta: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")


def _upcast(x: Tensor) -> Tensor:
    # KL subtracts nearly equal log-probs: in bf16/fp16 that is mostly rounding noise, so pay for a float32 copy.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _tempered_log_softmax(logits: Tensor, temperature: float) -> Tensor:
    logits = _upcast(logits)
    return F.log_softmax(logits / temperature if temperature != 1 else logits, dim=-1)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) over the last dim, from finite log-probs (see `_divergence`)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _divergence(log_p_t: Tensor, log_p_s: Tensor, kind: str, beta: float) -> Tensor:
    """Per-token divergence between normalised teacher and student log-probs on the same support (last dim)."""
    # A zero-mass entry (-inf log-prob, e.g. a masked padding row) would make 0 * inf = NaN in the value and in the
    # gradient. Clamping to the most negative finite value keeps exp() exactly 0 while all differences stay finite.
    floor = torch.finfo(log_p_s.dtype).min
    log_p_t, log_p_s = log_p_t.clamp_min(floor), log_p_s.clamp_min(floor)
    # TRL's GKDTrainer.generalized_jsd_loss special-cases the endpoints the same way.
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        return _kl(log_p_t, log_p_s)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        return _kl(log_p_s, log_p_t)
    log_m = torch.logaddexp(log_p_t + math.log(beta), log_p_s + math.log1p(-beta))
    return beta * _kl(log_p_t, log_m) + (1 - beta) * _kl(log_p_s, log_m)


def kd_divergence(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0,
                  kind: str = "forward_kl", beta: float = 0.5, vocab_size: int | None = None) -> Tensor:
    """Per-token divergence of the T-softened distributions; logits [..., V] -> [...], summed over the vocabulary.

    kind:
      "forward_kl"  KL(p_t || p_s), Hinton's KD (mass-covering).
      "reverse_kl"  KL(p_s || p_t) (mode-seeking).
      "jsd"         generalised JSD as in TRL's GKDTrainer (Agarwal et al., 2024, eq. 1):
                    beta * KL(p_t || M) + (1 - beta) * KL(p_s || M), with M = beta * p_t + (1 - beta) * p_s.
                    beta=0 is defined as forward KL and beta=1 as reverse KL, as TRL does. Note these endpoints are
                    not limits of the mixture formula (which tends to 0 there), so the value jumps at 0 and 1.

    vocab_size: the tokenizer's real vocabulary size. Checkpoints pad their embedding matrix differently (Qwen2.5
    0.5B: 151936 rows, 72B: 152064), so both logits are cut to [..., :vocab_size] before the softmax. Without it,
    differing sizes raise ValueError rather than silently comparing misaligned distributions.
    """
    _check(temperature, kind, beta)
    if vocab_size is not None:
        student_logits, teacher_logits = student_logits[..., :vocab_size], teacher_logits[..., :vocab_size]
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"student vocab size {student_logits.shape[-1]} != teacher vocab size "
                         f"{teacher_logits.shape[-1]}; pass vocab_size= (the tokenizer's) to drop padding rows")
    log_p_s = _tempered_log_softmax(student_logits, temperature)
    log_p_t = _tempered_log_softmax(teacher_logits.detach(), temperature).to(log_p_s.dtype)
    return _divergence(log_p_t, log_p_s, kind, beta)


def _with_tail(log_p: Tensor) -> Tensor:
    """Append log(1 - sum p) as an extra last entry: the mass outside the support as one bucket."""
    tail = -torch.expm1(torch.logsumexp(log_p, dim=-1, keepdim=True))
    # Below machine epsilon, 1 - sum p is rounding noise (it may even be negative). Flooring both sides at eps keeps
    # the value and gradient finite when the support holds all the mass, and two empty tails cancel.
    return torch.cat([log_p, tail.clamp_min(torch.finfo(log_p.dtype).eps).log()], dim=-1)


def topk_divergence(student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor, *, temperature: float = 1.0,
                    kind: str = "forward_kl", beta: float = 0.5, tail: str = "renormalize",
                    vocab_size: int | None = None) -> Tensor:
    """Per-token divergence against a teacher stored as top-k log-probs (offline KD); returns shape [...].

    topk_ids [..., k] (long) and topk_logprobs [..., k] are the teacher's log-probs at T=1 as vLLM returns them;
    slots with id -1 are padding and are ignored (their log-prob should be -inf). Every position must keep at least
    one valid slot. Tempering stored log-probs is exact up to normalisation: logprob / T = logit / T - const.

    tail:
      "renormalize"  both distributions restricted to the k ids and renormalised there:
                     p_t^T ∝ exp(logprob / T), p_s^T ∝ exp(z / T) over the k ids. Cheap (the student's full-vocab
                     normaliser cancels), but ignores how much mass either side puts elsewhere.
      "bucket"       the mass outside the k ids is one extra outcome, on both sides, taken at T=1 where the teacher's
                     is known exactly: teacher 1 - sum exp(topk_logprobs), student 1 - sum p_s over the same ids.
                     Both (k+1)-way distributions are then tempered the same way, p^T ∝ p^(1/T). For T != 1 the true
                     tempered teacher tail is unknowable from the top-k; this treats the tail as one token on both
                     sides, so the target is the same as at T=1 (zero divergence iff the coarse-grained
                     distributions agree) and only the weighting changes. Tail masses are resolved to ~eps only.
    With k = V both modes equal `kd_divergence` with the teacher's full logits. kind/beta: see `kd_divergence`.
    vocab_size cuts the student's padding rows, so that the student normaliser matches `kd_divergence`'s.
    """
    _check(temperature, kind, beta)
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
    z = _upcast(student_logits if vocab_size is None else student_logits[..., :vocab_size])
    valid = topk_ids >= 0
    log_s = z.gather(-1, topk_ids.clamp_min(0)).masked_fill(~valid, -math.inf)
    log_t = topk_logprobs.detach().to(z.dtype).masked_fill(~valid, -math.inf)
    if tail == "bucket":
        log_s = _with_tail(log_s - torch.logsumexp(z, dim=-1, keepdim=True))
        log_t = _with_tail(log_t)
    if temperature != 1:
        log_s, log_t = log_s / temperature, log_t / temperature
    return _divergence(F.log_softmax(log_t, dim=-1), F.log_softmax(log_s, dim=-1), kind, beta)


def distillation_loss(student_logits: Tensor, labels: Tensor, *, teacher_logits: Tensor | None = None,
                      topk_ids: Tensor | None = None, topk_logprobs: Tensor | None = None, alpha: float = 0.5,
                      temperature: float = 1.0, kind: str = "forward_kl", beta: float = 0.5,
                      tail: str = "renormalize", vocab_size: int | None = None,
                      ignore_index: int = -100) -> dict[str, Tensor]:
    """alpha * T^2 * KD + (1 - alpha) * CE, both averaged over the trained tokens (labels != ignore_index).

    student_logits [B, L, V] must already be aligned with labels [B, L] (logits[:, i] predicts labels[:, i]); the
    teacher is either teacher_logits [B, L, Vt] or topk_ids/topk_logprobs [B, L, k], aligned the same way.
    CE is the student's usual next-token cross entropy at T=1 over its full vocabulary (as in SFT).
    Returns {"loss", "kd" (mean divergence, without T^2), "ce", "tokens" (number of trained tokens)}. A term whose
    weight is 0 is not computed and reported as 0. With no trained token the loss is 0 and still has a grad_fn.
    """
    online, offline = teacher_logits is not None, topk_ids is not None or topk_logprobs is not None
    if online == offline or (offline and (topk_ids is None or topk_logprobs is None)):
        raise ValueError("pass exactly one teacher: teacher_logits, or both topk_ids and topk_logprobs")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check(temperature, kind, beta)

    mask = labels != ignore_index
    tokens = mask.sum()
    denom = tokens.clamp_min(1)  # no trained token: sums are 0, so the means are 0 instead of 0/0
    # Index the trained rows first: every later [N, V] temporary then only covers tokens that count.
    student = _upcast(student_logits[mask])
    zero = student.new_zeros(())

    kd = zero
    if alpha > 0:
        if online:
            per_token = kd_divergence(student, teacher_logits[mask], temperature=temperature, kind=kind, beta=beta,
                                      vocab_size=vocab_size)
        else:
            per_token = topk_divergence(student, topk_ids[mask], topk_logprobs[mask], temperature=temperature,
                                        kind=kind, beta=beta, tail=tail, vocab_size=vocab_size)
        kd = per_token.sum() / denom
    ce = F.cross_entropy(student, labels[mask], reduction="sum") / denom if alpha < 1 else zero
    loss = alpha * temperature**2 * kd + (1 - alpha) * ce
    return {"loss": loss, "kd": kd, "ce": ce, "tokens": tokens}
