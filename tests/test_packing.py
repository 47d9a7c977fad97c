"""Packed SFT rows: examples sharing a row attend only within themselves (per-example position ids, which
transformers turns into a block-diagonal mask), so a packed row's loss is the loss of its examples alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phiforge.data.batches import shifted
from phiforge.data.layouts import IGNORE, pack_examples
from phiforge.model import build_model, load_config
from phiforge.train.loss import token_loss_sum


def examples(rng: np.random.Generator) -> list[tuple[list[int], list[int]]]:
    """Conversations of 5-20 tokens with the first half unlabelled, as the prompt of an SFT example is."""
    out = []
    for n in rng.integers(5, 21, size=12):
        ids = rng.integers(5, 1000, size=n).tolist()
        out.append((ids, [IGNORE] * (n // 2) + ids[n // 2 :]))
    return out


def summed(model, x, y, pos=None) -> tuple[float, int]:
    with torch.no_grad():
        loss, n = token_loss_sum(model, x, y, pos)
    return float(loss), int(n)


def test_packed_examples_lose_what_they_lose_alone():
    config = load_config("nano")
    config.initializer_range = 1.0  # weights large enough that what a token attends to moves its loss
    model = build_model(config, seed=0).eval()  # fp32, SDPA attention
    exs = examples(np.random.default_rng(0))
    packed = pack_examples(exs, seq_len=48, pad_id=4)
    assert len(packed) < len(exs)  # several examples a row
    x, y, pos = shifted(packed, np.arange(len(packed)))
    assert pos is not None and int((pos == 0).sum()) > len(packed)  # positions restart inside rows
    loss, count = summed(model, x, y, pos)

    alone = [summed(model, torch.tensor([ids[:-1]]), torch.tensor([labels[1:]])) for ids, labels in exs]
    assert count == sum(n for _, n in alone)
    # fp32 sums of ~100 token losses: only summation order differs
    assert loss == pytest.approx(sum(s for s, _ in alone), rel=1e-5)
    # what packing did before positions: each example also attended to the ones before it in its row
    assert summed(model, x, y)[0] != pytest.approx(loss, rel=1e-2)
