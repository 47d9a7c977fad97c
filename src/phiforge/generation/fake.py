"""A scripted backend for tests: replies come from a Python function, no model involved."""

from __future__ import annotations

from typing import Callable, Sequence

from phiforge.generation.base import Messages, Sampling

Reply = Callable[[Messages, Sampling, int], str]
Probs = Callable[[Messages, Sequence[str]], dict[str, float]]


class FakeBackend:
    """Answers each conversation with `reply(messages, sampling, sample_index)`, and gives choice probabilities with
    `probs(messages, choices)`; counts the calls."""

    def __init__(self, reply: Reply, model: str = "fake", probs: Probs | None = None) -> None:
        self.model = model
        self.reply = reply
        self.probs = probs
        self.calls = 0  # number of completions (or choice distributions) produced, so tests can check caching

    def chat(self, conversations: Sequence[Messages], sampling: Sampling, n: int = 1) -> list[list[str]]:
        self.calls += len(conversations) * n
        return [[self.reply(list(c), sampling, i) for i in range(n)] for c in conversations]

    def choice_probs(self, conversations: Sequence[Messages], choices: Sequence[str]) -> list[dict[str, float]]:
        if self.probs is None:
            raise TypeError("this FakeBackend was made without a probs function")
        self.calls += len(conversations)
        return [self.probs(list(c), choices) for c in conversations]
