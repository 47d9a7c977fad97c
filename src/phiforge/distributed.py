"""More than one process: torchrun's process group, FSDP2 sharding, and rank-0-only work.

Launched by torchrun (it sets RANK, WORLD_SIZE, MASTER_ADDR...), phiforge joins the process group on start
(gloo on CPU, nccl on GPU). Training stages run on every rank with the model sharded by FSDP2; every other
stage, and every write a run keeps (manifests, metrics, exported models), happens on rank 0 while the other
ranks wait for it. Without torchrun nothing here does anything: one process, world size 1.

Two timeouts (seconds, environment variables):
- PHIFORGE_DIST_TIMEOUT (default 1800): the process group's, for collectives during training: a rank that
  stops answering fails the others after this long. torchrun stops the other workers as soon as one dies, so
  this bound only matters for a hang, not a crash.
- PHIFORGE_RANK0_WAIT_TIMEOUT (default 172800, two days): how long the other ranks wait for rank 0 to finish
  a stage it runs alone (corpus, synth, eval... can take hours). That wait is a barrier on its own gloo
  group with this timeout, so a long rank-0 stage is not mistaken for a dead rank, and a rank 0 that dies
  still ends the wait at once (gloo sees the closed connection; torchrun stops the group).

An asynchronous checkpoint (`async_checkpoint: true`) coordinates its ranks from a background thread, on a gloo
group of its own (with the training timeout), so its collectives never interleave with the training loop's.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from phiforge.errors import UserError

log = logging.getLogger("phiforge")

T = TypeVar("T")

_wait_group: dist.ProcessGroup | None = None
_checkpoint_group: dist.ProcessGroup | None = None
_alone = False  # rank 0 running a stage by itself: no collectives, no sharding


def launched() -> bool:
    """Started by torchrun (or anything that sets its environment)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _seconds(name: str, default: int) -> timedelta:
    value = os.environ.get(name, str(default))
    try:
        return timedelta(seconds=float(value))
    except ValueError:
        raise UserError(f"{name}={value!r}: expected a number of seconds") from None


def init() -> None:
    """Join torchrun's process group; a no-op in a plain process or when already joined."""
    global _wait_group, _checkpoint_group
    if not launched() or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = _seconds("PHIFORGE_DIST_TIMEOUT", 1800)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    _wait_group = dist.new_group(backend="gloo", timeout=_seconds("PHIFORGE_RANK0_WAIT_TIMEOUT", 172800))
    _checkpoint_group = dist.new_group(backend="gloo", timeout=timeout)


def active() -> bool:
    """Training shards the model and reduces across ranks (torchrun, even with one process)."""
    return dist.is_initialized() and not _alone


def checkpoint_group() -> dist.ProcessGroup | None:
    """The gloo group asynchronous checkpoints coordinate on (None in one process: DCP then saves alone)."""
    return _checkpoint_group if active() else None


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes the run's files and logs."""
    return not dist.is_initialized() or dist.get_rank() == 0


def wait_for_main(what: str) -> None:
    """Every rank waits here until rank 0 arrives (rank 0 arrives when its part is done)."""
    if not dist.is_initialized() or _alone:
        return
    try:
        dist.barrier(group=_wait_group)
    except Exception as e:  # gloo reports a peer that died as a RuntimeError (connection closed)
        raise UserError(f"rank {dist.get_rank()}: another rank stopped while this one waited for {what} "
                        f"(see the first rank's error above): {e}") from None


@contextlib.contextmanager
def main_alone(what: str) -> Iterator[bool]:
    """Rank 0 runs the block as a single process (no collectives); the others skip it and wait for it.

    Yields whether this rank runs the block."""
    global _alone
    if not dist.is_initialized():
        yield True
        return
    if is_main():
        _alone = True
        try:
            yield True
        finally:
            _alone = False
    else:
        yield False
    wait_for_main(what)


def on_main(what: str, work: Callable[[], T]) -> T:
    """`work()` run by rank 0 alone (as in main_alone), its result sent to every rank: a rank-0 part of a stage
    that all ranks run (generation, a file only rank 0 writes) whose outcome the others need."""
    if not active():  # one process, or already rank 0 alone
        return work()
    result: list = [None]
    with main_alone(what) as here:
        if here:
            result[0] = work()
    dist.broadcast_object_list(result, src=0, group=_wait_group)
    return result[0]


def local_batch(batch_size: int, label: str) -> int:
    """The micro-batch of one rank: the recipe's batch_size is the whole micro-batch across ranks."""
    if batch_size % world():
        raise UserError(f"{label}: batch_size {batch_size} does not split over {world()} processes; "
                        f"use a multiple of {world()}")
    return batch_size // world()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over the ranks (the values themselves in one process)."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def shard(model: torch.nn.Module, bf16: bool = False) -> torch.nn.Module:
    """FSDP2: each transformer block its own unit, then the root (embeddings, final norm, head). With `bf16`, the
    gathered parameters and so the compute are bf16 while gradients are reduced in fp32 (MixedPrecisionPolicy);
    the sharded fp32 parameters stay what the optimizer steps."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in model.model.layers:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights, gathered onto rank 0's CPU (empty on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
