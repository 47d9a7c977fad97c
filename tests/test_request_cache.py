"""The request cache in front of any backend: nothing is paid for twice, and any change misses."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest

from phiforge.errors import UserError
from phiforge.generation.base import Sampling
from phiforge.generation.cache import CachedBackend
from phiforge.generation.fake import FakeBackend

CONVERSATIONS = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]


def reply(messages, sampling: Sampling, i: int) -> str:
    # like a real model: sample i depends on seed + i only (the cache asks for sample i as sample 0 at seed + i)
    return f"{messages[-1]['content']} t={sampling.temperature} seed={sampling.seed + i}"


def test_a_second_run_makes_no_backend_calls_and_returns_the_same(tmp_path):
    fake = FakeBackend(reply)
    first = CachedBackend(fake, tmp_path / "c.sqlite").chat(CONVERSATIONS, Sampling(seed=1), n=3)
    assert first == FakeBackend(reply).chat(CONVERSATIONS, Sampling(seed=1), n=3)
    assert fake.calls == 15
    again = CachedBackend(fake, tmp_path / "c.sqlite").chat(CONVERSATIONS, Sampling(seed=1), n=3)  # a new process's view
    assert again == first and fake.calls == 15


def test_changed_sampling_model_or_messages_miss(tmp_path):
    fake = FakeBackend(reply)
    cached = CachedBackend(fake, tmp_path / "c.sqlite")
    cached.chat(CONVERSATIONS, Sampling(), n=1)
    out = cached.chat(CONVERSATIONS, Sampling(temperature=0.2), n=1)
    assert fake.calls == 10 and out[0] == ["q0 t=0.2 seed=0"]
    cached.chat([[{"role": "user", "content": "new"}]], Sampling(), n=1)
    assert fake.calls == 11
    other = FakeBackend(reply, model="other")
    CachedBackend(other, tmp_path / "c.sqlite").chat(CONVERSATIONS, Sampling(), n=1)
    assert other.calls == 5  # another teacher's answers are not this one's


def test_more_samples_generate_only_the_new_ones(tmp_path):
    fake = FakeBackend(reply)
    cached = CachedBackend(fake, tmp_path / "c.sqlite")
    cached.chat(CONVERSATIONS, Sampling(seed=4), n=2)
    out = cached.chat(CONVERSATIONS, Sampling(seed=4), n=3)
    assert fake.calls == 10 + 5
    assert out == FakeBackend(reply).chat(CONVERSATIONS, Sampling(seed=4), n=3)
    # sample 1 at seed 4 is sample 0 at seed 5: already there
    assert cached.chat(CONVERSATIONS, Sampling(seed=5), n=2) == [row[1:] for row in out]
    assert fake.calls == 15


def test_repeated_requests_in_one_call_are_generated_once(tmp_path):
    fake = FakeBackend(reply)
    out = CachedBackend(fake, tmp_path / "c.sqlite").chat(CONVERSATIONS[:1] * 4, Sampling(), n=2)
    assert out == [["q0 t=0.7 seed=0", "q0 t=0.7 seed=1"]] * 4
    assert fake.calls == 2


def test_a_file_that_is_not_a_cache_is_a_clear_error(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(UserError, match=r"c.sqlite: not a usable request cache .* delete it or point the cache elsewhere"):
        CachedBackend(FakeBackend(reply), path).chat(CONVERSATIONS, Sampling())


def probs(messages, choices) -> dict[str, float]:
    return {c: (k + 1) / 10 for k, c in enumerate(choices)} | {"q": float(messages[-1]["content"][1:])}


def test_choice_probabilities_are_cached_apart_from_completions(tmp_path):
    fake = FakeBackend(reply, probs=probs)
    first = CachedBackend(fake, tmp_path / "c.sqlite").choice_probs(CONVERSATIONS + CONVERSATIONS[:1], ["yes", "no"])
    assert first == [probs(c, ["yes", "no"]) for c in CONVERSATIONS + CONVERSATIONS[:1]] and fake.calls == 5
    cached = CachedBackend(fake, tmp_path / "c.sqlite")  # a new process's view
    assert cached.choice_probs(CONVERSATIONS, ["yes", "no"]) == first[:5] and fake.calls == 5
    assert cached.choice_probs(CONVERSATIONS[:2], ["no", "yes"])[0] == {"no": 0.1, "yes": 0.2, "q": 0.0}  # other choices miss
    assert cached.chat(CONVERSATIONS[:1], Sampling()) == [["q0 t=0.7 seed=0"]] and fake.calls == 8


def test_in_process_backends_keep_the_keys_of_caches_written_before_endpoints_were_keyed(tmp_path):
    path = tmp_path / "c.sqlite"
    CachedBackend(FakeBackend(reply), path)  # creates the table
    messages = CONVERSATIONS[0]
    old_key = hashlib.sha256(json.dumps(["fake", messages, Sampling().as_dict()], sort_keys=True,
                                        ensure_ascii=False).encode()).hexdigest()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO completions VALUES (?, ?)", (old_key, "from the old cache"))
    fake = FakeBackend(reply)
    assert CachedBackend(fake, path).chat([messages], Sampling()) == [["from the old cache"]] and fake.calls == 0
