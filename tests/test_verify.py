"""pipeline.verify: the labelled table, agreement with math-verify's defaults, reasons, hostile input, the pool."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from pipeline.verify import (
    REASON_CORRECT, REASON_NO_ANSWER, REASON_NOT_EQUAL, REASON_PARSE_ERROR, REASON_TIMEOUT, REASONS, VerifyPool,
    VerifyResult, default_pool, extract_answer, verify_answer, verify_inline, verify_many,
)
from pipeline.verify import answers as A
from pipeline.verify.pool import _Call
from verify_cases import CASES

SLACK_S = 2.0  # hostile input must come back within timeout_s + this
TOWER = "\\boxed{10^{10^{10^{10}}}}"  # math-verify's numeric comparison of this never ends on its own


@pytest.fixture(scope="module")
def pool():
    """The shared default pool, started before any timing-sensitive test."""
    return default_pool().start()


@pytest.fixture(scope="module")
def table_results(pool):
    return verify_many([c[0] for c in CASES], [c[1] for c in CASES])


def _timed(fn):
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


# ---------------------------------------------------------------------------------------------------
# The labelled table, and how it differs from math-verify's defaults
# ---------------------------------------------------------------------------------------------------

def test_table_is_big_balanced_and_sourced():
    assert len(CASES) >= 400
    assert sum(c[2] for c in CASES) >= 150 and sum(not c[2] for c in CASES) >= 150
    assert len({(g, c) for g, c, _, _ in CASES}) == len(CASES), "duplicate cases"
    assert all(src for *_, src in CASES)
    sources = {src for *_, src in CASES}
    for wanted in ("unboxed answers", "relations", "equations", "several boxes", "matrices", "no number read out",
                   "decimal commas", "\\text{E}", "chat-template tails", "decimals to 4-5 places", "times -1",
                   "matrices in parentheses", "lines after"):
        assert any(wanted in s for s in sources), wanted
    assert {"project table", "math500", "gsm8k"} <= {s.split(":")[0] for s in sources}


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{i}:{c[0][:20]}" for i, c in enumerate(CASES)])
def test_labelled_case(i, table_results):
    gold, completion, expected, source = CASES[i]
    r = table_results[i]
    assert r.correct is expected, f"[{source}] gold={gold!r} completion={completion[-80:]!r} -> {r}"
    assert r.reason in REASONS
    assert (r.reason == REASON_CORRECT) is r.correct


def test_pool_and_inline_agree_on_the_table(table_results):
    for (gold, completion, _, _), pooled in zip(CASES, table_results):
        assert verify_inline(gold, completion) == pooled, (gold, completion)


def _mv_defaults(gold: str, completion: str) -> bool:
    """The six-line wrapper: math-verify with its default configs."""
    from math_verify import parse, verify

    return verify(parse(gold), parse(completion))


# The project's deviations from that wrapper, applied one after another (answers.py says why each exists).
def _step_gold(gold, completion):
    _, verify, _, _ = A.math_verify()
    from math_verify import parse

    return verify(A.parse_gold(gold), parse(completion), timeout_seconds=None)


def _step_box_first(gold, completion):
    _, verify, configs, _ = A.math_verify()
    return verify(A.parse_gold(gold), A._parse(completion, configs), timeout_seconds=None)


def _step_clean(gold, completion):
    _, verify, configs, _ = A.math_verify()
    return verify(A.parse_gold(gold), A._parse(A.clean_completion(completion), configs), timeout_seconds=None)


def _step_answer_lines(gold, completion):
    _, verify, _, _ = A.math_verify()
    return verify(A.parse_gold(gold), A.parse_prediction(completion), timeout_seconds=None)


def _step_precision(gold, completion):
    _, verify, _, _ = A.math_verify()
    gp, pp = A.parse_gold(gold), A.parse_prediction(completion)
    return verify(gp, pp, float_rounding=A.float_rounding(gp, pp), timeout_seconds=None)


DEVIATIONS = (
    ("a bare gold is read as boxed LaTeX or as math-verify's number (both readings for a,b)", _step_gold),
    ("the last box is tried first (boxed_match_priority=0, as lighteval and math-verify's tests do)",
     _step_box_first),
    ("the completion is cleaned (template tail, \\fbox, empty or full-stopped box or math, \\big(, smallmatrix, "
     "\\$ before a number)", _step_clean),
    ("the lines after an \"answer\" that ends its line are all read (several differing: one set)", _step_answer_lines),
    ("a decimal of 4-5 places against a fraction is compared at its places", _step_precision),
    ("plain-text golds compare as normalised text", lambda g, c: verify_inline(g, c).correct),
)


def test_agreement_with_math_verify_defaults(table_results, capsys):
    """Every case where the verdict differs from math-verify's defaults, with the deviation that makes the
    difference (the first one, applied in order, after which the verdict is ours). Printed with -s."""
    rows, counts = [], {name: 0 for name, _ in DEVIATIONS}
    for (gold, completion, expected, source), ours in zip(CASES, table_results):
        default = _mv_defaults(gold, completion)
        if default == ours.correct:
            continue
        assert ours.correct is expected  # we only ever differ where the defaults are wrong
        why = next(name for name, step in DEVIATIONS if step(gold, completion) == ours.correct)
        counts[why] += 1
        rows.append(f"  [{source}] {gold!r} / ...{completion[-50:]!r}: defaults {default}, ours {ours.correct} -- {why}")
    agree = 1 - len(rows) / len(CASES)
    with capsys.disabled():
        print(f"\nverify vs math-verify defaults on {len(CASES)} labelled cases: agree {agree:.1%}; ours right on "
              f"all, defaults wrong on {len(rows)}")
        for name, k in counts.items():
            print(f"  {k:4d}  {name}")
        if os.environ.get("VERIFY_LIST_DISAGREEMENTS"):
            print("\n".join(rows))
    assert rows, "the table should contain the forms math-verify's defaults get wrong"
    assert all(k > 0 for k in counts.values()), f"a deviation no case needs: {counts}"


# ---------------------------------------------------------------------------------------------------
# Result object, reasons, predicted strings, extraction
# ---------------------------------------------------------------------------------------------------

def test_result_object():
    assert REASONS == ("correct", "no answer found", "not equal", "timeout", "parse error")
    r = VerifyResult(True, "5", REASON_CORRECT, 0.1)
    with pytest.raises(Exception):
        r.correct = False  # frozen
    assert r == VerifyResult(True, "5", REASON_CORRECT, 9.9)  # timing is not part of equality


@pytest.mark.parametrize("gold, completion, correct, predicted, reason", [
    ("18", "16 - 3 - 4 = 9 eggs, 9 * 2 = 18. \\boxed{18}", True, "18", REASON_CORRECT),
    ("18", "16 - 3 - 4 = 9 eggs, 9 * 2 = 17. \\boxed{17}", False, "17", REASON_NOT_EQUAL),
    ("18", "I give up.", False, None, REASON_NO_ANSWER),
    ("\\frac{1}{2}", "so $\\boxed{\\dfrac{1}{2}}$.", True, "\\frac{1}{2}", REASON_CORRECT),
    ("\\frac{1}{2}", "The answer is $0.5$.", True, "\\frac{1}{2}", REASON_CORRECT),  # math-verify normalises it
    ("(1, 2)", "\\boxed{(1, 2)}", True, "(1, 2)", REASON_CORRECT),
    ("(1, 2)", "\\boxed{1}", False, "1", REASON_NOT_EQUAL),
    ("16", "eats 4, leaving 16 eggs.", True, "16", REASON_CORRECT),
    ("\\pi", "\\boxed{3.14159...}", False, "3.14159...", REASON_PARSE_ERROR),  # unparseable answer
    ("\\text{Monday}", "\\boxed{\\text{Tuesday}}", False, "\\text{Tuesday}", REASON_NOT_EQUAL),
    ("Monday", "The answer is Monday.", True, "Monday", REASON_CORRECT),
    ("3", "the ratio is \\frac{1}{3}", False, "\\frac{1}{3}", REASON_NOT_EQUAL),
    ("\\frac{1}{3}", "\\boxed{0.3333}", True, "0.3333", REASON_CORRECT),
    ("5", "The answer is\n\n3\n\nor maybe 5", False, "3, 5", REASON_NOT_EQUAL),  # both lines: one set
    ("9", "Answer $ \n 9 \n $", False, None, REASON_NO_ANSWER),  # inline math spread over lines
])
def test_reason_and_predicted(pool, gold, completion, correct, predicted, reason):
    r = verify_answer(gold, completion)
    assert (r.correct, r.predicted, r.reason) == (correct, predicted, reason)


@pytest.mark.parametrize("completion, expected", [
    ("\\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{1} then \\boxed{2} and \\fbox{3}", "1,2,3"),  # several boxes outside math mode: one set
    ("$\\boxed{1}$ then $\\boxed{2}$.", "2"),  # each in its own math span: the last one
    ("\\boxed {42}", "42"),
    ("\\boxed{}", None),
    ("The answer is $\\frac{3}{4}$, obviously.", "\\frac{3}{4}"),
    ("The final answer is 7. I hope it is correct.", "7"),
    ("no numbers here", None),
    ("first 3 then 4.", "4"),
    ("it costs \\$1,250.50 in total", "1250.50"),
    ("the value is \\frac{10}{9}", "\\frac{10}{9}"),  # never the 9 out of it
    ("So 12<|im_start|>user\nwhat is 5?", "12"),
    ("Answer:\n x = 2\n y = 3", "2, 3"),
    ("The answer is:\n\n16\n\nI hope this helps!", "16"),
    ("Let me check my answer\n2 + 3 = 5\nso the total is 5", "5"),  # not the 2 out of "2 + 3"
    ("the line is $$x - y + 1 = 0.$$", "x - y + 1 = 0"),
    ("\\boxed{\\bigl(\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}\\bigr)}", "(\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix})"),
])
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize("gold, answer, places", [
    ("\\frac{1}{3}", "0.3333", 4),
    ("\\frac{1}{3}", "0.33333", 5),
    ("\\frac{1}{3}", "0.333333", 6),
    ("\\frac{1}{3}", "0.333", 6),  # fewer than 4 places: math-verify's 6
    ("(\\frac{3}{5}, \\frac{8}{3}]", "(0.6, 2.6667]", 4),  # the fewest of those written to 4 or more
    ("0.3333", "\\frac{1}{3}", 4),  # a gold decimal against an exact answer
    ("0.333333", "0.3333", 6),  # decimals on both sides
    ("\\pi", "3.1416", 6),  # not a fraction
    ("\\sqrt{2}", "1.4142", 6),
])
def test_float_rounding_takes_the_places_written(gold, answer, places):
    assert A.float_rounding(A.parse_gold(gold), A.parse_prediction("\\boxed{" + answer + "}")) == places


def test_text_gold_rule_is_only_for_words():
    assert A.text_gold("Monday") == "monday" and A.text_gold("\\text{(C)}") == "c"
    assert A.text_gold("E") is None and A.text_gold("x") is None and A.text_gold("2x") is None


def test_verify_inline_excludes_start_up():
    """math-verify's first import and warm-up are not charged to the first item (it would time out)."""
    code = ("from pipeline.verify import verify_inline; r = verify_inline('-5', '-5', timeout_s=0.5); "
            "print(r.correct, r.reason)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "correct"], out.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------
# Hostile input through the pool
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, text", [
    ("many unbalanced boxes", "\\boxed{" * 150_000),
    ("deep braces", "\\boxed{" + "{" * 500_000 + "}" * 499_999),
    ("many answer phrases", "the answer is " * 80_000),
    ("long digit run", "7" * 1_000_000),
    ("spaces after answer", "answer" + " " * 1_000_000 + "x"),
    ("junk", "ab{c}\\d$e " * 100_000),
    ("dollars", "$1 $" * 200_000),
])
def test_hostile_text_never_hangs_the_caller(pool, name, text):
    r, dt = _timed(lambda: verify_answer("5", text, timeout_s=2))
    assert not r.correct and r.reason in REASONS, name
    assert dt < 2 + SLACK_S, name


def test_one_megabyte_completion_with_answer_at_the_end(pool):
    text = ("Let me think. " * 75_000)[:1_000_000] + " So the answer is \\boxed{42}."
    r, dt = _timed(lambda: verify_answer("42", text, timeout_s=3))
    assert r.correct and r.predicted == "42"
    assert dt < 3 + SLACK_S


def test_tower_of_powers_times_out(pool):
    r, dt = _timed(lambda: verify_answer("5", "so " + TOWER, timeout_s=2))
    assert (r.correct, r.reason, r.predicted) == (False, REASON_TIMEOUT, "10^{10^{10^{10}}}")
    assert dt < 2 + SLACK_S
    assert verify_answer("5", "\\boxed{5}").correct  # the pool keeps working


def test_ten_thousand_nested_braces(pool):
    nested = "{" * 10_000 + "1" + "}" * 10_000
    for text in ("\\boxed{" + nested + "}", "the answer is $" + nested + "$"):
        r, dt = _timed(lambda: verify_answer("1", text, timeout_s=2))
        assert not r.correct and r.reason in (REASON_PARSE_ERROR, REASON_TIMEOUT, REASON_NO_ANSWER)
        assert dt < 2 + SLACK_S
    assert verify_answer("1", "\\boxed{1}").correct


def test_five_thousand_digit_number(pool):
    big = "9" * 5000
    r, dt = _timed(lambda: verify_answer(big, f"\\boxed{{{big}}}", timeout_s=2))
    assert r.correct and dt < 2 + SLACK_S
    r = verify_answer(big, f"\\boxed{{{big[:-1]}8}}", timeout_s=2)
    assert (r.correct, r.reason) == (False, REASON_NOT_EQUAL)


def test_model_text_is_never_executed(pool, tmp_path):
    marker = tmp_path / "pwned"
    payloads = [f"\\boxed{{__import__('os').system('touch {marker}')}}",
                f"The answer is __import__('os').system('touch {marker}')",
                f"\\boxed{{exec(\"open('{marker}','w')\")}}", f"$eval('open(\"{marker}\",\"w\")')$"]
    results = verify_many(["0"] * len(payloads), payloads, timeout_s=3)
    assert not any(r.correct for r in results)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------
# The pool: kills, deaths, replacements, and that no interleaving can hang it
# ---------------------------------------------------------------------------------------------------

def test_hung_worker_is_killed_and_replaced():
    """With the in-worker alarm off, only the parent's SIGKILL can stop the tower of powers."""
    with VerifyPool(2, soft_timeouts=False) as p:
        p.start()
        before = set(p.worker_pids())
        golds = ["5", "6", "5", "7", "5"]
        comps = ["\\boxed{5}", "\\boxed{6}", TOWER, "\\boxed{8}", "\\boxed{5}"]
        out, dt = _timed(lambda: p.verify_many(golds, comps, timeout_s=1.5))
        assert [r.reason for r in out] == [REASON_CORRECT, REASON_CORRECT, REASON_TIMEOUT, REASON_NOT_EQUAL,
                                           REASON_CORRECT]
        assert out[2].elapsed_s >= 1.5
        assert dt < 1.5 + SLACK_S
        assert p.stats["killed"] == 1
        after = set(p.start().worker_pids())  # (start waits for the replacement to be ready)
        assert len(after) == 2 and len(before - after) == 1  # one worker replaced
        assert p.verify("5", "\\boxed{5}").correct


def test_kill_mid_batch_requeues_the_rest():
    """A hung item in the middle of a batch: the items after it are re-run by the replacement worker."""
    n = 40
    golds = [str(i) for i in range(n)]
    comps = [f"\\boxed{{{i}}}" for i in range(n)]
    comps[5] = TOWER
    with VerifyPool(1, soft_timeouts=False) as p:
        out = p.verify_many(golds, comps, timeout_s=1.0)
        assert out[5].reason == REASON_TIMEOUT
        assert [r.predicted for i, r in enumerate(out) if i != 5] == [str(i) for i in range(n) if i != 5]
        assert all(r.correct for i, r in enumerate(out) if i != 5)
        assert p.stats["killed"] == 1 and p.stats["started"] == 2


def test_an_item_whose_worker_is_killed_from_outside_is_retried_within_its_budget():
    with VerifyPool(1, soft_timeouts=False) as p:
        p.start()
        pid = p.worker_pids()[0]
        threading.Timer(0.6, os.kill, (pid, signal.SIGKILL)).start()
        (slow, fine), dt = _timed(lambda: p.verify_many(["5", "6"], [TOWER, "\\boxed{6}"], timeout_s=2.0))
        # the tower ran 0.6 s, died with its worker, ran again for the 1.4 s left of its budget
        assert slow.reason == REASON_TIMEOUT and 1.9 < slow.elapsed_s < 2 + SLACK_S
        assert fine.correct
        assert dt < 2.0 + SLACK_S
        assert p.stats["crashed"] == 1 and p.stats["killed"] == 1


def test_an_item_that_keeps_killing_its_worker_is_a_parse_error(monkeypatch):
    """A worker dying under the same item again and again (out of memory, a crash in C) ends as parse error
    after MAX_ATTEMPTS, and the rest of the call still finishes."""
    with VerifyPool(1, soft_timeouts=False) as p:
        p.start()
        stop = threading.Event()

        def killer():  # kill whichever worker is on item 0 (the tower) as soon as it starts it
            while not stop.is_set():
                for w in list(p._workers):
                    with_state = w.current()
                    if with_state and with_state[0] == 0 and w.pid:
                            os.kill(w.pid, signal.SIGKILL)
                time.sleep(0.01)

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        try:
            out = p.verify_many(["5", "6"], [TOWER, "\\boxed{6}"], timeout_s=20)
        finally:
            stop.set()
            t.join(5)
        assert out[0].reason == REASON_PARSE_ERROR and out[1].correct
        assert p.stats["crashed"] >= p.MAX_ATTEMPTS


def test_template_killed_from_outside_is_replaced():
    with VerifyPool(2) as p:
        p.start()
        os.kill(p._template.proc.pid, signal.SIGKILL)
        out = p.verify_many(["1", "2", "3"], ["\\boxed{1}", "\\boxed{2}", "\\boxed{4}"], timeout_s=2)
        assert [r.correct for r in out] == [True, True, False]
        assert p.stats["templates"] == 2


def test_call_queue_hands_out_every_item_once():
    """The per-worker stretches with stealing and retries: nothing lost, nothing twice, gold order kept."""
    from types import SimpleNamespace

    rng = random.Random(0)
    golds = [str(rng.randint(0, 50)) for _ in range(1000)]
    call = _Call(golds, [""] * 1000, 1.0, 3, False)
    workers = [SimpleNamespace(segment=None) for _ in range(3)]
    seen = []
    while call.pending():
        w = rng.choice(workers)
        got = call.take(w, rng.randint(1, 40), workers)
        if rng.random() < 0.05:  # a death: part of it comes back
            call.retry.extendleft(reversed(got[len(got) // 2:]))
            got = got[:len(got) // 2]
        if rng.random() < 0.02:  # a worker replaced: its stretch is orphaned and adopted later
            workers[workers.index(w)] = SimpleNamespace(segment=None)
        seen += got
    assert sorted(seen) == list(range(1000))
    one = _Call(golds, [""] * 1000, 1.0, 1, False)
    order = one.take(SimpleNamespace(segment=None), 1000, [])
    assert [golds[i] for i in order] == sorted(golds)


def test_a_lost_item_is_an_error_not_a_hang(monkeypatch):
    """If the bookkeeping ever lost an item (here: a batch's last result is dropped on arrival), the call fails
    at once naming it, instead of waiting for a result that cannot come."""
    real = _Call.finish
    dropped = []

    def lossy(self, idx, result):
        if idx == 3 and not dropped:
            dropped.append(idx)
            return
        real(self, idx, result)

    monkeypatch.setattr(_Call, "finish", lossy)
    with VerifyPool(1) as p:
        with pytest.raises(RuntimeError, match=r"lost 1 items \(first: \[3\]\)"):
            p.verify_many([str(i) for i in range(8)], [f"\\boxed{{{i}}}" for i in range(8)], timeout_s=2)


def test_results_keep_input_order(pool):
    n = 500
    golds = [str(i) for i in range(n)]
    comps = [f"step {i + 1}: \\boxed{{{i if i % 3 else i + 1}}}" for i in range(n)]
    out = verify_many(golds, comps)
    assert [r.predicted for r in out] == [str(i if i % 3 else i + 1) for i in range(n)]
    assert [r.correct for r in out] == [bool(i % 3) for i in range(n)]


def _burners(k: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def test_stress_no_call_ever_hangs():
    """Thousands of single calls and mixed-size calls with hostile items that time out (hard kills: the
    in-worker alarm is off), workers killed from outside at random, and CPU burners beside it: every call
    returns within timeout_s + SLACK_S with the right verdicts. (The old scheduler hung here within seconds.)"""
    timeout_s, run_s = 1.5, 50.0
    rng = random.Random(12)
    burners = _burners(2)
    stop = threading.Event()
    kills: list[float] = []  # when the killer hit a worker
    with VerifyPool(2, soft_timeouts=False) as p:
        p.start()

        def killer():
            r = random.Random(7)
            while not stop.wait(r.uniform(0.2, 1.0)):
                pids = p.worker_pids()
                if pids:
                    with_pid = r.choice(pids)
                    try:
                        os.kill(with_pid, signal.SIGKILL)
                        kills.append(time.monotonic())
                    except ProcessLookupError:
                        pass

        def killed_enough(t0: float) -> bool:
            # An ordinary item may come back as a parse error only if the killer really hit workers at least
            # MAX_ATTEMPTS times during its call (its worker died under it that often, as a crashing item would).
            return sum(t0 <= k for k in kills) >= VerifyPool.MAX_ATTEMPTS

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        worst, calls, t_end = 0.0, 0, time.monotonic() + run_s
        parse_errors_from_kills = 0
        try:
            while time.monotonic() < t_end:
                if calls % 25 == 24:  # a mixed call: up to 200 items, at most one hostile
                    n = rng.randint(2, 200)
                    vals = [rng.randint(0, 99) for _ in range(n)]
                    comps = [f"so \\boxed{{{v + (i % 4 == 0)}}}" for i, v in enumerate(vals)]
                    hostile = rng.randrange(n) if rng.random() < 0.3 else -1
                    if hostile >= 0:
                        comps[hostile] = TOWER
                    golds = [str(v) for v in vals]
                else:  # a single call: an easy item, a fresh symbolic one (~0.1 s), or a hostile one
                    kind = rng.random()
                    v = f"y_{{{calls}}}"
                    golds, comps, hostile = ([f"\\tan^2({v})+1"], [f"\\boxed{{\\sec^2({v})}}"], -1) if kind < 0.03 else \
                        (["5"], [TOWER], 0) if kind < 0.04 else ([str(calls)], [f"\\boxed{{{calls}}}"], -1)
                t0 = time.monotonic()
                out, dt = _timed(lambda: p.verify_many(golds, comps, timeout_s=timeout_s))
                worst = max(worst, dt)
                calls += 1
                assert dt < timeout_s + SLACK_S, f"call {calls} of {len(golds)} items took {dt:.2f} s"
                for i, r in enumerate(out):
                    if i == hostile:  # (a parse error when the killer happened to hit it MAX_ATTEMPTS times)
                        assert r.reason in (REASON_TIMEOUT, REASON_PARSE_ERROR) and not r.correct
                    elif r.reason == REASON_PARSE_ERROR and killed_enough(t0):
                        parse_errors_from_kills += 1
                    elif len(golds) > 1:
                        assert r.correct is (i % 4 != 0), (i, r)
                    else:
                        assert r.correct, (golds, r)
        finally:
            stop.set()
            t.join(5)
            for b in burners:
                b.kill()
                b.wait()
        assert calls > 500
        assert parse_errors_from_kills <= 5  # rare: the same item's worker killed three times in a row
        assert p.stats["crashed"] > 10 and p.stats["killed"] > 10  # the faults really happened
        print(f"\nstress: {calls} calls, slowest {worst:.2f} s, {parse_errors_from_kills} ordinary items lost to "
              f"outside kills, {dict(p.stats)}")


# ---------------------------------------------------------------------------------------------------
# Threads, signals, the API around the pool
# ---------------------------------------------------------------------------------------------------

def test_verify_answer_from_a_thread(pool):
    """math-verify's own timeouts use SIGALRM, which raises outside the main thread."""
    box = {}

    def work():
        try:
            box["r"] = verify_answer("\\frac{1}{2}", "\\boxed{0.5}")
            box["slow"] = verify_answer("5", TOWER, timeout_s=1.5)
            box["inline"] = verify_inline("3", "\\boxed{3}")  # no alarm off the main thread, still works
        except BaseException as e:  # pragma: no cover - reported below
            box["error"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert "error" not in box, box.get("error")
    assert box["r"].correct and box["inline"].correct
    assert box["slow"].reason == REASON_TIMEOUT


def test_pool_outlives_the_thread_that_started_it():
    holder = {}

    def start():
        holder["pool"] = VerifyPool(1).start()

    t = threading.Thread(target=start)
    t.start()
    t.join(120)
    p = holder["pool"]
    try:
        time.sleep(0.3)
        assert p.verify("2", "\\boxed{2}").correct
        assert p.stats["crashed"] == 0 and p.stats["started"] == 1
    finally:
        p.close()


def test_concurrent_callers_share_the_default_pool(pool):
    outs = {}

    def work(k):
        outs[k] = verify_many([str(k)] * 50, [f"\\boxed{{{k}}}"] * 50)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(len(outs[k]) == 50 and all(r.correct for r in outs[k]) for k in range(4))


def test_workers_ignore_sigint(pool):
    for pid in pool.worker_pids() + [pool._template.proc.pid]:
        os.kill(pid, signal.SIGINT)
    time.sleep(0.2)
    assert verify_many(["1", "2"], ["\\boxed{1}", "\\boxed{2}"])[1].correct
    assert pool.stats["crashed"] == 0


def test_keyboard_interrupt_in_the_parent_cleans_up():
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    with VerifyPool(2, soft_timeouts=False) as p:
        p.start()
        old = signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        try:
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                p.verify_many(["5"] * 2, [TOWER] * 2, timeout_s=60)
            assert time.monotonic() - t0 < 5
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert p.verify("5", "\\boxed{5}").correct  # busy workers were replaced
        assert p.stats["started"] >= 3


def test_closing_leaves_no_process_behind():
    p = VerifyPool(2).start()
    pids = p.worker_pids() + [p._template.proc.pid]
    p.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting to be reaped is gone for our purposes
        return f.read().split(")")[-1].split()[0] != "Z"


def test_api_validation(pool):
    assert verify_many([], []) == []
    with pytest.raises(ValueError):
        verify_many(["1"], [])
    with pytest.raises(ValueError):
        verify_many(["1"], ["\\boxed{1}"], timeout_s=0)
    out = verify_many(["1", "2"], ["\\boxed{1}", "\\boxed{3}"], progress=True)
    assert [r.correct for r in out] == [True, False]
    assert verify_answer(18, "\\boxed{18}").correct  # a non-string gold (as read from a dataset) is fine
    assert verify_answer("5", None).reason == REASON_NO_ANSWER


def test_other_worker_count_uses_its_own_pool():
    out = verify_many(["1", "2", "3"], ["\\boxed{1}", "\\boxed{2}", "\\boxed{4}"], workers=1)
    assert [r.correct for r in out] == [True, True, False]


def test_closed_pool_refuses_work():
    p = VerifyPool(1)
    p.close()
    with pytest.raises(RuntimeError):
        p.verify("1", "\\boxed{1}")
