"""The recipe's teacher section turned into a backend: openai and vllm, behind the request cache."""

from __future__ import annotations

import importlib.util
import json

import pytest

from phiforge.errors import UserError
from phiforge.files import read_jsonl
from phiforge.generation import load_backend
from phiforge.generation.base import Sampling
from phiforge.generation.cache import CachedBackend
from phiforge.generation.fake_server import FakeOpenAIServer
from phiforge.generation.openai import OpenAIBackend
from phiforge.recipe import TeacherConfig

from conftest import phiforge


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


def test_synth_stage_with_an_openai_teacher_pays_each_request_once(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    passage = "Water boils at one hundred degrees Celsius at sea level, and at less on a mountain. "
    seeds.write_text("".join(json.dumps({"text": f"Passage {i}. " + passage * 4}) + "\n" for i in range(6)))
    run_dir = tmp_path / "run"
    with FakeOpenAIServer() as server:
        recipe = tmp_path / "r.yaml"
        recipe.write_text(
            "name: r\ncorpus:\n  sources: [{name: math, kind: synthetic_math, max_docs: 20}]\n"
            f"teacher: {{backend: openai, model: teacher, base_url: '{server.url}'}}\n"
            f"synth:\n  rate_seeds: false\n  seeds: [{{path: {seeds}}}]\n"
            "  datasets: [{type: textbook_explanation, count: 4}]\n"
            "pretrain: {mixture: {math: 0.5, textbook_explanation: 0.5}, steps: 1}\n"
        )
        phiforge("synth", recipe, "--run-dir", run_dir)
        asked = len(server.requests)
        shard = run_dir / "synth" / "datasets" / "textbook_explanation" / "shard_00000.jsonl"
        texts = [row["text"] for row in read_jsonl(shard)]
        # a shard lost to a kill (neither it nor its stats written) is generated again from the cache alone
        shard.unlink()
        shard.with_suffix(".stats.json").unlink()
        (run_dir / "synth" / "manifest.json").unlink()
        phiforge("synth", recipe, "--run-dir", run_dir)
        assert len(server.requests) == asked == 4
    assert [row["text"] for row in read_jsonl(shard)] == texts
    assert all(text.startswith("Rewrite the following material") for text in texts)  # the server's echo
