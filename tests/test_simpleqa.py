"""SimpleQA's questions (generated facts, bogus questions, QA files), grading by rules or an LLM grader, and the
held-out questions a model's greedy answers are graded on (eval/simpleqa.py)."""

from __future__ import annotations

import json

import pytest

from phiforge.eval.simpleqa import (Question, bogus_questions, generate_facts, grade, grade_all, heldout_questions,
                                    is_refusal)
from phiforge.generation.fake import FakeBackend
from phiforge.posttrain.hallucination import BOGUS_REFUSAL, REFUSAL

SIX = Question("What is 2 times 3?", "6", verifier="numeric")
PARIS = Question("What is the capital of France?", "Paris", aliases=("Paris, France",))


@pytest.mark.parametrize("q, text, expected", [
    (SIX, "2 times 3 is 6.", "correct"),
    (SIX, "It is 6.0", "correct"),
    (SIX, "The answer is 7.", "incorrect"),
    (SIX, "Six-ish, roughly", "incorrect"),  # an attempt without the number
    (SIX, "I don't know.", "not_attempted"),
    (SIX, "I\u2019m not sure what that is.", "not_attempted"),
    (SIX, "", "not_attempted"),
    (PARIS, "The capital is paris.", "correct"),
    (PARIS, "I'm not sure, but I think it is Paris.", "correct"),  # hedged, yet gives the answer
    (PARIS, "It is Lyon.", "incorrect"),
    (PARIS, "Parisian cafes are lovely.", "incorrect"),  # a whole-word match, not a substring
    (PARIS, "I cannot answer that.", "not_attempted"),
    (Question("Which module defines `dedent`?", "textwrap", verifier="exact"), " Textwrap ", "correct"),
    (Question("Which module defines `dedent`?", "textwrap", verifier="exact"), "It is textwrap", "incorrect"),
    (Question("Capital of Zorbania?", None), "Zorbania City.", "incorrect"),
    (Question("Capital of Zorbania?", None), "There is no such country; Zorbania does not exist.", "not_attempted"),
])
def test_grading_rules(q, text, expected):
    assert grade(q, text) == expected


def test_refusal_targets_are_refusals_and_generators_are_offline_and_split():
    assert is_refusal(REFUSAL) and is_refusal(BOGUS_REFUSAL)
    train, heldout = generate_facts(400, 0), generate_facts(100, 0, heldout=True)
    assert len(train) == 400 and len(heldout) == 100
    assert not {q.key for q in train} & {q.key for q in heldout}
    assert {q.key.split(":")[0] for q in train} == {"mul", "unit", "stdlib", "z", "symbol"}
    import importlib
    for q in train:  # every answer is right: computed, or checked here by introspection
        if q.key.startswith("mul:"):
            _, a, b = q.key.split(":")
            assert int(q.answer) == int(a) * int(b)
        if q.key.startswith("stdlib:"):
            assert hasattr(importlib.import_module(q.answer), q.key.split(":")[1])
    bogus = bogus_questions(30, 0)
    assert len({q.question for q in bogus}) == 30 and all(q.bogus for q in bogus)
    assert bogus == bogus_questions(30, 0)


def test_an_llm_grader_overrides_the_rules_and_unreadable_verdicts_fall_back():
    verdicts = iter(["Grade: NOT_ATTEMPTED", "INCORRECT", "hmm"])
    grader = FakeBackend(lambda m, s, i: next(verdicts))
    bogus = Question("Capital of Zorbania?", None)
    grades, unreadable = grade_all([SIX, SIX, SIX, bogus], ["6", "6", "7", "Zorbania City"], grader)
    assert grades == ["not_attempted", "incorrect", "incorrect", "incorrect"] and unreadable == 1
    assert grader.calls == 3  # a bogus question has no gold answer to grade against: rules only


def test_heldout_questions_are_the_qa_files_first_facts_then_bogus_ones(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"Q{i}", "answer": str(i)}) + "\n" for i in range(5)))
    questions = heldout_questions(qa, 3, 2, seed=4)
    assert [q.question for q in questions[:3]] == ["Q0", "Q1", "Q2"] and questions[0].verifier == "numeric"
    assert questions[3:] == bogus_questions(2, 4)
    generated = heldout_questions(None, 50, 0, seed=4)
    assert len(generated) == 50 and not {q.key for q in generated} & {q.key for q in generate_facts(2000, 4)}
