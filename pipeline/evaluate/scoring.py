"""Scoring for `evaluate`: verify each sample against its gold answer, group equivalent predicted answers for
the majority vote, and turn one (model, benchmark)'s samples into its metrics.

Correctness and answer equivalence both come from `pipeline.verify` (the filter's checker): two predicted
answers are the same when the second, boxed, verifies against the first as gold, so 0.5, 1/2 and \\frac{1}{2}
vote together. Plain numbers that are exactly equal, or far apart, are decided without the worker pool.
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from fractions import Fraction
from typing import Sequence

from ..backends.base import split_reasoning
from ..core.config import VerifyConfig
from ..verify import VerifyPool, default_pool, verify_many
from . import failures, metrics

REQUEST_FAILED = "request failed"  # verify_reason of a sample whose generation request failed


def verify_records(records: list[dict], cfg: VerifyConfig, *, progress: bool = False) -> None:
    """Fill `predicted`, `correct` and `verify_reason` of each record in place. The answer is looked for in
    the text after the reasoning block (a completion cut off inside it has none)."""
    todo = [r for r in records if r.get("error") is None and r.get("completion") is not None]
    finals = [split_reasoning(r["completion"])[2] for r in todo]
    verdicts = verify_many([str(r["answer"]) for r in todo], finals, timeout_s=cfg.timeout_s, workers=cfg.workers,
                           progress=progress) if todo else []
    for r in records:
        r.update(predicted=None, correct=False, verify_reason=REQUEST_FAILED)
    for r, v in zip(todo, verdicts):
        r.update(predicted=v.predicted, correct=v.correct, verify_reason=v.reason)


# ------------------------------------------------------------------------------------ answer equivalence

_DECIMAL = re.compile(r"-?\d+(?:\.\d+)?")
_FRACTION = re.compile(r"(-?)(?:\\[dt]?frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))")
_FAR = Fraction(1, 10_000)  # relative gap beyond which two plain numbers are certainly different answers


def plain_number(s: str) -> Fraction | None:
    """The value of a bare integer, decimal or fraction (3, -0.25, 1/2, \\frac{1}{2}); None for anything else."""
    s = s.strip()
    if _DECIMAL.fullmatch(s):
        return Fraction(s)
    m = _FRACTION.fullmatch(s)
    if m:
        num, den = (m[2], m[3]) if m[2] is not None else (m[4], m[5])
        if int(den):
            return Fraction(int(num), int(den)) * (-1 if m[1] else 1)
    return None


def quick_same(a: str, b: str) -> bool | None:
    """True / False when the answers are identical text or plain numbers that are equal / far apart; None when
    it takes the verifier (close numbers such as 1/3 and 0.333333, expressions, sets, units, text)."""
    if a == b:
        return True
    x, y = plain_number(a), plain_number(b)
    if x is None or y is None:
        return None
    if x == y:
        return True
    return False if abs(x - y) > _FAR * max(1, abs(x), abs(y)) else None


def answer_groups(answers: Sequence[Sequence[str | None]], cfg: VerifyConfig) -> list[dict[str, int]]:
    """For each problem, a map from each distinct predicted answer to its vote group, exactly as
    `metrics.vote_groups` would form them with the verifier as `same` (each answer joins the earliest group
    whose first answer it equals), but with the checks of all problems batched through the worker pool: round
    j settles the j-th distinct answer of every problem at once."""
    distinct = [list(dict.fromkeys(a for a in problem if a is not None and str(a).strip())) for problem in answers]
    reps: list[list[str]] = [[] for _ in distinct]
    groups: list[dict[str, int]] = [{} for _ in distinct]
    rounds = max(map(len, distinct), default=0)
    # one pool for every round (the shared one, or one of the configured size)
    context = contextlib.nullcontext(default_pool()) if cfg.workers is None else VerifyPool(cfg.workers)
    with context as pool:
        for j in range(rounds):
            _settle(j, distinct, reps, groups, pool, cfg.timeout_s)
    return groups


def _settle(j: int, distinct: list[list[str]], reps: list[list[str]], groups: list[dict[str, int]], pool,
            timeout_s: float) -> None:
    """Round j of answer_groups: put the j-th distinct answer of every problem into its group."""
    asks: list[tuple[int, int]] = []  # (problem, group) pairs the verifier must decide
    quick: dict[int, int | None] = {}  # problem -> the first group quick_same accepts
    for p, d in enumerate(distinct):
        if j >= len(d):
            continue
        quick[p] = None
        for g, rep in enumerate(reps[p]):
            same = quick_same(rep, d[j])
            if same:
                quick[p] = g
                break  # groups after it cannot win
            if same is None:
                asks.append((p, g))
    verdicts = pool.verify_many([reps[p][g] for p, g in asks], [f"\\boxed{{{distinct[p][j]}}}" for p, g in asks],
                                timeout_s=timeout_s) if asks else []
    accepted = defaultdict(list)
    for (p, g), v in zip(asks, verdicts):
        if v.correct:
            accepted[p].append(g)
    for p, q in quick.items():
        found = [g for g in [*accepted[p], q] if g is not None]
        if found:
            groups[p][distinct[p][j]] = min(found)
        else:
            groups[p][distinct[p][j]] = len(reps[p])
            reps[p].append(distinct[p][j])


# -------------------------------------------------------------------------------------------- metrics

def benchmark_metrics(records: list[dict], ks: list[int], *, n_boot: int, seed: int,
                      verify: VerifyConfig | None = None) -> dict:
    """Metrics of one (model, benchmark) from its verified records (one per (id, sample)). pass@k and maj@k for
    the k in `ks` up to the smallest number of samples of a problem. With `verify`, equivalent answers vote
    together (answer_groups); without it, only identical ones do."""
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_problem[r["id"]].append(r)
    problems = [sorted(rows, key=lambda r: r["sample"]) for rows in by_problem.values()]
    flags = [[bool(r["correct"]) for r in rows] for rows in problems]
    counts = [(len(f), sum(f)) for f in flags]
    n_min = min((n for n, _ in counts), default=0)
    ks = sorted({k for k in ks if k <= n_min})
    accuracy = metrics.per_problem_accuracy(flags)
    lo, hi = metrics.bootstrap_ci(accuracy, n_boot=n_boot, seed=seed)
    answers = [[r["predicted"] for r in rows] for rows in problems]
    k_max = max(ks, default=0)
    groups = answer_groups([a[:k_max] for a in answers], verify) if verify is not None and k_max > 1 else None
    maj = {}
    for k in ks:
        votes = []
        for i in range(len(problems)):
            g = groups[i] if groups is not None else None
            same = (lambda a, b, g=g: g[a] == g[b]) if g is not None else (lambda a, b: a == b)
            votes.append(metrics.maj_at_k(answers[i], flags[i], k, same))
        maj[str(k)] = _round(sum(votes) / len(votes)) if votes else None
    answered = [r for r in records if r.get("error") is None]
    tokens = [r["completion_tokens"] for r in answered if r.get("completion_tokens") is not None]
    return {
        "n_problems": len(problems), "n_samples": n_min, "samples": len(records),
        "pass@1": _round(metrics.mean_pass_at_1(flags)) if problems else None,
        "ci95_low": _round(lo), "ci95_high": _round(hi),
        "pass@k": {str(k): _round(metrics.mean_pass_at_k(counts, k)) for k in ks},
        "maj@k": maj,
        "truncated_rate": _round(sum(r.get("finish_reason") == "length" for r in records) / max(1, len(records))),
        "no_answer_rate": _round(sum(r["predicted"] is None for r in answered) / max(1, len(answered))),
        "mean_output_tokens": round(sum(tokens) / len(tokens), 1) if tokens else None,
        "failed_requests": len(records) - len(answered),
        "failures": failures.breakdown(records),
        "steps": failures.step_accuracy(records),
    }


def _round(x: float) -> float | None:
    return None if x != x else round(float(x), 6)  # NaN (no problems) -> None
