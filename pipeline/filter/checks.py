"""Pure, per-trace quality checks used by the filter: format, repetition, duplicates, contamination.

All work on plain strings in linear time; nothing here runs model text.
"""

from __future__ import annotations

import re
from collections import defaultdict

_WORD = re.compile(r"[a-z0-9]+")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words: punctuation, case and spacing differences do not count."""
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    if n < 1:
        return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return list(zip(*(tokens[k:] for k in range(n))))  # the same tuples, built in C


def format_problem(completion: str, reasoning: str, final: str) -> str | None:
    """Why a trace is malformed, or None. Checks: think tags balanced and in order, no think tags left
    inside the reasoning or the final text, and at most one distinct boxed answer in the final text
    (a second, different answer means the teacher changed its mind after answering)."""
    opens, closes = completion.count("<think>"), completion.count("</think>")
    if opens > 1 or closes > 1 or (opens == 1 and closes == 0 and final):
        return "unbalanced think tags"
    if opens == 1 and closes == 1 and completion.index("<think>") > completion.index("</think>"):
        return "think tags out of order"
    if "<think>" in reasoning or "</think>" in reasoning or "<think>" in final or "</think>" in final:
        return "think tags inside the text"
    answers = {_boxed_content(final, m.end()) for m in _BOXED.finditer(final)}
    if len(answers) > 1:
        return "more than one final answer"
    return None


def has_boxed(final: str) -> bool:
    """The final text gives its answer in a \\boxed{} (or \\fbox{})."""
    return _BOXED.search(final) is not None


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{} (or \\fbox{}) of a text, braces matched, as written; None: no box."""
    starts = [m.end() for m in _BOXED.finditer(text or "")]
    return _braced(text, starts[-1]).strip() if starts else None


def _boxed_content(text: str, start: int) -> str:
    return re.sub(r"\s+", "", _braced(text, start))


def _braced(text: str, start: int) -> str:
    depth, i = 1, start
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start:i - 1]


def repeat_ratio(text: str, n: int) -> float:
    """Share of word n-grams that repeat an earlier one: near 0 for normal reasoning, near 1 for loops."""
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    return set(ngrams(words(text), n)) or {tuple(words(text))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class ContaminationIndex:
    """Word n-grams of benchmark problems, to find training problems that share one with them."""

    def __init__(self, n: int):
        self.n = n
        self.where: dict[tuple[str, ...], tuple[str, str]] = {}  # n-gram -> (benchmark, problem id)

    def add(self, benchmark: str, ids: list[str], problems: list[str]) -> None:
        for id_, problem in zip(ids, problems):
            for gram in ngrams(words(problem), self.n):
                self.where.setdefault(gram, (benchmark, id_))

    def hits(self, problem: str) -> list[dict]:
        """One entry per benchmark problem this problem overlaps, with the first shared n-gram."""
        found: dict[tuple[str, str], str] = {}
        for gram in ngrams(words(problem), self.n):
            hit = self.where.get(gram)
            if hit and hit not in found:
                found[hit] = " ".join(gram)
        return [{"benchmark": b, "benchmark_id": i, "ngram": g} for (b, i), g in found.items()]


def duplicate_groups(texts: list[str], threshold: float | None) -> list[int | None]:
    """For each text, the index of an earlier text it duplicates (exact, or near with Jaccard >= threshold),
    else None. Quadratic: meant for the few samples of one problem."""
    out: list[int | None] = []
    exact: dict[str, int] = {}
    kept: list[int] = []  # the texts later ones are compared with (not duplicates themselves)
    sets: dict[int, set] = {}  # shingles, made when a text is first compared (a lone text needs none)

    def shingled(j: int) -> set:
        s = sets.get(j)
        if s is None:
            s = sets[j] = shingles(texts[j])
        return s

    for i, text in enumerate(texts):
        key = " ".join(text.split())
        dup = exact.get(key)
        if dup is None and threshold is not None and kept:
            s = shingled(i)
            dup = next((j for j in kept if jaccard(s, shingled(j)) >= threshold), None)
        if dup is None:  # later texts are compared with kept ones only
            exact[key] = i
            kept.append(i)
        out.append(dup)
    return out


def group_by(keys: list) -> dict:
    groups = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    return groups
