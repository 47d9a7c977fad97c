"""Hallucination mitigation: teach a model to decline what it does not know, and grade it SimpleQA's way.

Questions with known answers (generated facts, or a user's `{question, answer}` file) go to the model, once
greedily and `samples` times sampled. Each answer is graded correct / incorrect / not attempted (a refusal
such as "I don't know" is not attempted), by rules (numeric, exact or alias match; refusal phrases) or by an
LLM grader backend. From the grades:
- SFT data: questions the model gets right (in at least `known_share` of its answers) keep its own right
  answer as the target; the others get a refusal target.
- DPO pairs: a refusal over a wrong answer (questions it does not know), a right answer over a refusal
  (questions it knows), and a refusal over any answer to a bogus question (invented entities).
The `simpleqa` eval task (eval/tasks.py) reports the same rates on held-out facts and bogus questions.
"""

from __future__ import annotations

import inspect
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from phiforge.config import values_of
from phiforge.errors import UserError
from phiforge.files import read_jsonl, write_json, write_jsonl
from phiforge.generation.base import Backend, Messages, Sampling
from phiforge.posttrain.hallucination_config import HallucinationConfig
from phiforge.synth.verify import exact, numeric

log = logging.getLogger("phiforge")

Grade = Literal["correct", "incorrect", "not_attempted"]
GRADES: tuple[Grade, ...] = ("correct", "incorrect", "not_attempted")

REFUSAL = "I don't know the answer to that, and I would rather not guess."
BOGUS_REFUSAL = "I have no record of that; it may not exist, so I can't answer it."


@dataclass(frozen=True)
class Question:
    question: str
    answer: str | None  # None: a bogus question, which has no answer
    aliases: tuple[str, ...] = ()  # other accepted spellings (alias verifier)
    verifier: Literal["numeric", "exact", "alias"] = "alias"
    key: str = ""  # a canonical id: generated facts split train / held-out on it

    @property
    def bogus(self) -> bool:
        return self.answer is None


# --- generated facts (no download: computed, or from the small tables below) ------------------------------------

UNITS = [("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("hours", "minutes", 60),
         ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7), ("kilograms", "grams", 1000),
         ("feet", "inches", 12), ("yards", "feet", 3), ("liters", "milliliters", 1000)]

ELEMENTS = ["hydrogen", "helium", "lithium", "beryllium", "boron", "carbon", "nitrogen", "oxygen", "fluorine",
            "neon", "sodium", "magnesium", "aluminium", "silicon", "phosphorus", "sulfur", "chlorine", "argon",
            "potassium", "calcium", "scandium", "titanium", "vanadium", "chromium", "manganese", "iron", "cobalt",
            "nickel", "copper", "zinc"]  # in atomic-number order
SYMBOLS = ["H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar", "K",
           "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn"]

STDLIB_MODULES = ["math", "json", "itertools", "functools", "statistics", "string", "textwrap", "random", "shutil",
                  "os.path", "bisect", "heapq", "operator", "glob", "fnmatch", "zlib", "base64", "hashlib",
                  "difflib", "calendar", "copy", "keyword", "colorsys", "fractions", "html", "shlex"]


def _stdlib_functions() -> dict[str, str]:
    """Public function name -> module, for names that exactly one module of STDLIB_MODULES defines."""
    import importlib

    owners: dict[str, list[str]] = {}
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if not attr.startswith("_") and (inspect.isfunction(value) or inspect.isbuiltin(value)):
                owners.setdefault(attr, []).append(name)
    return {fn: mods[0] for fn, mods in owners.items() if len(mods) == 1}


def _fact_families() -> list[list[Question]]:
    arithmetic = [Question(f"What is {a} times {b}?", str(a * b), verifier="numeric", key=f"mul:{a}:{b}")
                  for a in range(11, 100) for b in range(11, 100)]
    units = [Question(f"How many {small} are in {k} {big}?", str(k * f), verifier="numeric", key=f"unit:{big}:{k}")
             for big, small, f in UNITS for k in range(2, 21)]
    stdlib = [Question(f"Which Python standard-library module defines the function `{fn}`?", mod, key=f"stdlib:{fn}")
              for fn, mod in sorted(_stdlib_functions().items())]
    elements = [Question(f"What is the atomic number of {name}?", str(z), verifier="numeric", key=f"z:{name}")
                for z, name in enumerate(ELEMENTS, 1)]
    elements += [Question(f"Which chemical element has the symbol {sym}?", name, key=f"symbol:{sym}")
                 for sym, name in zip(SYMBOLS, ELEMENTS)]
    return [arithmetic, units, stdlib, elements]


def generate_facts(n: int, seed: int, heldout: bool = False) -> list[Question]:
    """Up to n questions with known answers from the training (or held-out) split, the families taken in turn."""
    from phiforge.data.synthetic_math import is_heldout

    rng = random.Random(seed)
    pools = []
    for family in _fact_families():
        pool = [q for q in family if is_heldout(q.key) == heldout]
        rng.shuffle(pool)
        pools.append(pool)
    out: list[Question] = []
    while len(out) < n and any(pools):
        for pool in pools:
            if pool and len(out) < n:
                out.append(pool.pop())
    return out


# --- bogus questions: invented entities, so no answer exists -----------------------------------------------------

_SYLLABLES = ["zor", "quel", "brax", "vin", "thal", "mor", "kesh", "lun", "drav", "pim", "ost", "yar", "glen", "fex",
              "sab", "wint", "orl", "nub", "cray", "tev"]
_FIELDS = ["Physics", "Chemistry", "Literature", "Medicine", "Economics"]
_BOGUS = [
    "What is the capital of the country {place}ania?",
    "In which year did {person} win the Nobel Prize in {field}?",
    "What is the atomic number of the element {place}ium?",
    "How tall is Mount {place} in meters?",
    "Who was the first president of the Republic of {place}stan?",
    "In which year was the Treaty of {place} signed?",
    "Which Python standard-library module defines the function `{snake}`?",
]


def bogus_questions(n: int, seed: int) -> list[Question]:
    """n questions about made-up countries, people, elements, places and functions (templates x invented names)."""
    rng = random.Random(seed)
    real = set(_stdlib_functions())

    def word(parts: int) -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(parts))

    out, seen = [], set()
    while len(out) < n:
        snake = f"{word(2)}_{word(1)}"
        text = rng.choice(_BOGUS).format(place=word(2).capitalize(), snake=snake, field=rng.choice(_FIELDS),
                                         person=f"{word(2).capitalize()} {word(3).capitalize()}")
        if text not in seen and snake not in real:
            seen.add(text)
            out.append(Question(text, None, key=f"bogus:{text}"))
    return out


# --- reading a QA file -------------------------------------------------------------------------------------------


def read_qa(path: Path) -> list[Question]:
    """jsonl of {question, answer, optional aliases and verifier}; numeric answers get the numeric verifier."""
    out = []
    for i, row in enumerate(read_jsonl(path), 1):
        question, answer, aliases = row.get("question"), row.get("answer"), row.get("aliases", [])
        if (not isinstance(question, str) or not question.strip() or isinstance(answer, bool)
                or not isinstance(answer, (str, int, float)) or not str(answer).strip()):
            raise UserError(f"{path}: row {i} needs a 'question' string and an 'answer' (string or number)")
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise UserError(f"{path}: row {i}: 'aliases' must be a list of strings")
        verifier = row.get("verifier", "numeric" if re.fullmatch(r"-?[\d,]+(\.\d+)?", str(answer)) else "alias")
        if verifier not in ("numeric", "exact", "alias"):
            raise UserError(f"{path}: row {i}: verifier must be numeric, exact or alias, got {verifier!r}")
        out.append(Question(question, str(answer), tuple(aliases), verifier, key=f"qa:{i}"))
    if not out:
        raise UserError(f"{path}: no questions")
    return out


# --- grading -----------------------------------------------------------------------------------------------------

_REFUSAL = re.compile(
    r"\b(i (do not|don't|dont) know|i'?m not (sure|aware|certain)|i am not (sure|aware|certain)|not sure|"
    r"i (can ?not|can't|cannot) (answer|say|tell|determine|find)|i have no (record|information|idea|knowledge)|"
    r"(do not|don't) have (enough |any )?(information|data|knowledge)|no (record|information) (of|about|on)|"
    r"(does not|doesn't|may not|might not) exist|no such|not a real|fictional|made[- ]up|unable to (answer|find|determine))",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """Declines to answer: empty, or says it does not know / the thing does not exist."""
    return not text.strip() or _REFUSAL.search(text.replace("\u2019", "'")) is not None


def _normal(text: str) -> str:
    text = text.casefold().replace("'", "").replace("\u2019", "")
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def matches(q: Question, text: str) -> bool:
    """The verifier's match of an answer against the known one (and its aliases)."""
    if q.verifier == "numeric":
        return numeric({"answer": q.answer}, text).ok
    if q.verifier == "exact":
        return any(exact({"answer": a}, text).ok for a in (q.answer, *q.aliases))
    said = f" {_normal(text)} "
    return any(f" {_normal(a)} " in said for a in (q.answer, *q.aliases) if _normal(a))


def grade(q: Question, text: str) -> Grade:
    """SimpleQA's three grades by rules. A bogus question has no right answer: declining is `not_attempted`,
    anything else `incorrect`. A hedged answer that still gives the right one counts as correct."""
    if not q.bogus and matches(q, text):
        return "correct"
    return "not_attempted" if is_refusal(text) else "incorrect"


GRADER_PROMPT = """Grade a model's answer to a factual question against the gold answer.

Question: {question}
Gold answer: {answer}
Model's answer: {response}

CORRECT: the answer gives the gold answer (any wording) and does not contradict it.
INCORRECT: the answer gives something else, or contradicts the gold answer.
NOT_ATTEMPTED: the answer declines, says it does not know, or gives no answer.
Reply with one word: CORRECT, INCORRECT or NOT_ATTEMPTED."""

_VERDICT = re.compile(r"\b(CORRECT|INCORRECT|NOT[_ ]ATTEMPTED)\b")


def grade_all(questions: list[Question], texts: list[str], grader: Backend | None = None) -> tuple[list[Grade], int]:
    """Grades of (question, answer) pairs and how many grader answers were unreadable (those are graded by rules).

    Bogus questions are always graded by rules (there is no gold answer to show a grader).
    """
    grades = [grade(q, t) for q, t in zip(questions, texts)]
    asked = [k for k, q in enumerate(questions) if not q.bogus] if grader is not None else []
    if not asked:
        return grades, 0
    prompts = [[{"role": "user", "content": GRADER_PROMPT.format(question=questions[k].question,
                                                                   answer=questions[k].answer, response=texts[k])}]
               for k in asked]
    unreadable = 0
    for k, (reply,) in zip(asked, grader.chat(prompts, Sampling(temperature=0.0, max_tokens=16), 1)):
        found = _VERDICT.findall(reply.upper())
        if found:
            grades[k] = found[-1].lower().replace(" ", "_")  # type: ignore[assignment]
        else:
            unreadable += 1
    return grades, unreadable


def rates(grades: list[Grade], bogus_grades: list[Grade] = ()) -> dict[str, float]:
    """SimpleQA's numbers: shares of each grade, correct given attempted, their F-score (harmonic mean of
    correct and correct-given-attempted), and the share of bogus questions declined."""
    n = len(grades)
    share = {g: sum(x == g for x in grades) / n if n else 0.0 for g in GRADES}
    attempted = share["correct"] + share["incorrect"]
    given = share["correct"] / attempted if attempted else 0.0
    f = 2 * share["correct"] * given / (share["correct"] + given) if share["correct"] + given else 0.0
    out = share | {"correct_given_attempted": given, "f_score": f}
    if bogus_grades:
        out["bogus_refusal"] = sum(g == "not_attempted" for g in bogus_grades) / len(bogus_grades)
    return out


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
