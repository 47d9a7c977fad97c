"""The OpenAI-compatible backend against a local fake server that misbehaves on purpose."""

from __future__ import annotations

import base64
import logging
import math
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from phiforge.errors import UserError
from phiforge.generation.base import Sampling
from phiforge.generation.cache import CachedBackend
from phiforge.generation.fake_server import FakeOpenAIServer
from phiforge.generation.openai import OpenAIBackend, request_body, retry_after_s
from phiforge.recipe import TeacherConfig, load_recipe

SAMPLING = Sampling(temperature=0.5, top_p=0.9, max_tokens=32, seed=7)


def conversations(k: int) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": "be brief"}, {"role": "user", "content": f"p{i}"}] for i in range(k)]


def expected(k: int, n: int, seed: int = SAMPLING.seed) -> list[list[str]]:
    return [[f"p{i} #{seed + s}" for s in range(n)] for i in range(k)]


def scripted(faults: dict[tuple[str, int], list[str]]):
    """Per (prompt, seed): the faults its next attempts meet, in order; afterwards it is answered."""
    queues = {key: list(v) for key, v in faults.items()}

    def fault(body: dict) -> str | None:
        queue = queues.get((body["messages"][-1]["content"], body["seed"]))
        return queue.pop(0) if queue else None

    return fault


def prompts_seen(server: FakeOpenAIServer) -> list[tuple[str, int]]:
    return sorted((b["messages"][-1]["content"], b["seed"]) for b in server.requests)


def backend(server: FakeOpenAIServer, base_url: str | None = None, **kw) -> OpenAIBackend:
    kw = {"timeout_s": 1.0, "max_retries": 4, "backoff_s": 0.01, **kw}  # 1 s: ample for a local answer, short for a hang
    return OpenAIBackend(base_url or server.url, "teacher", **kw)


def test_every_kind_of_fault_is_retried_and_answers_come_back_in_order():
    faults = {
        ("p0", 7): ["429", "500"],
        ("p1", 8): ["garbage"],
        ("p2", 7): ["truncated", "truncated"],
        ("p3", 8): ["hang"],
        ("p4", 7): ["500", "garbage", "truncated", "429"],  # 4 failures: the last of 5 attempts succeeds
    }
    with FakeOpenAIServer(scripted(faults), retry_after="0.01") as server:
        out = backend(server, concurrency=3).chat(conversations(6), SAMPLING, n=2)
    assert out == expected(6, 2)
    # each faulty sample was asked once per failure plus the answered attempt; the others once
    assert len(server.requests) == 12 + sum(len(v) for v in faults.values())


def test_request_carries_the_sampling_and_the_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sk-test")
    with FakeOpenAIServer() as server:
        out = backend(server, api_key_env="TEACHER_KEY").chat(conversations(1), Sampling(top_k=40, seed=3), n=1)
    body = server.requests[0]
    assert out == [["p0 #3"]]
    assert server.authorizations == ["Bearer sk-test"]
    assert {k: body[k] for k in ("model", "temperature", "top_p", "top_k", "max_tokens", "seed")} == {
        "model": "teacher", "temperature": 0.7, "top_p": 0.95, "top_k": 40, "max_tokens": 256, "seed": 3,
    }
    assert "top_k" not in request_body("m", [], Sampling(top_k=0))  # no cut: nothing a strict server would reject


def test_a_server_that_keeps_failing_stops_the_run_with_one_line(tmp_path):
    with FakeOpenAIServer(lambda body: "500") as server:
        with pytest.raises(UserError) as err:
            backend(server, max_retries=2).chat(conversations(3), SAMPLING)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{server.url}/chat/completions: gave up after 3 attempts, last: HTTP 500")
    assert "internal error" in message and "check that the server is up and serves model 'teacher'" in message


def test_a_hanging_server_stops_the_run_naming_the_timeout():
    with FakeOpenAIServer(lambda body: "hang") as server:
        with pytest.raises(UserError, match=r"gave up after 2 attempts, last: no answer within 0.2 s"):
            backend(server, timeout_s=0.2, max_retries=1).chat(conversations(1), SAMPLING)


def test_rejected_requests_are_not_retried_and_say_what_to_check(monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "wrong")
    with FakeOpenAIServer(lambda body: "401") as server:
        with pytest.raises(UserError, match=r"HTTP 401.*; check the key in \$TEACHER_KEY"):
            backend(server, api_key_env="TEACHER_KEY").chat(conversations(1), SAMPLING)
    assert len(server.requests) == 1
    monkeypatch.delenv("TEACHER_KEY")
    with pytest.raises(UserError, match="environment variable TEACHER_KEY .* is not set"):
        OpenAIBackend("http://127.0.0.1:9/v1", "teacher", api_key_env="TEACHER_KEY").chat(conversations(1), SAMPLING)
    with pytest.raises(UserError, match="must start with http"):
        OpenAIBackend("localhost:8000/v1", "teacher")


def test_waits_follow_retry_after_and_grow_up_to_the_cap():
    assert retry_after_s("2.5") == 2.5
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: retry now
    assert retry_after_s("soon") is None and retry_after_s(None) is None
    teacher = OpenAIBackend("http://127.0.0.1:9/v1", "teacher", backoff_s=0.1, max_backoff_s=5.0)
    assert teacher.delay_s(0, retry_after=2.5) == 2.5  # the server asked for longer than our backoff
    assert teacher.delay_s(0, retry_after=60.0) == 5.0
    assert 0.05 <= teacher.delay_s(0, None) <= 0.15 and 0.2 <= teacher.delay_s(2, None) <= 0.6
    assert teacher.delay_s(30, None) == 5.0


def test_completions_finished_before_a_failure_are_not_asked_again(tmp_path):
    cache = tmp_path / "cache.sqlite"
    # sequential, so which requests finished before p3's failure is certain: p0..p2 (both samples each)
    with FakeOpenAIServer(lambda body: "500" if body["messages"][-1]["content"] == "p3" else None) as server:
        with pytest.raises(UserError, match="HTTP 500"):
            CachedBackend(backend(server, concurrency=1, max_retries=1), cache).chat(conversations(6), SAMPLING, n=2)
    with FakeOpenAIServer(port=server.port) as healthy:  # the same endpoint, restarted (endpoints key the cache)
        out = CachedBackend(backend(healthy), cache).chat(conversations(6), SAMPLING, n=2)
    assert out == expected(6, 2)
    assert prompts_seen(healthy) == [(f"p{i}", 7 + s) for i in range(3, 6) for s in range(2)]


KILLED_RUN = """
import sys
from phiforge.generation.base import Sampling
from phiforge.generation.cache import CachedBackend
from phiforge.generation.openai import OpenAIBackend
convs = [[{"role": "user", "content": f"p{i}"}] for i in range(12)]
CachedBackend(OpenAIBackend(sys.argv[1], "teacher", concurrency=4, timeout_s=60), sys.argv[2]).chat(convs, Sampling())
"""


def test_a_killed_run_keeps_every_finished_completion(tmp_path):
    cache = tmp_path / "cache.sqlite"
    with FakeOpenAIServer(lambda body: "hang" if body["messages"][-1]["content"] == "p5" else None) as server:
        run = subprocess.Popen([sys.executable, "-c", KILLED_RUN, server.url, str(cache)], stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while stored(cache) < 11 and time.monotonic() < deadline and run.poll() is None:
                time.sleep(0.05)  # every request but the hanging one finishes, then the run waits on p5
        finally:
            run.kill()
            _, stderr = run.communicate()
    assert stored(cache) == 11, stderr.decode()
    with FakeOpenAIServer(port=server.port) as healthy:
        convs = [[{"role": "user", "content": f"p{i}"}] for i in range(12)]
        out = CachedBackend(backend(healthy), cache).chat(convs, Sampling())
    assert out == [[f"p{i} #0"] for i in range(12)]
    assert prompts_seen(healthy) == [("p5", 0)]


def stored(cache: Path) -> int:
    if not cache.exists():
        return 0
    try:
        with sqlite3.connect(cache) as db:
            return db.execute("SELECT count(*) FROM completions").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0



def test_choice_probabilities_come_from_the_first_tokens_top_logprobs():
    def top(body: dict) -> list[tuple[str, float]]:
        p_yes = 0.9 if "rain is wet" in body["messages"][-1]["content"] else 0.2
        return [("Yes", math.log(p_yes * 0.75)), (" yes", math.log(p_yes * 0.25)), ("No", math.log(1 - p_yes))]

    with FakeOpenAIServer(top_logprobs=top) as server:
        out = backend(server).choice_probs([[{"role": "user", "content": "rain is wet?"}],
                                            [{"role": "user", "content": "fire is wet?"}]], ["yes", "no", "maybe"])
    assert [round(p["yes"], 6) for p in out] == [0.9, 0.2] and [round(p["no"], 6) for p in out] == [0.1, 0.8]
    assert out[0]["maybe"] == 0.0  # not among the top tokens
    body = server.requests[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1 and body["temperature"] == 0


def test_a_server_without_logprobs_is_a_one_line_error():
    with FakeOpenAIServer() as server:
        with pytest.raises(UserError, match=r"chat/completions: the answer has no top_logprobs.*label_method: generate$"):
            backend(server).choice_probs(conversations(2), ["yes", "no"])


def test_credentials_in_base_url_are_sent_as_basic_auth_and_shown_nowhere(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # everything, httpx's own request log included
    with FakeOpenAIServer() as server:
        url = server.url.replace("http://", "http://alice:s3cret-KEY@")
        cached = CachedBackend(backend(server, base_url=url), tmp_path / "c.sqlite")
        assert cached.chat(conversations(2), SAMPLING) == expected(2, 1)
        assert server.authorizations == ["Basic " + base64.b64encode(b"alice:s3cret-KEY").decode()] * 2
    with pytest.raises(UserError) as down:  # the server is gone: the error names the endpoint, not the key
        backend(server, base_url=url, max_retries=0).chat(conversations(1), SAMPLING)
    assert str(down.value).startswith(f"{server.url}/chat/completions: gave up after 1 attempts")
    with pytest.raises(UserError) as bad:
        OpenAIBackend("ftp://alice:s3cret-KEY@example.org/v1", "teacher")
    recipe = tmp_path / "r.yaml"  # a recipe error echoes the value it rejects: here the URL, in a number's place
    recipe.write_text(yaml.safe_dump({"name": "r", "teacher": {"backend": "openai", "model": "m", "base_url": url,
                                                               "max_tokens": url}}))
    with pytest.raises(UserError) as in_recipe:
        load_recipe(recipe)
    assert server.url in caplog.text and "(got 'http://127.0.0.1:" in str(in_recipe.value)
    assert "alice" not in str(in_recipe.value)
    shown = [caplog.text, str(down.value), str(bad.value), str(in_recipe.value),
             *(p.read_bytes().decode(errors="replace") for p in tmp_path.glob("c.sqlite*"))]
    assert not [text for text in shown if "s3cret" in text]
    with_other_key = TeacherConfig(backend="openai", model="m", base_url=url.replace("s3cret", "rotated"))
    assert TeacherConfig(backend="openai", model="m", base_url=url).digest() == with_other_key.digest()


def test_the_cache_keeps_two_servers_of_one_model_name_apart_but_not_two_keys_of_one_server(tmp_path):
    cache = tmp_path / "c.sqlite"
    with FakeOpenAIServer() as first, FakeOpenAIServer() as second:
        CachedBackend(backend(first), cache).chat(conversations(2), SAMPLING)
        CachedBackend(backend(second), cache).chat(conversations(2), SAMPLING)
        assert len(second.requests) == 2  # "teacher" on another server may be another model: asked, not reused
        rotated = first.url.replace("http://", "http://bob:new-key@")
        assert CachedBackend(backend(first, base_url=rotated), cache).chat(conversations(2), SAMPLING) == expected(2, 1)
        assert len(first.requests) == 2  # the same server with a new key: its answers are still cached
