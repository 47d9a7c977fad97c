"""Training objectives for the shared loop: next-token cross-entropy over positions that carry a label, and the
unigram floor a trained model's held-out loss is read against."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from phiforge.data.batches import batch_at, shifted
from phiforge.data.layouts import IGNORE
from phiforge.data.shards import Packed


@dataclass
class MicroLoss:
    """One micro-batch's loss summed over `count` items (labelled tokens, pairs) that the loop averages over."""

    loss_sum: torch.Tensor
    count: torch.Tensor | int
    tokens: int  # tokens the forward pass read, for throughput
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # summed like the loss, logged as means


@dataclass
class NextTokenLoss:
    """Pretraining, midtraining and SFT: packed rows, loss on labelled tokens, held-out loss on `val`."""

    data: Packed
    val: Packed | None
    batch_size: int
    seed: int
    compile: bool = False

    def __post_init__(self) -> None:
        # Compiling model and loss together fuses casts, norms and the fp32 cross-entropy (docs/benchmarks.md).
        self.loss_fn = torch.compile(token_loss_sum) if self.compile else token_loss_sum

    def micro_batch(self, model: torch.nn.Module, index: int, device: torch.device, rank: int = 0,
                    world: int = 1) -> MicroLoss:
        x, y, pos = batch_at(self.data, index, self.batch_size // world, self.seed, rank, world)
        loss, n = self.loss_fn(model, x.to(device), y.to(device), None if pos is None else pos.to(device))
        return MicroLoss(loss, n, x.numel())

    def val_loss(self, model: torch.nn.Module) -> float | None:
        return None if self.val is None else mean_loss(model, self.val, self.batch_size, max_rows=64)

    @property
    def seq_len(self) -> int:
        return self.data.seq_len


def token_loss_sum(
    model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss (fp32) and the number of labelled positions, both tensors.

    Model and loss form one function so torch.compile can fuse the fp32 upcast of the logits into the
    cross-entropy (no Python int in between, which would break the graph). Per-example `positions` (packed SFT
    rows) with no attention mask make transformers mask attention block-diagonally (masking_utils'
    packed-sequence detection), for SDPA, eager, flex and flash-attention-2 alike.
    """
    logits = model(input_ids=inputs, position_ids=positions, use_cache=False).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, (targets != IGNORE).sum()


@torch.no_grad()
def mean_loss(model: torch.nn.Module, data: Packed, batch_size: int, max_rows: int | None = None) -> float:
    """Mean per-token loss over the first `max_rows` rows of `data` (all rows by default)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = min(len(data), max_rows or len(data))
    total, count = 0.0, 0
    for start in range(0, rows, batch_size):
        x, y, pos = shifted(data, np.arange(start, min(rows, start + batch_size)))
        loss, n = token_loss_sum(model, x.to(device), y.to(device), None if pos is None else pos.to(device))
        total += loss.item()
        count += int(n)
    model.train(was_training)
    return total / max(1, count)



def unigram_loss(train: Packed, val: Packed, vocab_size: int) -> float:
    """Cross-entropy of the held-out tokens under add-one-smoothed training unigram frequencies.

    The floor any model that learned something beyond token frequencies must beat. Counted shard by shard.
    """
    counts = np.ones(vocab_size, dtype=np.float64)
    for shard in train.tokens:
        counts += np.bincount(shard[:, 1:].ravel(), minlength=vocab_size)[:vocab_size]
    logp = np.log(counts / counts.sum())
    return float(-np.concatenate([logp[shard[:, 1:].ravel()] for shard in val.tokens]).mean())
