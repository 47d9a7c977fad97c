"""The teacher section: validated like the rest of the recipe, turned into a (cached) backend."""

from __future__ import annotations

import importlib.util

import pytest
from pydantic import ValidationError

from phiforge.errors import UserError
from phiforge.generation import Sampling
from phiforge.generation.cache import CachedBackend
from phiforge.generation.config import TeacherConfig, load_backend
from phiforge.generation.fake_server import FakeOpenAIServer
from phiforge.generation.openai import OpenAIBackend


def test_openai_teacher_is_cached_and_answers(tmp_path):
    with FakeOpenAIServer() as server:
        config = TeacherConfig(backend="openai", model="teacher", base_url=server.url, concurrency=2)
        teacher = load_backend(config, tmp_path / "cache.sqlite")
        assert isinstance(teacher, CachedBackend) and teacher.model == "teacher"
        assert teacher.chat([[{"role": "user", "content": "hi"}]], Sampling(seed=5), n=2) == [["hi #5", "hi #6"]]
        uncached = load_backend(config.model_copy(update={"cache": False}), tmp_path / "unused.sqlite")
    assert isinstance(uncached, OpenAIBackend)
    assert not (tmp_path / "unused.sqlite").exists()


def test_bad_teacher_sections_are_refused():
    with pytest.raises(ValidationError, match="needs base_url"):
        TeacherConfig(backend="openai", model="teacher")
    with pytest.raises(ValidationError, match="api_key"):
        TeacherConfig(backend="openai", model="teacher", base_url="http://x/v1", api_key="sk-secret")
    with pytest.raises(ValidationError, match="backend"):
        TeacherConfig(backend="anthropic", model="teacher")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_teacher_without_vllm_says_how_to_install(tmp_path):
    with pytest.raises(UserError, match=r"pip install 'phiforge\[vllm\]'"):
        load_backend(TeacherConfig(backend="vllm", model="microsoft/phi-4"), tmp_path / "cache.sqlite")
