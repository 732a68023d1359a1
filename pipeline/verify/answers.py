"""What the answer is: math-verify's own extraction, configured the way lighteval and math-verify's tests do.

Both sides go through `math_verify.parse` with `LatexExtractionConfig(boxed_match_priority=0)` then
`ExprExtractionConfig()`: the last `\\boxed{}` wins (several boxes joined by commas or "and" are one set),
then "final answer is ...", "answer: ...", the last LaTeX environment (`$...$`, `\\(...\\)`, `$$...$$`,
`\\[...\\]`), then a plain number or expression in the text. The parse result is a list of sympy objects and
the extracted string; `verify` compares such lists.

The project adds only what a measured case needs (each one pinned in tests/verify_cases.py):
- golds are usually bare (`\\sqrt{2}`, `(1, 2)`, `x \\geq 5`), which math-verify only extracts inside math
  delimiters, so a bare gold is parsed as if boxed; a bare number keeps math-verify's number reading
  (`1 000`, `.4`, `0,111`), and a bare `a,b` that is not a thousands group (`1,3`, `-2,1` in OlympiadBench and
  MATH-500 golds, `1,22` in math-verify's own decimal-comma reading) accepts both readings;
- a gold that is a number followed by unit words (`18 dollars`) is that number; `$` signs inside a gold that
  does not start with one join several answers (`69$,$84` in OlympiadBench) and are dropped;
- plain-text golds (`Monday`, `yes`, `\\text{(C)}`) compare as normalised text: math-verify reads a word as
  a product of one-letter symbols, so "yes" would equal "sey";
- the completion is cut at the first chat-template token (`<|im_start|>` ...), which is never answer text;
- `\\fbox{}` and `\\boxed {}` count as `\\boxed{}`, an empty box is ignored, a trailing full stop inside a box is dropped,
  and `\\$` before a number outside math mode is a currency sign, not a math delimiter;
- only the last TAIL_CHARS characters are searched (the answer is at the end; this keeps the regexes
  linear in practice on hostile megabyte-long text).
Nothing here evaluates model text: math-verify's parser (latex2sympy's ANTLR grammar and sympy's
`parse_expr` of a regex-limited arithmetic string) is the only reader.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

TAIL_CHARS = 30_000  # the part of a completion that is searched for the answer

_TEMPLATE_TOKENS = re.compile(
    r"<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>|<\|end_of_text\|>|<\|start_header_id\|>"
    r"|<\|end\|>|<\|user\|>|<\|assistant\|>|<\|eom_id\|>|</s>|<end_of_turn>|<start_of_turn>"
    r"|<｜end▁of▁sentence｜>|<｜User｜>|<｜Assistant｜>")
_BOX_OPEN = re.compile(r"\\fbox\s*\{|\\boxed\s+\{")  # \fbox{, \boxed {  ->  \boxed{
_EMPTY_BOX = re.compile(r"\\boxed\s*\{\s*\}")
_BOX_FULL_STOP = re.compile(r"(\\boxed\s*\{[^{}$]*?[^{}$.\s])\s*\.\s*\}")  # \boxed{3.} but not \boxed{3...}
_ESCAPED_DOLLAR_NUMBER = re.compile(r"\\\$(?=\s?-?\d)")

# math-verify's number formats (parser.lazy_expr_regex): a bare gold matching one whole is read as that number
_BARE_NUMBER = re.compile(
    r"-?(?:[1-9]\d{0,2}(?:[ ,]\d{3})+(?:\.\d+)?|\d+[.,]\d+|\.\d+|\d+)")  # (a percentage reads as LaTeX)
_COMMA_PAIR = re.compile(r"-?\d+,-?\d+")  # "1,3": a list of two numbers, or a decimal comma
_THOUSANDS = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+")
_MAGNITUDES = r"(?i:hundred|thousand|million|billion|trillion|dozen|percent)"
_NUMBER_WITH_UNITS = re.compile(
    r"(?:\\?\$)?\s?(?P<num>-?\d[\d,]*(?:\.\d+)?)\s*"
    rf"(?!(?:\\(?:text|mbox|mathrm)\s?\{{\s*)?{_MAGNITUDES})"
    r"(?:\\(?:text|mbox|mathrm)\s?\{\s*[A-Za-z]{2,}[A-Za-z .'/\-]*\}|[A-Za-z]{2,}[A-Za-z .'/\-]*)")
_MATH_ENV = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed")

_TEXT_MACRO = re.compile(r"\\(?:text|textbf|textit|textrm|texttt|textsf|mbox|mathrm|operatorname)\s?\{([^{}]*)\}")
_TEXT_TRIGGER = re.compile(r"\\(?:text|textbf|textit|textrm|texttt|textsf|mbox)\s?\{")
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_WORDS = re.compile(r"[a-z]+(?: [a-z]+)*")
_SPACES = re.compile(r"\s+")

_MV = None


def math_verify():
    """(parse, verify, the extraction configs, sympy's expression types), imported on first use."""
    global _MV
    if _MV is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
        from sympy import Basic, MatrixBase

        # Time limits are the caller's (see check.py); math-verify warns once that its own are off.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        configs = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
        _MV = (parse, verify, configs, (Basic, MatrixBase))
    return _MV


def _parse(text: str, configs=None) -> list:
    parse, _, default, _ = math_verify()
    return parse(text, extraction_config=configs or default, parsing_timeout=None)


def is_math(x) -> bool:
    return isinstance(x, math_verify()[3])


# --------------------------------------------------------------------------------------------- text golds

def text_key(s: str) -> str:
    """Text with LaTeX text macros, `$`, outer punctuation and parentheses, case and spacing removed."""
    for _ in range(4):
        t = _TEXT_MACRO.sub(r"\1", s)
        if t == s:
            break
        s = t
    s = _UNESCAPED_DOLLAR.sub("", s).strip().strip(".,;:!?*\"'`").strip()
    if s.startswith("(") and s.endswith(")"):
        s = s[1:-1]
    return _SPACES.sub(" ", s.replace("~", " ").replace("\\ ", " ")).strip().lower()


def text_gold(gold: str) -> str | None:
    """The normalised text of a plain-text gold (words only: `Monday`, `no solution`, `\\text{(C)}`), else None.
    A single bare letter (`E`, `x`) stays mathematics."""
    key = text_key(gold)
    if not _WORDS.fullmatch(key):
        return None
    if _TEXT_TRIGGER.search(gold) or len(key.replace(" ", "")) >= 2:
        return key
    return None


@lru_cache(maxsize=1024)
def _string_config(key: str):
    from math_verify import StringExtractionConfig

    variants = {key, key.capitalize(), key.title(), key.upper()}
    return StringExtractionConfig(strings=tuple(sorted(variants, key=len, reverse=True)), try_extract_without_anchor=False)


def text_answer(completion: str, key: str) -> tuple[str | None, bool]:
    """(the answer found, whether it is the gold text) for a plain-text gold: a boxed or LaTeX answer compares
    by `text_key`; without one, the gold's words right after "answer is" / "answer:" (math-verify's
    StringExtractionConfig, anchored) count."""
    found = _parse(completion, (math_verify()[2][0], _string_config(key)))
    if not found:
        return None, False
    shown = found[-1] if isinstance(found[-1], str) else str(found[0])
    if not is_math(found[0]) and isinstance(found[0], str) and text_key(found[0]) == key and "\\" not in shown:
        return shown, True  # the StringExtractionConfig hit: the gold's words after "answer"
    return shown, text_key(shown) == key


# --------------------------------------------------------------------------------------------- parsing

def clean_completion(text: str) -> str:
    """The part of a completion math-verify searches (see the module docstring)."""
    m = _TEMPLATE_TOKENS.search(text)
    if m:
        text = text[:m.start()]
    if len(text) > TAIL_CHARS:
        text = text[-TAIL_CHARS:]
    if "\\fbox" in text or "\\boxed " in text:
        text = _BOX_OPEN.sub(r"\\boxed{", text)
    if "\\boxed" in text:
        text = _EMPTY_BOX.sub("", text)
        text = _BOX_FULL_STOP.sub(r"\1}", text)
    if "\\$" in text:
        text = _ESCAPED_DOLLAR_NUMBER.sub("", text)
    return text


def parse_prediction(completion: str) -> list:
    """math-verify's reading of a completion: [sympy value(s)..., extracted string], or [] (no answer)."""
    return _parse(clean_completion(completion))


def parse_gold(gold: str) -> list:
    """math-verify's reading of a gold answer (see the module docstring for the bare-gold rules)."""
    g = gold.strip()
    if "$" in g and not g.startswith("$"):  # "69$,$84": several answers joined (OlympiadBench); drop the $s
        g = _UNESCAPED_DOLLAR.sub("", g).strip().rstrip(".").strip()
    if not g:
        return []
    if _MATH_ENV.search(g):
        return _parse(clean_completion(g))
    if _BARE_NUMBER.fullmatch(g):
        number = _parse(g, (math_verify()[2][1],))
        if _COMMA_PAIR.fullmatch(g) and not _THOUSANDS.fullmatch(g):
            return number + _parse("\\boxed{" + g + "}")  # 1,3: the pair {1, 3} or the decimal 1.3
        return number
    m = _NUMBER_WITH_UNITS.fullmatch(g)
    if m:
        return _parse(m.group("num"), (math_verify()[2][1],))
    return _parse("\\boxed{" + g + "}")


def shown(parsed: list) -> str | None:
    """The extracted answer as text (the string math-verify keeps beside the parsed value)."""
    if not parsed:
        return None
    last = parsed[-1]
    return last if isinstance(last, str) else str(parsed[0])


def extract_answer(completion: str) -> str | None:
    """The final answer a completion gives, as math-verify extracts it (None: no answer)."""
    return shown(parse_prediction(completion or ""))
