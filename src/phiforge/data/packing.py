"""Tokenised training rows: mix sources by token share, pack documents, and serve batches.

A packed dataset is a (rows, seq_len + 1) token array, plus an optional label array of the same
shape where -100 marks positions that carry no loss (SFT prompts, padding). Row order comes from
the seed and the step alone, so a resumed run sees exactly the batches an uninterrupted one would,
and rank r of a data-parallel world takes every world-th row.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

IGNORE = -100


@dataclass
class Packed:
    tokens: np.ndarray  # (rows, seq_len + 1) int64
    labels: np.ndarray | None = None  # same shape; None means labels == tokens

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1] - 1

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "tokens.npy", self.tokens.astype(np.uint32))
        if self.labels is not None:
            np.save(directory / "labels.npy", self.labels.astype(np.int32))

    @classmethod
    def load(cls, directory: Path) -> "Packed":
        tokens = np.load(directory / "tokens.npy").astype(np.int64)
        labels_path = directory / "labels.npy"
        labels = np.load(labels_path).astype(np.int64) if labels_path.exists() else None
        return cls(tokens, labels)


@dataclass
class SourceDraw:
    """How much of one source goes into a mixture: the report's Table 5 (planned, or drawn at pack time)."""

    share: float
    tokens: int
    unique_tokens: int

    @property
    def epochs(self) -> float:
        return self.tokens / max(1, self.unique_tokens)


def plan_mixture(shares: dict[str, float], unique_tokens: dict[str, int], total_tokens: int) -> dict[str, SourceDraw]:
    """Each source's quota of `total_tokens` by normalised share, and the epochs that makes over its unique tokens.

    `phiforge mixture plan` prints this; `mix_documents` draws documents to fill these quotas.
    """
    norm = sum(shares.values())
    return {
        name: SourceDraw(share / norm, int(total_tokens * share / norm), unique_tokens[name])
        for name, share in shares.items()
    }


def over_epoch_limit(draws: dict[str, SourceDraw], max_epochs: float) -> list[str]:
    """One warning per source repeated more than max_epochs times."""
    return [
        f"source '{name}' would be repeated {d.epochs:.1f} times (over max_epochs {max_epochs:g}): "
        "add unique data or lower its share"
        for name, d in draws.items()
        if d.epochs > max_epochs
    ]


def mix_documents(
    docs_by_source: dict[str, list[list[int]]], shares: dict[str, float], total_tokens: int, seed: int
) -> tuple[list[list[int]], dict[str, SourceDraw]]:
    """Draw documents from each source until it holds its share of `total_tokens`.

    A small source repeats (more epochs), a large one is subsampled; the draw order within a
    source is a seeded permutation, and the final document order is shuffled across sources.
    A document counts its tokens plus the separator after it.
    """
    rng = np.random.default_rng(seed)
    docs_by_source = {name: [d for d in docs_by_source[name] if d] for name in shares}
    plan = plan_mixture(shares, {n: sum(len(d) + 1 for d in docs) for n, docs in docs_by_source.items()}, total_tokens)
    drawn: list[list[int]] = []
    stats: dict[str, SourceDraw] = {}
    for name, planned in plan.items():
        docs = docs_by_source[name]
        taken = 0
        while docs and taken < planned.tokens:
            for i in rng.permutation(len(docs)):
                drawn.append(docs[i])
                taken += len(docs[i]) + 1
                if taken >= planned.tokens:
                    break
        stats[name] = SourceDraw(planned.share, taken, planned.unique_tokens)
    order = rng.permutation(len(drawn))
    return [drawn[i] for i in order], stats


def pack_stream(docs: list[list[int]], seq_len: int, eos_id: int, min_rows: int = 1) -> Packed:
    """Concatenate documents with EOS after each and cut into rows of seq_len + 1 tokens."""
    stream = np.fromiter((t for d in docs for t in (*d, eos_id)), dtype=np.int64)
    width = seq_len + 1
    rows = len(stream) // width
    if rows < min_rows:
        reps = -(-min_rows * width // max(1, len(stream)))
        stream = np.tile(stream, reps)
        rows = len(stream) // width
    return Packed(stream[: rows * width].reshape(rows, width))


def pack_examples(examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> Packed:
    """Pack (ids, labels) examples into rows without splitting one; padding carries no loss.

    An example longer than a row is cut at seq_len + 1 tokens.
    """
    width = seq_len + 1
    rows_t: list[list[int]] = []
    rows_l: list[list[int]] = []
    cur_t: list[int] = []
    cur_l: list[int] = []
    for ids, labels in examples:
        ids, labels = ids[:width], labels[:width]
        if len(cur_t) + len(ids) > width:
            rows_t.append(cur_t + [pad_id] * (width - len(cur_t)))
            rows_l.append(cur_l + [IGNORE] * (width - len(cur_l)))
            cur_t, cur_l = [], []
        cur_t += ids
        cur_l += labels
    if cur_t:
        rows_t.append(cur_t + [pad_id] * (width - len(cur_t)))
        rows_l.append(cur_l + [IGNORE] * (width - len(cur_l)))
    return Packed(np.array(rows_t, dtype=np.int64), np.array(rows_l, dtype=np.int64))


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def rows_at(n: int, micro_step: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Indices (of n examples) in micro-batch `micro_step` for this rank: a fresh permutation every epoch."""
    start = micro_step * batch_size * world + rank * batch_size
    return [int(_epoch_order(seed, epoch, n)[offset]) for epoch, offset in
            (divmod(pos, n) for pos in range(start, start + batch_size))]


def batch_at(data: Packed, micro_step: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
    """The (inputs, targets) micro-batch number `micro_step` for this rank: a pure function of its arguments."""
    idx = rows_at(len(data.tokens), micro_step, batch_size, seed, rank, world)
    rows = data.tokens[idx]
    labels = data.labels[idx] if data.labels is not None else rows
    return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(labels[:, 1:].copy())
