"""The teacher section of a recipe and the one function that turns it into a backend."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from phiforge.generation import Backend
from phiforge.recipe import PositiveFloat, PositiveInt, Section


class TeacherConfig(Section):
    """Which model writes synthetic data, and how to reach it. The API key itself never goes in a recipe."""

    backend: Literal["openai", "vllm"]
    model: str
    base_url: str | None = None  # openai: e.g. http://localhost:8000/v1
    api_key_env: str | None = None  # openai: name of the environment variable holding the key
    concurrency: PositiveInt = 8
    timeout_s: PositiveFloat = 60.0
    max_retries: int = Field(default=5, ge=0)
    cache: bool = True  # completions kept on disk, so a rerun or resumed run pays for nothing twice

    @model_validator(mode="after")
    def openai_needs_url(self) -> TeacherConfig:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs base_url (e.g. http://localhost:8000/v1)")
        return self


def load_backend(config: TeacherConfig, cache_path: Path) -> Backend:
    """The configured backend, behind the request cache at `cache_path` when `config.cache` is on."""
    backend: Backend
    if config.backend == "openai":
        assert config.base_url is not None  # checked by TeacherConfig
        from phiforge.generation.openai import OpenAIBackend

        backend = OpenAIBackend(
            config.base_url,
            config.model,
            api_key_env=config.api_key_env,
            concurrency=config.concurrency,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
        )
    elif config.backend == "vllm":
        from phiforge.generation.vllm import VLLMBackend

        backend = VLLMBackend(config.model)
    # backend "hf" (in-process transformers): add "hf" to TeacherConfig.backend and its branch here.
    if not config.cache:
        return backend
    from phiforge.generation.cache import CachedBackend

    return CachedBackend(backend, cache_path)
