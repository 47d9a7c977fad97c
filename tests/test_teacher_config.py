"""The recipe's teacher section turned into a backend: openai and vllm, behind the request cache."""

from __future__ import annotations

import importlib.util

import pytest

from phiforge.errors import UserError
from phiforge.generation import Sampling, load_backend
from phiforge.generation.cache import CachedBackend
from phiforge.generation.fake_server import FakeOpenAIServer
from phiforge.generation.openai import OpenAIBackend
from phiforge.recipe import TeacherConfig


def test_openai_teacher_is_cached_and_answers(tmp_path):
    with FakeOpenAIServer() as server:
        config = TeacherConfig(backend="openai", model="teacher", base_url=server.url, concurrency=2)
        teacher = load_backend(config, tmp_path / "cache")
        assert isinstance(teacher, CachedBackend) and teacher.model == "teacher"
        assert teacher.chat([[{"role": "user", "content": "hi"}]], Sampling(seed=5), n=2) == [["hi #5", "hi #6"]]
        assert (tmp_path / "cache" / "requests.sqlite").is_file()
        uncached = load_backend(config.model_copy(update={"cache": False}), tmp_path / "other")
    assert isinstance(uncached, OpenAIBackend)
    assert not (tmp_path / "other").exists()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_teacher_without_vllm_says_how_to_install(tmp_path):
    with pytest.raises(UserError, match=r"pip install 'phiforge\[vllm\]'"):
        load_backend(TeacherConfig(backend="vllm", model="microsoft/phi-4"), tmp_path / "cache")
