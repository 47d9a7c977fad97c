"""Hallucination mitigation: refusal SFT targets and pairs from a scripted model, the simpleqa eval task on a tiny
model, and the command (SimpleQA's questions and grading: test_simpleqa.py)."""

from __future__ import annotations

import json

import pytest

from phiforge.eval.simpleqa import Question
from phiforge.eval.tasks import TASKS, EvalInput
from phiforge.generation.fake import FakeBackend
from phiforge.posttrain.hallucination import BOGUS_REFUSAL, REFUSAL, run_hallucination
from phiforge.posttrain.hallucination_config import HallucinationConfig
from phiforge.recipe import EvalConfig
from phiforge.tokenizer import load_tokenizer

from conftest import phiforge
from planted import train_planted_hf

SIX = Question("What is 2 times 3?", "6", verifier="numeric")


def scripted(messages, sampling, i):
    """Knows 2x3, always says 21 to 4x5, refuses 5x5, is right on 3x3 only greedily and on even samples,
    answers one bogus question and declines the other."""
    q = messages[-1]["content"]
    greedy = sampling.temperature == 0
    if "2 times 3" in q:
        return "It is 6."
    if "4 times 5" in q:
        return "21"
    if "5 times 5" in q:
        return "I don't know."
    if "3 times 3" in q:
        return "9" if greedy or i % 2 == 0 else "8"
    if "Zorbania" in q:
        return "Zorbania City"
    return "I have no information about that."


def test_sft_targets_and_pairs_from_a_scripted_model(tmp_path):
    questions = [SIX, Question("What is 4 times 5?", "20", verifier="numeric"),
                 Question("What is 5 times 5?", "25", verifier="numeric"),
                 Question("What is 3 times 3?", "9", verifier="numeric"),
                 Question("What is the capital of the country Zorbania?", None),
                 Question("In which year did Quel Moryar win the Nobel Prize in Physics?", None)]
    model = FakeBackend(scripted)
    summary = run_hallucination(model, questions, tmp_path, HallucinationConfig(samples=4))
    sft = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    targets = [(row["messages"][0]["content"], row["messages"][1]["content"]) for row in sft]
    assert targets == [
        (SIX.question, "It is 6."),  # known: keeps its own right answer
        ("What is 4 times 5?", REFUSAL),  # always wrong: refuse
        ("What is 5 times 5?", REFUSAL),  # never answers: keep refusing
        ("What is 3 times 3?", "9"),  # right in 3 of 5 answers: known
        (questions[4].question, BOGUS_REFUSAL),
        (questions[5].question, BOGUS_REFUSAL),
    ]
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    got = [(p["kind"], p["prompt"][0]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs]
    assert got == [
        ("answer_over_refusal", SIX.question, "It is 6.", REFUSAL),
        ("refusal_over_wrong_answer", "What is 4 times 5?", REFUSAL, "21"),
        ("answer_over_refusal", "What is 3 times 3?", "9", REFUSAL),
        ("refusal_over_bogus_answer", questions[4].question, BOGUS_REFUSAL, "Zorbania City"),
    ]
    grades = [json.loads(line) for line in (tmp_path / "grades.jsonl").read_text().splitlines()]
    assert [g["greedy"] for g in grades] == ["correct", "incorrect", "not_attempted", "correct", "incorrect",
                                             "not_attempted"]
    assert grades[3]["correct_share"] == 0.6 and len(grades[3]["answers"]) == 5
    rates = summary["greedy"]
    assert (rates["correct"], rates["incorrect"], rates["not_attempted"]) == (0.5, 0.25, 0.25)
    assert rates["correct_given_attempted"] == pytest.approx(2 / 3) and rates["bogus_refusal"] == 0.5
    assert summary["pairs"] == {"answer_over_refusal": 2, "refusal_over_wrong_answer": 1,
                                "refusal_over_bogus_answer": 1}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("planted") / "model"
    train_planted_hf(path)  # answers any chat prompt with `x y 7` or `x y 3`
    return path


def test_simpleqa_eval_task_on_a_tiny_model(planted, tmp_path):
    from transformers import AutoModelForCausalLM

    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": "Q", "answer": a}) + "\n" for a in ("7", "3")))
    model, tok = AutoModelForCausalLM.from_pretrained(planted).eval(), load_tokenizer(planted)
    cfg = EvalConfig(tasks=["simpleqa"], qa=qa, bogus_questions=4, batch_size=4)
    got = TASKS["simpleqa"](EvalInput(model, tok, cfg, [], [], 64, 0))
    # Both questions get the same greedy reply: one of them is right, the other wrong; bogus ones are answered.
    assert got == {"correct": 0.5, "incorrect": 0.5, "not_attempted": 0.0, "correct_given_attempted": 0.5,
                   "f_score": 0.5, "bogus_refusal": 0.0, "empty": 0.0, "n": 2, "n_bogus": 4}
    default = TASKS["simpleqa"](EvalInput(model, tok, EvalConfig(max_problems=5, bogus_questions=0), [], [], 64, 0))
    assert default["n"] == 5 and "bogus_refusal" not in default
    assert default["correct"] + default["incorrect"] + default["not_attempted"] == pytest.approx(1.0)


def test_cli_writes_data_and_a_rate_table_and_rejects_a_bad_qa_file(planted, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": "Q", "answer": a}) + "\n" for a in ("7", "3")))
    proc = phiforge("hallucination", "--model", planted, "--qa", qa, "--out", tmp_path / "out", "--bogus", "2",
                    "--samples", "2")
    assert "correct_given_attempted" in proc.stdout and "bogus_refusal" in proc.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["questions"] == 2 and summary["bogus_questions"] == 2 and summary["grader"] == "rules"
    sft = (tmp_path / "out" / "sft.jsonl").read_text().splitlines()
    assert len(sft) == 4 and sum(BOGUS_REFUSAL in line for line in sft) == 2
    assert sum(1 for _ in (tmp_path / "out" / "grades.jsonl").open()) == 4
    qa.write_text(json.dumps({"question": "Q"}) + "\n")
    proc = phiforge("hallucination", "--model", planted, "--qa", qa, "--out", tmp_path / "o2", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("row 1 needs a 'question' string and an 'answer' "
                                                                 "(string or number)")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_recipe_turns_on_simpleqa_with_its_own_qa_file(tmp_path):
    import yaml

    from conftest import SMOKE
    from phiforge.recipe import load_recipe

    (tmp_path / "qa.jsonl").write_text(json.dumps({"question": "Q", "answer": "7"}) + "\n")
    data = yaml.safe_load(SMOKE.read_text())
    data["eval"] = {"tasks": ["perplexity", "simpleqa"], "qa": "qa.jsonl", "bogus_questions": 5}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.eval.qa == tmp_path / "qa.jsonl" and "simpleqa" in recipe.eval.tasks
    assert "simpleqa" not in EvalConfig().tasks  # recipes opt in
