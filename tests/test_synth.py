"""Synthetic word problems: determinism, disjoint split, correct answers, variety, loadable files."""

from __future__ import annotations

import ast
import json
import operator
import re
from collections import Counter

import pytest

from pipeline.demo import synth

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def evaluate(expression: str) -> int:
    """Integer arithmetic over + - * / (exact division only), independent of the templates' answer code."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            a, b = ev(node.left), ev(node.right)
            assert a % b == 0, f"inexact division in {expression!r}"
            return a // b
        raise AssertionError(f"unexpected {ast.dump(node)} in {expression!r}")
    return ev(ast.parse(expression, mode="eval"))


@pytest.fixture(scope="module")
def split():
    return synth.make_split(600, 150, seed=0)


def test_deterministic_for_a_seed(split):
    assert synth.make_split(600, 150, seed=0) == split
    other = synth.make_split(600, 150, seed=1)
    assert [p["problem"] for p in other[0]] != [p["problem"] for p in split[0]]


def test_sides_are_independent_of_each_others_size(split):
    train, heldout = split
    small_train, same_heldout = synth.make_split(100, 150, seed=0)
    assert same_heldout == heldout  # the held-out set does not move when the training pool grows
    assert small_train == train[:100]  # and a bigger pool extends a smaller one


def test_no_shared_text_or_number_combination(split):
    train, heldout = split
    assert not {p["problem"] for p in train} & {p["problem"] for p in heldout}
    assert len({p["problem"] for p in train}) == len(train)
    assert len({p["problem"] for p in heldout}) == len(heldout)
    combos = lambda rows: {(p["template"], p["expression"]) for p in rows}  # noqa: E731
    assert not combos(train) & combos(heldout)
    ids = [p["id"] for p in train + heldout]
    assert len(set(ids)) == len(ids)


def test_answers_are_correct_positive_integers(split):
    for p in split[0] + split[1]:
        assert re.fullmatch(r"[1-9]\d*", p["answer"]), p
        assert evaluate(p["expression"]) == int(p["answer"]), p
        # every number the arithmetic uses is stated in the problem
        shown = set(re.findall(r"\d+", p["problem"]))
        assert set(re.findall(r"\d+", p["expression"])) <= shown, p
        assert p["source"] == "synth" and p["template"] in synth.TEMPLATE_IDS
        assert p["steps"] == (1 if len(re.findall(r"[-+*/]", p["expression"])) == 1 else 2), p


def test_every_template_and_wording_is_answered_correctly_over_many_draws():
    for seed in range(3):
        for p in synth.generate(2000, seed):
            assert evaluate(p["expression"]) == int(p["answer"]) > 0, p


def test_variety(split):
    train, heldout = split
    n_templates = len(synth.TEMPLATES)
    assert 15 <= n_templates <= 25
    assert set(Counter(p["template"] for p in train)) == set(synth.TEMPLATE_IDS)
    assert set(Counter(p["template"] for p in heldout)) == set(synth.TEMPLATE_IDS)
    counts = Counter(p["template"] for p in train)
    assert max(counts.values()) - min(counts.values()) <= 1  # round robin over templates
    all_variants = {f"{t.id}/{k}" for t in synth.TEMPLATES for k in range(len(t.texts))}
    assert {p["variant"] for p in train} == all_variants
    assert sum(t.steps == 2 for t in synth.TEMPLATES) >= 8 and sum(t.steps == 1 for t in synth.TEMPLATES) >= 8
    numbers = Counter(int(n) for p in train for n in re.findall(r"\d+", p["expression"]))
    assert len(numbers) >= 50
    names = {w for p in train for w in re.findall(r"\b[A-Z][a-z]+\b", p["problem"])}
    assert len(names & {n for n, _ in synth.NAMES}) >= 30


def test_boxed_answers_verify(split):
    from pipeline.verify import verify_many

    rows = split[1][:60]
    results = verify_many([p["answer"] for p in rows],
                          [f"Step by step ... so the answer is \\boxed{{{p['answer']}}}." for p in rows])
    assert all(r.correct for r in results), [r for r in results if not r.correct][:3]
    wrong = verify_many([rows[0]["answer"]], [f"\\boxed{{{int(rows[0]['answer']) + 1}}}"])
    assert not wrong[0].correct


def test_no_eight_gram_shared_with_bundled_benchmarks(split):
    """The filter's decontamination (word 8-grams) must not flag synthetic problems against the benchmarks."""
    from pipeline.core.data import load_problems
    from pipeline.filter.checks import ContaminationIndex

    index = ContaminationIndex(8)
    for name in ("svamp", "gsm8k", "gsm8k_train", "math500"):
        ds = load_problems(name)
        index.add(name, ds["id"], ds["problem"])
    problems = [p["problem"] for p in split[0] + split[1]]
    problems += [p["problem"] for p in synth.generate(2000, seed=7)]
    hits = [(p, h) for p in problems for h in index.hits(p)]
    assert not hits, hits[:3]


def test_files_load_with_load_problems(tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.core.data import load_problems

    assert main(["synth", "--out", str(tmp_path / "s"), "--train", "40", "--heldout", "10", "--seed", "3"]) == 0
    assert "40 training problems" in capsys.readouterr().out
    train = load_problems(str(tmp_path / "s" / "train.jsonl"))
    heldout = load_problems(str(tmp_path / "s" / "heldout.jsonl"))
    assert (len(train), len(heldout)) == (40, 10)
    assert train.column_names[:4] == ["id", "problem", "answer", "source"] and "template" in train.column_names
    assert train.to_list()[0]["id"] == "synth-s3-train-00000" and set(train["source"]) == {"synth"}
    first = json.loads((tmp_path / "s" / "train.jsonl").read_text().splitlines()[0])
    assert first == synth.make_split(40, 10, 3)[0][0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be"):
        synth.generate(3, split="test")
    with pytest.raises(ValueError, match="n must be"):
        synth.generate(-1)


def test_shipped_demo_files_match_the_generator():
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "data" / "demo" / "synth"
    train, heldout = synth.make_split(400, 100, seed=0)
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", heldout)):
        lines = (folder / name).read_text(encoding="utf-8").splitlines()
        assert [json.loads(x) for x in lines] == rows, f"regenerate {name}: see data/demo/README.md"
