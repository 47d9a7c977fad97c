"""Micro-batches as a pure function of (seed, step), split over ranks (data/batches.py)."""

from __future__ import annotations

import torch

from phiforge.data.batches import batch_at, rows_at
from phiforge.data.layouts import pack_stream


def test_batches_are_deterministic_and_sharded_by_rank():
    data = pack_stream([list(range(i, i + 30)) for i in range(50)], seq_len=8, eos_id=0)
    a = batch_at(data, 3, 4, seed=1)
    b = batch_at(data, 3, 4, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0][:, 1:], a[1][:, :-1])  # targets are inputs shifted by one
    assert a[2] is None  # a stream's positions run on
    r0, *_ = batch_at(data, 0, 4, seed=1, rank=0, world=2)
    r1, *_ = batch_at(data, 0, 4, seed=1, rank=1, world=2)
    rows0 = {tuple(r.tolist()) for r in r0}
    rows1 = {tuple(r.tolist()) for r in r1}
    assert not rows0 & rows1  # ranks see different rows


def test_each_epoch_takes_every_row_once_in_a_fresh_order_and_ranks_split_the_world_batch():
    epochs = [[r for step in (2 * e, 2 * e + 1) for r in rows_at(10, step, 5, seed=7)] for e in range(2)]
    assert all(sorted(rows) == list(range(10)) for rows in epochs)
    assert epochs[0] != epochs[1]
    # two ranks with half the batch each take, between them, the rows one process takes for the whole batch
    assert rows_at(10, 3, 2, seed=7, rank=0, world=2) + rows_at(10, 3, 2, seed=7, rank=1, world=2) == rows_at(10, 3, 4, 7)
