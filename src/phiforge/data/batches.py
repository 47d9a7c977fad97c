"""Which rows each micro-batch takes: a pure function of (seed, step), so a resumed run sees exactly the batches an
uninterrupted one would, and rank r of a data-parallel world takes its own share of every micro-batch."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from phiforge.data.shards import Packed


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def rows_at(n: int, micro_step: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Indices (of n examples) in micro-batch `micro_step` for this rank: a fresh permutation every epoch."""
    start = micro_step * batch_size * world + rank * batch_size
    return [int(_epoch_order(seed, epoch, n)[offset]) for epoch, offset in
            (divmod(pos, n) for pos in range(start, start + batch_size))]


def batch_at(data: Packed, micro_step: int, batch_size: int, seed: int, rank: int = 0,
             world: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The (inputs, targets, input position ids) micro-batch number `micro_step` for this rank, a pure function of
    its arguments; position ids only where the rows hold packed examples (else None: positions run on)."""
    idx = rows_at(len(data), micro_step, batch_size, seed, rank, world)
    return shifted(data, idx)


def shifted(data: Packed, idx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Rows `idx` as model inputs, next-token targets and the inputs' position ids (None for a stream)."""
    tokens, labels = data.rows(idx)
    positions = data.position_rows(idx)
    return (torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(labels[:, 1:].copy()),
            None if positions is None else torch.from_numpy(positions[:, :-1].copy()))
