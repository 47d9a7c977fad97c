"""Proportions and means with their uncertainty, shared by evaluation and post-training: Wilson intervals, a seeded
bootstrap interval of a mean, and McNemar's exact test for two models scored on the same items."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import binomtest, bootstrap


def wilson(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (sound at small n and near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    ci = binomtest(correct, n).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_mean(values: Sequence[float], seed: int, resamples: int = 2000, bounds: tuple[float, float] = (0.0, 1.0),
                   confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of independent units (one value per prompt), seeded. Percentile
    rather than BCa: BCa is undefined when every value is the same (a model that wins every prompt). Fewer than two
    values bound nothing: the scale's `bounds`."""
    if len(values) < 2:
        return bounds
    ci = bootstrap((np.asarray(values, dtype=float),), np.mean, n_resamples=resamples, confidence_level=confidence,
                   method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def mcnemar_exact(before: list[bool], after: list[bool]) -> dict:
    """Two-sided exact McNemar test: under no change, improvements among discordant problems are Binomial(b+c, 1/2)."""
    improved = sum(a and not b for b, a in zip(before, after))
    regressed = sum(b and not a for b, a in zip(before, after))
    p = binomtest(improved, improved + regressed, 0.5).pvalue if improved + regressed else 1.0
    return {"improved": improved, "regressed": regressed, "p_value": float(p)}


def accuracy(outcomes: list[bool]) -> dict:
    k, n = sum(outcomes), len(outcomes)
    low, high = wilson(k, n)
    return {"correct": k, "n": n, "accuracy": k / n if n else 0.0, "ci95": [round(low, 4), round(high, 4)]}
