"""Programmatic generators: verified samples with no teacher at all.

They keep the CPU default useful with a weak teacher: every sample's answer is computed, then
checked independently (by substitution for math, by running the reference solution against its
tests in the sandbox for code, through the dataset type's `verify` step).
"""

from __future__ import annotations

import random
from decimal import Decimal
from fractions import Fraction
from typing import Callable, Iterator

from phiforge.data import synthetic_math


def _math(families: tuple) -> Callable[[int, int], Iterator[dict]]:
    def generate(n: int, seed: int) -> Iterator[dict]:
        # Training split only: the held-out split by key hash stays reserved for evaluation.
        for p in synthetic_math.generate(n, seed, heldout=False, families=families):
            yield {"id": p.key, "question": p.question, "steps": p.steps, "answer": p.answer, "family": p.family}

    return generate


# (unit, base unit, factor to the base unit)
UNITS = {
    "length": [("km", 1000), ("m", 1), ("cm", Fraction(1, 100)), ("mm", Fraction(1, 1000))],
    "mass": [("kg", 1000), ("g", 1), ("mg", Fraction(1, 1000))],
    "time": [("hours", 3600), ("minutes", 60), ("seconds", 1)],
    "volume": [("L", 1000), ("mL", 1)],
}


def _number(x: Fraction) -> str:
    # Every factor is a power of ten or a whole number, so the decimal is exact.
    return str(x.numerator) if x.denominator == 1 else str(Decimal(x.numerator) / Decimal(x.denominator))


def unit_conversion(n: int, seed: int) -> Iterator[dict]:
    rng, seen = random.Random(seed), set()
    for _ in range(n * 20):
        if len(seen) == n:
            return
        quantity = rng.choice(sorted(UNITS))
        units = UNITS[quantity]
        i = rng.randrange(len(units) - 1)
        (src, f_src), (dst, f_dst) = rng.sample(units[i : i + 2], 2)  # neighbouring units: readable numbers
        value = Fraction(rng.randint(1, 90), rng.choice([1, 1, 2, 4, 10]))
        key = f"unit:{value}:{src}:{dst}"
        if key in seen:
            continue
        seen.add(key)
        ratio = Fraction(f_src) / Fraction(f_dst)
        answer = value * ratio
        op = f"multiply by {_number(ratio)}" if ratio >= 1 else f"divide by {_number(1 / ratio)}"
        yield {
            "id": key,
            "question": f"Convert {_number(value)} {src} to {dst}.",
            "steps": f"1 {src} = {_number(ratio)} {dst}, so {op}: {_number(value)} {src} = {_number(answer)} {dst}.",
            "answer": _number(answer),
            "family": f"unit_{quantity}",
        }


# (entry point, instruction template, reference solution, input maker); tests come from the reference.
_CODE_TASKS: list[tuple[str, str, str, Callable[[random.Random, int], tuple]]] = [
    (
        "sum_above",
        "Write a Python function `sum_above(xs, k)` that returns the sum of the numbers in the list xs that are greater than k.",
        "def sum_above(xs, k):\n    return sum(x for x in xs if x > k)\n",
        lambda r, _: ([r.randint(-20, 20) for _ in range(r.randint(0, 8))], r.randint(-5, 5)),
    ),
    (
        "count_vowels",
        "Write a Python function `count_vowels(s)` that returns how many characters of the string s are vowels (a, e, i, o, u, either case).",
        "def count_vowels(s):\n    return sum(1 for c in s.lower() if c in 'aeiou')\n",
        lambda r, _: ("".join(r.choice("abcdeiouxyzAEIOU ") for _ in range(r.randint(0, 12))),),
    ),
    (
        "reverse_words",
        "Write a Python function `reverse_words(s)` that returns the words of s (split on whitespace) in reverse order, joined by single spaces.",
        "def reverse_words(s):\n    return ' '.join(reversed(s.split()))\n",
        lambda r, _: (" ".join(r.choice(["red", "fox", "sky", "tea", "map"]) for _ in range(r.randint(0, 5))),),
    ),
    (
        "running_max",
        "Write a Python function `running_max(xs)` that returns a list whose i-th element is the largest of xs[0..i].",
        "def running_max(xs):\n    out = []\n    for x in xs:\n        out.append(x if not out else max(out[-1], x))\n    return out\n",
        lambda r, _: ([r.randint(-9, 9) for _ in range(r.randint(0, 7))],),
    ),
    (
        "digit_sum",
        "Write a Python function `digit_sum(n)` that returns the sum of the decimal digits of the non-negative integer n.",
        "def digit_sum(n):\n    return sum(int(d) for d in str(n))\n",
        lambda r, _: (r.randint(0, 10**6),),
    ),
    (
        "clamp_all",
        "Write a Python function `clamp_all(xs, lo, hi)` that returns xs with every number below lo replaced by lo and above hi by hi.",
        "def clamp_all(xs, lo, hi):\n    return [min(max(x, lo), hi) for x in xs]\n",
        lambda r, _: ([r.randint(-30, 30) for _ in range(r.randint(0, 6))], -r.randint(0, 10), r.randint(0, 10)),
    ),
]


def code_exercise(n: int, seed: int) -> Iterator[dict]:
    """Function-writing exercises; each variant has its own asserts computed by the reference solution."""
    rng = random.Random(seed)
    for i in range(n):
        entry, instruction, solution, make_input = _CODE_TASKS[i % len(_CODE_TASKS)]
        namespace: dict = {}
        exec(solution, namespace)  # our own reference solution, not generated code
        cases = [make_input(rng, j) for j in range(4)]
        asserts = "\n".join(f"    assert candidate({', '.join(map(repr, c))}) == {namespace[entry](*c)!r}" for c in cases)
        yield {
            "id": f"code:{entry}:{seed}:{i}",
            "question": instruction,
            "solution": solution,
            "test": f"def check(candidate):\n{asserts}\n",
            "entry_point": entry,
            "family": f"code_{entry}",
        }


GENERATORS: dict[str, Callable[[int, int], Iterator[dict]]] = {
    "arithmetic": _math(synthetic_math.ARITHMETIC),
    "algebra": _math(synthetic_math.ALGEBRA),
    "unit_conversion": unit_conversion,
    "code_exercise": code_exercise,
}
