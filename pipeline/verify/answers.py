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
- `\\fbox{}` and `\\boxed {}` count as `\\boxed{}`, an empty box is ignored, a trailing full stop inside a box or
  at the end of a math environment (`$$x - y + 1 = 0.$$`, `\\boxed{\\left(...\\right).}`) is dropped (latex2sympy
  cannot read it, and math-verify then falls back to a number out of the middle), `\\big(`-style size commands
  are dropped and `smallmatrix` is read as `matrix` (latex2sympy knows neither; math-verify already drops
  `\\left(`/`\\right)`, so a matrix in parentheses is the matrix), and `\\$` before a number outside math mode is a
  currency sign, not a math delimiter;
- an answer set out on the lines after an "answer" word that ends its line ("The answer is\\n\\n3\\n\\nor maybe 5",
  "Answer:\\n x = 2\\n y = 3") is every answer on those lines, one set, as math-verify joins several boxes: a gold
  equal to only one of them is wrong. Inline math opened on that line and closed lines later (`Answer $\\n 9 \\n$`)
  is no answer: math-verify does not read inline math across lines (its tests), so no number is taken out of it;
- a decimal written to 4 or 5 places against a fraction is compared at the places it is written (math-verify's
  `float_rounding`, which it otherwise takes as 6, lighteval's setting): 1/3 == 0.3333, (3/5, 8/3] == (0.6, 2.6667];
  fewer places must be exact (1/3 != 0.333, != 0.33: the project's table), and irrational golds keep 6 (pi != 3.14159);
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
# A full stop closing a math environment or a bracketed group at the end of a box: `0.$$`, `\right).}`
_MATH_FULL_STOP = re.compile(  # (not the null delimiter of \right. and the like)
    r"(?<![.\\])(?<!\\right)(?<!\\left)(?<!\\bigr)(?<!\\Bigr)(?<!\\bigl)(?<!\\Bigl)\.[ \t]*(?=\$|\\\]|\\\))"
    r"|(?<=[)\]}])[ \t]*\.[ \t]*(?=\})")
_SIZE_COMMAND = re.compile(r"\\(?:big|Big|bigg|Bigg)[lrm]?\s*(?=[()\[\]|]|\\[{}|])")  # \bigl( -> (
_SMALLMATRIX = re.compile(r"(\\(?:begin|end)\{)smallmatrix\}")

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

# An answer set out on the lines after an "answer" word (see _answer_lines)
ANSWER_LINES_MAX = 6  # more lines than this after the word are working or prose, not a list of answers
ANSWER_LINES_CHARS = 400
_ANSWER_WORD = re.compile(r"(?i)\banswer\b")
_ANSWER_REST = re.compile(  # what may follow the word on its line: "is", ":", bold, a math delimiter
    r"[ \t]*(?:\*\*)?[ \t]*(?:(?i:is|was)\b)?[ \t]*(?:\*\*)?[ \t]*:?[ \t]*(?:\*\*)?[ \t]*:?[ \t]*"
    r"(?P<open>\$\$|\$|\\\(|\\\[)?[ \t]*")
_ANSWER_HEAD = re.compile(r"(?i)[ \t#>*_]*(?:(?:the|my)[ \t]+)?(?:final[ \t]+)?")  # a heading: "**Final Answer**"
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$|\\\[.*?\\\]|\\begin\{([A-Za-z]*\*?)\}.*?\\end\{\1\}", re.S)
_LONE_INLINE = frozenset(("$", "\\(", "\\)"))

# Numeric precision (see float_rounding)
FLOAT_ROUNDING = 6  # math-verify's default float_rounding, and what lighteval's math metrics pass (5-6)
MIN_STATED_PLACES = 4  # a decimal with fewer places is not taken as a rounding of a fraction (1/3 != 0.333)

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
    return normalise_math(text)


def normalise_math(text: str) -> str:
    """LaTeX that latex2sympy cannot read but means the same: a full stop ending a math environment or a
    box after a closed group, `\\big(`-style size commands, `smallmatrix`."""
    if "." in text:
        text = _MATH_FULL_STOP.sub("", text)
    if "\\big" in text or "\\Big" in text:
        text = _SIZE_COMMAND.sub("", text)
    if "smallmatrix" in text:
        text = _SMALLMATRIX.sub(r"\1matrix}", text)
    return text


def parse_prediction(completion: str) -> list:
    """math-verify's reading of a completion: [sympy value(s)..., extracted string], or [] (no answer)."""
    text = clean_completion(completion)
    return _answer_lines(text, _parse(text))


def _answer_lines(text: str, found: list) -> list:
    """The answer when the last "answer" word ends its line (`found`, math-verify's reading, otherwise).

    math-verify's anchored rules ("answer: X", "answer is X") read one value after the word and let the
    whitespace before it run over a line break, and without them its last-number rule takes the last line:
    "The answer is\\n\\n3\\n\\nor maybe 5" read as 5, "check my answer\\n2 + 3 = 5" as 2, whatever the lines say.
    Here the lines after the word are read one by one (math-verify's parse of each):
    - after a label ("answer is", "Answer:", "**Final Answer**"): lines that agree are that answer; lines that
      differ are one set of them all (what math-verify makes of several boxes), so a gold equal to only one of
      them is wrong. More than ANSWER_LINES_MAX lines, or ANSWER_LINES_CHARS, is working: math-verify's reading;
    - after the word in a sentence ("... check my answer"): not a label, so the text is read as if the word
      were not there (an earlier "answer is" if any, else math-verify's last expression);
    - inline math opened after the word and closed lines later (`Answer $\\n 9 \\n $`) is no answer:
      math-verify never reads inline math across lines, so no number is taken out of it either.
    A box anywhere is the answer (math-verify's first rule); display math opened after the word is left to it.
    """
    if "\\boxed" in text:
        return found
    tail = text[-(ANSWER_LINES_CHARS + 200):]
    word = None
    for word in _ANSWER_WORD.finditer(tail):
        pass
    if word is None:
        return found
    eol = tail.find("\n", word.end())
    rest = _ANSWER_REST.fullmatch(tail, word.end(), eol) if eol >= 0 else None
    if rest is None:
        return found  # the answer is on the word's own line: math-verify's rules read it
    opener = rest.group("open")
    if opener in ("$", "\\("):
        return []
    region = tail[eol + 1:]
    label = bool(tail[word.end():eol].strip()) or bool(
        _ANSWER_HEAD.fullmatch(tail, tail.rfind("\n", 0, word.start()) + 1, word.start()))
    if opener or (label and len(region) > ANSWER_LINES_CHARS):
        return found  # display math spans lines legitimately; a long tail is working
    region = _DISPLAY_MATH.sub(lambda m: m.group(0).replace("\n", " "), region)
    lines = [line.strip() for line in region.split("\n") if line.strip()]
    if any(line in _LONE_INLINE for line in lines):
        return []  # "Answer:\n$\n9\n$": inline math spread over lines
    if not label:  # read the text as if this word were not there (other anchors, else the last expression)
        at = len(text) - len(tail) + word.start()
        return _parse(text[:at] + text[at + len(word.group(0)):])
    if len(lines) > ANSWER_LINES_MAX:
        return found
    answers = [got for got in map(_parse, lines) if got and is_math(got[0])]
    if not answers:
        return found
    from sympy import FiniteSet

    try:
        together = FiniteSet(*(a[0].as_immutable() if hasattr(a[0], "as_immutable") else a[0] for a in answers))
    except Exception:
        return []
    if len(together) == 1:
        return answers[-1]
    return [together, ", ".join(dict.fromkeys(shown(a) for a in answers))]


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
    return _parse("\\boxed{" + normalise_math(g) + "}")


def shown(parsed: list) -> str | None:
    """The extracted answer as text (the string math-verify keeps beside the parsed value)."""
    if not parsed:
        return None
    last = parsed[-1]
    return last if isinstance(last, str) else str(parsed[0])


# --------------------------------------------------------------------------------------------- precision

def _places(f) -> int:
    """The decimal places a parsed decimal was written with (0.3333 -> 4, 2.50 -> 1): the shortest repr of
    its float, which gives back the digits written up to 15 significant ones."""
    from decimal import Decimal

    try:
        exponent = Decimal(repr(float(f))).as_tuple().exponent
    except Exception:
        return 0
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def _stated_places(values: list) -> int | None:
    """The fewest places among the decimals of `values` written to MIN_STATED_PLACES or more (None: none)."""
    from sympy import Float

    places = [p for v in values for f in v.atoms(Float) if (p := _places(f)) >= MIN_STATED_PLACES]
    return min(places) if places else None


def _is_fraction(values: list) -> bool:
    """Whether `values` hold only exact rational numbers (integers, fractions; in sets, intervals, tuples,
    matrices, equations): no decimal, no constant such as pi, no root or other function."""
    from sympy import Float, Function, NumberSymbol, Pow

    try:
        return bool(values) and all(
            not v.atoms(Float, NumberSymbol, Function)
            and all(p.exp.is_Integer for p in v.atoms(Pow)) for v in values)
    except Exception:
        return False


def float_rounding(gold: list, pred: list) -> int:
    """The `float_rounding` to pass math-verify's `verify` for this pair.

    math-verify rounds both sides of a decimal-against-number comparison to `float_rounding` places (6 by
    default, and as lighteval calls it), so 0.3333 is not 1/3 there; its own tests pass 4 for that pair
    and 2 for (0.6, 2.6667] against (3/5, 8/3]. What it lacks is taking the places from the answer: a
    decimal written to 4 or 5 places against an exact fraction is compared at the places it is written (the
    fewest, when it has several such decimals; decimals with fewer places are then held to those places,
    0.6 == 3/5 exactly). The other way round as well: a gold decimal of 4 or 5 places against an exact
    fractional answer. Anything else keeps 6: fewer than MIN_STATED_PLACES places (0.333, 0.33 for 1/3),
    decimals on both sides, irrational values (pi against 3.14159).
    """
    g = [x for x in gold if is_math(x)]
    p = [x for x in pred if is_math(x)]
    try:
        for decimals, exact in ((p, g), (g, p)):
            places = _stated_places(decimals)
            if places is not None and places < FLOAT_ROUNDING and _is_fraction(exact):
                return places
    except Exception:
        pass
    return FLOAT_ROUNDING


def extract_answer(completion: str) -> str | None:
    """The final answer a completion gives, as math-verify extracts it (None: no answer)."""
    return shown(parse_prediction(completion or ""))
