"""Judge-guided DPO pairs: the policy answers each prompt several times, an LLM judge grades every answer
for accuracy, style and detail against a rubric, and the best and worst answers become a pair.

Any two backends do: the policy is usually an `HFBackend` over the model being post-trained, the judge the
recipe's teacher (SmolLM2, a local directory, or an OpenAI-compatible server). Both sit behind the request
cache, so a rerun pays for no sample or grade twice. A pair keeps its provenance: every response with the
judge's prompt, raw answer and parsed scores.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from phiforge.config import values_of
from phiforge.errors import UserError
from phiforge.files import read_jsonl, write_json, write_jsonl
from phiforge.generation.base import Backend, Messages, Sampling, expected_score
from phiforge.generation.judging import DIGITS, greedy_answers, last_score, score_pattern, transcript
from phiforge.posttrain.dpo import _messages
from phiforge.posttrain.judge_config import JudgeConfig
from phiforge.progress import bar_label

log = logging.getLogger("phiforge")

DIMENSIONS = ("accuracy", "style", "detail")

RUBRIC = """You are grading an AI assistant's response to a user. Score it on three dimensions, each an integer from 0 to 10:
- Accuracy: is everything it says correct, and does it answer what was asked?
- Style: is it clear, well organised, and in a helpful tone, without padding?
- Detail: does it give the explanation or steps the question needs, neither too little nor too much?

[Conversation]
{conversation}

[Response]
{response}

Write one or two sentences of reasoning, then end with exactly these three lines:
Accuracy: <0-10>
Style: <0-10>
Detail: <0-10>"""

# `probs` judging: one question per dimension, answered by the judge's next-token distribution over the digits 0-5
# (the expected digit, doubled to the 0-10 scale). A small judge (SmolLM2-135M) does not write the three score
# lines of RUBRIC; its digits always give a grade, though how well they rank answers is the judge's (SmolLM2's:
# near chance, docs/design.md).
DIMENSION_RUBRICS = {
    "accuracy": "Is everything the response says correct, and does it answer what was asked?",
    "style": "Is the response clear, well organised and in a helpful tone, without padding?",
    "detail": "Does the response give the explanation or steps the question needs, neither too little nor too much?",
}
# Worked examples as earlier turns, a high and a low grade per dimension: a small judge answers with a digit only
# when shown it (as for the quality labels).
DIMENSION_SHOTS = {
    "accuracy": (("What is 3 + 4?", "3 + 4 = 7.", "5"), ("What is 3 + 4?", "3 + 4 = 9.", "0")),
    "style": (("Name a fruit.", "An apple.", "5"), ("Name a fruit.", "fruit fruit um so a fruit is like, you know, the", "0")),
    "detail": (("Solve 2x = 10.", "Divide both sides by 2: x = 5.", "5"), ("Solve 2x = 10.", "x", "0")),
}


def _graded_turn(conversation: Messages, response: str, dimension: str) -> dict[str, str]:
    return {"role": "user", "content": f"[Conversation]\n{transcript(conversation)}\n\n[Response]\n{response}\n\n{dimension.capitalize()} (0-5):"}


def dimension_messages(conversation: Messages, response: str, dimension: str) -> Messages:
    """The judge's question for one dimension: the rubric, the worked examples, then the response to grade."""
    shots = [m for q, a, grade in DIMENSION_SHOTS[dimension]
             for m in (_graded_turn([{"role": "user", "content": q}], a, dimension), {"role": "assistant", "content": grade})]
    return [{"role": "system", "content": f"You grade an AI assistant's response to a user for {dimension}. "
             f"{DIMENSION_RUBRICS[dimension]} Answer with one digit from 0 (worst) to 5 (best)."},
            *shots, _graded_turn(conversation, response, dimension)]


# "Accuracy: 8", "**Style**: 7/10", '"detail": 9' (JSON); the last mention of each dimension counts.
_SCORE = {d: score_pattern(d) for d in DIMENSIONS}


def judge_messages(conversation: Messages, response: str) -> Messages:
    return [{"role": "user", "content": RUBRIC.format(conversation=transcript(conversation), response=response)}]


def parse_scores(answer: str) -> dict[str, float] | None:
    """The three 0-10 scores in a judge's answer, or None when any is missing or out of range."""
    scores = {}
    for dim, pattern in _SCORE.items():
        if (score := last_score(answer, pattern, 0, 10)) is None:
            return None
        scores[dim] = score
    return scores


def pair_from(conversation: Messages, graded: list[dict], min_gap: float) -> dict | None:
    """Best vs worst of one prompt's graded responses (unparseable ones left out), if their gap is big enough."""
    scored = [g for g in graded if g["score"] is not None]
    if len(scored) < 2:
        return None
    best = max(scored, key=lambda g: g["score"])
    worst = min(scored, key=lambda g: g["score"])
    gap = best["score"] - worst["score"]
    if gap < min_gap:
        return None
    return {
        "prompt": conversation,
        "chosen": [{"role": "assistant", "content": best["response"]}],
        "rejected": [{"role": "assistant", "content": worst["response"]}],
        "judge": {"chosen_score": best["score"], "rejected_score": worst["score"], "gap": round(gap, 4),
                  "responses": graded},
    }


def judge_prompts(policy: Backend, judge: Backend, conversations: list[Messages], cfg: JudgeConfig,
                  seed: int) -> list[list[dict]]:
    """Sample cfg.samples responses per conversation and grade each; per conversation, one record per response."""
    sampling = Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed)
    responses = policy.chat(conversations, sampling, cfg.samples)
    if cfg.method == "probs":  # one forward pass per response and dimension, all in one batch
        asks = [dimension_messages(c, r, d) for c, rs in zip(conversations, responses) for r in rs for d in DIMENSIONS]
        probs = iter(judge.choice_probs(asks, DIGITS))
        accuracy_asks = iter(asks[DIMENSIONS.index("accuracy") :: len(DIMENSIONS)])  # kept with each grade
        return [[probs_grade(r, [next(probs) for _ in DIMENSIONS], next(accuracy_asks)) for r in rs]
                for rs in responses]
    asks = [judge_messages(c, r) for c, rs in zip(conversations, responses) for r in rs]
    answers = iter(greedy_answers(judge, asks, cfg.judge_max_tokens))
    asked = iter(asks)
    graded = []
    for rs in responses:
        rows = []
        for r in rs:
            answer, ask = next(answers), next(asked)
            scores = parse_scores(answer)
            rows.append({"response": r, "judge_prompt": ask[0]["content"], "judge_answer": answer,
                         "scores": scores, "score": _mean(scores)})
        graded.append(rows)
    return graded


def probs_grade(response: str, probs: list[dict[str, float]], ask: Messages) -> dict:
    """One response's record from the judge's digit probabilities per dimension: 0-10 scores (the expected digit,
    doubled), None when a dimension's digits got no probability."""
    expected = [expected_score(p) for p in probs]
    scores = None if None in expected else {d: round(2 * e, 4) for d, e in zip(DIMENSIONS, expected)}
    return {"response": response, "judge_prompt": ask[-1]["content"], "judge_answer": dict(zip(DIMENSIONS, probs)),
            "scores": scores, "score": _mean(scores)}


def _mean(scores: dict[str, float] | None) -> float | None:
    return round(sum(scores.values()) / len(scores), 4) if scores else None


def read_prompts(path: Path) -> list[Messages]:
    prompts = [_messages(row.get("prompt"), path, i, "prompt") for i, row in enumerate(read_jsonl(path), 1)]
    if not prompts:
        raise UserError(f"{path}: no prompts (expected jsonl rows with a 'prompt' string or message list)")
    return prompts


def run_judge_pairs(policy: Backend, judge: Backend, prompts_path: Path, out: Path, cfg: JudgeConfig,
                    seed: int = 0) -> dict:
    """Judge-guided pairs for every prompt of `prompts_path` into `out` (jsonl `phiforge dpo` reads), with
    OUT-stem.summary.json. Wrap both backends in CachedBackend to make a rerun resume."""
    conversations = read_prompts(prompts_path)
    pairs: list[dict] = []
    scores: list[float] = []  # every readable mean score
    stats: dict = {"prompts": len(conversations), "responses": 0, "unparseable": 0, "no_pair": 0}
    columns = (TextColumn(f"[bold]{bar_label('judge')}[/]"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[pairs]} pairs, {task.fields[bad]} unparseable"), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("judge", total=len(conversations), pairs=0, bad=0)
        for start in range(0, len(conversations), cfg.batch_prompts):
            chunk = conversations[start : start + cfg.batch_prompts]
            # Seeds differ per chunk (and so per prompt), yet stay fixed across reruns: the cache hits.
            for conversation, graded in zip(chunk, judge_prompts(policy, judge, chunk, cfg, seed + start * cfg.samples)):
                stats["responses"] += len(graded)
                stats["unparseable"] += sum(g["score"] is None for g in graded)
                scores += [g["score"] for g in graded if g["score"] is not None]
                pair = pair_from(conversation, graded, cfg.min_gap)
                if pair is None:
                    stats["no_pair"] += 1  # gap too small, or fewer than two graded
                else:
                    pairs.append(pair | {"judge": pair["judge"] | {"model": judge.model, "policy": policy.model}})
            bar.update(task, advance=len(chunk), pairs=len(pairs), bad=stats["unparseable"])
    stats["pairs"] = write_jsonl(out, pairs)
    # How the judge used its 0-10 scale, and how far apart the kept pairs are: a judge that gives everything
    # the same score yields no pairs.
    stats["score"] = ({"mean": round(sum(scores) / len(scores), 3), "min": min(scores), "max": max(scores)}
                      if scores else None)
    stats["gap_mean"] = round(sum(p["judge"]["gap"] for p in pairs) / len(pairs), 3) if pairs else None
    if stats["unparseable"]:
        log.warning("judge: %d of %d judge answers had no readable scores and were skipped",
                    stats["unparseable"], stats["responses"])
    rubric = RUBRIC if cfg.method == "generate" else DIMENSION_RUBRICS
    config = values_of(cfg, JudgeConfig) | {"seed": seed}
    write_json(out.parent / f"{out.stem}.summary.json", stats | {"config": config, "rubric": rubric})
    return stats
