"""Generation backends: one interface for every teacher, judge and sampler in the recipe.

A backend turns chat conversations into completions. Which backend runs is one YAML line
(`teacher.backend: hf | openai | vllm | fake`); everything downstream (synthetic data workflows,
quality labels, judges) only sees `Backend.chat`, and a judge that reads the teacher's next-token
distribution instead of its answer (quality labels) `choice_probs`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

Messages = list[dict[str, str]]


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


def without_credentials(text: str) -> str:
    """A URL, or text holding URLs, with every `user:password@` taken out: what logs, errors, manifests and cache
    keys may show. A string that starts with `user:password@` (a base_url missing its scheme) loses it too."""
    return re.sub(r"([a-z][a-z0-9+.-]*://|^)[^\s/@?#'\"]*@", r"\1", text, flags=re.IGNORECASE)


def matches_choice(token: str, choices: Sequence[str]) -> str | None:
    """The choice a token's text stands for (equal up to case and surrounding whitespace), or None."""
    text = token.strip().lower()
    return next((c for c in choices if c.lower() == text), None) if text else None


def expected_score(probs: dict[str, float]) -> float | None:
    """The mean of digit choices ("0", "1", ...) under a choice_probs distribution, renormalised over them; None when
    the model gives them no mass."""
    mass = sum(probs.values())
    return sum(int(c) * p for c, p in probs.items()) / mass if mass > 0 else None


def default_sampling(cfg) -> Sampling:
    """The recipe's teacher sampling defaults (a TeacherConfig), seeded by the recipe seed at call sites."""
    return Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)


def load_backend(cfg, cache_dir: Path | None = None) -> Backend:
    """The backend a recipe's `teacher:` section names (a TeacherConfig), behind the request cache in
    `cache_dir` when `cfg.cache` is on."""
    backend: Backend
    if cfg.backend == "hf":
        from phiforge.generation.hf import HFBackend

        backend = HFBackend(cfg.model, batch_size=cfg.batch_size)
    elif cfg.backend == "openai":
        from phiforge.generation.openai import OpenAIBackend

        backend = OpenAIBackend(
            cfg.base_url,
            cfg.model,
            api_key_env=cfg.api_key_env,
            concurrency=cfg.concurrency,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
        )
    elif cfg.backend == "vllm":
        from phiforge.generation.vllm import VLLMBackend

        backend = VLLMBackend(cfg.model)
    else:
        raise NotImplementedError(cfg.backend)
    if cfg.cache and cache_dir is not None:
        from phiforge.generation.cache import CachedBackend

        backend = CachedBackend(backend, Path(cache_dir) / "requests.sqlite")
    return backend


def load_policy(model: Path, cache_dir: Path) -> Backend:
    """A model being post-trained as a sampling backend, behind the request cache in cache_dir under its resolved
    path (a model retrained in place needs a fresh cache)."""
    from phiforge.generation.cache import CachedBackend
    from phiforge.generation.hf import HFBackend

    policy = HFBackend(str(model))
    policy.model = str(Path(model).resolve())
    return CachedBackend(policy, Path(cache_dir) / "requests.sqlite")


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
