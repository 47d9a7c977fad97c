"""Training state in one place, saved atomically and restored exactly, by one process or many.

TrainState gathers what a resumed run needs to continue bit for bit: model, optimizer and scheduler
state, RNG states (one set per rank) and the data position (the optimizer step; batches are a pure function
of it). Checkpoints are torch.distributed.checkpoint (DCP) directories: each rank writes its FSDP shards and
DCP writes `.metadata` last, so the same format serves one process and many and a checkpoint saved by N
processes loads into M (DCP re-shards). A save is synchronous, or (async_checkpoint) written in the background while
training goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from phiforge import distributed
from phiforge.files import full_disk_is_user_error, remove_stale_temporaries

log = logging.getLogger("phiforge")

COMPLETE = ".metadata"  # DCP writes it after every rank's shards: a directory without it is partial


@dataclass
class TrainState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int = 0  # optimizer steps taken; also the data position
    tokens_seen: int = 0

    def state_dict(self) -> dict:
        model, optimizer = get_state_dict(self.model, self.optimizer)
        return {
            "model": model,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            f"rng_rank{distributed.rank()}": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        key = f"rng_rank{distributed.rank()}"
        if key in state:  # a rank the saving run did not have keeps its fresh RNG
            set_rng_state(state[key])


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


@dataclass
class PendingSave:
    """An asynchronous save in flight: DCP writes `tmp` in a background thread; it becomes `path` once done."""

    future: Future
    tmp: Path
    path: Path


class Checkpointer:
    """step_NNNNNNN/ directories under `root`, each written whole (into a temp dir, renamed) or not at all.

    With `asynchronous`, save() copies the state to CPU memory and returns while DCP writes it in a background
    thread (dcp.async_save); the temp dir is renamed into place only once that write finished (commit_finished,
    each step, or wait(): before the next save and at the end of training), so a run killed meanwhile still has
    its previous checkpoint and a `.tmp` dir that steps() ignores."""

    def __init__(self, root: Path, keep: int, asynchronous: bool = False):
        self.root = root
        self.keep = keep
        self.asynchronous = asynchronous
        self.pending: PendingSave | None = None

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = (re.fullmatch(r"step_(\d+)", p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m and (self.root / m.group(0) / COMPLETE).is_file())

    def save(self, state: TrainState) -> Path:
        self.wait()
        path = self.root / f"step_{state.step:07d}"
        # Every rank writes into the same temp dir (so its name is fixed, not random); rank 0 renames it once all
        # have written. A run killed before the rename leaves only the .tmp dir, which steps() ignores.
        tmp = self.root / f".{path.name}.tmp"
        if distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        distributed.wait_for_main("the checkpoint directory")
        with self.writing(tmp, path):
            if self.asynchronous:  # the state is copied to CPU memory before this returns
                self.pending = PendingSave(dcp.async_save(state.state_dict(), checkpoint_id=tmp,
                                                          process_group=distributed.checkpoint_group()), tmp, path)
            else:
                dcp.save(state.state_dict(), checkpoint_id=tmp)
        if not self.asynchronous:
            distributed.wait_for_main("the checkpoint")  # dcp.save returns on rank 0 once all ranks' shards are written
            self.commit(tmp, path)
        return path

    def commit_finished(self) -> None:
        """Rename an asynchronous save into place as soon as it finished (rank 0; the others hold theirs until
        wait(): the next save or the end)."""
        if self.pending is not None and distributed.is_main() and self.pending.future.done():
            self.wait()

    def wait(self) -> None:
        """Wait for the asynchronous save in flight, if any, and rename it into place. No barrier: DCP's future
        on rank 0 ends after every rank's shards and the `.metadata` are written."""
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        with self.writing(pending.tmp, pending.path):
            pending.future.result()
        self.commit(pending.tmp, pending.path)

    @contextlib.contextmanager
    def writing(self, tmp: Path, path: Path) -> Iterator[None]:
        """A full disk is a UserError; a failed save leaves no temporary as big as a checkpoint."""
        try:
            with full_disk_is_user_error(path):
                try:
                    yield
                except CheckpointException as e:  # a BaseException: made an ordinary error, so a full disk is seen
                    raise RuntimeError(str(e).splitlines()[0]) from e
        except BaseException:
            if distributed.is_main():
                shutil.rmtree(tmp, ignore_errors=True)
            raise

    def commit(self, tmp: Path, path: Path) -> None:
        if distributed.is_main():
            if path.is_dir():
                shutil.rmtree(path)
            os.replace(tmp, path)
            for old in self.steps()[: -self.keep]:
                shutil.rmtree(self.root / f"step_{old:07d}", ignore_errors=True)

    def restore_latest(self, state: TrainState) -> int | None:
        """Load the newest checkpoint that reads back whole; a damaged one is skipped with a warning. A save killed
        midway left a temporary as big as a checkpoint: rank 0 removes it (no save runs while a stage restores)."""
        if distributed.is_main() and self.root.is_dir():
            remove_stale_temporaries(self.root)
            for tmp in self.root.glob(".step_*.tmp"):  # save()'s own fixed-name temporaries
                shutil.rmtree(tmp, ignore_errors=True)
        distributed.wait_for_main("stale checkpoint temporaries to go")
        for step in reversed(self.steps()):
            path = self.root / f"step_{step:07d}"
            try:
                saved = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
                blob = {k: v for k, v in state.state_dict().items()
                        if k in saved or any(s.startswith(k + ".") for s in saved)}
                dcp.load(blob, checkpoint_id=path)
            except (Exception, CheckpointException) as e:  # DCP raises the same CheckpointException on every rank
                log.warning("checkpoint %s unreadable (%s); trying the one before", path, str(e).splitlines()[0])
                continue
            state.load_state_dict(blob)
            return step
        return None
