"""Asking a backend as a judge and reading its answer, shared by judge-guided DPO pairs (posttrain/judge.py) and
the judged eval tasks (eval/judged.py, eval/safety.py): the conversation as the judge sees it, greedy answers, and
the last `Name: N` score of a written answer.
"""

from __future__ import annotations

import re
from typing import Sequence

from phiforge.generation.base import Backend, Messages, Sampling

# The choices of a `probs` judge that grades with a digit: its next-token distribution over them
# (generation.base.expected_score).
DIGITS = [str(k) for k in range(6)]


def transcript(conversation: Messages) -> str:
    """A conversation as one block of text inside a judge's prompt, a `role: content` line per turn."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in conversation)


def score_pattern(name: str) -> re.Pattern[str]:
    """`Name: 8`, `**Name**: 7/10`, `"name": 9` (JSON), any case."""
    return re.compile(rf"\b{name}\b[*\"'\s]*[:=][*\s]*(\d+(?:\.\d+)?)", re.IGNORECASE)


def last_score(answer: str, pattern: re.Pattern[str], low: float, high: float) -> float | None:
    """The last score `pattern` finds in a judge's answer (a judge may quote a score before its final one), or
    None when there is none or it is outside [low, high]."""
    found = pattern.findall(answer)
    if not found or not low <= float(found[-1]) <= high:
        return None
    return float(found[-1])


def greedy_answers(backend: Backend, asks: Sequence[Messages], max_tokens: int) -> list[str]:
    """A backend's one greedy answer to each conversation: a grade, or an answer being graded, should not depend
    on a sampling seed."""
    return [a[0] for a in backend.chat(asks, Sampling(temperature=0.0, max_tokens=max_tokens), 1)]
