"""Cross-tokenizer distillation losses over aligned spans (see xtok.py for the alignment).

A span covers the same bytes on both sides; each side may spell it with several tokens. Its distribution is the
sequence probability of that spelling (TRL GOLD's extended ULD, "bayesian" merge): P(prefix tokens) times the
next-token distribution at the span's last token; single-token spans are plain next-token distributions. The mass
a split side leaves to other prefixes (1 - P(prefix)) joins the "everything else" outcome below, so both sides stay
proper distributions and a span split on one side only never makes a divergence infinite. Per span:

    uld      sum |sorted p_teacher - sorted p_student| (Boizard et al., 2024, Universal Logit Distillation): the
             k largest span probabilities of each side rank by rank, then everything else as one outcome. Needs
             no vocabulary mapping.
    hybrid   GOLD's hybrid: w * D(p_t || p_s) on the shared vocabulary (teacher tokens whose bytes a student token
             spells: teacher top-k mapped to student ids, everything else one outcome, as the same-tokenizer
             offline KD's `tail: bucket`), plus (1 - w) * ULD over the unshared tokens. D is kd.divergence.

The teacher is its top-k log-probabilities per token (stored offline, or the top-k of a live teacher), and the
log-probability of the token it actually wrote (for span prefixes). The loss is `alpha * T^2 * KD + (1 - alpha) *
CE` with KD the mean over spans and CE the student's usual next-token cross entropy over its trained tokens, so
alpha and T mean what they mean in kd_losses.distillation_loss. With identical tokenizers every span is one token on
both sides, every top-k id is shared and the hybrid equals distillation_loss with tail=bucket exactly.

GOLD's own ULDLoss loops over samples and spans in Python and sorts the full vocabulary per span; it also needs a
live teacher. This is the same mathematics vectorised over all spans of a batch, for stored top-k teachers too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .kd_losses import _check, _divergence, _upcast, _with_tail

LOSSES = ("uld", "hybrid")


def _rows_by_group(groups: Tensor, last: Tensor, n_groups: int, side: str) -> Tensor:
    """Index of the one `last` row of each group 0..n_groups-1."""
    rows = torch.nonzero(last).flatten()
    owners = groups[rows]
    if rows.numel() != n_groups or not torch.equal(owners.sort().values, torch.arange(n_groups, device=rows.device)):
        raise ValueError(f"every span needs exactly one last {side} token ({rows.numel()} for {n_groups} spans)")
    out = torch.empty(n_groups, dtype=torch.long, device=rows.device)
    out[owners] = rows
    return out


def _prefix(values: Tensor, groups: Tensor, last: Tensor, n_groups: int) -> Tensor:
    """log P(prefix) of each span: the sum of the log-probabilities of its tokens before its last one."""
    inside = (groups >= 0) & ~last
    return values.new_zeros(n_groups).index_add(0, groups[inside], values[inside])


def _sorted_l1(p_t: Tensor, p_s: Tensor) -> Tensor:
    """sum_r |p_t(r) - p_s(r)| over ranks r of the two descending-sorted vectors (same width)."""
    return (p_t.sort(-1, descending=True).values - p_s.sort(-1, descending=True).values).abs().sum(-1)


def span_divergence(log_p_s: Tensor, z_last: Tensor, pre_s: Tensor, ids: Tensor, lps: Tensor, pre_t: Tensor, *,
                    loss: str, temperature: float, kind: str, beta: float, vocab_map: Tensor | None,
                    matched_weight: float | None) -> Tensor:
    """Per-span divergence [G]. log_p_s / z_last: the student's log-probs and logits at each span's last token
    [G, V]; ids / lps: the teacher's top-k there [G, k] (-1 / -inf padding); pre_*: log P(prefix) [G] (0 for a
    single-token span)."""
    k = ids.shape[-1]
    valid = ids >= 0
    lps = lps.to(log_p_s.dtype).masked_fill(~valid, -math.inf)
    if loss == "uld":
        # the k largest span probabilities rank by rank, then all the rest (tail and other prefixes) as one outcome
        log_t = F.log_softmax(_with_tail(lps) / temperature, dim=-1)[:, :k]
        log_s = F.log_softmax(z_last / temperature, dim=-1) if temperature != 1 else log_p_s
        top_t = (log_t + pre_t[:, None]).exp()
        top_s = (log_s.topk(min(k, log_s.shape[-1]), dim=-1).values + pre_s[:, None]).exp()
        top_s = F.pad(top_s, (0, k - top_s.shape[-1]))
        rest = (top_t.sum(-1) - top_s.sum(-1)).abs()  # |(1 - sum top_t) - (1 - sum top_s)|
        return _sorted_l1(top_t, top_s) + rest
    if loss != "hybrid":
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if vocab_map is None or matched_weight is None:
        raise ValueError("the hybrid loss needs vocab_map and matched_weight")
    n_map = vocab_map.numel()  # ids past the tokenizer (a model's padding rows) map to nothing
    mapped = torch.where(valid & (ids < n_map), vocab_map[ids.clamp(0, n_map - 1)], torch.full_like(ids, -1))
    matched = mapped >= 0
    # shared vocabulary: the span probabilities of the matched top-k ids and one bucket for all else (other tokens,
    # other prefixes), on both sides; tempered like the same-tokenizer `tail: bucket`. Unmatched slots get the most
    # negative finite log-prob, not -inf: a row with no match at all would give logsumexp a NaN gradient.
    floor = torch.finfo(log_p_s.dtype).min
    log_t = _with_tail(torch.where(matched, lps + pre_t[:, None], floor))
    log_s = _with_tail(torch.where(matched, log_p_s.gather(-1, mapped.clamp_min(0)) + pre_s[:, None], floor))
    if temperature != 1:
        log_t, log_s = log_t / temperature, log_s / temperature
    shared = _divergence(F.log_softmax(log_t, dim=-1), F.log_softmax(log_s, dim=-1), kind, beta)
    if matched_weight >= 1:
        return shared
    # the rest: the teacher's unshared top-k against the student's largest unshared probabilities, rank by rank
    p_t = F.softmax(_with_tail(lps) / temperature, dim=-1)[:, :k]
    p_s = F.softmax(z_last / temperature, dim=-1) if temperature != 1 else log_p_s.exp()
    student_shared = torch.zeros(p_s.shape[-1], dtype=torch.bool, device=p_s.device)
    student_shared[vocab_map[vocab_map >= 0]] = True
    rest_t = pre_t.exp()[:, None] * p_t.masked_fill(matched | ~valid, 0)
    rest_s = pre_s.exp()[:, None] * p_s.masked_fill(student_shared, 0).topk(min(k, p_s.shape[-1]), dim=-1).values
    rest = _sorted_l1(rest_t, F.pad(rest_s, (0, k - rest_s.shape[-1])))
    return matched_weight * shared + (1 - matched_weight) * rest


def cross_tokenizer_loss(student_logits: Tensor, targets: Tensor, s_group: Tensor, s_last: Tensor, t_ids: Tensor,
                         t_lps: Tensor, t_chosen: Tensor, t_group: Tensor, t_last: Tensor, n_groups: int, *,
                         alpha: float = 0.5, temperature: float = 1.0, loss: str = "hybrid",
                         kind: str = "forward_kl", beta: float = 0.5, vocab_map: Tensor | None = None,
                         matched_weight: float | None = None, vocab_size: int | None = None) -> dict[str, Tensor]:
    """alpha * T^2 * (mean span divergence) + (1 - alpha) * CE over the student's trained tokens.

    Student rows [Ns, V] predict `targets` [Ns]; s_group [Ns] is each row's span (-1: in none, CE only), s_last marks
    the span's last token. Teacher rows t_ids / t_lps [Nt, k] (its top-k), t_chosen [Nt] (log-prob of the token it
    wrote), t_group / t_last likewise. Every span 0..n_groups-1 has one last row on each side.
    Returns {"loss", "kd", "ce", "tokens", "spans"}."""
    _check(temperature, kind, beta)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    z = _upcast(student_logits if vocab_size is None else student_logits[..., :vocab_size])
    tokens = torch.tensor(z.shape[0], device=z.device)
    zero = z.new_zeros(()) + 0 * z.sum()  # keeps a grad_fn when nothing is trained
    ce = F.cross_entropy(z, targets, reduction="sum") / max(z.shape[0], 1) if alpha < 1 and z.shape[0] else zero
    kd = zero
    if alpha > 0 and n_groups > 0:
        log_p = F.log_softmax(z, dim=-1)
        chosen_s = log_p.gather(-1, targets[:, None]).squeeze(-1)
        pre_s = _prefix(chosen_s, s_group, s_last, n_groups)
        pre_t = _prefix(t_chosen.to(z.dtype), t_group, t_last, n_groups)
        s_rows = _rows_by_group(s_group, s_last & (s_group >= 0), n_groups, "student")
        t_rows = _rows_by_group(t_group, t_last, n_groups, "teacher")
        per_span = span_divergence(log_p[s_rows], z[s_rows], pre_s, t_ids[t_rows], t_lps[t_rows], pre_t, loss=loss, temperature=temperature, kind=kind, beta=beta,
                                   vocab_map=vocab_map, matched_weight=matched_weight)
        kd = per_span.mean()
    loss_value = alpha * temperature**2 * kd + (1 - alpha) * ce
    return {"loss": loss_value, "kd": kd, "ce": ce, "tokens": tokens,
            "spans": torch.tensor(n_groups, device=z.device)}
