"""Hallucination mitigation: teach a model to decline what it does not know, and grade it SimpleQA's way.

Questions with known answers (generated facts, or a user's `{question, answer}` file) go to the model, once
greedily and `samples` times sampled. Each answer is graded correct / incorrect / not attempted (a refusal
such as "I don't know" is not attempted), by rules (numeric, exact or alias match; refusal phrases) or by an
LLM grader backend. From the grades:
- SFT data: questions the model gets right (in at least `known_share` of its answers) keep its own right
  answer as the target; the others get a refusal target.
- DPO pairs: a refusal over a wrong answer (questions it does not know), a right answer over a refusal
  (questions it knows), and a refusal over any answer to a bogus question (invented entities).
Questions, grading and rates are SimpleQA's (eval/simpleqa.py), which the `simpleqa` eval task reports on held-out
facts and bogus questions.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from phiforge.config import values_of
from phiforge.eval.simpleqa import Grade, Question, grade_all, rates
from phiforge.files import write_json, write_jsonl
from phiforge.generation.base import Backend, Messages, Sampling
from phiforge.posttrain.hallucination_config import HallucinationConfig

log = logging.getLogger("phiforge")

REFUSAL = "I don't know the answer to that, and I would rather not guess."
BOGUS_REFUSAL = "I have no record of that; it may not exist, so I can't answer it."


# --- training data -------------------------------------------------------------------------------------------------


@dataclass
class Graded:
    """One question, the model's answers (greedy first) and their grades."""

    question: Question
    answers: list[str]
    grades: list[Grade]

    @property
    def correct_share(self) -> float:
        return self.grades.count("correct") / len(self.grades)

    def first(self, g: Grade) -> str | None:
        return next((a for a, x in zip(self.answers, self.grades) if x == g), None)


def ask(policy: Backend, questions: list[Question], cfg: HallucinationConfig, seed: int) -> list[list[str]]:
    """Each question's greedy answer followed by cfg.samples sampled ones."""
    convs = [[{"role": "user", "content": q.question}] for q in questions]
    greedy = policy.chat(convs, Sampling(temperature=0.0, max_tokens=cfg.max_tokens, seed=seed), 1)
    if not cfg.samples:
        return greedy
    sampled = policy.chat(convs, Sampling(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=seed),
                          cfg.samples)
    return [g + s for g, s in zip(greedy, sampled)]


def training_data(graded: list[Graded], cfg: HallucinationConfig) -> tuple[list[dict], list[dict]]:
    """(SFT conversations, DPO pairs) from graded answers; see the module docstring for the rules."""
    sft, pairs = [], []

    def user(g: Graded) -> Messages:
        return [{"role": "user", "content": g.question.question}]

    def pair(g: Graded, chosen: str, rejected: str, kind: str) -> None:
        pairs.append({"prompt": user(g), "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}], "kind": kind})

    for g in graded:
        if g.question.bogus:
            sft.append({"messages": user(g) + [{"role": "assistant", "content": BOGUS_REFUSAL}], "kind": "bogus"})
            if (wrong := g.first("incorrect")) is not None:
                pair(g, BOGUS_REFUSAL, wrong, "refusal_over_bogus_answer")
        elif g.correct_share >= cfg.known_share:
            right = g.first("correct")
            sft.append({"messages": user(g) + [{"role": "assistant", "content": right}], "kind": "known"})
            pair(g, right, g.first("not_attempted") or REFUSAL, "answer_over_refusal")
        else:
            sft.append({"messages": user(g) + [{"role": "assistant", "content": REFUSAL}], "kind": "unknown"})
            if (wrong := g.first("incorrect")) is not None:
                pair(g, REFUSAL, wrong, "refusal_over_wrong_answer")
    return sft, pairs


def run_hallucination(policy: Backend, questions: list[Question], out: Path, cfg: HallucinationConfig,
                      grader: Backend | None = None, seed: int = 0) -> dict:
    """Ask, grade, and write OUT/grades.jsonl, OUT/sft.jsonl, OUT/pairs.jsonl and OUT/summary.json.

    `questions` may mix facts and bogus questions. Wrap `policy` (and `grader`) in CachedBackend to resume.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    graded: list[Graded] = []
    unreadable = 0
    chunk_size = 32  # questions asked and graded per step of the progress bar
    with Progress(TextColumn("[bold]hallucination[/]"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task("ask", total=len(questions))
        for start in range(0, len(questions), chunk_size):
            chunk = questions[start : start + chunk_size]
            answers = ask(policy, chunk, cfg, seed)
            flat_q = [q for q, a in zip(chunk, answers) for _ in a]
            grades, bad = grade_all(flat_q, [t for a in answers for t in a], grader)
            unreadable += bad
            it = iter(grades)
            graded += [Graded(q, a, [next(it) for _ in a]) for q, a in zip(chunk, answers)]
            bar.update(task, advance=len(chunk))
    sft, pairs = training_data(graded, cfg)
    write_jsonl(out / "grades.jsonl", (
        {"question": g.question.question, "answer": g.question.answer, "bogus": g.question.bogus,
         "greedy": g.grades[0], "correct_share": round(g.correct_share, 4),
         "answers": [{"text": a, "grade": x, "sampled": k > 0} for k, (a, x) in enumerate(zip(g.answers, g.grades))]}
        for g in graded))
    write_jsonl(out / "sft.jsonl", sft)
    write_jsonl(out / "pairs.jsonl", pairs)
    facts = [g.grades[0] for g in graded if not g.question.bogus]
    summary = {
        "questions": len(facts),
        "bogus_questions": len(graded) - len(facts),
        "greedy": rates(facts, [g.grades[0] for g in graded if g.question.bogus]),
        "sft": dict(Counter(row["kind"] for row in sft)),
        "pairs": dict(Counter(row["kind"] for row in pairs)),
        "grader": grader.model if grader is not None else "rules",
        "grader_unreadable": unreadable,
        "config": values_of(cfg, HallucinationConfig) | {"seed": seed},
    }
    write_json(out / "summary.json", summary)
    return summary
