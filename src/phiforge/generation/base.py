"""The types every generation backend shares: conversations, sampling, the Backend protocol and request batching."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable, Protocol, Sequence, runtime_checkable

Messages = list[dict[str, str]]
# A conversation of one message with this role is plain text the model continues as it is, with no chat template: a
# base model's prompt (it was pretrained on documents, never on chat turns). The in-process backends (hf, vllm) read it.
TEXT_ROLE = "text"


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters; recorded with every generated sample (provenance) and part of cache keys."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0  # 0: no top-k cut
    max_tokens: int = 256
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class Backend(Protocol):
    """A chat model. `model` names it in provenance and cache keys."""

    model: str

    def chat(self, conversations: Sequence[Messages], sampling: Sampling, n: int = 1) -> list[list[str]]:
        """n completions for each conversation, in order. Sample i of a conversation uses seed sampling.seed + i."""
        ...

    def choice_probs(self, conversations: Sequence[Messages], choices: Sequence[str]) -> list[dict[str, float]]:
        """For each conversation, the probability that the reply's first token is each choice (one forward pass, no
        decoding). A token matches a choice when it equals it up to case and surrounding whitespace ("Yes", " yes"
        and "yes" all count for "yes"); matching tokens' probabilities add up. Not normalised over the choices."""
        ...


def matches_choice(token: str, choices: Sequence[str]) -> str | None:
    """The choice a token's text stands for (equal up to case and surrounding whitespace), or None."""
    text = token.strip().lower()
    return next((c for c in choices if c.lower() == text), None) if text else None


def expected_score(probs: dict[str, float]) -> float | None:
    """The mean of digit choices ("0", "1", ...) under a choice_probs distribution, renormalised over them; None when
    the model gives them no mass."""
    mass = sum(probs.values())
    return sum(int(c) * p for c, p in probs.items()) / mass if mass > 0 else None


# One completion request: a conversation and the exact sampling (seed included) of that one sample.
Request = tuple[Messages, Sampling]
OnDone = Callable[[int, str], None]  # (request index, completion), called as each completion arrives


def expand(conversations: Sequence[Messages], sampling: Sampling, n: int) -> list[Request]:
    """The n samples of each conversation as single requests; sample i is sample 0 at seed + i."""
    return [(list(c), replace(sampling, seed=sampling.seed + i)) for c in conversations for i in range(n)]


def regroup(completions: list[str], n: int) -> list[list[str]]:
    """Inverse of `expand`: flat completions back to n per conversation."""
    return [completions[k : k + n] for k in range(0, len(completions), n)]


@runtime_checkable
class IncrementalBackend(Backend, Protocol):
    """A backend that reports each completion as it arrives, so a cache stores it before the batch ends."""

    def complete(self, requests: Sequence[Request], on_done: OnDone | None = None) -> list[str]:
        """One completion per request, in order; on_done(index, completion) as each one finishes."""
        ...
