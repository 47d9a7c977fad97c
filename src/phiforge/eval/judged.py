"""Judged evaluation, as Phi-4's report did it where no verifier exists: an LLM judge reads the answers.

- **Pairwise comparison** (ArenaHard style, `judged_comparison`): the candidate and a baseline model answer the same
  prompts greedily; the judge sees both answers and gives one of ArenaHard's verdict labels (`[[A>>B]]` ...
  `[[B>>A]]`). Every prompt is judged twice, the candidate shown first and then second, so a judge that prefers a
  position gives each model one game and a win rate of 0.5 rather than a verdict; the share of prompts whose two
  verdicts agree (position consistency) says how much of the judge's choice was position. The candidate's points per
  game are 1 (better), 0.5 (tie), 0; a prompt scores the mean of its readable games, and the win rate is the mean over
  prompts with a seeded bootstrap 95% interval over prompts (the prompt is the sampled unit: its two games are not
  independent).
- **Judged items** (PhiBench style, `judged_items`): each item carries judging notes saying what a right answer must
  contain; the judge scores the model's answer against them on 0-10. Mean score with a bootstrap 95% interval.

Both read a judge's written answer (`method: generate`) or, for a small judge that writes no verdict line, its
next-token probabilities (`method: probs`: of `A` and `B`, or of the digits 0-5 doubled to 0-10, as posttrain/judge.py
does). An unreadable judge answer is counted (`unparseable`) and left out, never fatal. Results are plain dicts:
the summary, and `rows` with every prompt's answers, judge prompts' verdicts and the judge's raw answers.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from phiforge.config import Fraction, PositiveInt, RecipePath, Section, Text
from phiforge.errors import UserError
from phiforge.files import read_jsonl_as
from phiforge.generation.base import Backend, Messages, expected_score
from phiforge.generation.judging import DIGITS, greedy_answers, last_score, score_pattern
from phiforge.stats import bootstrap_mean

log = logging.getLogger("phiforge")

Method = Literal["generate", "probs"]
_METHOD = Field("generate", description="generate: the judge writes its verdict or score; probs: its next-token "
                                        "probabilities (for small judges such as smollm2).")


class ComparisonConfig(Section):
    prompts: RecipePath | None = Field(
        None, description="A jsonl of {prompt} rows; none: the questions of the built-in judged items.")
    method: Method = _METHOD
    tie_margin: Fraction = Field(
        0.1, description="probs: a game is a tie when P(A) and P(B) differ by at most this share of their sum.")
    max_tokens: PositiveInt = Field(256, description="Tokens per candidate and baseline answer (greedy).")
    judge_max_tokens: PositiveInt = Field(512, description="Tokens per judge answer (generate).")
    resamples: PositiveInt = Field(2000, description="Bootstrap resamples of the prompts for the 95% interval.")

    def prompt_set(self) -> list[str]:
        """The prompts file's prompts, or the built-in items' questions."""
        return read_prompts(self.prompts) if self.prompts else [item.question for item in BUILTIN_ITEMS]


class JudgedItemsConfig(Section):
    path: RecipePath | None = Field(
        None, description="A jsonl of {question, notes} rows, notes saying what a right answer must contain; "
                          "none: the built-in items.")
    method: Method = _METHOD
    max_tokens: PositiveInt = Field(256, description="Tokens per answer (greedy).")
    judge_max_tokens: PositiveInt = Field(256, description="Tokens per judge answer (generate).")
    resamples: PositiveInt = Field(2000, description="Bootstrap resamples of the items for the 95% interval.")

    def item_set(self) -> list["JudgedItem"]:
        """The items file's items, or the built-in ones."""
        return read_items(self.path) if self.path else BUILTIN_ITEMS


class PromptRow(BaseModel):
    prompt: Text


class JudgedItem(BaseModel):
    question: Text
    notes: Text


# Original questions with judging notes (PhiBench's design, at the scale of a small model): math, code, science and
# reasoning a right answer can be checked against in a sentence.
BUILTIN_ITEMS = [JudgedItem(question=q, notes=n) for q, n in [
    ("What is 17 times 23?", "The answer must be 391."),
    ("Solve for x: 3x + 5 = 20.", "The answer must be x = 5; showing the step 3x = 15 is a plus."),
    ("What is the derivative of x^3 + 2x with respect to x?", "The answer must be 3x^2 + 2."),
    ("A train travels 120 km in 2 hours. What is its average speed?", "The answer must be 60 km/h (60 kilometres "
     "per hour)."),
    ("Is 91 a prime number? Explain.", "The answer must say no, because 91 = 7 x 13."),
    ("Write a Python function that returns the largest number in a list.", "The answer must give a Python function "
     "(def ...) that returns the largest value, with max() or a loop that compares elements; returning an index or "
     "sorting in place without returning is wrong."),
    ("In Python, what does `len([1, 2, 3])` return?", "The answer must be 3."),
    ("What is the difference between a list and a tuple in Python?", "The answer must say that a list is mutable "
     "and a tuple is immutable (cannot be changed after creation)."),
    ("Why is the sky blue?", "The answer must say that sunlight is scattered by the air (Rayleigh scattering) and "
     "that blue light, with its shorter wavelength, is scattered more than red."),
    ("What gas do plants take in for photosynthesis?", "The answer must be carbon dioxide (CO2)."),
    ("Water boils at what temperature at sea level, in degrees Celsius?", "The answer must be 100 degrees Celsius."),
    ("If all cats are animals and Tom is a cat, is Tom an animal?", "The answer must say yes, and may say it "
     "follows from the two premises."),
    ("I have 3 apples, eat one and buy 4 more. How many apples do I have?", "The answer must be 6."),
    ("Name the planet closest to the Sun.", "The answer must be Mercury."),
    ("Give a one-sentence definition of an algorithm.", "The answer must describe a finite sequence of well-defined "
     "steps or instructions that solves a problem or performs a task, in about one sentence."),
    ("What is the capital of Japan?", "The answer must be Tokyo."),
]]


def read_prompts(path: Path) -> list[str]:
    if not (rows := read_jsonl_as(path, PromptRow)):
        raise UserError(f"{path}: no prompts (expected jsonl rows with a 'prompt' string)")
    return [row.prompt for row in rows]


def read_items(path: Path) -> list[JudgedItem]:
    if not (items := read_jsonl_as(path, JudgedItem)):
        raise UserError(f"{path}: no items (expected jsonl rows with 'question' and 'notes' strings)")
    return items


def _asked(question: str) -> Messages:
    return [{"role": "user", "content": question}]


# --- pairwise comparison -----------------------------------------------------------------------------------------

PAIRWISE_RUBRIC = """Please act as an impartial judge and compare the responses of two AI assistants to the user prompt below. Judge which response is more correct, helpful and relevant, and clearer; do not let the order of the responses or their length sway you.

[User prompt]
{prompt}

[The start of Assistant A's answer]
{first}
[The end of Assistant A's answer]

[The start of Assistant B's answer]
{second}
[The end of Assistant B's answer]

"""
GENERATE_VERDICT = """Explain your judgement in a few sentences, then end with exactly one of these verdict labels:
[[A>>B]] A is significantly better; [[A>B]] A is slightly better; [[A=B]] tie; [[B>A]] B is slightly better; [[B>>A]] B is significantly better."""
PROBS_VERDICT = "Which response is better? Answer with one letter, A or B."

# The first answer's points under each of ArenaHard's labels (a strong and a slight win count alike in a win rate).
FIRST_POINTS = {"A>>B": 1.0, "A>B": 1.0, "A=B": 0.5, "B>A": 0.0, "B>>A": 0.0}
_VERDICT = re.compile(r"\[\[\s*(A>>B|A>B|A=B|B>A|B>>A)\s*\]\]")
ORDERS = ("candidate_first", "baseline_first")


def parse_verdict(answer: str) -> str | None:
    """The last verdict label in a judge's answer (it may quote the labels before choosing), or None."""
    found = _VERDICT.findall(answer)
    return found[-1] if found else None


def probs_verdict(probs: dict[str, float], tie_margin: float) -> str | None:
    """A verdict from the judge's probabilities of `A` and `B`: the likelier letter, a tie when they are within
    tie_margin of their sum, None when neither got any probability."""
    a, b = probs["A"], probs["B"]
    if a + b <= 0:
        return None
    if abs(a - b) <= tie_margin * (a + b):
        return "A=B"
    return "A>B" if a > b else "B>A"


def pairwise_messages(prompt: str, first: str, second: str, method: Method) -> Messages:
    tail = GENERATE_VERDICT if method == "generate" else PROBS_VERDICT
    return [{"role": "user", "content": PAIRWISE_RUBRIC.format(prompt=prompt, first=first, second=second) + tail}]


def _verdicts(judge: Backend, asks: list[Messages], cfg: ComparisonConfig) -> list[tuple[str | dict, str | None]]:
    """(the judge's raw answer, its verdict or None) per question."""
    if cfg.method == "probs":
        return [(p, probs_verdict(p, cfg.tie_margin)) for p in judge.choice_probs(asks, ["A", "B"])]
    return [(a, parse_verdict(a)) for a in greedy_answers(judge, asks, cfg.judge_max_tokens)]


def compare_answers(prompts: list[str], candidate: list[str], baseline: list[str], judge: Backend,
                    cfg: ComparisonConfig, seed: int = 0) -> dict:
    """The judge's comparison of two models' answers to the same prompts, in both orders: summary and rows."""
    asks = [pairwise_messages(p, c, b, cfg.method) for p, c, b in zip(prompts, candidate, baseline)]
    asks += [pairwise_messages(p, b, c, cfg.method) for p, c, b in zip(prompts, candidate, baseline)]
    judged = _verdicts(judge, asks, cfg)
    rows, scores = [], []
    consistent = both = first_wins = decisive = 0
    for i, (prompt, c, b) in enumerate(zip(prompts, candidate, baseline)):
        games = []
        for order, (answer, verdict) in zip(ORDERS, (judged[i], judged[len(prompts) + i])):
            first = None if verdict is None else FIRST_POINTS[verdict]
            points = first if first is None or order == "candidate_first" else 1 - first
            games.append({"order": order, "judge_answer": answer, "verdict": verdict, "candidate_points": points})
            if first is not None and first != 0.5:
                decisive += 1
                first_wins += first == 1.0
        readable = [g["candidate_points"] for g in games if g["candidate_points"] is not None]
        score = sum(readable) / len(readable) if readable else None
        agree = readable[0] == readable[1] if len(readable) == 2 else None
        if score is not None:
            scores.append(score)
        if agree is not None:
            both += 1
            consistent += agree
        rows.append({"prompt": prompt, "candidate": c, "baseline": b, "games": games, "score": score,
                     "consistent": agree})
    unparseable = sum(v is None for _, v in judged)
    if unparseable:
        log.warning("judged comparison: %d of %d judge answers had no readable verdict and were left out",
                    unparseable, len(judged))
    low, high = bootstrap_mean(scores, seed, cfg.resamples)
    return {
        "win_rate": _round(sum(scores) / len(scores) if scores else None), "ci95": [_round(low), _round(high)],
        "n": len(scores), "prompts": len(prompts), "games": len(judged) - unparseable, "unparseable": unparseable,
        "ties": sum(v == "A=B" for _, v in judged),
        "position_consistency": {"consistent": consistent, "n": both,
                                 "rate": _round(consistent / both if both else None)},
        # share of decisive games won by the answer shown first: 0.5 for a judge without position bias
        "first_position_wins": _round(first_wins / decisive if decisive else None),
        "judge": judge.model, "method": cfg.method, "seed": seed, "rows": rows,
    }


def judged_comparison(candidate: Backend, baseline: Backend, judge: Backend, cfg: ComparisonConfig,
                      seed: int = 0) -> dict:
    """ArenaHard-style win rate of `candidate` against `baseline` on cfg.prompts (or the built-in questions)."""
    prompts = cfg.prompt_set()
    asks = [_asked(p) for p in prompts]
    result = compare_answers(prompts, greedy_answers(candidate, asks, cfg.max_tokens),
                             greedy_answers(baseline, asks, cfg.max_tokens), judge, cfg, seed)
    return {"candidate": candidate.model, "baseline": baseline.model} | result


# --- judged items ------------------------------------------------------------------------------------------------

ITEM_RUBRIC = """You are grading an answer to a question against judging notes, which say what a right answer must contain.

[Question]
{question}

[Judging notes]
{notes}

[Answer]
{answer}

"""
GENERATE_SCORE = """Write one or two sentences of reasoning, then end with exactly this line, 0 for an answer that misses everything the notes ask for and 10 for one that gives all of it:
Score: <0-10>"""
PROBS_SCORE = "Score from 0 (misses everything the notes ask for) to 5 (gives all of it). Answer with one digit:"
SCALE = (0.0, 10.0)
_SCORE = score_pattern("score")


def item_messages(item: JudgedItem, answer: str, method: Method) -> Messages:
    tail = GENERATE_SCORE if method == "generate" else PROBS_SCORE
    return [{"role": "user", "content": ITEM_RUBRIC.format(question=item.question, notes=item.notes,
                                                            answer=answer) + tail}]


def score_answers(items: list[JudgedItem], answers: list[str], judge: Backend, cfg: JudgedItemsConfig,
                  seed: int = 0) -> dict:
    """The judge's 0-10 score of each answer against its item's notes: mean with a bootstrap interval, and rows."""
    asks = [item_messages(item, a, cfg.method) for item, a in zip(items, answers)]
    judged: list[tuple[str | dict, float | None]]
    if cfg.method == "probs":
        judged = []
        for p in judge.choice_probs(asks, DIGITS):
            expected = expected_score(p)
            judged.append((p, None if expected is None else 2 * expected))  # 0-5 doubled to the 0-10 scale
    else:
        judged = [(a, last_score(a, _SCORE, *SCALE)) for a in greedy_answers(judge, asks, cfg.judge_max_tokens)]
    rows = [{"question": item.question, "notes": item.notes, "answer": a, "judge_answer": raw,
             "score": _round(score)} for item, a, (raw, score) in zip(items, answers, judged)]
    scores = [s for _, s in judged if s is not None]
    unparseable = len(judged) - len(scores)
    if unparseable:
        log.warning("judged items: %d of %d judge answers had no readable score and were left out",
                    unparseable, len(judged))
    low, high = bootstrap_mean(scores, seed, cfg.resamples, bounds=SCALE)
    return {"mean_score": _round(sum(scores) / len(scores) if scores else None), "ci95": [_round(low), _round(high)],
            "scale": list(SCALE), "n": len(scores), "items": len(items), "unparseable": unparseable,
            "judge": judge.model, "method": cfg.method, "seed": seed, "rows": rows}


def judged_items(model: Backend, judge: Backend, cfg: JudgedItemsConfig, seed: int = 0) -> dict:
    """PhiBench-style mean score of `model`'s greedy answers to cfg.path's items (or the built-in items)."""
    items = cfg.item_set()
    answers = greedy_answers(model, [_asked(item.question) for item in items], cfg.max_tokens)
    return {"model": model.model} | score_answers(items, answers, judge, cfg, seed)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
