"""Evaluation metrics as pure functions: pass@k, pass@1 with a bootstrap interval, majority vote.

    pass_at_k(n, c, k)                  unbiased pass@k of one problem (Chen et al. 2021)
    mean_pass_at_k(counts, k)           its mean over problems, counts = [(n, c), ...]
    mean_pass_at_1(flags)               mean over problems of the share of correct samples
    bootstrap_ci(values, n_boot, seed)  95% percentile interval of the mean, problems resampled
    maj_at_k(answers, correct, k, same) is the majority answer of the first k samples correct?
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n, c of them correct, is
    correct: 1 - C(n-c, k) / C(n, k), computed as a product (no huge binomials)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:  # every draw of k holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean of pass_at_k over problems; counts holds (n, c) per problem."""
    if not counts:
        return float("nan")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def per_problem_accuracy(flags: Sequence[Sequence[bool]]) -> list[float]:
    """Share of correct samples of each problem (a problem without samples counts 0)."""
    return [sum(map(bool, f)) / len(f) if len(f) else 0.0 for f in flags]


def mean_pass_at_1(flags: Sequence[Sequence[bool]]) -> float:
    """pass@1 averaged over the samples of each problem, then over problems."""
    acc = per_problem_accuracy(flags)
    return sum(acc) / len(acc) if acc else float("nan")


def bootstrap_ci(values: Sequence[float], n_boot: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per problem: its share of correct
    samples). Problems are resampled with replacement `n_boot` times with a seeded generator."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 4_000_000 // x.size)  # bound the index matrix to about 32 MB
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def vote_groups(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> list[int | None]:
    """Group id of each answer (None for a missing answer). Answers are taken in order; each joins the first
    group whose representative (its earliest answer) it is `same` as, else starts a new group. Group ids
    count up from 0 in order of first appearance, so the grouping of a prefix is the prefix of the grouping."""
    reps: list[str] = []
    out: list[int | None] = []
    for a in answers:
        if a is None or not str(a).strip():
            out.append(None)
            continue
        gid = next((g for g, rep in enumerate(reps) if rep == a or same(rep, a)), None)
        if gid is None:
            gid = len(reps)
            reps.append(a)
        out.append(gid)
    return out


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int,
             same: Callable[[str, str], bool] = lambda a, b: a == b) -> bool:
    """Majority vote over the first k samples of one problem: answers are grouped by `same` (see vote_groups),
    the largest group wins (a tie goes to the group whose first answer came earliest), and the vote is
    correct iff the winning group's first answer is. Missing answers (None, empty) never win; no answer
    at all is a wrong vote."""
    if not 1 <= k <= len(answers):
        raise ValueError(f"need 1 <= k <= {len(answers)} (samples), got k={k}")
    groups = vote_groups(list(answers[:k]), same)
    votes: dict[int, int] = {}
    first: dict[int, int] = {}
    for i, g in enumerate(groups):
        if g is not None:
            votes[g] = votes.get(g, 0) + 1
            first.setdefault(g, i)
    if not votes:
        return False
    winner = min(votes, key=lambda g: (-votes[g], first[g]))
    return bool(correct[first[winner]])
