"""KD losses against values worked out by hand with `math` on tiny distributions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.train.kd_losses import KINDS, distillation_loss, kd_divergence, topk_divergence

P_T = [0.7, 0.2, 0.1]  # teacher
P_S = [0.5, 0.3, 0.2]  # student


def logits(p, *pad):
    """Logits whose softmax is p (log-probs), optionally followed by extra (padding) entries."""
    return torch.tensor([math.log(x) for x in p] + list(pad), dtype=torch.float64)


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def jsd(p_t, p_s, beta):
    m = [beta * a + (1 - beta) * b for a, b in zip(p_t, p_s)]
    return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)


def soft(p, T):
    """softmax(log p / T) = p^(1/T) / sum p^(1/T)."""
    z = sum(x ** (1 / T) for x in p)
    return [x ** (1 / T) / z for x in p]


def batch(B=2, L=6, V=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, L, V, generator=g, dtype=torch.float64)
    teacher = 3 * torch.randn(B, L, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[0, :2] = -100  # prompt
    labels[1, -1] = -100  # padding
    return student, teacher, labels


def test_forward_kl_by_hand():
    expected = 0.7 * math.log(0.7 / 0.5) + 0.2 * math.log(0.2 / 0.3) + 0.1 * math.log(0.1 / 0.2)
    assert expected == pytest.approx(0.0851229, abs=1e-7)
    assert kd_divergence(logits(P_S), logits(P_T)).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kind, beta, expected", [
    ("forward_kl", 0.5, kl(P_T, P_S)),
    ("reverse_kl", 0.5, kl(P_S, P_T)),
    ("jsd", 0.5, jsd(P_T, P_S, 0.5)),
    ("jsd", 0.2, jsd(P_T, P_S, 0.2)),  # asymmetric beta pins which side beta weights: M = 0.2 p_t + 0.8 p_s
    ("jsd", 0.0, kl(P_T, P_S)),  # TRL's endpoints: beta=0 is forward KL ...
    ("jsd", 1.0, kl(P_S, P_T)),  # ... and beta=1 reverse KL
])
def test_divergences_by_hand(kind, beta, expected):
    got = kd_divergence(logits(P_S), logits(P_T), kind=kind, beta=beta)
    assert got.shape == ()
    assert got.item() == pytest.approx(expected, abs=1e-12)
    # leading dims are kept: one value per token
    assert kd_divergence(logits(P_S).expand(2, 3, 3), logits(P_T).expand(2, 3, 3), kind=kind, beta=beta).shape == (2, 3)


def test_temperature_and_t_squared_scaling():
    T, alpha = 2.0, 0.3
    student = torch.stack([logits(P_S), torch.zeros(3, dtype=torch.float64)])[None]  # [1, 2, 3]
    teacher = torch.stack([logits(P_T), torch.zeros(3, dtype=torch.float64)])[None]
    labels = torch.tensor([[1, -100]])
    out = distillation_loss(student, labels, teacher_logits=teacher, alpha=alpha, temperature=T)
    kd, ce = kl(soft(P_T, T), soft(P_S, T)), -math.log(0.3)
    assert out["kd"].item() == pytest.approx(kd, abs=1e-12)
    assert out["ce"].item() == pytest.approx(ce, abs=1e-12)
    assert out["loss"].item() == pytest.approx(alpha * T**2 * kd + (1 - alpha) * ce, abs=1e-12)
    assert out["tokens"].item() == 1


def test_alpha_zero_is_cross_entropy():
    student, teacher, labels = batch()
    out = distillation_loss(student, labels, teacher_logits=teacher, alpha=0.0, temperature=2.0)
    expected = F.cross_entropy(student.reshape(-1, 7), labels.reshape(-1))  # ignore_index=-100, mean over kept
    assert out["loss"].item() == pytest.approx(expected.item(), rel=0, abs=1e-14)
    assert out["kd"].item() == 0 and out["tokens"].item() == 9


def test_alpha_one_is_pure_scaled_kd():
    student, teacher, labels = batch()
    mask = labels != -100
    out = distillation_loss(student, labels, teacher_logits=teacher, alpha=1.0, temperature=2.0, kind="reverse_kl")
    kd = kd_divergence(student[mask], teacher[mask], temperature=2.0, kind="reverse_kl").mean()
    assert out["kd"].item() == pytest.approx(kd.item(), rel=1e-12)
    assert out["loss"].item() == pytest.approx(4 * kd.item(), rel=1e-12)
    assert out["ce"].item() == 0


@pytest.mark.parametrize("source", ["online", "topk"])
def test_ignored_positions_change_nothing(source):
    student, teacher, labels = batch()
    ids = teacher.topk(3, dim=-1).indices
    teacher_arg = (dict(teacher_logits=teacher) if source == "online"
                   else dict(topk_ids=ids, topk_logprobs=teacher.log_softmax(-1).gather(-1, ids)))
    clean = distillation_loss(student, labels, **teacher_arg)

    mask = labels != -100
    dirty_student = student.clone()
    dirty_student[~mask] = torch.tensor([math.nan, math.inf, -math.inf, 1e30, -1e30, 0.0, 5.0], dtype=torch.float64)
    dirty_student.requires_grad_()
    if source == "online":
        teacher_arg["teacher_logits"] = teacher.masked_fill(~mask[..., None], math.nan)
    else:
        teacher_arg["topk_ids"] = ids.masked_fill(~mask[..., None], 10**6)  # would be out of range if gathered
        teacher_arg["topk_logprobs"] = teacher_arg["topk_logprobs"].masked_fill(~mask[..., None], math.nan)
    dirty = distillation_loss(dirty_student, labels, **teacher_arg)

    for key in ("loss", "kd", "ce", "tokens"):
        assert torch.equal(dirty[key], clean[key]), key
    dirty["loss"].backward()
    assert torch.isfinite(dirty_student.grad).all() and (dirty_student.grad[~mask] == 0).all()


def test_no_trained_token_gives_zero_loss_with_grad():
    student, teacher, _ = batch()
    student.requires_grad_()
    out = distillation_loss(student, torch.full((2, 6), -100), teacher_logits=teacher)
    assert out["loss"].item() == 0 and out["tokens"].item() == 0
    out["loss"].backward()
    assert (student.grad == 0).all()


@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("kind", KINDS)
def test_topk_with_full_vocab_equals_online(tail, T, kind):
    student, teacher, labels = batch()
    # k = V, in the teacher's own order (so not the identity permutation)
    topk_logprobs, topk_ids = teacher.log_softmax(-1).sort(dim=-1, descending=True)
    kw = dict(alpha=0.6, temperature=T, kind=kind, beta=0.3)
    online = distillation_loss(student, labels, teacher_logits=teacher, **kw)
    offline = distillation_loss(student, labels, topk_ids=topk_ids, topk_logprobs=topk_logprobs, tail=tail, **kw)
    assert offline["kd"].item() == pytest.approx(online["kd"].item(), rel=1e-7)
    assert offline["loss"].item() == pytest.approx(online["loss"].item(), rel=1e-7)


# V=4 teacher [0.5, 0.3, 0.15, 0.05] stored as its top-2; student [0.4, 0.4, 0.1, 0.1].
TOPK_CASES = [  # (tail, T, kind, expected)
    ("renormalize", 1.0, "forward_kl", kl([0.625, 0.375], [0.5, 0.5])),
    ("renormalize", 2.0, "forward_kl", kl(soft([0.625, 0.375], 2), soft([0.5, 0.5], 2))),
    ("bucket", 1.0, "forward_kl", kl([0.5, 0.3, 0.2], [0.4, 0.4, 0.2])),
    ("bucket", 2.0, "forward_kl", kl(soft([0.5, 0.3, 0.2], 2), soft([0.4, 0.4, 0.2], 2))),
    ("bucket", 1.0, "reverse_kl", kl([0.4, 0.4, 0.2], [0.5, 0.3, 0.2])),
    ("renormalize", 1.0, "jsd", jsd([0.625, 0.375], [0.5, 0.5], 0.5)),
]


@pytest.mark.parametrize("tail, T, kind, expected", TOPK_CASES)
def test_topk_by_hand(tail, T, kind, expected):
    student = logits([0.4, 0.4, 0.1, 0.1])
    ids, lps = torch.tensor([0, 1]), logits([0.5, 0.3])
    got = topk_divergence(student, ids, lps, temperature=T, kind=kind, tail=tail)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    # the same top-2 padded to 4 slots (id -1, log-prob -inf), shuffled: padding is ignored
    padded_ids, padded_lps = torch.tensor([1, -1, 0, -1]), logits([0.3], -math.inf, math.log(0.5), -math.inf)
    got = topk_divergence(student, padded_ids, padded_lps, temperature=T, kind=kind, tail=tail)
    assert got.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kind, expected", [
    ("forward_kl", kl(soft(P_T, 2), soft(P_S, 2))),
    ("reverse_kl", kl(soft(P_S, 2), soft(P_T, 2))),
    ("jsd", jsd(soft(P_T, 2), soft(P_S, 2), 0.5)),
])
def test_zero_probability_rows_give_no_nan(kind, expected):
    # -inf logits (e.g. masked padding rows) on both sides: the value of the 3 real rows, finite gradients
    student = logits(P_S, -math.inf, -math.inf).requires_grad_()
    teacher = logits(P_T, -math.inf, -math.inf)
    got = kd_divergence(student, teacher, kind=kind, temperature=2.0)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    got.backward()
    assert torch.isfinite(student.grad).all() and (student.grad[3:] == 0).all()


def test_gradients_reach_the_student_only():
    student, teacher, labels = batch()
    student.requires_grad_()
    teacher.requires_grad_()  # a teacher that could take gradients must still get none
    lps = teacher.log_softmax(-1)
    top = lps.topk(3)
    for teacher_arg in (dict(teacher_logits=teacher), dict(topk_ids=top.indices, topk_logprobs=top.values)):
        student.grad = None
        distillation_loss(student, labels, tail="bucket", kind="jsd", **teacher_arg)["loss"].backward()
        assert teacher.grad is None
        assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("source", ["online", "topk"])
def test_sgd_on_student_logits_lowers_kd(kind, source):
    student, teacher, labels = batch()
    student.requires_grad_()
    lps, ids = teacher.log_softmax(-1).topk(3)
    teacher_arg = dict(teacher_logits=teacher) if source == "online" else dict(topk_ids=ids, topk_logprobs=lps)
    kds = []
    for _ in range(5):
        out = distillation_loss(student, labels, alpha=1.0, temperature=2.0, kind=kind, tail="bucket", **teacher_arg)
        kds.append(out["kd"].item())
        (grad,) = torch.autograd.grad(out["loss"], student)
        with torch.no_grad():
            student -= 1.0 * grad  # plain SGD, lr=1
    assert all(b < a for a, b in zip(kds, kds[1:])), kds


def test_vocab_padding_rows():
    # student V=5, teacher V=7: the teacher's 2 padding rows hold garbage that would dominate if not cut
    p_t, p_s = [0.4, 0.3, 0.15, 0.1, 0.05], [0.2, 0.2, 0.2, 0.2, 0.2]
    student, teacher = logits(p_s), logits(p_t, 50.0, 50.0)
    assert kd_divergence(student, teacher, vocab_size=5).item() == pytest.approx(kl(p_t, p_s), abs=1e-12)
    with pytest.raises(ValueError, match=r"student vocab size 5 != teacher vocab size 7"):
        kd_divergence(student, teacher)
    out = distillation_loss(student[None, None], torch.tensor([[0]]), teacher_logits=teacher[None, None],
                            alpha=1.0, vocab_size=5)
    assert out["kd"].item() == pytest.approx(kl(p_t, p_s), abs=1e-12)


def test_exactly_one_teacher_source():
    student, teacher, labels = batch()
    with pytest.raises(ValueError, match="exactly one teacher"):
        distillation_loss(student, labels)
    with pytest.raises(ValueError, match="exactly one teacher"):
        distillation_loss(student, labels, teacher_logits=teacher, topk_ids=labels[..., None],
                          topk_logprobs=teacher[..., :1])
    with pytest.raises(ValueError, match="exactly one teacher"):
        distillation_loss(student, labels, topk_ids=labels[..., None])
