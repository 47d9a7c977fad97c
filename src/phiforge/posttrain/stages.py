"""The recipe's post-training stages: `pts` searches the previous stage's model (or init_from) for
pivotal tokens on verifiable training problems; `dpo` trains that model on the pairs and compares it
with the model it started from on held-out problems of the same kind; `judge_dpo` (DPO round 2) trains the
model dpo left on pairs an LLM judge picked from its own answers; `hallucination` trains the model left so far
to decline what it does not know and measures SimpleQA's rates before and after.

Under torchrun every rank runs dpo, judge_dpo and hallucination and trains (FSDP2); their generation, comparisons
and files are rank 0's (`distributed.on_main`, whose result every rank gets)."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from phiforge import distributed, progress
from phiforge.data import synthetic_math
from phiforge.files import read_jsonl, write_json, write_jsonl
from phiforge.generation.base import Backend, Messages
from phiforge.recipe import HallucinationStageConfig, PTSStageConfig, Recipe
from phiforge.rundir import StageResult
from phiforge.stage import Stage, StageContext

log = logging.getLogger("phiforge")


def generated_problems(cfg: PTSStageConfig, count: int, seed: int, heldout: bool) -> list[dict]:
    """Problems of cfg.families from one side of the key-hash split, in PTS's {prompt, answer, verifier} form."""
    families = tuple(synthetic_math.BY_NAME[f] for f in cfg.families)
    return [{"prompt": p.question, "answer": p.answer, "verifier": "numeric", "key": p.key}
            for p in synthetic_math.generate(count, seed, heldout=heldout, families=families)]


def run_pts_stage(ctx: StageContext) -> StageResult:
    from phiforge.posttrain.pts.runner import read_problems, run_pts

    recipe, cfg = ctx.recipe, ctx.recipe.pts
    assert cfg is not None
    source = ctx.start_model(cfg.init_from)
    if cfg.data is not None:
        train = read_problems(Path(cfg.data))
        heldout = read_problems(Path(cfg.heldout_data)) if cfg.heldout_data is not None else []
    else:
        train = generated_problems(cfg, cfg.problems, recipe.seed, heldout=False)
        heldout = generated_problems(cfg, cfg.heldout_problems, recipe.seed, heldout=True) if cfg.heldout_problems else []
    write_jsonl(ctx.out / "problems.jsonl", train)
    write_jsonl(ctx.out / "heldout.jsonl", heldout)
    log.info("pts: %d training problems, %d held out, searching %s", len(train), len(heldout), source)
    summary = run_pts(source, ctx.out / "problems.jsonl", ctx.out / "pairs.jsonl", cfg)
    return StageResult(metrics={"init_from": str(source), "heldout_problems": len(heldout), **summary})


def run_dpo_stage(ctx: StageContext) -> StageResult:
    """Every rank trains (under torchrun); rank 0 alone compares before and after."""
    from phiforge.posttrain.dpo import run_dpo

    recipe: Recipe = ctx.recipe
    cfg = recipe.dpo
    assert cfg is not None
    pairs = Path(cfg.pairs) if cfg.pairs is not None else ctx.input("pts", "pairs")
    source = ctx.start_model(cfg.init_from)
    if not any(True for _ in read_jsonl(pairs)):
        # A weak model or a strict search can leave nothing to learn from: say so, train nothing.
        log.warning("dpo: %s holds no pairs (PTS found no pivotal token that passed its checks); "
                    "skipping training: the model is unchanged. Try more pts.problems, a lower pts.p_gap or "
                    "pts.min_margin, or pts.min_p/max_p that keep more questions.", pairs)
        return StageResult(metrics={"skipped": "no pairs", "pairs": 0, "init_from": str(source)})
    summary = run_dpo(source, pairs, ctx.out, cfg, recipe.seed)
    metrics: dict = {"init_from": str(source), **summary}
    heldout = list(read_jsonl(ctx.input("pts", "heldout"))) if recipe.pts is not None else []
    if heldout:
        metrics["heldout"] = distributed.on_main("dpo's held-out comparison", lambda: heldout_comparison(ctx, source, heldout))
    return StageResult(metrics=metrics)


def heldout_comparison(ctx: StageContext, source: Path, heldout: list[dict]) -> dict:
    from phiforge.posttrain.compare import compare

    pts = ctx.recipe.pts
    assert pts is not None
    result, rows = compare(source, ctx.out / "model", heldout, pts.max_new_tokens, pts.batch_size)
    write_jsonl(ctx.out / "heldout_replies.jsonl", rows)
    write_json(ctx.out / "heldout.json", result)
    b, a, m = result["before"], result["after"], result["mcnemar"]
    log.info("dpo: held-out accuracy %.3f -> %.3f on %d problems (McNemar exact p = %.3g: %d improved, %d regressed)",
             b["accuracy"], a["accuracy"], b["n"], m["p_value"], m["improved"], m["regressed"])
    return result


def llm(ctx: StageContext, spec: str, cache_dir: Path) -> Backend:
    """A judge or grader: the recipe's teacher (`teacher`), or the hf backend over `smollm2` or a model directory."""
    from phiforge.generation import load_backend
    from phiforge.recipe import TeacherConfig

    teacher = ctx.recipe.teacher or TeacherConfig()
    return load_backend(teacher if spec == "teacher" else TeacherConfig(model=spec, batch_size=teacher.batch_size),
                        cache_dir)


def sft_prompts(ctx: StageContext, count: int, seed: int) -> list[Messages]:
    """The turns before the first answer of `count` distinct conversations of the run's SFT data, drawn at random."""
    from phiforge.posttrain import sft

    unique: dict[str, Messages] = {}
    for conversation in sft.read_conversations(sft.data_path(ctx)):
        turns = conversation[: next(i for i, m in enumerate(conversation) if m["role"] == "assistant")]
        if turns:
            unique.setdefault(json.dumps(turns), turns)
    prompts = sorted(unique.values(), key=json.dumps)
    random.Random(seed).shuffle(prompts)
    return prompts[:count]


def judge_pairs(ctx: StageContext, policy: Path) -> dict:
    """Judge-guided pairs of `policy`'s answers in OUT/pairs.jsonl (OUT/pairs.summary.json); both models are cached
    in OUT/cache/requests.sqlite, so a killed stage pays for no answer or grade twice."""
    from phiforge.generation import load_policy
    from phiforge.posttrain.judge import run_judge_pairs

    recipe, cfg = ctx.recipe, ctx.recipe.judge_dpo
    assert cfg is not None
    prompts = cfg.prompts
    if prompts is None:
        prompts = ctx.out / "prompts.jsonl"
        write_jsonl(prompts, ({"prompt": p} for p in sft_prompts(ctx, cfg.max_prompts, recipe.seed)))
    judge = llm(ctx, cfg.judge, ctx.out / "cache")
    log.info("judge_dpo: %s answers %s, %s judges", policy, prompts, judge.model)
    stats = run_judge_pairs(load_policy(policy, ctx.out / "cache"), judge, Path(prompts), ctx.out / "pairs.jsonl", cfg,
                            recipe.seed)
    return stats | {"judge": judge.model, "prompts_file": str(prompts)}


def run_judge_dpo_stage(ctx: StageContext) -> StageResult:
    from phiforge.posttrain.dpo import run_dpo

    cfg = ctx.recipe.judge_dpo
    assert cfg is not None
    source = ctx.start_model(cfg.init_from)
    judged = distributed.on_main("the judge's pairs", lambda: judge_pairs(ctx, source))
    if not judged["pairs"]:
        log.warning("judge_dpo: the judge kept no pair (%d prompts, %d of %d answers without readable scores, %d "
                    "prompts with fewer than two readable grades or a gap under min_gap %g); skipping training: the "
                    "model is unchanged. Try more max_prompts or samples, a lower min_gap, or a stronger judge.",
                    judged["prompts"], judged["unparseable"], judged["responses"], judged["no_pair"], cfg.min_gap)
        return StageResult(metrics={"skipped": "no pairs", "init_from": str(source), "judging": judged})
    summary = run_dpo(source, ctx.out / "pairs.jsonl", ctx.out, cfg, ctx.recipe.seed)
    return StageResult(metrics={"init_from": str(source), "judging": judged, **summary})


def simpleqa_graded(model: Path, cfg: HallucinationStageConfig, seed: int) -> list[dict]:
    """`model`'s graded greedy answers, as the simpleqa eval task grades them, one row per question: held-out facts
    (heldout_qa, else generated) and the held-out bogus questions."""
    import torch

    from phiforge.eval.simpleqa import graded_replies, heldout_questions
    from phiforge.model import load_model
    from phiforge.tokenizer import load_tokenizer
    from phiforge.train.loop import autocast, pick_device

    questions = heldout_questions(cfg.heldout_qa, cfg.heldout_facts, cfg.heldout_bogus, seed)
    lm = load_model(model).to(pick_device()).eval()
    with torch.no_grad(), autocast("auto", pick_device()):
        return graded_replies(lm, load_tokenizer(model), questions, cfg.batch_size)


def paired_grades(before: list[dict], after: list[dict]) -> dict:
    """McNemar's exact test on the same held-out questions: answers that are not wrong (right, or declined; for a
    bogus question, declined) over all questions, and right answers over the facts."""
    from phiforge.stats import mcnemar_exact

    not_wrong = [[r["grade"] != "incorrect" for r in rows] for rows in (before, after)]
    right = [[r["grade"] == "correct" for r in rows if not r["bogus"]] for rows in (before, after)]
    return {"not_wrong": mcnemar_exact(*not_wrong), "correct": mcnemar_exact(*right)}


def hallucination_data(ctx: StageContext, policy: Path) -> dict:
    """Refusal SFT data and DPO pairs from `policy`'s graded answers in OUT/data/ (answers cached in OUT/data/cache/).

    The bogus questions avoid the held-out ones the rates are measured on (the simpleqa task's, seed recipe.seed).
    """
    from phiforge.generation import load_policy
    from phiforge.eval.simpleqa import bogus_questions, generate_facts, read_qa
    from phiforge.posttrain.hallucination import run_hallucination

    recipe, cfg = ctx.recipe, ctx.recipe.hallucination
    assert cfg is not None
    heldout = {q.question for q in bogus_questions(cfg.heldout_bogus, recipe.seed)}
    bogus = [q for q in bogus_questions(cfg.bogus + len(heldout), recipe.seed + 1) if q.question not in heldout]
    questions = (read_qa(cfg.qa) if cfg.qa is not None else generate_facts(cfg.facts, recipe.seed)) + bogus[: cfg.bogus]
    data = ctx.out / "data"
    grader = llm(ctx, cfg.grader, data / "cache") if cfg.grader is not None else None
    log.info("hallucination: %s answers %d questions (%d bogus)", policy, len(questions), cfg.bogus)
    return run_hallucination(load_policy(policy, data / "cache"), questions, data, cfg, grader, recipe.seed)


def run_hallucination_stage(ctx: StageContext) -> StageResult:
    from phiforge.eval.simpleqa import simpleqa_rates
    from phiforge.posttrain.dpo import run_dpo

    recipe, cfg = ctx.recipe, ctx.recipe.hallucination
    assert cfg is not None
    source = ctx.start_model(cfg.init_from)
    built, before = distributed.on_main("the hallucination data and the rates before", lambda: (
        hallucination_data(ctx, source), simpleqa_graded(source, cfg, recipe.seed)))
    graded = {"before": before}
    rates = {"before": simpleqa_rates(graded["before"])}
    metrics: dict = {"init_from": str(source), "data": built}
    if not sum(built["pairs"].values()):
        log.warning("hallucination: no pairs (the model knew none of the questions and declined all of them: "
                    "nothing to correct); skipping training: the model is unchanged.")
        if distributed.is_main():
            write_json(ctx.out / "rates.json", rates)
        return StageResult(metrics=metrics | {"skipped": "no pairs", "rates": rates})
    start = source
    if cfg.sft_steps:
        from phiforge.model import load_model
        from phiforge.posttrain.sft import read_conversations, train_sft
        from phiforge.recipe import SFTConfig
        from phiforge.tokenizer import load_tokenizer

        tuning = SFTConfig(steps=cfg.sft_steps, lr=cfg.sft_lr, seq_len=cfg.sft_seq_len, batch_size=cfg.batch_size,
                           checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every)
        conversations = read_conversations(ctx.out / "data" / "sft.jsonl")
        tuned = train_sft(load_model(source), load_tokenizer(source), conversations, ctx.out / "sft", tuning, recipe.seed)
        metrics["sft"] = {"init_from": str(source), **tuned}
        start = ctx.out / "sft" / "model"
    metrics |= run_dpo(start, ctx.out / "data" / "pairs.jsonl", ctx.out, cfg, recipe.seed)
    if not distributed.is_main():
        return StageResult(metrics=metrics)  # rank 0 measures and writes what follows
    graded["after"] = simpleqa_graded(ctx.out / "model", cfg, recipe.seed)
    rates |= {"after": simpleqa_rates(graded["after"]), "paired": paired_grades(graded["before"], graded["after"])}
    write_jsonl(ctx.out / "heldout_grades.jsonl", ({"question": b["question"], "answer": b["answer"], "bogus": b["bogus"],
                                                    "before": b["reply"], "before_grade": b["grade"], "after": a["reply"],
                                                    "after_grade": a["grade"]}
                                                   for b, a in zip(graded["before"], graded["after"])))
    write_json(ctx.out / "rates.json", rates)
    b, a, m = rates["before"], rates["after"], rates["paired"]["not_wrong"]
    log.info("hallucination: held-out correct %.3f -> %.3f, incorrect %.3f -> %.3f, not attempted %.3f -> %.3f%s",
             b["correct"], a["correct"], b["incorrect"], a["incorrect"], b["not_attempted"], a["not_attempted"],
             f", bogus declined {b['bogus_refusal']:.3f} -> {a['bogus_refusal']:.3f}" if "bogus_refusal" in b else "")
    log.info("hallucination: answers not wrong (right or declined): %d improved, %d regressed, McNemar exact p = %.3g",
             m["improved"], m["regressed"], m["p_value"])
    return StageResult(metrics=metrics | {"rates": rates})


def _dpo_estimate(recipe: Recipe) -> float:
    heldout = recipe.pts.heldout_problems if recipe.pts is not None else 0  # answered before and after
    return progress.FIXED_S + progress.training_s(recipe.dpo, pairs=True) + 2 * heldout * progress.GREEDY_ANSWER_S


def _judge_dpo_estimate(recipe: Recipe) -> float:
    cfg = recipe.judge_dpo
    answers = cfg.max_prompts * cfg.samples * cfg.max_tokens * progress.TEACHER_TOKEN_S
    return progress.FIXED_S + progress.training_s(cfg, pairs=True) + answers


DPO_OUTPUTS = {"model": "model/", "metrics": "metrics.jsonl", "summary": "summary.json"}  # when it trained
PTS = Stage(
    "pts", "Pivotal Token Search on the previous stage's model (or pts.init_from): single-token DPO pairs.",
    run_pts_stage, "pts", passes_model=True,
    outputs={"pairs": "pairs.jsonl", "problems": "problems.jsonl", "heldout": "heldout.jsonl",
             "pivot_plot": "pairs.pivots.png"},
    estimate=lambda recipe: progress.FIXED_S + recipe.pts.problems * recipe.pts.samples * progress.SAMPLE_S,
)
DPO = Stage(
    "dpo", "DPO on the pts pairs (or dpo.pairs), compared with the model it started from on held-out problems.",
    run_dpo_stage, "dpo", outputs=DPO_OUTPUTS | {"heldout": "heldout.json"}, trains=True, passes_model=True,
    all_ranks=True, estimate=_dpo_estimate,
)
JUDGE_DPO = Stage(
    "judge_dpo", "DPO round 2: an LLM judge grades the model's answers to SFT prompts; DPO on best vs worst.",
    run_judge_dpo_stage, "judge_dpo", outputs={"pairs": "pairs.jsonl", "judge_summary": "pairs.summary.json"}
    | DPO_OUTPUTS, trains=True, passes_model=True, uses_teacher=True, all_ranks=True, estimate=_judge_dpo_estimate,
)
HALLUCINATION = Stage(
    "hallucination", "Hallucination mitigation: refusal data and pairs from SimpleQA-graded answers, DPO, rates.",
    run_hallucination_stage, "hallucination", trains=True, passes_model=True, uses_teacher=True, all_ranks=True,
    outputs={"sft_data": "data/sft.jsonl", "pairs": "data/pairs.jsonl", "grades": "data/grades.jsonl",
             "data_summary": "data/summary.json", "rates": "rates.json", "heldout_grades": "heldout_grades.jsonl",
             "sft_model": "sft/model/"} | DPO_OUTPUTS,
    estimate=lambda recipe: progress.FIXED_S + progress.training_s(recipe.hallucination, pairs=True),
)
