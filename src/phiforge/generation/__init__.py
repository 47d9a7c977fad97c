"""Generation backends: one interface for every teacher, judge and sampler in the recipe.

A backend turns chat conversations into completions. Which backend runs is one YAML line
(`teacher.backend: hf | openai | vllm | fake`); everything downstream (synthetic data workflows,
quality labels, judges) only sees `Backend.chat`, and a judge that reads the teacher's next-token
distribution instead of its answer (quality labels) `choice_probs`. The types they share are in `base.py`;
this module picks and builds one.
"""

from __future__ import annotations

from pathlib import Path

from phiforge.generation.base import Backend, Sampling


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
