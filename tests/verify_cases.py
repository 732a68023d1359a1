"""Labelled (gold, completion, expected_correct) cases for pipeline.verify, grouped by the form tested.

Decisions on ambiguous equivalences (what `verify_answer` does, and these cases pin down):
- percentages: a percentage equals its number and its value: 50% == 50 == 0.5 (math-verify's rule;
  a model that writes "50" for "what percent ..." is right). 50% != 5.
- decimals vs fractions: equal when they agree to 6 decimal places (math-verify's float_rounding=6):
  1/3 == 0.333333, but 1/3 != 0.33 and 1/3 != 0.333.
- pi is not 3.14 (nor 3.14159): a decimal approximation of an irrational number is not the answer.
- units, degrees, currency: dropped (5 cm == 5, 30^\\circ == 30, \\$18 == 18, "18 dollars" == 18).
- thousands separators: 1,000 == 1000 (also 10,\\!080 and 1{,}000), but "1,2" is the set {1, 2} and
  "(1, 2)" a pair/interval.
- sets ignore order ({1,2} == {2,1}, "3, 5, 7" == "7, 5, 3"); tuples and intervals do not
  ((1,2) != (2,1), [0,1) != (0,1]).
- a partial answer to a multi-part gold is wrong ("(1, 2)" vs "1"; "3, 5, 7" vs "3, 5").
- plain-text golds compare as normalised strings (case, spaces, outer punctuation ignored):
  "Monday" == "\\text{monday}", "yes" != "sey", "Evelyn" != "Eve".
- an answer given as an equation for a numeric gold counts: x = 3 == 3.
- fallbacks: with no box, "the answer is X" is used; then the last number in the text, but only
  when the gold is numeric. A box always wins over "the answer is".
"""

B = "\\boxed{{{}}}"


def bx(ans: str, pre: str = "Let me work it out step by step. ", post: str = "") -> str:
    return pre + "So the final answer is $\\boxed{" + ans + "}$." + post


CASES: list[tuple[str, str, bool]] = [
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
    ("5", "First I thought \\boxed{4}, but rechecking gives \\boxed{5}.", True),
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
    ("(1, 2)", "So the answer is (1, 2).\nDone.", True),
    ("(1, 2)", "So the answer is (2, 1).\nDone.", False),
    ("3.5", "The answer is 3.5 hours.", True),
    # ---- last-number fallback (numeric golds only)
    ("16", "She has 20 eggs and eats 4, leaving 16", True),
    ("16", "She has 20 eggs and eats 4, leaving 16 eggs.", True),
    ("16", "She has 20 eggs and eats 16, leaving 4 eggs.", False),
    ("1234", "Summing everything gives 1,234", True),
    ("12345", "Summing everything gives 1,2345", False),  # not a thousands group: the last number is 2345
    ("-3", "the temperature drops to -3", True),
    ("2", "between 3-2 days", True),
    ("\\text{Monday}", "It was Monday 3", False),  # no last-number fallback for a text gold
    ("(1, 2)", "the point is at 1 and 2", False),  # nor for a tuple
    # ---- no answer at all
    ("5", "I am not sure how to solve this.", False),
    ("5", "", False),
    ("\\frac{1}{2}", "Let us think about it", False),
]
