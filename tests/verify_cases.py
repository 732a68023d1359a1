r"""Labelled (gold, completion, expected, source) cases for pipeline.verify, grouped by the form tested.

`expected` is what a careful reader of the completion would say, and what `verify_answer` must say; `source`
says where the case came from:
- "project table": the table kept since the filter stage was written (issue 3), three rows relabelled when
  extraction moved to math-verify (each says why);
- "issue 12: ...": written afresh for the answer forms the verification issue lists (unboxed LaTeX, relations,
  equations, several boxes, matrices, no number read out of an expression, decimal commas and spaced
  thousands, `\text{E}`, chat-template tails);
- "held-out misses: ...": the kinds of miss a held-out labelled set found (decimals written to 4-5 places
  against fractions, equations times -1, matrices in parentheses, answers set out over the lines after
  "answer"), each with wrong variants beside the right ones;
- "math500:<id>", "gsm8k:<id>": real benchmark golds from data/benchmarks against their own reference
  solutions (correct) or another problem's (wrong, only where both golds are different integers, so the
  label is certain).

Decisions on ambiguous equivalences (math-verify's, unless said otherwise):
- percentages: a percentage equals its number and its value: 50% == 50 == 0.5. 50% != 5.
- decimals vs fractions: equal when they agree to 6 decimal places (math-verify's float_rounding): 1/3 ==
  0.333333; a decimal written to 4 or 5 places is compared at those places (the project's rule, answers.py):
  1/3 == 0.3333, (3/5, 8/3] == (0.6, 2.6667], but 2/3 != 0.6666 (cut, not rounded); fewer places must be
  exact: 1/3 != 0.333, != 0.33, also inside a matrix (math-verify's own test accepts 0.33 there only at
  float_rounding=2).
- equations: equal when they are the same relation (math-verify: lhs - rhs equal, flipped, or the same
  solutions): x - y + 1 = 0 == -x + y - 1 = 0 == 2x - 2y + 2 = 0 == y = x + 1; a changed constant is wrong.
- matrices: parentheses around a matrix (\left( \right), \bigl( \bigr)) are typography: (M) == M.
- pi is not 3.14 (nor 3.14159).
- units, degrees, currency: dropped (5 cm == 5, 30^\circ == 30, \$18 == 18, "18 dollars" == 18).
- thousands separators: 1,000 == 1000 == 1 000; a decimal comma reads as a decimal point (1000,99 ==
  1000.99); a bare gold "a,b" that is no thousands group (1,3) also reads as the list {a, b} (the project's rule).
- sets ignore order, tuples and intervals do not; several boxes joined by commas or "and" are one set.
- a partial answer to a multi-part gold is wrong; answers on several lines after "answer is" / "Answer:" are
  all of them (one set), so a gold equal to one line is wrong ("The answer is\n\n3\n\nor maybe 5" != 5).
- plain-text golds compare as normalised strings (the project's rule): "Monday" == "\text{monday}", "yes" != "sey".
- an equation or assignment answers a numeric gold by its right side: x = 3 == 3; relations compare as
  relations (x \geq 5 == 5 \leq x).
- without a box, the answer is the last LaTeX expression, else the last number or arithmetic expression in the
  text (so "between 3-2 days" answers 1); a number is never read out of the middle of an expression
  (\frac{10}{9} is not 9).
"""

from __future__ import annotations

import json
from pathlib import Path

B = "\\boxed{{{}}}"


def bx(ans: str, pre: str = "Let me work it out step by step. ", post: str = "") -> str:
    return pre + "So the final answer is $\\boxed{" + ans + "}$." + post


PROJECT_TABLE: list[tuple[str, str, bool]] = [
    # ---- integers
    ("18", bx("18"), True),
    ("18", bx("17"), False),
    ("0", bx("0"), True),
    ("0", bx("-0"), True),
    ("1000000", bx("1000000"), True),
    ("72", "48 + 24 = 72, so Natalia sold \\boxed{72} clips.", True),
    ("72", "48 + 24 = 72, so Natalia sold \\boxed{ 72 } clips.", True),
    ("5", "The result is \\boxed 5 indeed.", True),
    ("5", "The result is $\\boxed 5$.", True),
    ("007", bx("7"), True),
    ("12", bx("12.0"), True),
    ("12", bx("12.5"), False),
    ("3", bx("3."), True),
    # ---- negatives and sign errors
    ("-5", bx("-5"), True),
    ("-5", bx("5"), False),
    ("5", bx("-5"), False),
    ("-3", bx("- 3"), True),
    ("-\\frac{1}{2}", bx("-0.5"), True),
    ("-\\frac{1}{2}", bx("\\frac{1}{2}"), False),
    ("\\frac{-1}{2}", bx("-\\frac12"), True),
    ("-2", bx("2"), False),
    ("-7", "the answer is -7.", True),
    ("-7", "the answer is 7.", False),
    ("x - 1", bx("1 - x"), False),
    # ---- fractions
    ("\\frac{1}{2}", bx("\\frac{1}{2}"), True),
    ("\\frac{1}{2}", bx("\\frac12"), True),
    ("\\frac{1}{2}", bx("\\dfrac{1}{2}"), True),
    ("\\frac{1}{2}", bx("\\tfrac{1}{2}"), True),
    ("\\frac{1}{2}", bx("1/2"), True),
    ("\\frac{1}{2}", bx("2/4"), True),
    ("\\frac{1}{2}", bx("\\frac{2}{4}"), True),
    ("\\frac{1}{2}", bx("2"), False),
    ("2", bx("\\frac{1}{2}"), False),
    ("\\frac{3}{4}", bx("\\frac{4}{3}"), False),
    ("\\frac{14}{3}", bx("4\\frac{2}{3}"), True),  # math-verify reads 4\frac{2}{3} as a mixed number
    ("\\frac{14}{3}", bx("\\frac{28}{6}"), True),
    ("\\dfrac{17}{50}", bx("0.34"), True),
    ("1/3", bx("\\frac{1}{3}"), True),
    ("\\frac43", bx("\\frac{4}{3}"), True),
    # ---- decimals vs fractions
    ("0.5", bx("\\frac{1}{2}"), True),
    ("\\frac{1}{2}", bx("0.5"), True),
    ("\\frac{1}{2}", bx("0.50"), True),
    ("\\frac{3}{4}", bx("0.75"), True),
    ("\\frac{1}{3}", bx("0.333333"), True),
    ("\\frac{1}{3}", bx("0.33"), False),
    ("\\frac{1}{3}", bx("0.333"), False),
    ("2.5", bx("\\frac{5}{2}"), True),
    (".0000672", bx("0.0000672"), True),
    ("0.1", bx("0.01"), False),
    ("3.14", bx("3.14"), True),
    ("\\pi", bx("3.14"), False),
    ("\\pi", bx("3.14159"), False),
    ("\\pi", bx("\\pi"), True),
    # ---- percentages
    ("10\\%", bx("10\\%"), True),
    ("10\\%", bx("10"), True),
    ("10\\%", bx("0.1"), True),
    ("50\\%", bx("50\\%"), True),
    ("50", bx("50\\%"), True),
    ("50", "The percentage is 50%.", True),
    ("50\\%", bx("5\\%"), False),
    ("50\\%", bx("5"), False),
    ("25\\%", bx("20\\%"), False),
    # ---- thousands separators
    ("1000", bx("1,000"), True),
    ("1,000", bx("1000"), True),
    ("1000", bx("1{,}000"), True),
    ("10080", bx("10,\\!080"), True),
    ("10,\\!080", bx("10080"), True),
    ("11,\\! 111,\\! 111,\\! 100", bx("11111111100"), True),
    ("1234567", bx("1,234,567"), True),
    ("70000", "He made a profit of \\$70,000.", True),
    ("70000", bx("\\$70,000"), True),
    ("1000", bx("1,001"), False),
    ("1000", bx("100"), False),
    ("1,2", bx("1,2"), True),
    ("3, 100", bx("100, 3"), True),  # a list, not three thousand one hundred
    ("3, 100", bx("3100"), False),
    ("5000000", bx("5 \\text{ million}"), False),  # magnitude words are not units (math-verify: 5*million)
    ("5", bx("5 million"), False),
    ("12", bx("1,2"), False),
    # ---- text answers and units
    ("5", bx("5 \\text{ cm}"), True),
    ("5", bx("5\\text{cm}"), True),
    ("5", bx("5 cm"), True),
    ("18", bx("18 \\text{ dollars}"), True),
    ("18", "So she makes 18 dollars every day. The answer is 18 dollars.", True),
    ("18", bx("\\$18"), True),
    ("18", bx("\\$18.00"), True),
    ("18", bx("\\$19"), False),
    ("3.5", bx("3.5 \\text{ hours}"), True),
    ("\\frac{270}7\\text{ degrees}", bx("\\frac{270}{7}"), True),
    ("\\text{Monday}", bx("\\text{Monday}"), True),
    ("\\text{Monday}", bx("Monday"), True),
    ("\\text{Monday}", bx("\\text{monday}"), True),
    ("\\text{Monday}", bx("\\textbf{Monday}"), True),
    ("\\text{Monday}", bx("\\text{Tuesday}"), False),
    ("\\text{Monday}", bx("Mon"), False),
    ("\\text{Evelyn}", bx("\\text{Evelyn}"), True),
    ("\\text{Evelyn}", bx("Eve"), False),
    ("\\text{east}", bx("\\text{East}"), True),
    ("\\text{east}", bx("\\text{west}"), False),
    ("yes", bx("Yes"), True),
    ("yes", bx("sey"), False),
    ("yes", bx("no"), False),
    ("no", bx("\\text{No}"), True),
    ("no", bx("on"), False),
    ("\\text{even}", bx("\\text{odd}"), False),
    ("\\text{no solution}", bx("\\text{No solution}"), True),
    ("\\text{(C)}", bx("C"), True),
    ("\\text{(C)}", bx("\\text{(C)}"), True),
    ("\\text{(C)}", bx("(D)"), False),
    ("Monday", "The meeting falls on a monday. The answer is Monday.", True),
    ("Monday", "The answer is Tuesday.", False),
    # ---- degrees
    ("30^\\circ", bx("30"), True),
    ("30", bx("30^\\circ"), True),
    ("30^\\circ", bx("30^{\\circ}"), True),
    ("90^\\circ", bx("90^\\circ"), True),
    ("30^\\circ", bx("60^\\circ"), False),
    ("145^\\circ", bx("145"), True),
    # ---- sets
    ("\\{1,2\\}", bx("\\{2,1\\}"), True),
    ("\\{1,2\\}", bx("\\{1,2\\}"), True),
    ("\\{1,2\\}", bx("\\{1,3\\}"), False),
    ("\\{1,2\\}", bx("\\{1,2,3\\}"), False),
    ("3, 5, 7", bx("7, 5, 3"), True),
    ("3, 5, 7", bx("3, 5"), False),
    ("1,-2", bx("-2, 1"), True),
    ("1,-2", bx("1, 2"), False),
    ("1 \\pm \\sqrt{19}", bx("1+\\sqrt{19}, 1-\\sqrt{19}"), True),
    # ---- intervals
    ("[0, 1)", bx("[0,1)"), True),
    ("[0, 1)", bx("[0,1]"), False),
    ("[0, 1)", bx("(0,1]"), False),
    ("(3,4]", bx("(3, 4]"), True),
    ("(2,\\infty)", bx("(2, \\infty)"), True),
    ("(2,\\infty)", bx("[2, \\infty)"), False),
    ("(-\\infty, 0) \\cup\\{1\\}", bx("\\{1\\} \\cup (-\\infty, 0)"), True),
    # ---- tuples and ordered pairs (order matters; a partial answer is wrong)
    ("(1, 2)", bx("(1,2)"), True),
    ("(1, 2)", bx("(2,1)"), False),
    ("(1, 2)", bx("1"), False),
    ("(1, 2)", bx("2"), False),
    ("(6,31,-1)", bx("(6, 31, -1)"), True),
    ("(6,31,-1)", bx("(6, 31, 1)"), False),
    ("(6,31,-1)", bx("(6, 31)"), False),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", bx("(3, \\frac{\\pi}{2})"), True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", bx("(3, \\pi/2)"), True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", bx("(\\frac{\\pi}{2}, 3)"), False),
    ("(15,-29)", bx("(15, -29)"), True),
    ("(15,-29)", bx("(-29, 15)"), False),
    ("\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", bx("\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}"), True),
    ("\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", bx("\\begin{pmatrix} -2 \\\\ -7 \\\\ -14 \\end{pmatrix}"), False),
    # ---- simple expressions
    ("2x+1", bx("1+2x"), True),
    ("2x+1", bx("2x-1"), False),
    ("\\frac{\\sqrt{2}}{2}", bx("\\sqrt{2}/2"), True),
    ("\\frac{\\sqrt{2}}{2}", bx("\\frac{\\sqrt2}{2}"), True),
    ("\\frac{\\sqrt{2}}{2}", bx("\\frac{1}{\\sqrt{2}}"), True),
    ("\\frac{\\sqrt{2}}{2}", bx("\\sqrt{2}"), False),
    ("3\\sqrt{13}", bx("\\sqrt{117}"), True),
    ("3\\sqrt{13}", bx("3\\sqrt{12}"), False),
    ("x^2+2x+1", bx("(x+1)^2"), True),
    ("x^2+2x+1", bx("(x-1)^2"), False),
    ("p - q", bx("p-q"), True),
    ("p - q", bx("q-p"), False),
    ("6 - 5i", bx("6-5i"), True),
    ("6 - 5i", bx("6+5i"), False),
    ("2\\pi", bx("2 \\pi"), True),
    ("10^{10}", bx("10000000000"), True),
    ("2^{1009}", bx("2^{1009}"), True),
    ("2^{1009}", bx("2^{1008}"), False),
    ("x=5", bx("5"), True),
    ("3", bx("x = 3"), True),
    ("3", bx("x = 4"), False),
    ("n^{2}+1", bx("1 + n^2"), True),
    # ---- nested braces in the box; several boxes (the last complete one wins)
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}}", True),
    ("\\frac{\\sqrt{3}}{3}", "We get \\boxed{\\frac{\\sqrt{3}}{3}} at last.", True),
    ("\\{1,2\\}", "Hence \\boxed{\\{1, 2\\}}.", True),
    ("\\frac{1}{4}", "\\boxed{\\frac{1}{\\left(2\\right)^{2}}}", True),
    ("5", "First I thought \\boxed{4}, but rechecking gives \\boxed{5}.", False),  # two boxes joined by a comma are one set {4, 5} (math-verify)
    ("4", "First I thought \\boxed{4}, but rechecking gives \\boxed{5}.", False),
    ("5", "Answer: \\boxed{5} (not \\boxed{6", True),  # an unbalanced last box is skipped
    ("5", "\\boxed{} and then \\boxed{5}", True),
    ("7", "\\fbox{7}", True),
    ("5", "The answer is 6. Final: \\boxed{5}", True),  # a box wins over "the answer is"
    # ---- "the answer is" fallback
    ("42", "We compute 6*7. The answer is 42.", True),
    ("42", "We compute 6*7. The answer is 41.", False),
    ("42", "The final answer is $42$. I hope it is correct.", True),
    ("\\frac{1}{2}", "Final Answer: $\\frac{1}{2}$", True),
    ("\\frac{1}{2}", "**Final Answer:** 1/2", True),
    ("(1, 2)", "So the answer is (1, 2).\nDone.", False),  # a pair outside math mode is not extracted (math-verify reads the number 2)
    ("(1, 2)", "So the answer is (2, 1).\nDone.", False),
    ("3.5", "The answer is 3.5 hours.", True),
    # ---- last-number fallback (numeric golds only)
    ("16", "She has 20 eggs and eats 4, leaving 16", True),
    ("16", "She has 20 eggs and eats 4, leaving 16 eggs.", True),
    ("16", "She has 20 eggs and eats 16, leaving 4 eggs.", False),
    ("1234", "Summing everything gives 1,234", True),
    ("12345", "Summing everything gives 1,2345", False),  # not a thousands group: the last number is 2345
    ("-3", "the temperature drops to -3", True),
    ("2", "between 3-2 days", False),  # 3-2 is the expression 1, not the number 2
    ("\\text{Monday}", "It was Monday 3", False),  # no last-number fallback for a text gold
    ("(1, 2)", "the point is at 1 and 2", False),  # nor for a tuple
    # ---- no answer at all
    ("5", "I am not sure how to solve this.", False),
    ("5", "", False),
    ("\\frac{1}{2}", "Let us think about it", False),
]


ISSUE_12: dict[str, list[tuple[str, str, bool]]] = {
    "unboxed answers (last LaTeX expression)": [
        ("\\frac{1}{3}", "Dividing both sides by 3 gives the probability, so $\\frac13$", True),
        ("\\frac{1}{3}", "Dividing both sides by 4 gives the probability, so $\\frac14$", False),
        ("9", "Thus the number of ways is \\( 9 \\).", True),
        ("9", "Thus the number of ways is \\( 8 \\).", False),
        ("(1, +\\infty)", "The range of the function is\n$$(1, +\\infty)$$", True),
        ("(1, \\infty)", "The range of the function is\n$$(1, +\\infty)$$", True),
        ("(1, +\\infty)", "The range of the function is\n$$[1, +\\infty)$$", False),
        ("\\sqrt{2}", "The diagonal of the unit square is \\[\\sqrt{2}\\]", True),
        ("2\\sqrt{2}", "So the side length is \\[\\sqrt{8}\\]", True),
        ("2\\sqrt{2}", "So the side length is \\[\\sqrt{6}\\]", False),
        ("12", "We have $3 \\cdot 4 = 12$ so there are $12$ squares.", True),
        ("12", "We have $3 \\cdot 4 = 12$ so there are $13$ squares.", False),
        ("-\\frac{3}{2}", "Solving for the slope we find $m = -\\frac{3}{2}$.", True),
        ("-\\frac{3}{2}", "Solving for the slope we find $m = \\frac{3}{2}$.", False),
        ("\\frac{\\pi}{6}", "The angle is $\\theta = \\frac{\\pi}{6}$.", True),
        ("\\frac{\\pi}{6}", "The angle is $\\theta = \\frac{\\pi}{3}$.", False),
        ("x^2+2x+1", "Expanding gives $x^2 + 2x + 1$.", True),
        ("3", "First $x = 5$, and after correcting the sign, $x = 3$.", True),
        ("5", "First $x = 5$, and after correcting the sign, $x = 3$.", False),
        ("\\frac{1}{2}", "The answer is \\(\\dfrac{1}{2}\\)", True),
    ],
    "relations and inequalities": [
        ("x \\geq 5", "So the solution set is $5 \\leq x$.", True),
        ("x \\geq 5", "So the solution set is $x \\geq 5$.", True),
        ("x \\geq 5", "So the solution set is $x > 5$.", False),
        ("x \\geq 5", "So the solution set is $x \\leq 5$.", False),
        ("x \\neq 3", "The expression is defined for all $x \\neq 3$.", True),
        ("x \\neq 3", "The expression is defined for all $x \\neq -3$.", False),
        ("x < 2", "\\boxed{x<2}", True),
        ("x < 2", "\\boxed{2 > x}", True),
        ("x < 2", "\\boxed{x \\le 2}", False),
        ("1 < x < 3", "\\boxed{1<x<3}", True),
        ("1 < x < 3", "\\boxed{1<x<4}", False),
        ("a \\ge 0", "so the condition is $\\boxed{a \\geq 0}$", True),
    ],
    "equations whose right side is the answer": [
        ("1", "Substituting back, we get $k = 1$", True),
        ("1", "Substituting back, we get $k = 2$", False),
        ("-4", "\\boxed{a=-4}", True),
        ("-4", "\\boxed{a=4}", False),
        ("5", "The answer: $x=5$", True),
        ("y = 2x + 3", "\\boxed{y=2x+3}", True),
        ("y = 2x + 3", "\\boxed{2x+3}", True),
        ("y = 2x + 3", "\\boxed{y=3x+2}", False),
        ("\\frac{7}{2}", "Therefore $t = \\frac{7}{2}$ seconds.", True),
        ("\\frac{7}{2}", "Therefore $t = \\frac{2}{7}$ seconds.", False),
    ],
    "sets and several boxes": [
        ("\\{1,2\\}", "The roots are \\boxed{1}, \\boxed{2}", True),
        ("\\{1,2\\}", "The roots are \\boxed{1} and \\boxed{2}", True),
        ("1, 2", "The roots are $\\boxed{2}$ and $\\boxed{1}$", True),
        ("\\{1,2\\}", "The roots are \\boxed{1}, \\boxed{3}", False),
        ("\\{1,2\\}", "The only root is \\boxed{1}", False),
        ("\\{-1, 1\\}", "So $x = \\pm 1$, that is \\boxed{-1, 1}", True),
        ("1,3", "The values are \\boxed{1,3}", True),
        ("1,3", "The values are \\boxed{3, 1}", True),
        ("1,3", "The only value is \\boxed{1}", False),
        ("11,13", "Hence \\boxed{11, 13}.", True),
        ("-2,1", "The integer roots are \\boxed{-2, 1}", True),
        ("-2,1", "The integer roots are \\boxed{1,-2}", True),
        ("-2,1", "The integer roots are \\boxed{2, -1}", False),
        ("2, 3", "so $x=2$ or $x=3$: \\boxed{2, 3}", True),
    ],
    "matrices and vectors without a box": [
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "The projection is $\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}$.", True),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "The projection is $\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}$.", False),
        ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "So\n$$\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}$$", True),
        ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "So\n$$\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}$$", False),
        ("\\begin{pmatrix} -1 \\\\ 0 \\\\ 5 \\end{pmatrix}", "Hence the vector is \\[\\begin{pmatrix} -1 \\\\ 0 \\\\ 5 \\end{pmatrix}\\]", True),
        ("\\begin{pmatrix} \\frac{1}{2} \\\\ 3 \\end{pmatrix}", "\\boxed{\\begin{pmatrix} 0.5 \\\\ 3 \\end{pmatrix}}", True),
    ],
    "no number read out of an expression": [
        ("9", "Simplifying the ratio, the value is \\frac{10}{9}", False),
        ("\\frac{10}{9}", "Simplifying the ratio, the value is \\frac{10}{9}", True),
        ("3", "The probability is $\\dfrac{1}{3}$", False),
        ("\\frac{1}{3}", "The probability is $\\dfrac{1}{3}$", True),
        ("3", "Each slice is \\frac{1}{3} of the cake", False),
        ("2", "The side is $\\sqrt{2}$", False),
        ("4", "The area is $x^4$", False),
        ("10", "Hence the total is $10^{3}$.", False),
        ("1000", "Hence the total is $10^{3}$.", True),
        ("5", "the result is 15", False),
    ],
    "decimal commas, spaced thousands, leading decimal point": [
        ("1000", "The total comes to 1 000", True),
        ("1000000", "That makes 1 000 000 in all", True),
        ("1000.99", "The price is 1000,99", True),
        ("0.111", "The share is 0,111", True),
        ("0,111", "The share is 0.111", True),
        ("1,22", "The ratio is 1.22", True),
        ("1,22", "The ratio is 1.23", False),
        ("0.4", "The probability is .4", True),
        ("0.4", "\\boxed{.4}", True),
        ("3.85", "Le total : 3,85 €", True),
        ("7425000", "The population was 7,425,000", True),
        ("1000", "It is 1000.0", True),
        ("1000.5", "It is 1,000.5", True),
        ("58,500", "\\boxed{58500}", True),
        ("58,500", "\\boxed{58,500}", True),
        ("58,500", "\\boxed{585}", False),
    ],
    "letters as answers: \\text{E}, E, \\mathrm{e}": [
        ("E", "The correct option is \\boxed{\\text{E}}", True),
        ("\\text{E}", "The correct option is \\boxed{E}", True),
        ("E", "The correct option is \\boxed{\\text{D}}", False),
        ("(E)", "The correct option is \\boxed{E}", True),
        ("\\textbf{(B)}", "\\boxed{B}", True),
        ("B", "\\boxed{\\textbf{(B)}}", True),
        ("B", "\\boxed{\\textbf{(C)}}", False),
        ("e^2", "\\boxed{e^{2}}", True),
    ],
    "chat-template tails": [
        ("5", "The answer is \\boxed{5}.<|im_end|>\n<|im_start|>user\nNow solve 7+8.<|im_end|>\n<|im_start|>assistant\n\\boxed{15}", True),
        ("15", "The answer is \\boxed{5}.<|im_end|>\n<|im_start|>user\nNow solve 7+8.<|im_end|>\n<|im_start|>assistant\n\\boxed{15}", False),
        ("12", "So she has 12 apples<|im_start|>user", True),
        ("12", "So she has 12 apples<|endoftext|>Human: what is 3+4? Assistant: 7", True),
        ("7", "So she has 12 apples<|endoftext|>Human: what is 3+4? Assistant: 7", False),
        ("8", "The answer is $8$<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnd 2+2? 4", True),
        ("4", "The answer is $8$<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnd 2+2? 4", False),
        ("3", "\\boxed{3}</s>\\boxed{9}", True),
    ],
    "final-answer phrases (Minerva style)": [
        ("42", "Final Answer: The final answer is $42$. I hope it is correct.", True),
        ("42", "Final Answer: The final answer is $41$. I hope it is correct.", False),
        ("\\frac{\\pi}{4}", "Final Answer: The final answer is $\\frac{\\pi}{4}$. I hope it is correct.", True),
        ("\\frac{\\pi}{4}", "Final Answer: The final answer is $\\frac{\\pi}{2}$. I hope it is correct.", False),
        ("17", "The answer is 17, since 17 is prime and 15 is not.", True),
        ("6", "**Answer:** 6", True),
        ("6", "**Answer:** 7", False),
        ("5", "The final answer is $4$. I hope it is correct.\nWait, 2+3 is not 4: \\boxed{5}", True),
        ("4", "The final answer is $4$. I hope it is correct.\nWait, 2+3 is not 4: \\boxed{5}", False),
        ("12", "Final answer is $10$. I hope it is correct. Recounting gives $\\boxed{12}$.", True),
    ],
}


_M = "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"
_MB = "\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}"
_MT = "\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}"
_V = "\\begin{pmatrix} 3 \\\\ -1 \\end{pmatrix}"
_F = "\\begin{pmatrix} \\frac{1}{3} \\\\ \\frac{1}{5} \\end{pmatrix}"

HELD_OUT_MISSES: dict[str, list[tuple[str, str, bool]]] = {
    "decimals to 4-5 places against fractions": [
        ("\\frac{1}{3}", bx("0.3333"), True),
        ("\\frac{1}{3}", bx("0.33333"), True),
        ("\\frac{1}{3}", bx("0.3334"), False),
        ("\\frac{1}{3}", bx("0.3"), False),
        ("\\frac{2}{3}", bx("0.6667"), True),
        ("\\frac{2}{3}", bx("0.6666"), False),  # cut, not rounded (math-verify rounds)
        ("\\frac{2}{3}", bx("0.667"), False),
        ("\\frac{1}{12}", "The probability is $0.0833$.", True),
        ("\\frac{1}{7}", bx("0.1429"), True),
        ("\\frac{1}{7}", bx("0.1428"), False),
        ("(\\frac{3}{5}, \\frac{8}{3}]", bx("(0.6, 2.6667]"), True),
        ("(\\frac{3}{5}, \\frac{8}{3}]", bx("(0.6, 2.67]"), False),
        ("(\\frac{3}{5}, \\frac{8}{3}]", bx("[0.6, 2.6667]"), False),
        ("(\\frac{3}{5}, \\frac{8}{3}]", bx("(0.5, 2.6667]"), False),
        ("(1, \\frac{9}{2})", bx("(1, 4.5)"), True),
        ("0.3333", bx("\\frac{1}{3}"), True),  # a gold given to 4 places, an exact answer that rounds to it
        ("0.333333", bx("0.3333"), False),  # an answer less precise than the gold
        (_F, bx("\\begin{pmatrix} 0.3333 \\\\ 0.2 \\end{pmatrix}"), True),
        (_F, bx("\\begin{pmatrix} 0.33 \\\\ 0.2 \\end{pmatrix}"), False),  # 0.33 != 1/3 here as alone
        ("\\pi", bx("3.1416"), False),  # not a fraction: 6 places, as pi != 3.14159
        ("\\sqrt{2}", bx("1.4142"), False),
    ],
    "equations against the same equation times -1": [
        ("x - y + 1 = 0", bx("-x + y - 1 = 0"), True),
        ("x - y + 1 = 0", "So the line is $-x + y - 1 = 0$.", True),
        ("x - y + 1 = 0", "Hence the equation of the line is $$y - x - 1 = 0.$$", True),
        ("x - y + 1 = 0", "Hence the equation of the line is $$y - x + 1 = 0.$$", False),
        ("x - y + 1 = 0", bx("-x + y + 1 = 0"), False),
        ("x - y + 1 = 0", bx("2x - 2y + 2 = 0"), True),
        ("x - y + 1 = 0", bx("2x - 2y + 1 = 0"), False),
        ("y = 2x + 3", bx("2x - y + 3 = 0"), True),
        ("y = 2x + 3", bx("-2x + y - 3 = 0"), True),
        ("y = 2x + 3", bx("2x - y - 3 = 0"), False),
        ("y = 2x + 3", bx("4x - 2y + 3 = 0"), False),
        ("2x - y + 3 = 0", "The line is $y = 2x + 3$.", True),
        ("2x - y + 3 = 0", "The line is $y = 3x + 2$.", False),
        ("34x+45y-20z+100=0", "$-34x-45y+20z-100=0$", True),
        ("34x+45y-20z+100=0", "$-34x-45y+20z+100=0$", False),
        ("x^2 + y^2 = 4", bx("-x^2 - y^2 = -4"), True),
        ("x^2 + y^2 = 4", bx("-x^2 - y^2 = 4"), False),
    ],
    "matrices in parentheses": [
        (_M, bx("\\left(" + _M + "\\right)"), True),
        (_M, bx("(" + _MB + ")"), True),
        ("\\left(" + _M + "\\right)", bx(_M), True),
        ("(" + _MB + ")", "So\n$$" + _M + "$$", True),
        (_M, "The matrix is \\[\\left(" + _M + "\\right).\\]", True),
        (_M, bx("\\bigl(" + _M + "\\bigr)"), True),
        (_M, bx("\\left(\\begin{smallmatrix} 1 & 2 \\\\ 3 & 4 \\end{smallmatrix}\\right)"), True),
        (_M, bx("\\left(" + _MT + "\\right)"), False),
        (_M, bx("(" + _MT.replace("pmatrix", "bmatrix") + ")"), False),
        (_M, "The matrix is \\[\\left(" + _MT + "\\right).\\]", False),
        (_M, bx("\\bigl(" + _MT + "\\bigr)"), False),
        (_V, bx("\\left(" + _V + "\\right)"), True),
        (_V, bx("\\left(\\begin{pmatrix} -1 \\\\ 3 \\end{pmatrix}\\right)"), False),
    ],
    "answers set out on the lines after \"answer\"": [
        ("9", "Answer $ \n 9 \n $", False),  # inline math across lines is not read (math-verify's tests)
        ("9", "Answer \\( \n 9 \n \\)", False),
        ("9", "Answer \\[ \n 9 \n \\]", True),  # display math may span lines
        ("9", "Answer $$ \n 9 \n $$", True),
        ("5", "The answer is\n\n3\n\nor maybe 5", False),
        ("3", "The answer is\n\n3\n\nor maybe 5", False),
        ("3", "Answer:\n x = 2\n y = 3", False),
        ("2", "Answer:\n x = 2\n y = 3", False),
        ("x = 2, y = 3", "Answer:\n x = 2\n y = 3", True),
        ("5", "The answer is:\n$3$\n\nor maybe $5$", False),
        ("12", "Final answer\n12\n13", False),
        ("16", "The answer is:\n\n16", True),
        ("18", "So the answer is\n\n18\n\nI hope this helps!", True),
        ("16", "**Final Answer**\n\n16\n\nJanet makes 16 dollars a day.", True),
        ("3", "Let me check my answer\n2 + 3 = 5\n5 - 2 = 3\nSo the total is 3", True),
        ("2", "Let me check my answer\n2 + 3 = 5\n5 - 2 = 3\nSo the total is 3", False),
        ("5", "The answer is $5$.\nI could check my answer\nby substituting x = 3 back.", True),
    ],
}


def _read(name: str) -> list[dict]:
    """Rows of a bundled benchmark file (data/benchmarks)."""
    path = Path(__file__).resolve().parent.parent / "data" / "benchmarks" / f"{name}_test.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _is_int(s: str) -> bool:
    return s.lstrip("-").isdigit()


def _benchmark_cases() -> list[tuple[str, str, bool, str]]:
    """Real golds against their own reference solutions (correct) and, for integer golds, against the solution
    of the next problem with a different integer gold (wrong)."""
    out = []
    for name, count in (("math500", 100), ("gsm8k", 50)):
        rows = [r for r in _read(name) if r.get("solution")][:count]
        ints = [r for r in rows if _is_int(str(r["answer"]).strip())]
        for r in rows:
            gold = str(r["answer"])
            out.append((gold, r["solution"], True, f"{name}:{r['id']} reference solution"))
        for a, b in zip(ints, ints[1:] + ints[:1]):
            if int(a["answer"]) != int(b["answer"]):
                out.append((str(a["answer"]), b["solution"], False, f"{name}:{a['id']} vs the solution of {b['id']}"))
    return out


CASES: list[tuple[str, str, bool, str]] = (
    [(g, c, e, "project table") for g, c, e in PROJECT_TABLE]
    + [(g, c, e, f"issue 12: {section}") for section, rows in ISSUE_12.items() for g, c, e in rows]
    + [(g, c, e, f"held-out misses: {section}") for section, rows in HELD_OUT_MISSES.items() for g, c, e in rows]
    + _benchmark_cases()
)
