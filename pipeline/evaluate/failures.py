"""How a model fails, not only how often: every sample gets one class, read from its text.

    correct      the verifier accepts the answer
    failed       the generation request failed
    loop         cut off at max_tokens while repeating itself
    truncated    cut off at max_tokens otherwise
    no answer    ended without an answer the verifier could find
    arithmetic   answered, and a written step `a op b = c` is false (6 \\times 9 = 56)
    method       answered, every written step holds, the answer is still wrong (a wrong plan, or steps in words)

The first class that applies wins, so the shares add up to 100%. The arithmetic check reads only equations made of
numbers and + - * / (LaTeX \\times, \\cdot, \\div, \\frac{a}{b}, x and the unicode signs included) and computes them
with exact fractions through a whitelist of ast nodes: model text is never evaluated. No library does this:
math-verify compares a final answer with a gold one; it does not check the steps that led to it.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

CLASSES = ("correct", "failed", "loop", "truncated", "no answer", "arithmetic", "method")
FAILURES_ID = "failures-2"  # part of evaluate's scoring key: a change here re-scores saved samples

_LOOP_NGRAM = 6    # words per n-gram ...
_LOOP_REPEATS = 4  # ... repeated this often in one completion makes a loop

_NUM = r"\d+(?:\.\d+)?"
_S = r"[ \t]*"  # an equation stays on one line: a "- 3" list item below "= 54" is not "54 - 3"
_TERM = rf"\(?{_S}-?{_NUM}{_S}\)?"
_EXPR = rf"{_TERM}(?:{_S}[-+*/]{_S}{_TERM})*"
_CHAIN = re.compile(rf"(?<![\w.]){_EXPR}(?:{_S}={_S}{_EXPR})+(?!\d|\.\d)")
_LEAD = re.compile(rf"\(?{_S}(-?{_NUM})")
_OPERATOR = re.compile(rf"\d{_S}\)?{_S}[-+*/]{_S}\(?{_S}-?\d")
_SINGLE = re.compile(rf"\(?{_S}{_NUM}{_S}([-+*/]){_S}{_NUM}{_S}\)?")  # one operation between two numbers


def classify(record: dict) -> str:
    """The class of one evaluate record (its `error`, `correct`, `finish_reason`, `predicted`, `completion`)."""
    if record.get("error") is not None or record.get("completion") is None:
        return "failed"
    if record.get("correct"):
        return "correct"
    text = record["completion"]
    if record.get("finish_reason") == "length":
        return "loop" if is_loop(text) else "truncated"
    if record.get("predicted") is None:
        return "no answer"
    return "arithmetic" if false_steps(text) else "method"


def breakdown(records: list[dict]) -> dict[str, int]:
    """Count of each class over the records (every class present, zeros included)."""
    counts = Counter(classify(r) for r in records)
    return {c: counts.get(c, 0) for c in CLASSES}


def is_loop(text: str) -> bool:
    """Does some run of _LOOP_NGRAM words come back _LOOP_REPEATS times or more?"""
    words = text.split()
    grams = Counter(tuple(words[i:i + _LOOP_NGRAM]) for i in range(len(words) - _LOOP_NGRAM + 1))
    return bool(grams) and max(grams.values()) >= _LOOP_REPEATS


def false_steps(text: str) -> list[str]:
    """The written equations of `text` that do not hold, as `lhs = rhs` strings. Each `=` of a chain such as
    `28 + 26 = 54 - 19 = 35` is checked between its neighbours, and a step holds when the left side equals the
    right side or the right side's first number (the sloppy chaining models write: 28 + 26 = 54, then - 19). A
    bare-number side is allowed the rounding its own decimals show (22 / 3 = 7.33 holds)."""
    return [f"{left} = {right}" for left, right, holds in _steps(text) if not holds]


OPERATIONS = ("+", "-", "*", "/")


def step_accuracy(records: list[dict]) -> dict[str, list[int]]:
    """Over the completions of `records`: operation -> [steps that hold, steps written], counting the written steps
    of one operation between two numbers (`45 - 29 = 16`, `54 - 19` after a chain's `=`). Why: the breakdown's
    `arithmetic` class says that some step of an answer is false; this says which operation a model gets wrong,
    and how often, e.g. a student that copies its teacher's plan but subtracts two-digit numbers badly."""
    counts = {op: [0, 0] for op in OPERATIONS}
    for r in records:
        for left, right, holds in _steps(r.get("completion") or ""):
            single = _SINGLE.fullmatch(left) or _SINGLE.fullmatch(right)
            if single:
                counts[single.group(1)][0] += holds
                counts[single.group(1)][1] += 1
    return counts


def _steps(text: str):
    """(left, right, holds) for every `=` of every written equation in `text` where something is computed."""
    for m in _CHAIN.finditer(_normalise(text)):
        sides = [s.strip() for s in m.group(0).split("=")]
        for left, right in zip(sides, sides[1:]):
            if not (_OPERATOR.search(left) or _OPERATOR.search(right)):
                continue  # `54 = 54`: nothing computed
            a, b = _value(left), _value(right)
            if a is None or b is None:
                continue
            first = _LEAD.match(right)
            lead = Fraction(first.group(1)) if first else None
            yield left, right, abs(a - b) <= _tolerance(left, right) or lead == a


def _normalise(text: str) -> str:
    t = re.sub(r"\\[dt]?frac\{\s*(" + _NUM + r")\s*\}\{\s*(" + _NUM + r")\s*\}", r"(\1 / \2)", text)
    # any other fraction (\\frac{\\text{Remaining Books}}{4}) is no number: a word ends the equation there
    t = re.sub(r"\\[dt]?frac" + 2 * r"\{(?:[^{}]|\{[^{}]*\})*\}", " word ", t)
    t = re.sub(r"\\times|\\cdot|×|·|∗", "*", t)
    t = re.sub(r"\\div|÷", "/", t)
    t = t.replace("−", "-")
    t = re.sub(r"(?<=\d)\s*[xX]\s*(?=\d)", " * ", t)
    t = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", t)  # 1,200 -> 1200
    t = re.sub(r"\\[()\[\]]|\$|\\,|\\!|\\ |\{|\}", " ", t)  # math delimiters and spacing
    return t


def _value(expr: str) -> Fraction | None:
    try:  # numbers as string constants, read exactly by Fraction (a float would turn 8.333333333333333 into ...34)
        tree = ast.parse(re.sub(_NUM, lambda m: f'"{m.group(0)}"', expr), mode="eval")
    except (SyntaxError, ValueError):
        return None
    try:
        return _fold(tree.body)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _fold(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(_NUM, node.value):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _fold(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = _fold(node.left), _fold(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        return a / b
    raise ValueError(f"not plain arithmetic: {ast.dump(node)}")


def _tolerance(left: str, right: str) -> Fraction:
    """Half a unit of the last decimal place shown by a bare-number side (0 when neither side is one)."""
    places = [len(s.split(".")[1]) if "." in s else 0 for s in (left, right) if re.fullmatch(_NUM, s.strip("() "))]
    return Fraction(1, 2 * 10 ** min(places)) if places and min(places) > 0 else Fraction(0)
