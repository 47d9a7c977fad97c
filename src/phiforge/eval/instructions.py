"""Instruction following checked by code, in the manner of IFEval (Zhou et al., 2023): each prompt carries a
format constraint that a program can verify (word and sentence counts, bullets, JSON, case, words to use or
avoid, an ending), so no judge is needed. The set is generated from a seed, never downloaded.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

TOPICS = [
    "Describe a river in spring.", "Explain what a function is in programming.", "Give advice to a new gardener.",
    "Describe your favourite meal.", "Explain why the sky looks blue.", "Write about a walk in a city at night.",
    "Explain how to make a cup of tea.", "Describe a library.", "Explain what a prime number is.",
    "Give tips for learning a new language.", "Describe the ocean.", "Explain what a map is for.",
    "Write about a rainy afternoon.", "Explain how a bicycle works.", "Describe a mountain village.",
    "Give reasons to read books.", "Explain what a computer does.", "Describe a busy market.",
]
KEYWORDS = ["water", "green", "light", "simple", "friend", "morning", "number", "stone"]
ENDINGS = ["Is there anything else?", "That is all.", "Thank you for reading."]


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text)


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if words(s)]


def bullets(text: str) -> int:
    return sum(1 for line in text.splitlines() if re.match(r"\s*[*-]\s+\S", line))


def is_json(text: str) -> bool:
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        json.loads(body)
    except json.JSONDecodeError:
        return False
    return True


@dataclass(frozen=True)
class Instruction:
    kind: str
    text: str  # appended to the prompt
    check: Callable[[str], bool]


def _instruction(kind: str, rng: random.Random) -> Instruction:
    """One constraint of `kind` with parameters drawn from rng."""
    if kind == "max_words":
        n = rng.choice([10, 20, 30])
        return Instruction(kind, f"Answer in at most {n} words.", lambda r: 0 < len(words(r)) <= n)
    if kind == "min_words":
        n = rng.choice([20, 40])
        return Instruction(kind, f"Answer in at least {n} words.", lambda r: len(words(r)) >= n)
    if kind == "sentences":
        n = rng.choice([1, 2, 3])
        return Instruction(kind, f"Answer in exactly {n} sentence{'s' * (n > 1)}.", lambda r: len(sentences(r)) == n)
    if kind == "bullets":
        n = rng.choice([2, 3, 4])
        return Instruction(kind, f"Answer with exactly {n} bullet points, each on its own line starting with '* '.",
                           lambda r: bullets(r) == n)
    if kind == "json":
        return Instruction(kind, "Give your entire answer as valid JSON.", is_json)
    if kind == "lowercase":
        return Instruction(kind, "Write your entire answer in lowercase letters only.",
                           lambda r: bool(words(r)) and r == r.lower())
    if kind == "uppercase":
        return Instruction(kind, "Write your entire answer in capital letters only.",
                           lambda r: bool(words(r)) and r == r.upper())
    if kind == "include_word":
        w = rng.choice(KEYWORDS)
        return Instruction(kind, f"Use the word '{w}' in your answer.", lambda r: w in (x.lower() for x in words(r)))
    if kind == "forbidden_words":
        a, b = rng.sample(["the", "and", "is", "a", "of"], 2)
        return Instruction(kind, f"Do not use the words '{a}' or '{b}'.",
                           lambda r: bool(words(r)) and not {a, b} & {x.lower() for x in words(r)})
    if kind == "no_commas":
        return Instruction(kind, "Do not use any commas.", lambda r: bool(words(r)) and "," not in r)
    if kind == "ending":
        e = rng.choice(ENDINGS)
        return Instruction(kind, f"End your answer with the exact phrase '{e}'.", lambda r: r.strip().endswith(e))
    raise ValueError(f"unknown instruction kind {kind!r}")


KINDS = ("max_words", "min_words", "sentences", "bullets", "json", "lowercase", "uppercase", "include_word",
         "forbidden_words", "no_commas", "ending")


def instruction_set(n: int, seed: int, kinds: tuple[str, ...] = KINDS) -> list[tuple[str, Instruction]]:
    """n (prompt, instruction) pairs, each of `kinds` in turn, topics and parameters drawn from seed."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        inst = _instruction(kinds[i % len(kinds)], rng)
        items.append((f"{rng.choice(TOPICS)} {inst.text}", inst))
    return items
