"""Training state in one place, saved atomically and restored exactly.

TrainState gathers what a resumed run needs to continue bit for bit: model, optimizer and scheduler
state, RNG states and the data position (the optimizer step; batches are a pure function of it).
Its state_dict() is a plain nested dict, the shape torch.distributed.checkpoint saves sharded.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from phiforge.files import atomic_path, remove_stale_temporaries


@dataclass
class TrainState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int = 0  # optimizer steps taken; also the data position
    tokens_seen: int = 0

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])


class Checkpointer:
    """step_NNNNNNN/ directories under `root`, each written whole or not at all."""

    def __init__(self, root: Path, keep: int):
        self.root = root
        self.keep = keep

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = (re.fullmatch(r"step_(\d+)", p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m and (self.root / m.group(0) / "state.pt").is_file())

    def save(self, state: TrainState) -> Path:
        path = self.root / f"step_{state.step:07d}"
        with atomic_path(path) as tmp:
            tmp.mkdir()
            torch.save(state.state_dict(), tmp / "state.pt")
        for old in self.steps()[: -self.keep]:
            shutil.rmtree(self.root / f"step_{old:07d}", ignore_errors=True)
        return path

    def restore_latest(self, state: TrainState) -> int | None:
        """Load the newest whole checkpoint; a save killed midway left a temporary as big as one, removed here."""
        if self.root.is_dir():
            remove_stale_temporaries(self.root)
        steps = self.steps()
        if not steps:
            return None
        blob = torch.load(self.root / f"step_{steps[-1]:07d}" / "state.pt", weights_only=False)
        state.load_state_dict(blob)
        return steps[-1]
