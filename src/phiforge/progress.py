"""Where a run stands: "stage i of N", and the ETA of the whole run.

Each stage's cost is estimated from the recipe's sizes (documents to label, teacher samples, training tokens,
searches, problems) at seconds per unit measured on the reference machine (docs/benchmarks.md, whole tiny recipe);
once stages have finished, the remaining estimate is scaled by how much slower or faster this run has been so far.
"""

from __future__ import annotations

import time

from phiforge.recipe import Recipe

# Seconds per unit on the reference machine (2-core EPYC, avx512_bf16; the tiny recipe): rough, since the
# run's own measured speed corrects them after the first stage.
_TRAIN_TOKENS_PER_S = 7000.0
_TEACHER_TOKEN_S = 0.05  # SmolLM2 decoding, batched: about 20 tokens/s per sample in flight
_LABEL_S = 0.6  # one quality label, prefix cached
_FIXED_S = 15.0  # loading models, compiling, writing outputs


def stage_estimate(recipe: Recipe, name: str) -> float:
    """Seconds this stage should take on the reference machine, from the recipe's sizes."""
    if name == "corpus":
        labels = recipe.curation.classifier.label_sample if recipe.curation and recipe.curation.classifier else 0
        return _FIXED_S + labels * _LABEL_S
    if name == "synth":
        max_tokens = recipe.teacher.max_tokens if recipe.teacher else 0
        teacher = sum(d.count for d in recipe.synth.datasets if d.type not in _GENERATORS)
        return _FIXED_S + teacher * 3 * max_tokens * _TEACHER_TOKEN_S  # about three teacher calls per sample
    if name in ("pretrain", "midtrain", "sft", "dpo", "judge_dpo", "hallucination"):
        cfg = getattr(recipe, name)
        rows = (getattr(cfg, "steps", 0) or 0) * getattr(cfg, "batch_size", 1) * getattr(cfg, "grad_accum", 1)
        seq = getattr(cfg, "seq_len", 256) * getattr(cfg, "context_multiplier", 1)
        tokens = rows * seq * (2 if name in ("dpo", "judge_dpo", "hallucination") else 1)  # chosen and rejected
        extra = 0.0
        if name == "judge_dpo":
            extra = cfg.max_prompts * cfg.samples * cfg.max_tokens * _TEACHER_TOKEN_S
        if name == "dpo" and recipe.pts is not None:  # greedy answers to the held-out problems, before and after
            extra = 2 * recipe.pts.heldout_problems * 0.05
        return _FIXED_S + tokens / _TRAIN_TOKENS_PER_S + extra
    if name == "pts":
        return _FIXED_S + recipe.pts.problems * recipe.pts.samples * 0.1
    if name == "eval":
        return _FIXED_S + recipe.eval.max_problems * 0.2 + recipe.eval.passkey_trials * len(recipe.eval.passkey_lengths)
    return 5.0  # tokenizer, report


_GENERATORS = ("arithmetic", "algebra", "unit_conversion", "code_exercise")  # programmatic, no teacher


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


class RunProgress:
    """The stages of one run, their estimates, and what has been measured so far in this run."""

    def __init__(self, recipe: Recipe, names: list[str]) -> None:
        self.names = names
        self.estimates = [stage_estimate(recipe, n) for n in names]
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
