"""p(success) of a prefix from sampled completions, bounds on it and on a difference, and where to split a segment."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Estimate:
    """Successes among n sampled completions of one prefix; exact for a finished solution (ends in EOS)."""

    successes: int = 0
    n: int = 0
    exact: bool = False

    @property
    def p(self) -> float:
        return self.successes / self.n if self.n else float("nan")

    def bounds(self, z: float) -> tuple[float, float]:
        """Wilson score interval: sound near 0 and 1, where most prefixes of a solution sit."""
        if self.exact:
            return self.p, self.p
        n, p = self.n, self.p
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)


def gap_bounds(a: Estimate, b: Estimate, z: float) -> tuple[float, float]:
    """Bounds on |p_a - p_b| from Newcombe's hybrid score interval for a difference of proportions."""
    (la, ua), (lb, ub) = a.bounds(z), b.bounds(z)
    d = a.p - b.p
    lo = d - math.hypot(a.p - la, ub - b.p)
    hi = d + math.hypot(ua - a.p, b.p - lb)
    if lo >= 0:
        return lo, hi
    if hi <= 0:
        return -hi, -lo
    return 0.0, max(-lo, hi)


def split_point(cum_logp: list[float], start: int, end: int) -> int:
    """Where the segment's cumulative log-probability is halved (ties: nearest the middle); see docs/design.md."""
    half = (cum_logp[start] + cum_logp[end]) / 2
    return min(range(start + 1, end), key=lambda k: (abs(cum_logp[k] - half), abs(2 * k - start - end)))
