"""Programmatic synthetic math: problems with worked steps and answers checked by substitution.

Each problem has a canonical key (family and operands). A fixed hash of the key decides whether it
belongs to the held-out evaluation split, so training data (pretraining documents, SFT
conversations) and evaluation problems never share a problem, on every machine and seed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Problem:
    key: str
    family: str
    question: str
    steps: str
    answer: str

    def as_document(self) -> str:
        return f"Problem: {self.question}\nSolution: {self.steps}\nAnswer: {self.answer}"

    def as_messages(self) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": self.question},
            {"role": "assistant", "content": f"{self.steps} The answer is {self.answer}."},
        ]


def is_heldout(key: str, heldout_every: int = 10) -> bool:
    digest = hashlib.blake2b(key.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % heldout_every == 0


def _add(rng: random.Random) -> Problem:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return Problem(f"add:{a}:{b}", "add", f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", str(a + b))


def _sub(rng: random.Random) -> Problem:
    a, b = sorted((rng.randint(0, 99), rng.randint(0, 99)), reverse=True)
    return Problem(f"sub:{a}:{b}", "sub", f"What is {a} - {b}?", f"{a} - {b} = {a - b}.", str(a - b))


def _mul(rng: random.Random) -> Problem:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return Problem(f"mul:{a}:{b}", "mul", f"What is {a} * {b}?", f"{a} * {b} = {a * b}.", str(a * b))


def _linear(rng: random.Random) -> Problem:
    """a*x + b = c with an integer solution; the steps undo b, then a."""
    a, x, b = rng.randint(2, 9), rng.randint(-9, 12), rng.randint(1, 20)
    c = a * x + b
    steps = (
        f"Subtract {b} from both sides: {a}x = {c - b}. "
        f"Divide both sides by {a}: x = {Fraction(c - b, a)}."
    )
    return Problem(f"lin:{a}:{b}:{c}", "linear", f"Solve for x: {a}x + {b} = {c}.", steps, str(x))


def _next(rng: random.Random) -> Problem:
    n = rng.randint(0, 998)
    return Problem(f"next:{n}", "successor", f"What number comes after {n}?", f"{n} + 1 = {n + 1}.", str(n + 1))


NAMES = ("Tom", "Anna", "Sam", "Lily", "Ben", "Maria", "Jack", "Emma", "Leo", "Sara", "Max", "Nina")
CONTAINERS = (("bag", "bags"), ("box", "boxes"), ("jar", "jars"), ("basket", "baskets"))
OBJECTS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "coins", "cards")


def _groups(rng: random.Random) -> Problem:
    """A one-step word problem: equal groups, multiplied. Names x containers x objects x factors make ~25k keys,
    so the held-out split has thousands of problems (the bare `mul` family has 121 keys, 7 held out)."""
    who, where, what = rng.randrange(len(NAMES)), rng.randrange(len(CONTAINERS)), rng.randrange(len(OBJECTS))
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    name, (one, many), obj = NAMES[who], CONTAINERS[where], OBJECTS[what]
    question = f"{name} has {a} {many} with {b} {obj} in each {one}. How many {obj} does {name} have?"
    steps = f"{a} {many} with {b} {obj} each: {a} * {b} = {a * b}."
    return Problem(f"groups:{who}:{where}:{what}:{a}:{b}", "groups", question, steps, str(a * b))


ARITHMETIC = (_add, _sub, _mul, _next)
ALGEBRA = (_linear,)
FAMILIES = (_add, _sub, _mul, _linear, _next)
BY_NAME = {"add": _add, "sub": _sub, "mul": _mul, "linear": _linear, "successor": _next,
           "groups": _groups}  # by Problem.family


def verify(problem: Problem) -> bool:
    """Check the stated answer independently of how it was generated."""
    kind, *ops = problem.key.split(":")
    nums = [int(v) for v in ops]
    answer = Fraction(problem.answer)
    if kind == "add":
        return answer == nums[0] + nums[1]
    if kind == "sub":
        return answer == nums[0] - nums[1]
    if kind == "mul":
        return answer == nums[0] * nums[1]
    if kind == "lin":
        a, b, c = nums
        return a * answer + b == c  # substitute the solution back into the equation
    if kind == "next":
        return answer == nums[0] + 1
    if kind == "groups":
        return answer == nums[3] * nums[4]  # the key's last two numbers: groups and items per group
    raise ValueError(f"unknown problem family {kind!r}")


def generate(n: int, seed: int, heldout: bool, families: tuple = FAMILIES) -> list[Problem]:
    """Up to `n` distinct verified problems from the training split (or the held-out split).

    Fewer come back when the families' key space runs out (a few thousand held-out problems exist).
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Problem] = []
    attempts = 0
    while len(out) < n and attempts < n * 20:
        attempts += 1
        p = rng.choice(families)(rng)
        if p.key in seen or is_heldout(p.key) != heldout:
            continue
        if not verify(p):
            raise AssertionError(f"generator produced a wrong answer for {p.key}")
        seen.add(p.key)
        out.append(p)
    return out


def extract_answer(text: str) -> str | None:
    """The last number in a model's reply, as the answer it committed to."""
    import re

    found = re.findall(r"-?\d+(?:/\d+)?", text)
    return found[-1] if found else None
