"""Proportions with their uncertainty, shared by evaluation and post-training: Wilson intervals, and McNemar's
exact test for two models scored on the same items."""

from __future__ import annotations

from scipy.stats import binomtest


def wilson(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (sound at small n and near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    ci = binomtest(correct, n).proportion_ci(confidence, method="wilson")
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
