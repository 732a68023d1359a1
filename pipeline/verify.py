"""Answer verification: is a completion's final answer equal to the gold answer?

One function decides correctness for the whole pipeline (filter and evaluate both call it):

    verify_answer(gold, completion) -> VerifyResult(correct, predicted, reason)
    verify_many(golds, completions)  -> [VerifyResult, ...] in input order

Steps for one (gold, completion) pair:

1. Extraction (`extract_answer`, pure string work, linear time): the last complete `\\boxed{...}` /
   `\\boxed ...` / `\\fbox{...}` (braces matched by a scanner, nesting and `\\{ \\}` handled); if there is
   none, the fallbacks in order: "answer_is" ("the answer is X", "Final Answer: X") and "last_number"
   (the last number in the text, used only when the gold answer is numeric).
2. Light normalisation of both sides: `$` signs, thousands separators ("1,000", "10,\\!080" -> 1000,
   10080; "(1, 2)" and "1,2" are left alone), and, for numeric golds only, trailing unit words
   ("18 dollars" -> 18).
3. Equivalence:
   - plain-text golds (`\\text{Monday}`, "yes", "Evelyn": letters and spaces only, after `\\text{}`
     is unwrapped) compare as normalised strings (case, spacing, outer punctuation and parentheses
     ignored). math-verify would read a word as a product of one-letter symbols, so "yes" == "sey".
   - everything else goes through math-verify: `verify(parse(gold), parse(pred))`, gold first
     (math-verify is not symmetric). Its decisions are kept, see the table in tests/verify_cases.py:
     fractions = decimals (rounded to 6 places: 1/3 = 0.333333 but not 0.33), a percentage equals both
     its number and its value (50% = 50 = 0.5), degrees and unit text are dropped (30^\\circ = 30,
     5 cm = 5), sets ignore order, tuples and intervals do not, expressions compare symbolically,
     pi is not 3.14.
4. Nothing here evaluates model text (`eval`, `exec`, `sympify`); only math-verify's own parser
   reads it, and only an answer of at most MAX_ANSWER_CHARS characters (longer: "parse error",
   except two plain integers, which compare digit by digit).

Hostile input (huge completions, `10^{10^{10^{10}}}`, deep nesting) never hangs the caller: the
math-verify part always runs in a worker process of a `VerifyPool`, two limits deep:
- in the worker (its main thread, so SIGALRM works), an alarm a little before `timeout_s` stops
  Python-level work; CPython also checks for signals inside long big-integer and regex loops, so this
  ends nearly everything, including the tower of powers, as "timeout";
- the parent watches which item each worker is on (a shared 16-byte mmap) and, when one runs past
  `timeout_s` anyway (C code that never checks for signals, a library that swallows the alarm's
  exception), kills that worker with SIGKILL, records "timeout" for the item, re-queues the rest of
  the worker's work and starts a replacement.
math-verify's own `signal.alarm` timeouts are switched off (`parsing_timeout=None,
timeout_seconds=None`): they only take whole seconds, cancel any other alarm, raise outside the main
thread, and turn their own timeout into a plain "not equal"; the worker's alarm replaces them.

Throughput: the pool sends items grouped by gold answer, each worker through its own contiguous
stretch, in chunks of about 30 ms with the next chunk already queued; each worker caches parsed golds
and primes the LaTeX parser at start (`warm_up`). bench/bench_verify.py measures it against a serial
loop.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import re
import signal
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

__all__ = [
    "VerifyResult", "VerifyPool", "verify_answer", "verify_many", "verify_inline", "extract_answer",
    "REASONS", "REASON_CORRECT", "REASON_NO_ANSWER", "REASON_NOT_EQUAL", "REASON_TIMEOUT",
    "REASON_PARSE_ERROR", "FALLBACKS", "DEFAULT_FALLBACKS", "DEFAULT_TIMEOUT_S", "MAX_ANSWER_CHARS",
    "default_pool", "shutdown_default_pool", "ExtractionLimit", "warm_up",
]

REASON_CORRECT = "correct"
REASON_NO_ANSWER = "no answer found"
REASON_NOT_EQUAL = "not equal"
REASON_TIMEOUT = "timeout"
REASON_PARSE_ERROR = "parse error"
REASONS = (REASON_CORRECT, REASON_NO_ANSWER, REASON_NOT_EQUAL, REASON_TIMEOUT, REASON_PARSE_ERROR)

FALLBACKS = ("answer_is", "last_number")
DEFAULT_FALLBACKS = ("answer_is", "last_number")
DEFAULT_TIMEOUT_S = 5.0
MAX_ANSWER_CHARS = 1000  # longer extracted answers are not handed to the parser
DEFAULT_MEMORY_LIMIT_MB = 4096  # address-space cap of one worker process (None: no cap)


@dataclass(frozen=True)
class VerifyResult:
    correct: bool
    predicted: str | None  # the answer extracted from the completion (None: nothing found)
    reason: str  # one of REASONS; "correct" exactly when correct is True
    elapsed_s: float = field(default=0.0, compare=False)  # wall time of the check (not part of equality)


# ---------------------------------------------------------------------------------------------------
# Extraction: pure string work, linear in the completion's length
# ---------------------------------------------------------------------------------------------------

_BOX_MARKERS = ("\\boxed", "\\fbox")
_BRACE_TOKEN = re.compile(r"\\[\\{}]|[{}]")  # "\\", "\{", "\}" are not grouping braces
_BRACE_BUDGET = 2_000_000  # brace tokens scanned per completion (about 0.3 s) before extraction gives up
_ANSWER_IS = re.compile(r"answer[ \t]*(?:\*\*[ \t]*)?(?:is\b|:)", re.IGNORECASE)
_ANSWER_SPAN = 400  # characters after "the answer is" looked at
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\s+I hope\b")
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?%?")
_NUMBER_WINDOWS = (2048, 65536, 1 << 21)


class ExtractionLimit(ValueError):
    """The completion has more braces to match than extract_answer scans (hostile input)."""


def _match_brace(text: str, open_pos: int, budget: list[int]) -> int:
    """Index of the `}` closing the `{` at open_pos, or -1 (unbalanced). Raises ExtractionLimit when
    the scan budget shared by all boxes of one completion runs out."""
    depth = 0
    for m in _BRACE_TOKEN.finditer(text, open_pos):
        budget[0] -= 1
        if budget[0] < 0:
            raise ExtractionLimit(f"more than {_BRACE_BUDGET} braces to match")
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return -1


def _boxed_at(text: str, pos: int, marker: str, budget: list[int]) -> str | None:
    """Content of the box whose marker starts at pos, or None (unbalanced, empty, or not a box)."""
    i = pos + len(marker)
    n = len(text)
    j = i
    while j < n and text[j] in " \t":
        j += 1
    if j < n and text[j] == "{":
        end = _match_brace(text, j, budget)
        if end < 0:
            return None
        content = text[j + 1:end].strip()
        return content or None
    if j > i:  # "\boxed 5": a space, then one token up to whitespace or "$"
        k = j
        while k < n and text[k] not in " \t\n\r$":
            k += 1
        return text[j:k] or None
    return None


def _last_boxed(text: str) -> str | None:
    budget = [_BRACE_BUDGET]
    end = len(text)
    while end > 0:
        best, marker = -1, ""
        for mk in _BOX_MARKERS:
            p = text.rfind(mk, 0, end)
            if p > best:
                best, marker = p, mk
        if best < 0:
            return None
        content = _boxed_at(text, best, marker, budget)
        if content is not None:
            return content
        end = best  # an unbalanced or empty box gives nothing: try the one before it
    return None


def _strip_math_delims(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left):len(s) - len(right)].strip()
    return s


def _clean(s: str) -> str:
    s = _strip_math_delims(s.strip())
    s = s.strip()
    while s and s[-1] in ".,;:" and not s.endswith("..."):
        s = s[:-1].rstrip()
    return s


def _answer_is(text: str) -> str | None:
    last = None
    for last in _ANSWER_IS.finditer(text):
        pass
    if last is None:
        return None
    rest = text[last.end():last.end() + _ANSWER_SPAN]
    rest = rest.lstrip(" \t:*")
    if rest.startswith(("$", "\\(", "\\[")):
        # a math span: up to its closing delimiter (if any on this stretch)
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if rest.startswith(left):
                close = rest.find(right, len(left))
                if close > 0:
                    rest = rest[:close + len(right)]
                break
    nl = rest.find("\n")
    if nl >= 0:
        rest = rest[:nl]
    m = _SENTENCE_END.search(rest)
    if m:
        rest = rest[:m.start()]
    rest = _clean(rest.strip().strip("*").strip())
    return rest or None


def _last_number(text: str) -> str | None:
    n = len(text)
    for size in _NUMBER_WINDOWS + (n,):
        start = max(0, n - size)
        window = text[start:]
        last = None
        for last in _NUMBER.finditer(window):
            pass
        if last is not None and (last.start() > 0 or start == 0):
            return last.group()
        if start == 0:
            return None
    return None


def extract_answer(completion: str, *, fallbacks: Sequence[str] = DEFAULT_FALLBACKS,
                   gold: str | None = None) -> str | None:
    """The final answer in a completion, or None.

    The last complete box (`\\boxed{...}`, `\\boxed x`, `\\fbox{...}`; nested braces matched; an
    unbalanced box is skipped), else the fallbacks in the order given: "answer_is" (the text after the
    last "the answer is" / "Final Answer:", up to the end of its sentence or math span) and
    "last_number" (the last number in the text). When `gold` is given, "last_number" is used only if
    the gold answer is numeric. Linear time in len(completion); nothing is evaluated. Raises
    ExtractionLimit (a ValueError) on text with more than 2 million braces to match (verify_answer
    reports that as "parse error").
    """
    _check_fallbacks(fallbacks)
    if not completion:
        return None
    boxed = _last_boxed(completion)
    if boxed is not None:
        return _clean(boxed) or boxed
    for fb in fallbacks:
        if fb == "answer_is":
            found = _answer_is(completion)
        elif gold is None or _looks_numeric(gold):
            found = _last_number(completion)
        else:
            found = None
        if found:
            return found
    return None


def _check_fallbacks(fallbacks: Sequence[str]) -> None:
    if isinstance(fallbacks, str):
        raise TypeError("fallbacks must be a sequence of names, not a string")
    bad = [f for f in fallbacks if f not in FALLBACKS]
    if bad:
        raise ValueError(f"unknown fallback(s) {bad}; known: {list(FALLBACKS)}")


# ---------------------------------------------------------------------------------------------------
# Normalisation before parsing
# ---------------------------------------------------------------------------------------------------

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
# 1,000  1{,}000  10,\!080  11,\! 111  1\,000  1 000 (but not "3, 100": a comma and a space is a list)
_THOUSANDS = re.compile(r"-?\d{1,3}(?:(?:,|\{,\}|,\\[!,] ?|\\[!, ]| )\d{3})+(?:\.\d+)?")
_NON_NUMBER_CHARS = re.compile(r"[^\d.\-]")
_NUM_WITH_UNITS = re.compile(
    r"(?:\\\$|\$)?[ ]?(?P<num>-?\d[\d,]*(?:\.\d+)?(?:[ ]?(?:\\%|%))?)[ ]*"
    r"(?!(?:\\(?:text|mbox|mathrm)[ ]?\{[ ]*)?(?i:hundred|thousand|million|billion|trillion|dozen|percent))"
    r"(?:\\(?:text|mbox|mathrm)[ ]?\{[ ]*[A-Za-z]{2,}[A-Za-z .'/\-]*\}|[A-Za-z]{2,}[A-Za-z .'/\-]*)")
_NUMERIC_GOLD = re.compile(
    r"-?(?:\d+(?:\.\d+)?|\.\d+|\d+/\d+|\\[dt]?frac\{-?\d+\}\{\d+\}|\\[dt]?frac\d\d)(?:\\%|%)?")
_INTEGER = re.compile(r"-?\d+")
_TEXT_MACRO = re.compile(r"\\(?:text|textbf|textit|textrm|texttt|textsf|mbox|mathrm|operatorname)[ ]?\{([^{}]*)\}")
_TEXT_TRIGGER = re.compile(r"\\(?:text|textbf|textit|textrm|texttt|textsf|mbox)[ ]?\{")
_WORDS = re.compile(r"[a-z]+(?: [a-z]+)*")
_SPACES = re.compile(r"\s+")


def _strip_thousands(s: str) -> str:
    if _THOUSANDS.fullmatch(s):
        return _NON_NUMBER_CHARS.sub("", s)
    return s


def _normalize(s: str, numeric_gold: bool) -> str:
    s = _clean(s)
    s = _UNESCAPED_DOLLAR.sub("", s).strip()
    if len(s) > 4 * MAX_ANSWER_CHARS:  # too long to be parsed anyway: skip the regexes
        return s
    if numeric_gold:
        m = _NUM_WITH_UNITS.fullmatch(s)
        if m:
            s = m.group("num")
    return _strip_thousands(s)


def _looks_numeric(gold: str) -> bool:
    s = _normalize(gold, numeric_gold=False).replace(" ", "")
    if s.startswith(("\\$", "$")):
        s = s[2:] if s.startswith("\\$") else s[1:]
    return bool(_NUMERIC_GOLD.fullmatch(s))


def _text_key(s: str) -> str:
    for _ in range(4):
        t = _TEXT_MACRO.sub(r"\1", s)
        if t == s:
            break
        s = t
    s = _UNESCAPED_DOLLAR.sub("", s).strip().strip(".,;:!?*\"'`").strip()
    if s.startswith("(") and s.endswith(")"):
        s = s[1:-1]
    return _SPACES.sub(" ", s.replace("~", " ").replace("\\ ", " ")).strip().lower()


def _text_answer(gold: str) -> str | None:
    """The normalised text of a plain-text gold answer, or None for a mathematical one."""
    key = _text_key(gold)
    if not _WORDS.fullmatch(key):
        return None
    if _TEXT_TRIGGER.search(gold) or len(key.replace(" ", "")) >= 2:
        return key
    return None


# ---------------------------------------------------------------------------------------------------
# The check itself (runs in a worker process; `verify_inline` runs it in the calling process)
# ---------------------------------------------------------------------------------------------------

class _SoftTimeout(BaseException):
    """Raised by the worker's SIGALRM handler; a BaseException so that math-verify's
    `except Exception` blocks do not swallow it."""


def _on_alarm(signum, frame):
    raise _SoftTimeout()


@contextlib.contextmanager
def _deadline(seconds: float | None):
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


_MV = None  # (parse, verify, extraction configs, sympy types), loaded on first use
_GOLD_CACHE: dict[str, list] = {}
_GOLD_CACHE_MAX = 20_000


def _math_verify():
    global _MV
    if _MV is None:
        import logging

        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
        from sympy import Basic, MatrixBase

        # Timeouts are ours (see the module docstring); math-verify warns once that its own are off.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        configs = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
        _MV = (parse, verify, configs, (Basic, MatrixBase))
    return _MV


def _mv_parse(s: str) -> list:
    parse, _, configs, _ = _math_verify()
    return parse("\\boxed{" + s + "}", extraction_config=configs, parsing_timeout=None)


def _parsed_gold(g: str) -> list:
    hit = _GOLD_CACHE.get(g)
    if hit is None:
        hit = _mv_parse(g)
        if len(_GOLD_CACHE) >= _GOLD_CACHE_MAX:
            _GOLD_CACHE.clear()
        _GOLD_CACHE[g] = hit
    return hit


def _soft_limit(timeout_s: float) -> float:
    """The in-worker alarm: slightly below the hard per-item limit."""
    return max(timeout_s * 0.8, timeout_s - 1.0)


def _compare(gold: str, pred: str) -> str:
    """Reason code for an extracted answer against the gold answer (no time limit of its own)."""
    text_gold = _text_answer(gold)
    if text_gold is not None:
        return REASON_CORRECT if _text_key(pred) == text_gold else REASON_NOT_EQUAL
    numeric_gold = _looks_numeric(gold)
    g = _normalize(gold, numeric_gold)
    p = _normalize(pred, numeric_gold)
    if not p:
        return REASON_PARSE_ERROR
    if len(p) > MAX_ANSWER_CHARS or len(g) > MAX_ANSWER_CHARS:
        if _INTEGER.fullmatch(p) and _INTEGER.fullmatch(g):  # exact, without the parser
            return REASON_CORRECT if _canon_int(p) == _canon_int(g) else REASON_NOT_EQUAL
        return REASON_PARSE_ERROR
    _, verify, _, sym_types = _math_verify()
    gp = _parsed_gold(g)
    pp = _mv_parse(p)
    g_ok = any(isinstance(x, sym_types) for x in gp)
    p_ok = any(isinstance(x, sym_types) for x in pp)
    if not g_ok and not p_ok:  # neither side is mathematics: compare as text
        return REASON_CORRECT if _text_key(g) == _text_key(p) else REASON_NOT_EQUAL
    if verify(gp, pp, timeout_seconds=None):
        return REASON_CORRECT
    return REASON_NOT_EQUAL if (g_ok and p_ok) else REASON_PARSE_ERROR


def _canon_int(s: str) -> str:
    neg = s.startswith("-")
    digits = s.lstrip("-").lstrip("0") or "0"
    return ("-" if neg and digits != "0" else "") + digits


def _check_one(gold: str, completion: str, fallbacks: Sequence[str], soft_s: float | None
               ) -> tuple[bool, str | None, str]:
    """(correct, predicted, reason) for one pair. Never raises (except KeyboardInterrupt/SystemExit)."""
    pred = None
    try:
        with _deadline(soft_s):
            pred = extract_answer(completion, fallbacks=fallbacks, gold=gold)
            if pred is None:
                return False, None, REASON_NO_ANSWER
            reason = _compare(gold, pred)
        return reason == REASON_CORRECT, pred, reason
    except _SoftTimeout:
        return False, pred, REASON_TIMEOUT
    except Exception:
        return False, pred, REASON_PARSE_ERROR


def verify_inline(gold: str, completion: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                  fallbacks: Sequence[str] = DEFAULT_FALLBACKS) -> VerifyResult:
    """The same check as `verify_answer`, in the calling process, without a pool.

    Only Python-level work is time-limited, and only in the main thread (SIGALRM); a check stuck in
    C code is not. For benchmarks and debugging: use `verify_answer` / `verify_many` on model text.
    """
    _check_fallbacks(fallbacks)
    t0 = time.monotonic()
    correct, pred, reason = _check_one(_as_text(gold), _as_text(completion), tuple(fallbacks),
                                       _soft_limit(timeout_s))
    return VerifyResult(correct, pred, reason, time.monotonic() - t0)


def _as_text(x) -> str:
    return "" if x is None else (x if isinstance(x, str) else str(x))


_WARMUP_FORMS = (
    "{a}", "-{a}", "{a}.{b}", "\\frac{{{a}}}{{{b}}}", "\\dfrac{{{a}}}{{{b}}}", "-\\frac{{{a}}}{{{b}}}", "{a}/{b}",
    "\\sqrt{{{a}}}", "{a}\\sqrt{{{b}}}", "\\frac{{\\sqrt{{{a}}}}}{{{b}}}", "{a}\\pi", "\\frac{{{a}\\pi}}{{{b}}}",
    "{a}\\%", "{a}^\\circ", "{a} \\text{{ cm}}", "\\${a}", "{a},{b:03d}", "({a}, {b})", "({a},-{b})", "[{b}, {a})",
    "(-\\infty, {a}]", "\\{{{a}, {b}\\}}", "{a}, {b}", "{a}x+{b}", "x^2+{a}x+{b}", "x={a}", "{a}+{b}i",
    "\\left( {a}, \\frac{{\\pi}}{{{b}}} \\right)", "\\begin{{pmatrix}} {a} \\\\ {b} \\end{{pmatrix}}", "{a}^{{{b}}}",
    "\\text{{Monday}}", "\\text{{(B)}}", "{a}_{{{b}}}", "\\frac{{{a}}}{{{b}}}\\sqrt{{{a}}}",
)


def warm_up() -> float:
    """Run one check of each common answer form in this process; returns the seconds it took.

    The LaTeX parser (ANTLR) builds its prediction caches lazily, so a fresh process checks its first
    few thousand answers about 20% slower. Each pool worker does this once at start (before it reports
    ready); benchmarks call it to give an in-process loop the same start.
    """
    t0 = time.monotonic()
    for i, form in enumerate(_WARMUP_FORMS):
        a, b = 37 + 13 * i, 3 + i
        gold = form.format(a=a, b=b)
        pred = form.format(a=a + (i % 2), b=b)
        _check_one(gold, f"So {a} + {b} = {a + b} and the answer is $\\boxed{{{pred}}}$.", DEFAULT_FALLBACKS, None)
        _check_one(gold, f"The answer is {pred}.", DEFAULT_FALLBACKS, None)
    _GOLD_CACHE.clear()
    return time.monotonic() - t0


# ---------------------------------------------------------------------------------------------------
# Worker process
# ---------------------------------------------------------------------------------------------------

_FLUSH_S = 0.05  # a worker sends its finished results at least this often while working on a chunk


def _set_parent_death_signal(parent_pid: int) -> None:
    """Linux: the worker gets SIGKILL when the thread that started it ends (see _Spawner), so no
    orphan keeps computing a hung item after its parent is gone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:
            pass
    if os.getppid() != parent_pid:  # the parent went before the signal was armed
        os._exit(1)


def _worker_entry() -> None:
    """`python -c "...; _worker_entry()" SOCK_FD SHM_FD MEMORY_MB PARENT_PID WARM`: one verification worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    sock_fd, shm_fd, memory_mb, parent_pid, warm = (int(a) for a in sys.argv[1:6])
    _set_parent_death_signal(parent_pid)
    if memory_mb > 0:
        try:
            import resource

            limit = memory_mb * 1024 * 1024
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        except Exception:
            pass
    import mmap
    from multiprocessing.connection import Connection

    state = memoryview(mmap.mmap(shm_fd, _STATE_BYTES)).cast("d")  # [item index or -1, its start]
    conn = Connection(sock_fd)
    _math_verify()
    if warm:
        warm_up()
    else:
        _mv_parse("1")
    conn.send(("ready", os.getpid()))
    _worker_loop(conn, state)


def _worker_loop(conn, state) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] != "chunk":
            return
        _, gen, items, soft_s, fallbacks = msg
        out = []
        last_flush = time.monotonic()
        for idx, gold, completion in items:
            t0 = time.monotonic()
            state[1] = t0
            state[0] = idx
            correct, pred, reason = _check_one(gold, completion, fallbacks, soft_s)
            t1 = time.monotonic()
            out.append((idx, correct, pred, reason, t1 - t0))
            if t1 - last_flush >= _FLUSH_S:
                conn.send(("results", gen, out, False))
                out = []
                last_flush = t1
        state[0] = -1.0
        state[1] = 0.0
        conn.send(("results", gen, out, True))


# ---------------------------------------------------------------------------------------------------
# The pool
# ---------------------------------------------------------------------------------------------------

_STATE_BYTES = 16
_WORKER_CODE = "from pipeline.verify import _worker_entry; _worker_entry()"


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class _Spawner:
    """One long-lived daemon thread that starts every worker process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process: workers
    started from a caller's short-lived thread would be killed when that thread returns. Starting them
    all from this thread ties them to the life of the process instead.
    """

    _lock = threading.Lock()
    _thread: threading.Thread | None = None
    _jobs: "deque" = deque()
    _wake = threading.Condition(_lock)
    _pid = 0

    @classmethod
    def call(cls, fn):
        if threading.current_thread() is cls._thread:
            return fn()
        done = threading.Event()
        box: list = []
        with cls._lock:
            if cls._thread is None or not cls._thread.is_alive() or cls._pid != os.getpid():
                cls._jobs = deque()
                cls._pid = os.getpid()
                cls._thread = threading.Thread(target=cls._serve, name="verify-spawner", daemon=True)
                cls._thread.start()
            cls._jobs.append((fn, box, done))
            cls._wake.notify()
        done.wait()
        if box[0]:
            return box[1]
        raise box[1]

    @classmethod
    def _serve(cls) -> None:
        while True:
            with cls._lock:
                while not cls._jobs:
                    cls._wake.wait()
                fn, box, done = cls._jobs.popleft()
            try:
                box[:] = [True, fn()]
            except BaseException as e:  # handed to the caller
                box[:] = [False, e]
            done.set()


class _Worker:
    __slots__ = ("proc", "conn", "state", "mm", "ready", "outstanding", "chunks", "started_at", "segment",
                 "item_s")

    def __init__(self, proc, conn, mm):
        self.proc, self.conn, self.mm = proc, conn, mm
        self.state = memoryview(mm).cast("d")
        self.ready = False
        self.outstanding: list[int] = []  # item indices sent and not yet answered, in order
        self.chunks = 0  # chunks sent and not yet finished (at most 2: one running, one queued)
        self.started_at = time.monotonic()
        self.segment: deque | None = None  # the stretch of the run's queue this worker works through
        self.item_s = 0.001  # moving average of this worker's seconds per item (sizes its chunks)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(5.0)

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(Exception):
            self.state.release()
            self.mm.close()


def _start_worker(memory_limit_mb: int | None, warm: bool) -> _Worker:
    import mmap
    import socket
    import subprocess
    import tempfile
    from multiprocessing.connection import Connection

    ours, theirs = socket.socketpair()
    shm = tempfile.TemporaryFile()
    try:
        shm.truncate(_STATE_BYTES)
        mm = mmap.mmap(shm.fileno(), _STATE_BYTES)
        state = memoryview(mm).cast("d")
        state[0], state[1] = -1.0, 0.0
        state.release()
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # folder holding `pipeline`
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        args = [sys.executable, "-c", _WORKER_CODE, str(theirs.fileno()), str(shm.fileno()),
                str(int(memory_limit_mb or 0)), str(os.getpid()), str(int(warm))]
        proc = _Spawner.call(lambda: subprocess.Popen(
            args, pass_fds=(theirs.fileno(), shm.fileno()), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, start_new_session=True))
    finally:
        theirs.close()
        shm.close()
    return _Worker(proc, Connection(ours.detach()), mm)


class VerifyPool:
    """Worker processes that run answer checks with a hard per-item wall-clock limit.

    `workers` processes (default: all cores), each a fresh `python` that imports math-verify once,
    warms its parser up and then takes chunks of items over its own socket. The parent tracks the item
    each worker is on (a shared 16-byte mmap) and, when one runs past `timeout_s`, kills that worker
    (SIGKILL), records "timeout" for the item, re-queues the rest of its work and starts a replacement.
    Items go out grouped by gold answer (see `_Queue`); results come back in input order. One
    `verify_many` runs at a time per pool (calls from other threads wait for it). Usable from any thread
    and any script: workers are not forked from the caller and never import its main module, so no
    `if __name__ == "__main__"` guard is needed.

        with VerifyPool() as pool:
            results = pool.verify_many(golds, completions, timeout_s=5)
    """

    MAX_CHUNK = 64
    CHUNK_S = 0.03  # seconds of work per chunk
    PREFETCH_BYTES = 64 * 1024
    STARTUP_TIMEOUT_S = 120.0
    MAX_REQUEUES = 3  # an item re-queued this often by kills around it counts as a timeout

    def __init__(self, workers: int | None = None, *, memory_limit_mb: int | None = DEFAULT_MEMORY_LIMIT_MB,
                 soft_timeouts: bool = True, warm: bool = True):
        """workers: processes (default: all cores). memory_limit_mb: address-space cap of each worker
        (None: none). soft_timeouts: let each worker stop Python-level work itself with SIGALRM a little
        before the limit; off, only the parent's SIGKILL enforces timeout_s (tests use this).
        warm: each worker runs `warm_up()` before taking work (about 2 s of start-up; checks after it
        are about 20% faster than a cold worker's first few thousand)."""
        if workers is not None and workers < 1:
            raise ValueError("workers must be >= 1")
        self.size = workers or _cpu_count()
        self.memory_limit_mb = memory_limit_mb
        self.soft_timeouts = soft_timeouts
        self.warm = warm
        self._workers: list[_Worker] = []
        self._lock = threading.RLock()
        self._gen = 0
        self._closed = False
        self._pid = os.getpid()
        self._startup_failures = 0
        self.stats = Counter()  # started, killed (timeouts), crashed

    # -- lifecycle ----------------------------------------------------------------------------------
    def __enter__(self) -> "VerifyPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, wait: bool = True) -> "VerifyPool":
        """Start the workers now (they start lazily otherwise); with wait, until all are ready."""
        with self._lock:
            self._check_open()
            self._fill()
            if wait:
                while not all(w.ready for w in self._workers):
                    self._pump(0.05, None)
                    self._enforce_timeouts(None)
                    self._fill()
        return self

    def close(self) -> None:
        """Stop the workers (idle ones are asked to exit, busy ones are killed)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if os.getpid() != self._pid:  # a forked copy: the workers are not ours
                self._workers = []
                return
            for w in self._workers:
                if w.ready and not w.outstanding:
                    with contextlib.suppress(Exception):
                        w.conn.send(("stop",))
            deadline = time.monotonic() + 2.0
            for w in self._workers:
                with contextlib.suppress(Exception):
                    w.proc.wait(max(0.01, deadline - time.monotonic()))
                w.kill()
                w.release()
            self._workers = []

    @property
    def closed(self) -> bool:
        return self._closed

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("VerifyPool is closed")
        if os.getpid() != self._pid:
            raise RuntimeError("VerifyPool was created in another process (forked); make a new one")

    def _fill(self) -> None:
        while len(self._workers) < self.size and not self._closed:
            self._workers.append(_start_worker(self.memory_limit_mb, self.warm))
            self.stats["started"] += 1

    # -- the event loop -------------------------------------------------------------------------------
    def verify_many(self, golds: Sequence[str], completions: Sequence[str], *,
                    timeout_s: float = DEFAULT_TIMEOUT_S, fallbacks: Sequence[str] = DEFAULT_FALLBACKS,
                    progress: bool = False) -> list[VerifyResult]:
        golds = [_as_text(g) for g in golds]
        completions = [_as_text(c) for c in completions]
        if len(golds) != len(completions):
            raise ValueError(f"{len(golds)} golds but {len(completions)} completions")
        _check_fallbacks(fallbacks)
        if not timeout_s or timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if not golds:
            return []
        with self._lock:
            self._check_open()
            return self._run(golds, completions, float(timeout_s), tuple(fallbacks), progress)

    def verify(self, gold: str, completion: str, **kwargs) -> VerifyResult:
        return self.verify_many([gold], [completion], **kwargs)[0]

    def _run(self, golds, completions, timeout_s, fallbacks, progress) -> list[VerifyResult]:
        n = len(golds)
        self._gen += 1
        ctx = _RunState(golds, completions, timeout_s, fallbacks, self._gen, n, progress)
        ctx.queue.split(self.size)
        for w in self._workers:
            w.segment = None
        poll = min(0.05, max(0.002, timeout_s / 50))
        try:
            self._fill()
            while ctx.done < n:
                self._dispatch(ctx)
                self._pump(poll, ctx)
                self._enforce_timeouts(ctx)
                self._fill()
                if not ctx.queue and ctx.done < n and not any(w.outstanding for w in self._workers):
                    raise RuntimeError(f"verify pool lost {n - ctx.done} items")  # a bug: never hang on it
        except BaseException:
            # Interrupted (Ctrl-C) or failed: busy workers hold stale work, end them; the pool refills
            # itself on the next call.
            for w in list(self._workers):
                if w.outstanding:
                    self._discard(w)
            raise
        finally:
            ctx.close_progress()
        return ctx.results

    def _chunk_size(self, pending: int, w: _Worker) -> int:
        """About CHUNK_S of work (by w's recent seconds per item), at most MAX_CHUNK items, and small
        enough near the end that the workers finish together."""
        by_time = int(self.CHUNK_S / max(w.item_s, 1e-5))
        return max(1, min(self.MAX_CHUNK, by_time, math.ceil(pending / (4 * self.size))))

    def _dispatch(self, ctx: "_RunState") -> None:
        """Keep every ready worker busy: one chunk running and, when it is small, the next one queued
        behind it in the worker's socket, so the worker never waits for this process to be scheduled
        between chunks. A queued chunk is at most PREFETCH_BYTES, far below the socket's buffer, so
        sending it never blocks this loop (which must stay free to enforce time limits)."""
        for w in list(self._workers):
            while ctx.queue and w.ready and w.chunks < 2 and w in self._workers:
                if w.chunks and len(ctx.queue) < self.size * self.MAX_CHUNK:
                    break  # near the end: no queued chunk, so that no worker sits on work another could do
                idxs = ctx.queue.take(w, self._chunk_size(len(ctx.queue), w), self._workers)
                size = sum(len(ctx.golds[i]) + len(ctx.completions[i]) for i in idxs)
                if w.chunks and size > self.PREFETCH_BYTES:  # too big to queue: send when it is idle
                    ctx.queue.requeue(idxs)
                    break
                payload = [(i, ctx.golds[i], ctx.completions[i]) for i in idxs]
                soft = _soft_limit(ctx.timeout_s) if self.soft_timeouts else None
                try:
                    w.conn.send(("chunk", ctx.gen, payload, soft, ctx.fallbacks))
                except (OSError, ValueError):
                    ctx.queue.requeue(idxs)
                    self._lost(w, ctx, killed=False)
                    break
                w.outstanding.extend(idxs)
                w.chunks += 1

    def _pump(self, timeout: float, ctx: "_RunState | None") -> None:
        from multiprocessing.connection import wait

        by_conn = {w.conn: w for w in self._workers}
        dead = []
        for conn in wait(list(by_conn), timeout=timeout):
            w = by_conn[conn]
            if not self._drain(w, ctx):
                dead.append(w)
        for w in dead:
            if w in self._workers:
                self._lost(w, ctx, killed=False)

    def _drain(self, w: _Worker, ctx: "_RunState | None") -> bool:
        """Read every message waiting from w. False when its socket is closed (the worker is gone)."""
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                if msg[0] == "ready":
                    w.ready = True
                    self._startup_failures = 0
                elif msg[0] == "results" and ctx is not None and msg[1] == ctx.gen:
                    _, _, results, chunk_done = msg
                    if results:
                        mean = sum(r[4] for r in results) / len(results)
                        w.item_s = 0.5 * w.item_s + 0.5 * mean
                    for idx, correct, pred, reason, elapsed in results:
                        with contextlib.suppress(ValueError):
                            w.outstanding.remove(idx)
                        ctx.finish(idx, VerifyResult(correct, pred, reason, elapsed))
                    if chunk_done:
                        w.chunks -= 1
                        if w.chunks <= 0 and w.outstanding:  # should not happen; never lose an item
                            ctx.queue.requeue(w.outstanding)
                            w.outstanding = []
                            w.chunks = 0
            return True
        except Exception:  # EOF, a reset socket, or a message cut short by a kill
            return False

    def _enforce_timeouts(self, ctx: "_RunState | None") -> None:
        now = time.monotonic()
        for w in list(self._workers):
            if w.outstanding and ctx is not None:
                start = w.state[1]
                if start > 0 and now - start > ctx.timeout_s:
                    self._lost(w, ctx, killed=True)
            elif not w.ready and now - w.started_at > self.STARTUP_TIMEOUT_S:
                self._lost(w, ctx, killed=True)

    def _discard(self, w: _Worker) -> None:
        w.kill()
        w.release()
        if w in self._workers:
            self._workers.remove(w)

    def _lost(self, w: _Worker, ctx: "_RunState | None", killed: bool) -> None:
        """w ran past the limit (killed=True) or died: settle its items, replace it."""
        was_ready = w.ready
        w.kill()
        if ctx is not None:
            self._drain(w, ctx)  # results it sent before it went
        now = time.monotonic()
        cur, start = int(w.state[0]), w.state[1]
        if ctx is not None and w.outstanding:
            if cur in w.outstanding and start > 0:
                elapsed = now - start
                if killed and elapsed >= ctx.timeout_s * 0.99:
                    w.outstanding.remove(cur)
                    ctx.finish(cur, VerifyResult(False, None, REASON_TIMEOUT, elapsed))
                elif not killed:  # the worker died on this item (e.g. out of memory): no retry
                    w.outstanding.remove(cur)
                    ctx.finish(cur, VerifyResult(False, None, REASON_PARSE_ERROR, elapsed))
            rest = []
            for idx in w.outstanding:
                ctx.requeues[idx] += 1
                if ctx.requeues[idx] > self.MAX_REQUEUES:
                    ctx.finish(idx, VerifyResult(False, None, REASON_TIMEOUT, 0.0))
                else:
                    rest.append(idx)
            ctx.queue.requeue(rest)
            w.outstanding = []
        w.chunks = 0
        self.stats["killed" if killed else "crashed"] += 1
        exitcode = w.proc.returncode
        self._discard(w)
        if not was_ready:
            self._startup_failures += 1
            if self._startup_failures > 3:
                raise RuntimeError(f"verification workers keep dying before they are ready (exit code {exitcode})")
        self._fill()


class _Queue:
    """The items of one run still to send, in gold order, cut into one contiguous segment per worker.

    Items go out grouped by gold answer (a stable sort keeps input order within a gold): the samples
    of one problem land in the same chunk, the worker parses that gold once, and math-verify's and
    sympy's small caches hit as they would in a serial loop over the same order. Each worker works
    through its own contiguous segment (alternating chunks between workers costs measurably more CPU
    than contiguous halves); a worker whose segment runs dry takes over the back half of the largest
    one left. Items re-queued after a kill go out first, to whoever is free.
    """

    def __init__(self, golds: list[str]):
        self._order = sorted(range(len(golds)), key=golds.__getitem__)
        self.segments: list[deque] = []
        self.requeued: deque[int] = deque()

    def split(self, parts: int) -> None:
        n = len(self._order)
        bounds = [round(i * n / parts) for i in range(parts + 1)]
        self.segments = [deque(self._order[bounds[i]:bounds[i + 1]]) for i in range(parts)]
        self._order = []

    def __len__(self) -> int:
        return len(self.requeued) + sum(len(s) for s in self.segments)

    def requeue(self, idxs: list[int]) -> None:
        self.requeued.extendleft(reversed(idxs))

    def take(self, w: _Worker, k: int, workers: list[_Worker]) -> list[int]:
        if self.requeued:
            return [self.requeued.popleft() for _ in range(min(k, len(self.requeued)))]
        if not w.segment:
            w.segment = self._adopt(workers)
        seg = w.segment
        return [seg.popleft() for _ in range(min(k, len(seg)))]

    def _adopt(self, workers: list[_Worker]) -> deque:
        self.segments = [s for s in self.segments if s]
        owned = {id(x.segment) for x in workers if x.segment}
        for s in self.segments:  # a segment nobody works on (at the start, or its worker was replaced)
            if id(s) not in owned:
                return s
        largest = max(self.segments, key=len)  # otherwise take over the back half of the largest
        stolen: deque = deque()
        for _ in range((len(largest) + 1) // 2):
            stolen.appendleft(largest.pop())
        self.segments.append(stolen)
        return stolen


class _RunState:
    def __init__(self, golds, completions, timeout_s, fallbacks, gen, n, progress):
        self.golds, self.completions = golds, completions
        self.timeout_s, self.fallbacks, self.gen = timeout_s, fallbacks, gen
        self.results: list[VerifyResult | None] = [None] * n
        self.queue = _Queue(golds)
        self.requeues: Counter = Counter()
        self.done = 0
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n, desc="verify", unit="ans")

    def finish(self, idx: int, result: VerifyResult) -> None:
        if self.results[idx] is None:
            if result.predicted is None and result.reason in (REASON_TIMEOUT, REASON_PARSE_ERROR):
                # the worker did not get to report what it extracted: redo the (linear, cheap) extraction
                with contextlib.suppress(Exception):
                    pred = extract_answer(self.completions[idx], fallbacks=self.fallbacks, gold=self.golds[idx])
                    result = VerifyResult(False, pred, result.reason, result.elapsed_s)
            self.results[idx] = result
            self.done += 1
            if self.bar is not None:
                self.bar.update(1)

    def close_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------------
# Module-level API over a lazily created default pool
# ---------------------------------------------------------------------------------------------------

_default: VerifyPool | None = None
_default_lock = threading.Lock()


def default_pool() -> VerifyPool:
    """The shared pool behind verify_answer / verify_many (all cores), created on first use."""
    global _default
    with _default_lock:
        if _default is None or _default.closed or _default._pid != os.getpid():
            _default = VerifyPool()
        return _default


def shutdown_default_pool() -> None:
    global _default
    with _default_lock:
        pool, _default = _default, None
    if pool is not None and pool._pid == os.getpid():
        pool.close()


atexit.register(shutdown_default_pool)


def verify_many(golds: Iterable[str], completions: Iterable[str], *, timeout_s: float = DEFAULT_TIMEOUT_S,
                workers: int | None = None, fallbacks: Sequence[str] = DEFAULT_FALLBACKS,
                progress: bool = False) -> list[VerifyResult]:
    """Check every (gold, completion) pair; results in input order.

    Runs in worker processes (`workers`, default all cores; the shared default pool unless another
    size is asked for), each pair limited to `timeout_s` seconds of wall clock. Safe from any thread.
    """
    golds, completions = list(golds), list(completions)
    if workers is None or workers == _cpu_count():
        return default_pool().verify_many(golds, completions, timeout_s=timeout_s, fallbacks=fallbacks,
                                          progress=progress)
    with VerifyPool(workers) as pool:
        return pool.verify_many(golds, completions, timeout_s=timeout_s, fallbacks=fallbacks,
                                progress=progress)


def verify_answer(gold: str, completion: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                  fallbacks: Sequence[str] = DEFAULT_FALLBACKS) -> VerifyResult:
    """Is the completion's final answer equal to gold? `verify_many([gold], [completion])[0]`."""
    return verify_many([gold], [completion], timeout_s=timeout_s, fallbacks=fallbacks)[0]
