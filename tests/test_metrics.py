"""Evaluation metrics against hand-computed values, and answer grouping for the majority vote."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.core.config import VerifyConfig
from pipeline.evaluate.scoring import answer_groups, benchmark_metrics, plain_number, quick_same
from pipeline.evaluate.metrics import (
    bootstrap_ci,
    maj_at_k,
    mean_pass_at_1,
    mean_pass_at_k,
    pass_at_k,
    per_problem_accuracy,
    vote_groups,
)
from pipeline.verify import verify_many

# ------------------------------------------------------------------------------------------ pass@k


@pytest.mark.parametrize("k, expected", [
    (1, 1 - 3 / 5),    # 1 - C(3,1)/C(5,1)
    (2, 1 - 3 / 10),   # 1 - C(3,2)/C(5,2)
    (3, 1 - 1 / 10),   # 1 - C(3,3)/C(5,3)
    (4, 1.0),          # C(3,4) = 0: every 4 of 5 holds a correct one
    (5, 1.0),
])
def test_pass_at_k_n5_c2_by_hand(k, expected):
    assert pass_at_k(5, 2, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_edges_and_the_binomial_formula():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0 and pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(3, 1, 1) == pytest.approx(1 / 3)
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    # the product form stays finite where the binomials are astronomically large
    assert pass_at_k(2000, 1, 1) == pytest.approx(1 / 2000)
    assert 0 < pass_at_k(2000, 3, 64) < 1
    with pytest.raises(ValueError):
        pass_at_k(4, 2, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_means_over_problems():
    flags = [[True, False], [True, True, True, False], [False]]
    assert per_problem_accuracy(flags) == [0.5, 0.75, 0.0]
    assert mean_pass_at_1(flags) == pytest.approx((0.5 + 0.75 + 0) / 3)
    counts = [(2, 1), (4, 3), (1, 0)]
    assert mean_pass_at_k(counts, 1) == pytest.approx(mean_pass_at_1(flags))
    assert mean_pass_at_k([(4, 1), (4, 2)], 2) == pytest.approx(((1 - 3 / 6) + (1 - 1 / 6)) / 2)


# ----------------------------------------------------------------------------------------- bootstrap

def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_problems():
    values = [1.0, 0.0, 0.5, 0.25, 1.0, 0.0, 0.75, 0.5]
    mean = sum(values) / len(values)
    lo, hi = bootstrap_ci(values, n_boot=2000, seed=0)
    assert lo < mean < hi and 0 <= lo and hi <= 1
    lo16, hi16 = bootstrap_ci(values * 16, n_boot=2000, seed=0)  # same spread, 16x the problems
    assert lo16 < mean < hi16
    assert (hi16 - lo16) < (hi - lo) / 2.5  # about 1/sqrt(16) as wide
    assert bootstrap_ci(values, n_boot=2000, seed=0) == (lo, hi)  # seeded: reproducible
    assert bootstrap_ci([0.5] * 5, n_boot=200) == (0.5, 0.5)
    assert all(math.isnan(x) for x in bootstrap_ci([], n_boot=10))


@pytest.mark.parametrize("level", [0.8, 0.95])
def test_bootstrap_interval_has_its_coverage(level):
    """Simulation: 400 benchmarks of 200 problems drawn from a population whose solve rates follow Beta(2, 3)
    (mean 0.4), 4 samples per problem; the interval must contain the population's 0.4 in about `level` of
    them (a percentile bootstrap runs a little narrow at this size, hence the one-sided slack), and a smaller
    level must give narrower intervals."""
    rng = np.random.default_rng(123)
    hits, widths = 0, []
    for trial in range(400):
        rates = rng.beta(2, 3, size=200)
        values = rng.binomial(4, rates) / 4  # each problem's share of correct samples
        lo, hi = bootstrap_ci(values, n_boot=1000, seed=trial, level=level)
        hits += lo <= 0.4 <= hi
        widths.append(hi - lo)
    coverage = hits / 400
    assert level - 0.06 <= coverage <= level + 0.04, coverage
    narrow = bootstrap_ci(values, n_boot=1000, seed=0, level=level / 2)
    assert narrow[1] - narrow[0] < 0.8 * widths[-1]


# ---------------------------------------------------------------------------------------- majority

def verified_same(a: str, b: str) -> bool:
    """The evaluate stage's equivalence, one pair at a time: b, boxed, verifies against a as gold."""
    return verify_many([a], [f"\\boxed{{{b}}}"])[0].correct


def test_maj_at_k_groups_equivalent_forms():
    answers = ["1/2", "3", "0.5", "3", "\\frac{1}{2}"]
    correct = [True, False, True, False, True]  # gold 0.5
    assert maj_at_k(answers, correct, 5, verified_same)  # {1/2, 0.5, \frac{1}{2}} outvotes {3, 3}
    assert not maj_at_k(answers, correct, 5)  # compared as plain text, "3" would win with 2 votes
    assert vote_groups(answers, verified_same) == [0, 1, 0, 1, 0]
    assert maj_at_k(answers, correct, 1, verified_same)
    assert maj_at_k(answers, correct, 4, verified_same)  # 2 votes each: the earlier group (1/2) wins


def test_maj_at_k_ties_and_missing_answers():
    assert not maj_at_k(["3", "4"], [False, True], 2)  # tie: the earliest answer's group wins
    assert maj_at_k(["4", "3"], [True, False], 2)
    assert maj_at_k([None, None, "2", ""], [False, False, True, False], 4)  # missing answers never win
    assert not maj_at_k([None, None], [False, False], 2)  # no answer at all: a wrong vote
    assert maj_at_k(["2", "5", "5", "2", "2"], [True, False, False, True, True], 3) is False
    assert maj_at_k(["2", "5", "5", "2", "2"], [True, False, False, True, True], 5) is True
    with pytest.raises(ValueError):
        maj_at_k(["1"], [True], 2)


def test_vote_groups_use_the_first_answer_of_a_group():
    # "equal" here is not transitive (like 50 ~ 50% ~ 0.5 in math-verify): 5 matches 4 and 6, 4 not 6
    near = lambda a, b: abs(int(a) - int(b)) <= 1  # noqa: E731
    assert vote_groups(["4", "5", "6", "6"], near) == [0, 0, 1, 1]
    assert vote_groups(["5", "4", "6"], near) == [0, 0, 0]


def test_answer_groups_batch_matches_one_by_one_grouping():
    problems = [["1/2", "0.5", "3", None, "\\frac{1}{2}", "3.0", "0.333333", "1/3"],
                ["x+1", "1+x", "2x", "x*2", "\\{1, 2\\}", "\\{2, 1\\}"],
                [None, None], [], ["Monday", "\\text{monday}", "monday", "tuesday"]]
    groups = answer_groups(problems, VerifyConfig())
    for answers, g in zip(problems, groups):
        assert [None if a is None else g[a] for a in answers] == vote_groups(answers, verified_same)
    assert groups[0] == {"1/2": 0, "0.5": 0, "3": 1, "\\frac{1}{2}": 0, "3.0": 1, "0.333333": 2, "1/3": 2}
    assert groups[1]["x+1"] == groups[1]["1+x"] != groups[1]["2x"] == groups[1]["x*2"]
    assert groups[1]["\\{1, 2\\}"] == groups[1]["\\{2, 1\\}"]
    assert groups[4] == {"Monday": 0, "\\text{monday}": 0, "monday": 0, "tuesday": 1}
    assert answer_groups(problems[:2], VerifyConfig(workers=1)) == groups[:2]  # a pool of its own size


def test_quick_same_decides_only_the_obvious():
    assert plain_number("\\frac{1}{2}") == plain_number("1/2") == plain_number("0.5")
    assert plain_number("-3") == -3 and plain_number("x") is None and plain_number("1/0") is None
    assert quick_same("1/2", "0.5") is True and quick_same("3", "3.0") is True
    assert quick_same("3", "4") is False and quick_same("1000000", "1000001") is None  # close: verifier decides
    assert quick_same("1/3", "0.333333") is None and quick_same("x+1", "1+x") is None


# ------------------------------------------------------------------------------- metrics of a pair

def rec(id_, sample, predicted, correct, *, finish="stop", tokens=10, error=None):
    return {"id": id_, "sample": sample, "predicted": predicted, "correct": correct, "finish_reason": finish,
            "completion_tokens": tokens, "error": error}


def test_benchmark_metrics_by_hand():
    records = [
        rec("a", 0, "1/2", True), rec("a", 1, "0.5", True), rec("a", 2, "3", False), rec("a", 3, "3", False),
        rec("b", 1, "7", False, finish="length", tokens=30), rec("b", 0, None, False),
        rec("b", 2, None, False, tokens=None, error="HTTP 400: too long"), rec("b", 3, "7", False),
    ]
    m = benchmark_metrics(records, [1, 2, 4, 8], n_boot=500, seed=0, verify=VerifyConfig())
    assert (m["n_problems"], m["n_samples"], m["samples"]) == (2, 4, 8)
    assert m["pass@1"] == pytest.approx((2 / 4 + 0) / 2, abs=1e-6)
    assert m["pass@k"] == {"1": pytest.approx(0.25, abs=1e-6), "2": pytest.approx((1 - 1 / 6) / 2, abs=1e-6),
                           "4": pytest.approx(0.5, abs=1e-6)}  # k = 8 > n is left out
    # a: 1/2 and 0.5 vote together (2) and tie with 3, 3 (2): the earlier group wins
    assert m["maj@k"] == {"1": 0.5, "2": 0.5, "4": 0.5}
    assert m["ci95_low"] <= m["pass@1"] <= m["ci95_high"]
    assert m["truncated_rate"] == pytest.approx(1 / 8) and m["failed_requests"] == 1
    assert m["no_answer_rate"] == pytest.approx(1 / 7, abs=1e-6)  # over the 7 answered samples
    assert m["mean_output_tokens"] == pytest.approx((10 * 6 + 30) / 7, abs=0.05)
    plain = benchmark_metrics(records, [4], n_boot=100, seed=0)  # identical text only: 3, 3 beats 1/2 and 0.5
    assert plain["maj@k"] == {"4": 0.0}
