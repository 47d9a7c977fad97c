"""Verifiers: does a completion solve a problem? Used by synthetic data filters, PTS oracles and evals.

A problem is a dict with a `verifier` name (default "numeric") and what that verifier needs: `answer`
(numeric, exact, math) or `test`, `entry_point` and an optional `prompt` (code, HumanEval's fields).
Every verifier returns a Verdict, never raises on model output: a garbled completion is simply wrong.

`plurality` / `plurality_filter` score agreement among k sampled answers to one question, the report's
plurality filter for seed questions without a trusted answer: unanimous questions are too easy to teach
anything, questions without a clear majority are too hard or ill-posed.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from phiforge.errors import UserError


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str = ""
    isolation: str | None = None  # code verdicts: the sandbox's isolation level ("namespaces" or "weak")


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def _as_fraction(text: str) -> Fraction | None:
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def final_number(text: str) -> str | None:
    """The last number in a text: the answer a completion committed to."""
    found = _NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else None


def numeric(problem: dict, completion: str) -> Verdict:
    """The last number in the completion equals the answer (fractions and decimals compared exactly)."""
    got_text = final_number(completion)
    if got_text is None:
        return Verdict(False, "no number in completion")
    got, want = _as_fraction(got_text), _as_fraction(str(problem["answer"]).replace(",", ""))
    return Verdict(got is not None and got == want, f"got {got_text}, want {problem['answer']}")


def exact(problem: dict, completion: str) -> Verdict:
    """The completion, stripped and case-folded, equals the answer."""
    got = completion.strip().casefold()
    return Verdict(got == str(problem["answer"]).strip().casefold(), f"got {completion.strip()[:40]!r}")


def math_equivalent(problem: dict, completion: str) -> Verdict:
    """Symbolic or numeric equivalence of the completion's final answer (boxed or last) with `answer`,
    by math-verify: "\\frac{1}{2}" equals "0.5", "(x+1)^2" equals "x^2+2x+1"."""
    from math_verify import parse
    from math_verify import verify as equivalent

    # math-verify times out with SIGALRM, which only the main thread may use; elsewhere it runs untimed.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    reference = str(problem["answer"])
    if "$" not in reference and "\\boxed" not in reference:
        reference = f"${reference}$"  # bare LaTeX is only found between delimiters
    want = parse(reference, parsing_timeout=timeout)
    if not want:
        return Verdict(False, f"cannot read the reference answer {problem['answer']!r} as math")
    got = parse(completion, parsing_timeout=timeout)
    if not got:
        return Verdict(False, "no answer found in completion")
    return Verdict(equivalent(want, got, timeout_seconds=timeout), f"got {got[-1]}, want {want[-1]}")


PYTHON_FENCES = {"", "python", "python3", "py"}


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The Python code in a completion: the longest fenced python block (preferring blocks that define
    `entry_point`), or the whole text when it has no fenced block."""
    from markdown_it import MarkdownIt

    fences = [t for t in MarkdownIt().parse(text) if t.type == "fence"]
    blocks = [t.content for t in fences if t.info.strip().lower() in PYTHON_FENCES]
    if not blocks:
        return text
    defining = [b for b in blocks if entry_point and _defines(b, entry_point)]
    return max(defining or blocks, key=len)


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def code_solution(problem: dict, completion: str) -> str:
    """The solution the code verifier runs: the completion's code, after the problem's `prompt` when the
    completion does not define `entry_point` (HumanEval style: the model wrote the body under the given
    signature)."""
    for field in ("test", "entry_point"):
        if not problem.get(field):
            raise UserError(
                f"code problem {problem.get('task_id', '')!r} has no {field!r}: code problems need 'test' (code "
                "defining check(candidate)) and 'entry_point' (the function check is called with)"
            )
    solution = extract_code(completion, problem["entry_point"])
    if not _defines(solution, problem["entry_point"]):
        solution = problem.get("prompt", "") + solution
    return solution


def code_check(problem: dict, completion: str) -> dict:
    """run_check's arguments for a completion of a code problem."""
    return {"solution": code_solution(problem, completion), "test": problem["test"],
            "entry_point": problem["entry_point"], "prompt": problem.get("prompt", "")}


def code_passes(problem: dict, completion: str) -> Verdict:
    """The completion's code passes the problem's tests: check(candidate) runs in its own sandboxed process
    and calls the solution, in another, with plain data (sandbox.run_check), so a pass cannot be faked by
    exiting early, by tampering with the solution's process, or by answers that claim equality."""
    from phiforge.synth.sandbox import run_check

    result = run_check(**code_check(problem, completion))
    return Verdict(result.passed, f"{result.status}: {result.reason}"[:300], result.isolation)


VERIFIERS: dict[str, Callable[[dict, str], Verdict]] = {
    "numeric": numeric,
    "exact": exact,
    "math": math_equivalent,
    "code": code_passes,
}


def verify(problem: dict, completion: str) -> Verdict:
    name = problem.get("verifier", "numeric")
    if name not in VERIFIERS:
        raise UserError(f"unknown verifier {name!r}; known: {', '.join(sorted(VERIFIERS))}")
    return VERIFIERS[name](problem, completion)


@dataclass(frozen=True)
class Plurality:
    majority: str | None  # the first answer of the largest group of equivalent answers
    agreement: float  # that group's share of all k answers (unanswered ones included)


def plurality(answers: Sequence[str | None], verifier: str = "exact") -> Plurality:
    """Group k sampled final answers by equivalence under `verifier` and measure the largest group.

    Two answers are equivalent when the verifier accepts one with the other as the reference answer, so
    "math" groups "0.5" with "\\frac{1}{2}". None or blank answers (no answer extracted) count in k but
    join no group. Ties go to the group seen first.
    """
    groups: list[list[str]] = []
    for answer in answers:
        if answer is None or not answer.strip():
            continue
        for group in groups:
            if verify({"answer": group[0], "verifier": verifier}, answer).ok:
                group.append(answer)
                break
        else:
            groups.append([answer])
    if not groups:
        return Plurality(None, 0.0)
    largest = max(groups, key=len)
    return Plurality(largest[0], len(largest) / len(answers))


def plurality_filter(
    rows: Iterable[dict], low: float = 0.5, high: float = 0.9, verifier: str = "exact", key: str = "answers"
) -> Iterator[dict]:
    """Keep the rows whose k answers (`row[key]`) agree with a share in [low, high]; each kept row gains
    `majority` and `agreement`. The defaults drop unanimous questions (too easy) and those without a
    majority (too hard or ambiguous)."""
    if not 0.0 <= low <= high <= 1.0:
        raise UserError(f"plurality band [{low}, {high}] must satisfy 0 <= low <= high <= 1")
    for row in rows:
        if not row.get(key):
            raise UserError(f"plurality: row {str(row)[:80]} has no {key!r} list of sampled answers")
        vote = plurality(row[key], verifier)
        if low <= vote.agreement <= high:
            yield {**row, "majority": vote.majority, "agreement": vote.agreement}
