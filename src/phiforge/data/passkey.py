"""Passkey retrieval documents: a number hidden in filler text, asked for at the end.

Used as synthetic long-context data (the report pads and concatenates synthetic data to build
long samples) and as the passkey evaluation, so midtraining's gain in usable context shows.
"""

from __future__ import annotations

import math
import random

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "What is the pass key? The pass key is"


def passkey_text(key: int, filler_before: int, filler_after: int) -> str:
    return (
        FILLER * filler_before
        + f"The pass key is {key}. Remember it. {key} is the pass key. "
        + FILLER * filler_after
        + QUESTION
    )


def passkey_documents(n: int, seed: int, max_filler: int = 60) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        # log-uniform length: many short documents fit a pretraining row whole, a few are long
        total = int(math.exp(rng.uniform(0, math.log(max_filler + 1))))
        before = rng.randint(0, total)
        key = rng.randint(10000, 99999)
        docs.append(passkey_text(key, before, total - before) + f" {key}.")
    return docs
