"""A disk cache of completions in front of any backend: a rerun or a resumed run pays for nothing twice.

Keys are (model, messages, sampling with the sample's own seed), so sample i of a conversation is the same
entry as sample 0 at seed + i (the Backend contract). Choice probabilities are stored as JSON in the same table,
keyed by (model, messages, choices). A backend behind a server (`endpoint`: its URL without credentials) has
the endpoint in its keys too: two servers that serve a model of the same name need not serve the same model.
In-process backends have none, so their keys (and caches written before endpoints were keyed) stay as they were. sqlite (stdlib) in WAL mode: each completion is
committed the moment it arrives, so a killed run keeps every finished request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from phiforge.errors import UserError
from phiforge.files import disk_full, full_disk_is_user_error
from phiforge.generation.base import Backend, IncrementalBackend, Messages, OnDone, Request, Sampling, expand, regroup

log = logging.getLogger("phiforge")

PLAIN_BATCH = 64  # a backend without `complete` gets misses in batches this size, each stored when it returns


class CachedBackend:
    """Wraps `inner`; only cache misses reach it. Itself incremental, so caches and callers compose."""

    def __init__(self, inner: Backend, path: Path) -> None:
        self.inner = inner
        self.model = inner.model
        self.endpoint: str | None = getattr(inner, "endpoint", None)  # so a cache of a cache keys the same
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.open():  # a file that is not a cache fails here, before any request is sent
            pass

    @contextmanager
    def open(self) -> Iterator[sqlite3.Connection]:
        """A connection for one call (closed after it, so nothing is left open between calls)."""
        with full_disk_is_user_error(self.path):  # sqlite says "database or disk is full"
            try:
                db = sqlite3.connect(self.path, isolation_level=None, timeout=30)  # autocommit: one insert, one commit
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # WAL commits survive a killed process without an fsync each
                db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, completion TEXT NOT NULL)")
            except sqlite3.DatabaseError as e:
                if disk_full(e, self.path):
                    raise
                raise UserError(f"{self.path}: not a usable request cache ({e}); delete it or point the cache elsewhere") from None
            try:
                yield db
            finally:
                db.close()

    def chat(self, conversations: Sequence[Messages], sampling: Sampling, n: int = 1) -> list[list[str]]:
        return regroup(self.complete(expand(conversations, sampling, n)), n)

    def complete(self, requests: Sequence[Request], on_done: OnDone | None = None) -> list[str]:
        keys = [request_key(self.model, messages, sampling, self.endpoint) for messages, sampling in requests]
        with self.open() as db:
            out: list[str | None] = [lookup(db, key) for key in keys]
            missing: dict[str, list[int]] = defaultdict(list)  # equal requests in one call are generated once
            for j, (key, completion) in enumerate(zip(keys, out)):
                if completion is None:
                    missing[key].append(j)
                elif on_done is not None:
                    on_done(j, completion)
            slots = list(missing.values())
            cached = len(out) - sum(map(len, slots))
            log.info("%s: %d of %d completions cached, %d to generate", self.model, cached, len(out), len(slots))

            def store(i: int, completion: str) -> None:
                db.execute("INSERT OR REPLACE INTO completions VALUES (?, ?)", (keys[slots[i][0]], completion))
                for j in slots[i]:
                    out[j] = completion
                    if on_done is not None:
                        on_done(j, completion)

            generate(self.inner, [requests[js[0]] for js in slots], store)
        return out  # type: ignore[return-value]  # every slot is filled by now

    def choice_probs(self, conversations: Sequence[Messages], choices: Sequence[str]) -> list[dict[str, float]]:
        keys = [choice_key(self.model, messages, choices, self.endpoint) for messages in conversations]
        with self.open() as db:
            out: list[dict[str, float] | None] = [None if (v := lookup(db, key)) is None else json.loads(v) for key in keys]
            missing: dict[str, list[int]] = defaultdict(list)
            for j, (key, probs) in enumerate(zip(keys, out)):
                if probs is None:
                    missing[key].append(j)
            slots = list(missing.values())
            log.info("%s: %d of %d choice distributions cached, %d to compute", self.model,
                     len(out) - sum(map(len, slots)), len(out), len(slots))
            for start in range(0, len(slots), PLAIN_BATCH):  # each batch is stored as it returns
                batch = slots[start : start + PLAIN_BATCH]
                for js, probs in zip(batch, self.inner.choice_probs([conversations[js[0]] for js in batch], choices)):
                    db.execute("INSERT OR REPLACE INTO completions VALUES (?, ?)", (keys[js[0]], json.dumps(probs)))
                    for j in js:
                        out[j] = probs
        return out  # type: ignore[return-value]


def lookup(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT completion FROM completions WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def request_key(model: str, messages: Messages, sampling: Sampling, endpoint: str | None = None) -> str:
    return _key([model, messages, sampling.as_dict()], endpoint)


def choice_key(model: str, messages: Messages, choices: Sequence[str], endpoint: str | None = None) -> str:
    return _key(["choice_probs", model, messages, list(choices)], endpoint)


def _key(parts: list, endpoint: str | None) -> str:
    blob = json.dumps(parts if endpoint is None else [endpoint, *parts], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def generate(backend: Backend, requests: Sequence[Request], on_done: OnDone) -> None:
    """Run single requests on any backend, reporting each completion as soon as the backend hands it over."""
    if not requests:
        return
    if isinstance(backend, IncrementalBackend):
        backend.complete(requests, on_done)
        return
    by_sampling: dict[Sampling, list[int]] = defaultdict(list)
    for j, (_, sampling) in enumerate(requests):
        by_sampling[sampling].append(j)
    for sampling, idx in by_sampling.items():
        for start in range(0, len(idx), PLAIN_BATCH):
            batch = idx[start : start + PLAIN_BATCH]
            completions = backend.chat([requests[j][0] for j in batch], sampling, 1)
            for j, samples in zip(batch, completions):
                on_done(j, samples[0])
