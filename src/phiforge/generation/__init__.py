"""Generation backends: one interface for every teacher, judge and sampler in the recipe.

A backend turns chat conversations into completions. Which backend runs is one YAML line
(`teacher.backend: hf | openai | vllm | fake`); everything downstream (synthetic data workflows,
quality labels, judges) only sees `Backend.chat`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol, Sequence

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


def default_sampling(cfg) -> Sampling:
    """The recipe's teacher sampling defaults (a TeacherConfig), seeded by the recipe seed at call sites."""
    return Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)


def load_backend(cfg, cache_dir=None) -> Backend:
    """The backend a recipe's `teacher:` section names (a TeacherConfig)."""
    if cfg.backend == "hf":
        from phiforge.generation.hf import HFBackend

        return HFBackend(cfg.model, batch_size=cfg.batch_size)
    raise NotImplementedError(cfg.backend)
