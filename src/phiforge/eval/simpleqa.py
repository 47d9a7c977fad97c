"""SimpleQA's way of measuring hallucination: questions with known answers (generated facts, or a user's
`{question, answer}` file) and bogus ones about invented entities, each answer graded correct / incorrect / not
attempted (a refusal such as "I don't know" is not attempted) by rules or an LLM grader, and the rates of those grades.

The `simpleqa` eval task and the hallucination stage's held-out before/after grade a model's greedy chat answers
(`graded_replies`); the hallucination stage's training data (posttrain/hallucination.py) grades sampled ones.
"""

from __future__ import annotations

import inspect
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from phiforge.errors import UserError
from phiforge.files import read_jsonl
from phiforge.generation import Backend, Sampling
from phiforge.generation.greedy import chat_replies
from phiforge.synth.verify import exact, numeric

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Grade = Literal["correct", "incorrect", "not_attempted"]
GRADES: tuple[Grade, ...] = ("correct", "incorrect", "not_attempted")


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


# --- a model's graded greedy answers -----------------------------------------------------------------------------


def heldout_questions(qa: Path | None, facts: int, bogus: int, seed: int) -> list[Question]:
    """Held-out questions, facts first: up to `facts` of the QA file (else of the generated held-out facts), then
    `bogus` bogus questions."""
    known = read_qa(qa) if qa else generate_facts(facts, seed, heldout=True)
    return known[:facts] + bogus_questions(bogus, seed)


def graded_replies(model: PreTrainedModel, tok: PreTrainedTokenizerBase, questions: list[Question],
                   batch_size: int) -> list[dict]:
    """The model's greedy chat answers, each with SimpleQA's grade by rules: one row per question."""
    texts = chat_replies(model, tok, [q.question for q in questions], 48, batch_size)
    return [{"question": q.question, "answer": q.answer, "bogus": q.bogus, "reply": t, "grade": grade(q, t)}
            for q, t in zip(questions, texts)]


def simpleqa_rates(rows: list[dict]) -> dict[str, float]:
    """SimpleQA's rates of graded_replies' rows, and the share of blank replies."""
    facts, bogus = [r for r in rows if not r["bogus"]], [r for r in rows if r["bogus"]]
    # A blank reply grades as not attempted, but it is a broken model rather than a cautious one: count it apart.
    empty = sum(not r["reply"].strip() for r in rows) / len(rows)
    return rates([r["grade"] for r in facts], [r["grade"] for r in bogus]) | {"empty": empty, "n": len(facts),
                                                                            "n_bogus": len(bogus)}
