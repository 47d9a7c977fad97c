"""A scripted backend for tests: replies come from a Python function, no model involved."""

from __future__ import annotations

from typing import Callable, Sequence

from phiforge.generation import Messages, Sampling

Reply = Callable[[Messages, Sampling, int], str]


class FakeBackend:
    """Answers each conversation with `reply(messages, sampling, sample_index)`; counts the calls."""

    def __init__(self, reply: Reply, model: str = "fake") -> None:
        self.model = model
        self.reply = reply
        self.calls = 0  # number of completions produced, so tests can check caching and resume

    def chat(self, conversations: Sequence[Messages], sampling: Sampling, n: int = 1) -> list[list[str]]:
        self.calls += len(conversations) * n
        return [[self.reply(list(c), sampling, i) for i in range(n)] for c in conversations]
