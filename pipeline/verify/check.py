"""One guarded check: is a completion's answer equal to the gold answer? (correct, predicted, reason)

`check` runs in a pool worker (pool.py), whose main thread can take SIGALRM: an alarm a little before the
item's limit ends Python-level work as "timeout" (CPython checks for signals inside long big-integer and
regex loops too). math-verify's own `signal.alarm` timeouts are off (`parsing_timeout=None,
timeout_seconds=None`): they take whole seconds only, cancel any other alarm, raise outside the main
thread, and turn their own timeout into a plain "not equal". The pool's SIGKILL is the hard limit behind it.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from . import answers

REASON_CORRECT = "correct"
REASON_NO_ANSWER = "no answer found"
REASON_NOT_EQUAL = "not equal"
REASON_TIMEOUT = "timeout"
REASON_PARSE_ERROR = "parse error"
REASONS = (REASON_CORRECT, REASON_NO_ANSWER, REASON_NOT_EQUAL, REASON_TIMEOUT, REASON_PARSE_ERROR)
DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class VerifyResult:
    correct: bool
    predicted: str | None  # the answer extracted from the completion (None: nothing found)
    reason: str  # one of REASONS; "correct" exactly when correct is True
    elapsed_s: float = field(default=0.0, compare=False)  # wall time of the check (not part of equality)


class SoftTimeout(BaseException):
    """Raised by the SIGALRM handler; a BaseException so that math-verify's `except Exception` blocks do not
    swallow it."""


def _on_alarm(signum, frame):
    raise SoftTimeout()


@contextlib.contextmanager
def deadline(seconds: float | None):
    """SIGALRM after `seconds` (main thread only; elsewhere, and with None, no limit)."""
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


_GOLD_CACHE: dict[str, list] = {}
_GOLD_CACHE_MAX = 20_000


def _parsed_gold(gold: str) -> list:
    hit = _GOLD_CACHE.get(gold)
    if hit is None:
        hit = answers.parse_gold(gold)
        if len(_GOLD_CACHE) >= _GOLD_CACHE_MAX:
            _GOLD_CACHE.clear()
        _GOLD_CACHE[gold] = hit
    return hit


def compare(gold: str, completion: str, seen: list | None = None) -> tuple[bool, str | None, str]:
    """(correct, predicted, reason) with no time limit of its own; the extracted answer is also appended to
    `seen` as soon as it is known (so that a check stopped later still reports it)."""
    key = answers.text_gold(gold)
    if key is not None:
        pred, same = answers.text_answer(completion, key)
        if seen is not None:
            seen.append(pred)
        if pred is None:
            return False, None, REASON_NO_ANSWER
        return same, pred, REASON_CORRECT if same else REASON_NOT_EQUAL
    pp = answers.parse_prediction(completion)
    pred = answers.shown(pp)
    if seen is not None:
        seen.append(pred)
    if pred is None:
        return False, None, REASON_NO_ANSWER
    gp = _parsed_gold(gold)
    _, verify, _, _ = answers.math_verify()
    # math-verify's comparison; only the decimal places it rounds to are ours (answers.float_rounding)
    if gp and verify(gp, pp, float_rounding=answers.float_rounding(gp, pp), strict=True, timeout_seconds=None):
        return True, pred, REASON_CORRECT
    if gp and any(answers.is_math(x) for x in pp):
        return False, pred, REASON_NOT_EQUAL
    return False, pred, REASON_PARSE_ERROR  # the answer (or the gold) is not mathematics math-verify can read


def check(gold: str, completion: str, soft_s: float | None) -> tuple[bool, str | None, str]:
    """compare() under a SIGALRM deadline; never raises (but for KeyboardInterrupt / SystemExit)."""
    seen: list = []
    try:
        with deadline(soft_s):
            return compare(gold, completion, seen)
    except SoftTimeout:
        return False, (seen or [None])[-1], REASON_TIMEOUT
    except Exception:
        return False, (seen or [None])[-1], REASON_PARSE_ERROR


def soft_limit(timeout_s: float) -> float:
    """The in-process alarm: a little below the hard limit, so the worker reports before it is killed."""
    return max(timeout_s * 0.8, timeout_s - 1.0)


def as_text(x) -> str:
    return "" if x is None else (x if isinstance(x, str) else str(x))


_WARM = None


def verify_inline(gold: str, completion: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> VerifyResult:
    """The same check as `verify_answer`, in the calling process, without a pool.

    math-verify's first import and parser warm-up happen before the clock starts (they are start-up, not
    the item's time). Only Python-level work is time-limited, and only in the main thread (SIGALRM); a
    check stuck in C code is not. For benchmarks and debugging: use `verify_answer` on model text.
    """
    global _WARM
    if _WARM is None:
        _WARM = warm_up()
    t0 = time.monotonic()
    correct, pred, reason = check(as_text(gold), as_text(completion), soft_limit(timeout_s))
    return VerifyResult(correct, pred, reason, time.monotonic() - t0)


_WARMUP_FORMS = (
    "{a}", "-{a}", "{a}.{b}", "\\frac{{{a}}}{{{b}}}", "\\dfrac{{{a}}}{{{b}}}", "-\\frac{{{a}}}{{{b}}}", "{a}/{b}",
    "\\sqrt{{{a}}}", "{a}\\sqrt{{{b}}}", "\\frac{{\\sqrt{{{a}}}}}{{{b}}}", "{a}\\pi", "\\frac{{{a}\\pi}}{{{b}}}",
    "{a}\\%", "{a}^\\circ", "{a} \\text{{ cm}}", "\\${a}", "{a},{b:03d}", "({a}, {b})", "({a},-{b})", "[{b}, {a})",
    "(-\\infty, {a}]", "\\{{{a}, {b}\\}}", "{a}, {b}", "{a}x+{b}", "x^2+{a}x+{b}", "x={a}", "{a}+{b}i",
    "\\left( {a}, \\frac{{\\pi}}{{{b}}} \\right)", "\\begin{{pmatrix}} {a} \\\\ {b} \\end{{pmatrix}}", "{a}^{{{b}}}",
    "\\text{{Monday}}", "\\text{{(B)}}", "{a}_{{{b}}}", "\\frac{{{a}}}{{{b}}}\\sqrt{{{a}}}", "x \\geq {a}",
)


def warm_up() -> float:
    """Run one check of each common answer form in this process; returns the seconds it took.

    Importing math-verify takes about a second, and the LaTeX parser (ANTLR) builds its prediction caches
    lazily, so a fresh process checks its first few thousand answers about 20% slower. The pool's template
    process does this once; the workers forked from it start warm.
    """
    t0 = time.monotonic()
    answers.math_verify()
    if hasattr(sys, "set_int_max_str_digits"):
        # A 5000-digit answer is a number, not an attack: the per-item time limit bounds the work instead.
        sys.set_int_max_str_digits(0)
    for i, form in enumerate(_WARMUP_FORMS):
        a, b = 37 + 13 * i, 3 + i
        gold = form.format(a=a, b=b)
        pred = form.format(a=a + (i % 2), b=b)
        check(gold, f"So {a} + {b} = {a + b} and the answer is $\\boxed{{{pred}}}$.", None)
        check(gold, f"The final answer is ${pred}$.", None)
    _GOLD_CACHE.clear()
    return time.monotonic() - t0
