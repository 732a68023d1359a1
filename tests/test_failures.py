"""The failure breakdown of evaluate: each sample's class from its text, and the report's table of them."""

import pytest

from pipeline.evaluate import failures, report
from pipeline.evaluate.failures import classify, false_steps, is_loop, step_accuracy


def rec(completion, *, correct=False, predicted="1", finish="stop", error=None):
    return {"completion": completion, "correct": correct, "predicted": predicted, "finish_reason": finish,
            "error": error}


@pytest.mark.parametrize("text, wrong", [
    ("6 \\times 9 = 56", ["6 * 9 = 56"]),
    ("So \\( 45 - 29 = 14 \\) apples.", ["45 - 29 = 14"]),
    ("7 x 7 = 48", ["7 * 7 = 48"]),
    ("$56 \\div 8 = 6$", ["56 / 8 = 6"]),
    ("\\frac{56}{8} = 6", ["(56 / 8) = 6"]),
    ("1,200 + 300 = 1,600", ["1200 + 300 = 1600"]),
    ("28 + 26 = 54 - 19 = 36", ["54 - 19 = 36"]),  # the second step of a sloppy chain
    ("28 + 26 = 55 - 19 = 36", ["28 + 26 = 55 - 19"]),
    ("22 / 3 = 7.4", ["22 / 3 = 7.4"]),
])
def test_a_false_step_is_found(text, wrong):
    assert false_steps(text) == wrong


@pytest.mark.parametrize("text", [
    "6 \\times 9 = 54",
    "28 + 26 = 54 - 19 = 35",       # sloppy chaining: 28 + 26 = 54, then 54 - 19 = 35
    "22 / 3 = 7.33",                # rounded as its decimals show
    "(3 + 4) * 2 = 14 and 2 * 3 + 4 = 10",
    "1,200 + 300 = 1,500",
    "1. 28 + 26 = 54\n- 19 apples are left",  # a list item on the next line is not a subtraction
    "Maya has 3 = 3 apples, version 2.5 = 2.5",   # nothing computed
    "He is 12 years old and has 3 cats.",
    # from the demo teacher's correct traces
    "\\[ \\frac{25}{3} = 8.333333333333333 \\]",  # exact decimals, not floats
    "\\text{Books per Bucket} = \\frac{\\text{Remaining Books}}{4} = \\frac{32}{4} = 8",  # a fraction in words
])
def test_true_or_absent_steps_are_not_flagged(text):
    assert false_steps(text) == []


def test_model_text_is_never_evaluated():
    assert false_steps("__import__('os').system('true') = 0") == []
    assert failures._value("__import__('os')") is None and failures._value("2 ** 100") is None


def test_loop_needs_a_repeated_run_of_words():
    assert is_loop("so the answer is 12 and " * 4)
    assert not is_loop("so the answer is 12 and " * 3)
    assert not is_loop("Jonas had 28 muffins. He collected 26 more and then gave 19 to Aisha.")


def test_each_class_in_order():
    looping = "Add them: 28 + 26 = 54. " * 5
    assert classify(rec("\\boxed{35}", correct=True)) == "correct"
    assert classify(rec(None, error="timeout")) == "failed"
    assert classify(rec(looping, finish="length", predicted=None)) == "loop"
    assert classify(rec("28 + 26 = 54 and then", finish="length", predicted=None)) == "truncated"
    assert classify(rec("28 + 26 = 54, so 35 is left", predicted=None)) == "no answer"
    assert classify(rec("28 + 26 = 56, minus 19: \\boxed{37}", predicted="37")) == "arithmetic"
    assert classify(rec("28 - 26 = 2, then 2 + 19 = 21: \\boxed{21}", predicted="21")) == "method"
    # a correct answer wins over a false step elsewhere
    assert classify(rec("28 + 26 = 55 ... \\boxed{35}", correct=True)) == "correct"


def test_breakdown_counts_every_class():
    got = failures.breakdown([rec("x", correct=True), rec("28 + 26 = 56 \\boxed{37}"), rec("no", predicted=None)])
    assert got == {"correct": 1, "failed": 0, "loop": 0, "truncated": 0, "no answer": 1, "arithmetic": 1,
                   "method": 0}
    assert sum(got.values()) == 3


def test_report_shows_the_breakdown_per_model():
    cell = lambda f: {"pass@1": 0.5, "ci95_low": 0.1, "ci95_high": 0.9, "pass@k": {}, "maj@k": {},
                      "truncated_rate": 0, "no_answer_rate": 0, "mean_output_tokens": 10, "failed_requests": 0,
                      "failures": f}
    zero = dict.fromkeys(failures.CLASSES, 0)
    results = {"models": [{"name": "a", "model": "a", "backend": "vllm"}, {"name": "b", "model": "b", "backend": "vllm"}],
               "benchmarks": [{"name": "h", "n_problems": 4, "source": "h.jsonl", "split": None, "contamination": "-"}],
               "sampling": {"n": 1, "greedy": True, "max_tokens": 10},
               "results": {"a": {"h": cell({**zero, "correct": 3, "arithmetic": 1})},
                           "b": {"h": cell({**zero, "correct": 1, "loop": 3})}}}
    header, rows = report.failure_table(results)
    assert header == ["benchmark (problems)", "class", "a", "b"]
    assert rows == [["h (4)", "correct", "75.0 (3)", "25.0 (1)"],
                    ["", "loop", "0.0 (0)", "75.0 (3)"],
                    ["", "arithmetic", "25.0 (1)", "0.0 (0)"]]
    assert "## How the models fail" in report.markdown(results)


def test_step_accuracy_counts_the_steps_of_one_operation_by_operation():
    got = step_accuracy([
        rec("28 + 26 = 54 - 19 = 36"),                 # + holds (the chain's 54), then 54 - 19 = 36 is false
        rec("So \\( 6 \\times 9 = 56 \\) and \\frac{56}{8} = 7"),  # * false, / holds
        rec("3 + 4 * 2 = 11 and 45 - 29 = 16"),         # two operations: not counted; - holds
        rec(None, error="timeout"), rec("He has 3 cats = 3 pets."),
    ])
    assert got == {"+": [1, 1], "-": [1, 2], "*": [0, 1], "/": [1, 1]}
    assert step_accuracy([]) == dict.fromkeys(failures.OPERATIONS, [0, 0])


def test_report_shows_written_steps_per_operation_and_model():
    cell = lambda steps: {"pass@1": 0.5, "ci95_low": 0.1, "ci95_high": 0.9, "pass@k": {}, "maj@k": {},
                          "truncated_rate": 0, "no_answer_rate": 0, "mean_output_tokens": 10, "failed_requests": 0,
                          "failures": dict.fromkeys(failures.CLASSES, 0), "steps": steps}
    none = dict.fromkeys(failures.OPERATIONS, [0, 0])
    results = {"models": [{"name": "t", "model": "t", "backend": "vllm"}, {"name": "s", "model": "s", "backend": "vllm"}],
               "benchmarks": [{"name": "h", "n_problems": 4, "source": "h.jsonl", "split": None, "contamination": "-"}],
               "sampling": {"n": 1, "greedy": True, "max_tokens": 10},
               "results": {"t": {"h": cell({**none, "-": [9, 10]})}, "s": {"h": cell({**none, "-": [3, 8], "*": [1, 4]})}}}
    header, rows = report.step_table(results)
    assert header == ["benchmark (problems)", "written step", "t", "s"]
    assert rows == [["h (4)", "a - b = c", "90.0 (9/10)", "37.5 (3/8)"], ["", "a * b = c", "-", "25.0 (1/4)"]]
    assert "37.5 (3/8)" in report.markdown(results)
