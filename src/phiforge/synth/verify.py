"""Verifiers: does a completion solve a problem? Used by synthetic data filters, PTS oracles and evals.

A problem is a dict with at least `answer` and a `verifier` name (default "numeric"). Every verifier
returns a Verdict, never raises on model output: a garbled completion is simply wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from phiforge.errors import UserError


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str = ""


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def _as_fraction(text: str) -> Fraction | None:
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def numeric(problem: dict, completion: str) -> Verdict:
    """The last number in the completion equals the answer (fractions and decimals compared exactly)."""
    found = _NUMBER.findall(completion.replace(",", ""))
    if not found:
        return Verdict(False, "no number in completion")
    got, want = _as_fraction(found[-1]), _as_fraction(str(problem["answer"]).replace(",", ""))
    return Verdict(got is not None and got == want, f"got {found[-1]}, want {problem['answer']}")


def exact(problem: dict, completion: str) -> Verdict:
    """The completion, stripped and case-folded, equals the answer."""
    got = completion.strip().casefold()
    return Verdict(got == str(problem["answer"]).strip().casefold(), f"got {completion.strip()[:40]!r}")


VERIFIERS: dict[str, Callable[[dict, str], Verdict]] = {"numeric": numeric, "exact": exact}


def verify(problem: dict, completion: str) -> Verdict:
    name = problem.get("verifier", "numeric")
    if name not in VERIFIERS:
        raise UserError(f"unknown verifier {name!r}; known: {', '.join(sorted(VERIFIERS))}")
    return VERIFIERS[name](problem, completion)
