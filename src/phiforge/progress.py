"""Where a run stands: "stage i of N", and the ETA of the whole run.

Each stage's declaration estimates its cost from the recipe's sizes (documents to label, teacher samples, training
tokens, searches, problems) at seconds per unit measured on the reference machine (docs/benchmarks.md, tiny recipe);
once stages have finished, the remaining estimate is scaled by how much slower or faster this run has been so far.
"""

from __future__ import annotations

import time

from phiforge.recipe import Recipe
from phiforge.stage import Stage

# Seconds per unit on the reference machine (2-core EPYC, avx512_bf16; the tiny recipe): rough, since the
# run's own measured speed corrects them after the first stage. Each stage's declaration (`Stage.estimate`)
# adds up its units with these.
TRAIN_TOKENS_PER_S = 7000.0
TEACHER_TOKEN_S = 0.05  # SmolLM2 decoding, batched: about 20 tokens/s per sample in flight
LABEL_S = 0.6  # one quality label, prefix cached
SAMPLE_S = 0.1  # one sampled completion in Pivotal Token Search
GREEDY_ANSWER_S = 0.05  # one greedy reply of a small model to a held-out problem
FIXED_S = 15.0  # loading models, compiling, writing outputs


def training_s(cfg, pairs: bool = False) -> float:
    """A training section's steps x rows x tokens at the reference speed; DPO's `pairs` cost chosen and rejected."""
    rows = (getattr(cfg, "steps", 0) or 0) * getattr(cfg, "batch_size", 1) * getattr(cfg, "grad_accum", 1)
    seq = getattr(cfg, "seq_len", 256) * getattr(cfg, "context_multiplier", 1)
    return rows * seq * (2 if pairs else 1) / TRAIN_TOKENS_PER_S


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


class RunProgress:
    """The stages of one run, their estimates, and what has been measured so far in this run."""

    def __init__(self, recipe: Recipe, stages: list[Stage]) -> None:
        self.names = [s.name for s in stages]
        self.estimates = [s.estimate(recipe) for s in stages]
        self.start = time.perf_counter()
        self.measured = 0.0  # seconds spent in stages run (not skipped) so far
        self.estimated_done = 0.0  # their estimates
        self.current = -1

    def begin(self, index: int) -> None:
        self.current = index
        self.stage_start = time.perf_counter()

    def end(self, index: int, ran: bool) -> None:
        if ran:
            self.measured += time.perf_counter() - self.stage_start
            self.estimated_done += self.estimates[index]

    def speed(self) -> float:
        """Measured seconds per estimated second in this run (1 until a stage has run)."""
        return self.measured / self.estimated_done if self.estimated_done > 0 else 1.0

    def eta(self) -> float:
        """Seconds left in the whole run: the current stage's estimate less its time so far, and the stages after it."""
        left = sum(self.estimates[self.current + 1 :]) * self.speed()
        current = self.estimates[self.current] * self.speed() - (time.perf_counter() - self.stage_start)
        return left + max(0.0, current)

    def label(self) -> str:
        """'stage 4 of 12, run ETA 6:40' for the current stage's progress bar."""
        if self.current < 0:
            return ""
        return f"stage {self.current + 1} of {len(self.names)}, run ETA {_clock(self.eta())}"

    def line(self) -> str:
        return (f"stage {self.current + 1} of {len(self.names)}: {self.names[self.current]} "
                f"(elapsed {_clock(time.perf_counter() - self.start)}, whole run ETA {_clock(self.eta())})")


_active: RunProgress | None = None


def activate(run: RunProgress | None) -> None:
    global _active
    _active = run


def bar_label(name: str) -> str:
    """A progress bar's description: the stage's own name, plus where the run stands when a run is going."""
    return f"{name} [{_active.label()}]" if _active is not None and _active.label() else name
