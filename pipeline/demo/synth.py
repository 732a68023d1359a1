"""Seeded synthetic grade-school word problems (one or two arithmetic steps), MUNGE-style.

Caruana's MUNGE idea: make more samples from the same distribution by perturbing existing ones. Here the
"samples" are hand-written templates; a seeded generator varies the numbers, names, objects, verbs and
the wording of each. Every problem is a dict with

    id, problem, answer (a positive integer as a string), source ("synth"), template, variant, steps,
    expression (the arithmetic over the numbers shown in the text, e.g. "35 - 4 * 7")

so tests (and readers) can recompute the answer from ``expression`` independently of the template code.

``make_split(n_train, n_heldout, seed)`` returns a training pool and a held-out set:
  - both use every template (the held-out set measures learning of the same distribution);
  - a (template, numbers) combination belongs to exactly one side, chosen by a stable hash (about one in
    five combinations is held out), so a held-out problem never reuses the numbers of a training problem
    of its template, and no problem text is shared;
  - each side has its own random stream, so the held-out set does not change when ``n_train`` does, and a
    larger ``n_train`` extends the smaller one (same prefix).

Files: ``write_split(out_dir, n_train, n_heldout, seed)`` writes ``train.jsonl`` and ``heldout.jsonl``
(loadable by ``pipeline.core.data.load_problems``); the command is ``distill synth --out DIR --train N
--heldout M --seed S``.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HELDOUT_BUCKETS = 5  # one combination in this many is held out

# --- vocabulary ------------------------------------------------------------------------------------------

NAMES: tuple[tuple[str, str], ...] = (
    ("Maya", "she"), ("Liam", "he"), ("Aisha", "she"), ("Noah", "he"), ("Sofia", "she"), ("Kenji", "he"),
    ("Priya", "she"), ("Mateo", "he"), ("Chloe", "she"), ("Omar", "he"), ("Elena", "she"), ("Tariq", "he"),
    ("Grace", "she"), ("Diego", "he"), ("Hana", "she"), ("Lucas", "he"), ("Zara", "she"), ("Ethan", "he"),
    ("Amara", "she"), ("Felix", "he"), ("Ines", "she"), ("Jonas", "he"), ("Leila", "she"), ("Ravi", "he"),
    ("Nora", "she"), ("Samuel", "he"), ("Yuki", "she"), ("Hugo", "he"), ("Fatima", "she"), ("Oscar", "he"),
    ("Lena", "she"), ("Kwame", "he"), ("Rosa", "she"), ("Arjun", "he"), ("Clara", "she"), ("Malik", "he"),
)
# countable things to collect, keep or share (plural forms)
THINGS = ("stickers", "marbles", "shells", "stamps", "trading cards", "beads", "buttons", "pencils", "crayons",
          "blocks", "apples", "oranges", "cookies", "eggs", "balloons", "books", "toy cars", "ribbons",
          "acorns", "pebbles", "postcards", "muffins", "plums", "paper cranes")
CONTAINERS = (("box", "boxes"), ("bag", "bags"), ("jar", "jars"), ("basket", "baskets"), ("crate", "crates"),
              ("tin", "tins"), ("bucket", "buckets"))
ITEMS = (("notebook", "notebooks"), ("pen", "pens"), ("ticket", "tickets"), ("sandwich", "sandwiches"),
         ("kite", "kites"), ("ball", "balls"), ("puzzle", "puzzles"), ("cap", "caps"), ("toy robot", "toy robots"),
         ("lunch box", "lunch boxes"), ("plant pot", "plant pots"), ("comic book", "comic books"))
GETS = ("finds", "buys", "is given", "receives", "collects", "wins")
GOT = ("found", "bought", "was given", "received", "collected", "won")
COLOURS = (("red", "blue"), ("green", "yellow"), ("small", "large"), ("white", "brown"))
PLACES = ("friends", "classmates", "cousins", "neighbours", "teammates")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
UNITS = (("reads", "pages", "read"), ("walks", "kilometers", "walk"), ("swims", "laps", "swim"),
         ("practises piano for", "minutes", "practise"), ("solves", "puzzles", "solve"))


@dataclass(frozen=True)
class Template:
    id: str
    steps: int
    sample: Callable[[random.Random], dict]  # the numbers
    answer: Callable[[dict], int]            # computed from the numbers (the generator's answer)
    expression: str                          # the same arithmetic, written over the shown numbers
    texts: tuple[str, ...]                   # wording variants (str.format over numbers + words)


def _r(rng: random.Random, lo: int, hi: int) -> int:
    return rng.randint(lo, hi)


def _two_distinct(rng: random.Random, lo: int, hi: int) -> tuple[int, int]:
    """(big, small) with big > small."""
    a, b = rng.sample(range(lo, hi + 1), 2)
    return max(a, b), min(a, b)


def _sub(rng):
    a, b = _two_distinct(rng, 3, 60)
    return {"a": a, "b": b}


def _part_whole(rng):
    c, a = _two_distinct(rng, 4, 60)
    return {"c": c, "a": a}


def _div(rng):
    q, b = _r(rng, 2, 15), _r(rng, 2, 12)
    return {"t": q * b, "b": b}


def _sum_share(rng):
    k, q = _r(rng, 2, 6), _r(rng, 3, 12)
    total = k * q
    a = _r(rng, 2, total - 2)
    return {"a": a, "b": total - a, "k": k}


def _lose_share(rng):
    k, q, c = _r(rng, 2, 8), _r(rng, 2, 9), _r(rng, 2, 20)
    return {"t": k * q + c, "c": c, "k": k}


def _mul_sub(rng):
    a, b = _r(rng, 2, 9), _r(rng, 3, 12)
    return {"a": a, "b": b, "c": _r(rng, 2, a * b - 1)}


def _change(rng):
    a, b = _r(rng, 2, 12), _r(rng, 2, 6)
    return {"a": a, "b": b, "c": a * b + _r(rng, 1, 30)}


def _earn_spend(rng):
    a, b = _r(rng, 5, 60), _r(rng, 5, 40)
    return {"a": a, "b": b, "c": _r(rng, 2, a + b - 1)}


def _sale(rng):
    a = _r(rng, 6, 30)
    return {"a": a, "b": _r(rng, 1, a - 2), "c": _r(rng, 2, 9)}


TEMPLATES: tuple[Template, ...] = (
    # ---- one step ----
    Template("add_more", 1, lambda r: {"a": _r(r, 2, 60), "b": _r(r, 2, 60)}, lambda n: n["a"] + n["b"],
             "{a} + {b}", (
                 "{Name} has {a} {things}. {Pron} {gets} {b} more {things}. How many {things} does {Name} have now?",
                 "There are {a} {things} in a {box}. {Name} puts {b} more {things} into it. How many {things} are in the {box} now?",
                 "{Name} had {a} {things}. Later {pron} {got} another {b}. What is the number of {things} {Name} has now?",
             )),
    Template("add_two", 1, lambda r: {"a": _r(r, 2, 60), "b": _r(r, 2, 60)}, lambda n: n["a"] + n["b"],
             "{a} + {b}", (
                 "{Name} owns {a} {things} and {Name2} owns {b}. Together, how many {things} do the two of them own?",
                 "{Name} collected {a} {things}. {Name2} collected {b} {things}. How many {things} did the two of them collect?",
                 "In a {box} there are {a} {colour1} {things} and {b} {colour2} ones. What is the total count of {things} in the {box}?",
             )),
    Template("take_away", 1, _sub, lambda n: n["a"] - n["b"], "{a} - {b}", (
        "{Name} had {a} {things}. {Pron} gave {b} of them to {Name2}. How many {things} does {Name} have left?",
        "There were {a} {things} in a {box}. {Name} took {b} out. How many {things} are still in the {box}?",
        "{Name} had {a} {things} and lost {b} of them on the way home. How many {things} does {pron} have now?",
    )),
    Template("compare", 1, _sub, lambda n: n["a"] - n["b"], "{a} - {b}", (
        "{Name} has {a} {things} while {Name2} has only {b}. By how many {things} does {Name} have the bigger pile?",
        "{Name} scored {a} points in a game and {Name2} scored {b} points. How many more points did {Name} score?",
        "{Name}'s age is {a} years and {Name2}'s age is {b} years. What is the difference between their ages in years?",
    )),
    Template("missing_part", 1, _part_whole, lambda n: n["c"] - n["a"], "{c} - {a}", (
        "{Name} and {Name2} have {c} {things} together. {Name} has {a} of them. How many {things} does {Name2} have?",
        "A {box} holds {c} {things}, some {colour1} and the rest {colour2}. {a} of them are {colour1}. How many are {colour2}?",
    )),
    Template("groups", 1, lambda r: {"a": _r(r, 2, 12), "b": _r(r, 2, 20)}, lambda n: n["a"] * n["b"],
             "{a} * {b}", (
                 "{Name} has {a} {boxes}. Each {box} holds {b} {things}. How many {things} does {Name} have in all?",
                 "{Name} buys {a} packs of {things}. There are {b} {things} in each pack. How many {things} did {Name} buy?",
                 "{Name} lines up {things} in {a} rows, putting {b} in every row. How many {things} did {pron} line up?",
             )),
    Template("price", 1, lambda r: {"a": _r(r, 2, 20), "b": _r(r, 2, 12)}, lambda n: n["a"] * n["b"],
             "{a} * {b}", (
                 "One {item} costs {a} dollars. How many dollars do {b} {items} cost?",
                 "{Name} buys {b} {items} for {a} dollars each. How much money does {Name} spend?",
             )),
    Template("rate", 1, lambda r: {"a": _r(r, 2, 30), "b": _r(r, 2, 12)}, lambda n: n["a"] * n["b"],
             "{a} * {b}", (
                 "{Name} {does} {a} {units} each day. How many {units} is that in {b} days?",
                 "{Name} saves {a} dollars every week. How many dollars has {pron} saved after {b} weeks?",
             )),
    Template("share", 1, _div, lambda n: n["t"] // n["b"], "{t} / {b}", (
        "{Name} shares {t} {things} equally among {b} {friends}. How many {things} does each of them get?",
        "{t} {things} are packed into {b} {boxes}, the same number going into every {box}. What number of {things} goes into one {box}?",
        "{Name} puts {t} {things} into bags of {b}. How many bags does {Name} fill?",
    )),
    Template("unit_price", 1, _div, lambda n: n["t"] // n["b"], "{t} / {b}", (
        "{Name} paid {t} dollars for {b} {items}, and all of them had the same price. What was the price of one {item} in dollars?",
        "{b} {items} cost {t} dollars altogether. How many dollars does one {item} cost?",
    )),
    # ---- two steps ----
    Template("add_three", 2, lambda r: {"a": _r(r, 2, 60), "b": _r(r, 2, 60), "c": _r(r, 2, 60)},
             lambda n: n["a"] + n["b"] + n["c"], "{a} + {b} + {c}", (
                 "On {day1} {Name} {does} {a} {units}; on {day2}, {b}; and on {day3}, {c}. How many {units} is that over the three days?",
                 "{Name} collected {a} {things}, {Name2} collected {b} and {Name3} collected {c}. How many {things} did they collect altogether?",
             )),
    Template("more_than_total", 2, lambda r: {"a": _r(r, 2, 60), "b": _r(r, 2, 30)},
             lambda n: n["a"] + (n["a"] + n["b"]), "{a} + ({a} + {b})", (
                 "{Name} has {a} {things}. {Name2} has {b} more {things} than {Name}. How many {things} do they have together?",
                 "On {day1} {Name} {does} {a} {units}. On {day2} {pron} {does} {b} more {units} than on {day1}. How many {units} is that over both days?",
             )),
    Template("fewer_than_total", 2, _sub, lambda n: n["a"] + (n["a"] - n["b"]), "{a} + ({a} - {b})", (
        "{Name} has {a} {things}. {Name2} has {b} fewer {things} than {Name}. How many {things} do the two have in total?",
        "A shop sold {a} {items} on {day1} and {b} fewer on {day2}. How many {items} did it sell on the two days?",
    )),
    Template("times_total", 2, lambda r: {"a": _r(r, 2, 15), "m": _r(r, 2, 5)}, lambda n: n["a"] + n["m"] * n["a"],
             "{a} + {m} * {a}", (
                 "{Name} has {a} {things}. {Name2} has {m} times as many {things} as {Name}. How many {things} do they have altogether?",
                 "A small {box} holds {a} {things} and a big {box} holds {m} times as many. How many {things} do the two {boxes} hold together?",
             )),
    Template("start_plus_packs", 2, lambda r: {"a": _r(r, 2, 9), "b": _r(r, 2, 12), "c": _r(r, 2, 40)},
             lambda n: n["c"] + n["a"] * n["b"], "{c} + {a} * {b}", (
                 "{Name} had {c} {things}. {Pron} bought {a} packs with {b} {things} in each pack. How many {things} does {Name} have now?",
                 "There are {c} {things} on a shelf. {Name} adds {a} {boxes} holding {b} {things} each. How many {things} are there now?",
             )),
    Template("make_give", 2, _mul_sub, lambda n: n["a"] * n["b"] - n["c"], "{a} * {b} - {c}", (
        "{Name} baked {a} trays of muffins with {b} muffins on each tray. {Pron} gave away {c} muffins. How many muffins are left?",
        "{Name} filled {a} {boxes} with {b} {things} each, then gave {c} {things} to {Name2}. How many {things} does {Name} still have?",
    )),
    Template("change", 2, _change, lambda n: n["c"] - n["a"] * n["b"], "{c} - {a} * {b}", (
        "{Name} has {c} dollars. {Pron} buys {b} {items} that cost {a} dollars each. How many dollars does {Name} have left?",
        "{Name} went to the shop with {c} dollars and bought {b} {items} at {a} dollars apiece. How much money was left?",
    )),
    Template("sum_share", 2, _sum_share, lambda n: (n["a"] + n["b"]) // n["k"], "({a} + {b}) / {k}", (
        "{Name} has {a} {things} and {Name2} has {b} {things}. They put them together and share them equally among {k} {friends}. How many {things} does each get?",
        "A {box} has {a} {colour1} {things} and {b} {colour2} {things}. They are split evenly into {k} groups. How many {things} are in each group?",
    )),
    Template("lose_share", 2, _lose_share, lambda n: (n["t"] - n["c"]) // n["k"], "({t} - {c}) / {k}", (
        "{Name} had {t} {things}. {Pron} lost {c} of them and shared the rest equally among {k} {friends}. How many {things} did each get?",
        "There were {t} {things}. After {c} were used, the rest were put into {k} {boxes}, the same number in each. How many {things} went into each {box}?",
    )),
    Template("colours_times", 2, lambda r: {"a": _r(r, 2, 8), "b": _r(r, 2, 8), "c": _r(r, 2, 12)},
             lambda n: (n["a"] + n["b"]) * n["c"], "({a} + {b}) * {c}", (
                 "{Name} buys {a} {colour1} {boxes} and {b} {colour2} {boxes}. Each {box} holds {c} {things}. How many {things} does {Name} buy?",
                 "A class has {a} tables by the window and {b} tables by the door. Each table has {c} {things} on it. How many {things} are on the tables?",
             )),
    Template("earn_spend", 2, _earn_spend, lambda n: n["a"] + n["b"] - n["c"], "{a} + {b} - {c}", (
        "{Name} had {a} dollars. {Pron} earned {b} dollars washing cars and then spent {c} dollars on a {item}. How many dollars does {Name} have now?",
        "{Name} had {a} {things}. {Pron} {got} {b} more and then gave {c} to {Name2}. How many {things} does {Name} have now?",
    )),
    Template("bags_plus", 2, lambda r: {**_div(r), "c": _r(r, 2, 20)}, lambda n: n["t"] // n["b"] + n["c"],
             "{t} / {b} + {c}", (
                 "{Name} puts {t} {things} into bags of {b}. {Pron} already had {c} full bags. How many full bags does {Name} have now?",
                 "A farm packs {t} eggs into cartons of {b}. There were {c} cartons packed earlier. How many cartons are packed in all?",
             )),
    Template("sale", 2, _sale, lambda n: (n["a"] - n["b"]) * n["c"], "({a} - {b}) * {c}", (
        "A {item} usually costs {a} dollars. During a sale each one is {b} dollars cheaper. How many dollars do {c} {items} cost in the sale?",
        "{Name} sees {items} priced at {a} dollars. With a coupon each costs {b} dollars less. How much does {Name} pay for {c} of them?",
    )),
)
TEMPLATE_IDS = tuple(t.id for t in TEMPLATES)
assert len(set(TEMPLATE_IDS)) == len(TEMPLATE_IDS)


# --- generation ------------------------------------------------------------------------------------------


def _words(rng: random.Random) -> dict:
    (n1, p1), (n2, _), (n3, _) = rng.sample(NAMES, 3)
    box, boxes = rng.choice(CONTAINERS)
    item, items = rng.choice(ITEMS)
    c1, c2 = rng.choice(COLOURS)
    d1, d2, d3 = sorted(rng.sample(range(len(DAYS)), 3))
    does, units, do = rng.choice(UNITS)
    return {"Name": n1, "Name2": n2, "Name3": n3, "pron": p1, "Pron": p1.capitalize(),
            "things": rng.choice(THINGS), "box": box, "boxes": boxes, "item": item, "items": items,
            "gets": rng.choice(GETS), "got": rng.choice(GOT), "colour1": c1, "colour2": c2, "friends": rng.choice(PLACES),
            "day1": DAYS[d1], "day2": DAYS[d2], "day3": DAYS[d3], "does": does, "units": units, "do": do}


def render(template: Template, numbers: dict, rng: random.Random) -> tuple[str, int]:
    """(problem text, wording variant index) for these numbers, with names/objects/wording from ``rng``."""
    k = rng.randrange(len(template.texts))
    text = template.texts[k].format(**_words(rng), **numbers)
    return text[0].upper() + text[1:], k


def is_heldout_combo(template_id: str, numbers: dict) -> bool:
    """Stable (seed-independent) assignment of a (template, numbers) combination to the held-out side."""
    key = template_id + ":" + ",".join(f"{k}={numbers[k]}" for k in sorted(numbers))
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % HELDOUT_BUCKETS == 0


def generate(n: int, seed: int = 0, *, split: str = "train", templates: tuple[Template, ...] = TEMPLATES,
             max_tries: int = 10_000) -> list[dict]:
    """``n`` problems of one side (``"train"`` or ``"heldout"``) of the split, deterministic for ``seed``."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"distill-synth:{seed}:{split}")
    order = list(templates)
    rng.shuffle(order)
    want_heldout = split == "heldout"
    seen: set[str] = set()
    out = []
    for i in range(n):
        template = order[i % len(order)]  # round robin: every template is used evenly
        for _ in range(max_tries):
            numbers = template.sample(rng)
            if is_heldout_combo(template.id, numbers) != want_heldout:
                continue
            text, k = render(template, numbers, rng)
            if text in seen:
                continue
            break
        else:
            raise ValueError(f"synth: could not make {n} distinct {split} problems from template {template.id!r}")
        answer = template.answer(numbers)
        assert answer > 0, (template.id, numbers)
        seen.add(text)
        out.append({
            "id": f"synth-s{seed}-{split}-{i:05d}", "problem": text, "answer": str(answer), "source": "synth",
            "template": template.id, "variant": f"{template.id}/{k}", "steps": template.steps,
            "expression": template.expression.format(**numbers),
        })
    return out


def make_split(n_train: int, n_heldout: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(training pool, held-out set): same templates, disjoint (template, numbers) combinations and texts."""
    train = generate(n_train, seed, split="train")
    heldout = generate(n_heldout, seed, split="heldout")
    shared = {p["problem"] for p in train} & {p["problem"] for p in heldout}
    assert not shared, f"synth: problem text in both sides: {sorted(shared)[:1]}"
    return train, heldout


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def write_split(out_dir: str | Path, n_train: int, n_heldout: int, seed: int = 0) -> dict[str, Path]:
    """Write ``OUT/train.jsonl`` and ``OUT/heldout.jsonl``; return {"train": path, "heldout": path}."""
    train, heldout = make_split(n_train, n_heldout, seed)
    out = Path(out_dir)
    return {"train": write_jsonl(train, out / "train.jsonl"), "heldout": write_jsonl(heldout, out / "heldout.jsonl")}


def main(argv: list[str] | None = None) -> int:
    """``distill synth --out DIR [--train N] [--heldout M] [--seed S]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="distill synth",
        description="Write seeded synthetic one/two-step word problems: DIR/train.jsonl (training pool) and "
                    "DIR/heldout.jsonl (no shared text or (template, numbers) combination), for problems.source.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--train", type=int, default=400, help="training problems [400]")
    parser.add_argument("--heldout", type=int, default=100, help="held-out problems [100]")
    parser.add_argument("--seed", type=int, default=0, help="seed [0]")
    args = parser.parse_args(argv)
    try:
        paths = write_split(args.out, args.train, args.heldout, args.seed)
    except ValueError as e:
        print(f"distill synth: error: {e}", file=sys.stderr)
        return 2
    print(f"distill synth: {args.train} training problems -> {paths['train']}")
    print(f"distill synth: {args.heldout} held-out problems -> {paths['heldout']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
