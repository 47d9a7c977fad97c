"""The recipe's post-training stages: `pts` searches the previous stage's model (or init_from) for
pivotal tokens on verifiable training problems; `dpo` trains that model on the pairs and compares it
with the model it started from on held-out problems of the same kind."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from phiforge.data import synthetic_math
from phiforge.files import read_jsonl, write_json, write_jsonl
from phiforge.recipe import PTSSection, Recipe
from phiforge.rundir import StageResult
from phiforge.stage import StageContext

log = logging.getLogger("phiforge")


def model_dir(ctx: StageContext, init_from: str | Path | None) -> Path:
    """init_from (`smollm2` is the embedded SmolLM2-135M-Instruct), else the last training stage's model."""
    if init_from is not None:
        if str(init_from) == "smollm2":
            from phiforge.generation.hf import smollm2_dir

            return smollm2_dir()
        return Path(init_from)
    last = [n for n in ("pretrain", "midtrain", "sft") if getattr(ctx.recipe, n) is not None][-1]
    return ctx.upstream(last) / "model"


def generated_problems(cfg: PTSSection, count: int, seed: int, heldout: bool) -> list[dict]:
    """Problems of cfg.families from one side of the key-hash split, in PTS's {prompt, answer, verifier} form."""
    families = tuple(synthetic_math.BY_NAME[f] for f in cfg.families)
    return [{"prompt": p.question, "answer": p.answer, "verifier": "numeric", "key": p.key}
            for p in synthetic_math.generate(count, seed, heldout=heldout, families=families)]


def run_pts_stage(ctx: StageContext) -> StageResult:
    from phiforge.posttrain.pts import PTSConfig, read_problems, run_pts

    recipe, cfg = ctx.recipe, ctx.recipe.pts
    assert cfg is not None
    source = model_dir(ctx, cfg.init_from)
    if cfg.data is not None:
        train = read_problems(Path(cfg.data))
        heldout = read_problems(Path(cfg.heldout_data)) if cfg.heldout_data is not None else []
    else:
        train = generated_problems(cfg, cfg.problems, recipe.seed, heldout=False)
        heldout = generated_problems(cfg, cfg.heldout_problems, recipe.seed, heldout=True) if cfg.heldout_problems else []
    write_jsonl(ctx.out / "problems.jsonl", train)
    write_jsonl(ctx.out / "heldout.jsonl", heldout)
    search = PTSConfig(**cfg.model_dump(include={f.name for f in dataclasses.fields(PTSConfig)}))
    log.info("pts: %d training problems, %d held out, searching %s", len(train), len(heldout), source)
    summary = run_pts(source, ctx.out / "problems.jsonl", ctx.out / "pairs.jsonl", search)
    return StageResult(
        outputs={"pairs": "pairs.jsonl", "problems": "problems.jsonl", "heldout": "heldout.jsonl",
                 "pivot_plot": "pairs.pivots.png"},
        metrics={"model": str(source), "heldout_problems": len(heldout), **summary},
    )


def dpo_start(ctx: StageContext) -> Path:
    """dpo.init_from, else the model the pts stage searched (its pairs are that model's), else the last stage's."""
    recipe = ctx.recipe
    assert recipe.dpo is not None
    if recipe.dpo.init_from is None and recipe.pts is not None:
        from phiforge.rundir import StageDir

        return Path(StageDir(ctx.run_dir, "pts").manifest()["metrics"]["model"])
    return model_dir(ctx, recipe.dpo.init_from)


def run_dpo_stage(ctx: StageContext) -> StageResult:
    from phiforge.posttrain.compare import compare
    from phiforge.posttrain.dpo import run_dpo

    recipe: Recipe = ctx.recipe
    cfg = recipe.dpo
    assert cfg is not None
    pairs = Path(cfg.pairs) if cfg.pairs is not None else ctx.upstream("pts") / "pairs.jsonl"
    source = dpo_start(ctx)
    if not any(True for _ in read_jsonl(pairs)):
        # A weak model or a strict search can leave nothing to learn from: say so, train nothing.
        log.warning("dpo: %s holds no pairs (PTS found no pivotal token that passed its checks); "
                    "skipping training: the model is unchanged. Try more pts.problems, a lower pts.p_gap or "
                    "pts.min_margin, or pts.min_p/max_p that keep more questions.", pairs)
        return StageResult(metrics={"skipped": "no pairs", "pairs": 0, "init_from": str(source)})
    summary = run_dpo(source, pairs, ctx.out, cfg, recipe.seed)
    metrics: dict = {"init_from": str(source), **summary}
    outputs = {"model": "model/", "metrics": "metrics.jsonl", "summary": "summary.json"}
    heldout = list(read_jsonl(ctx.upstream("pts") / "heldout.jsonl")) if recipe.pts is not None else []
    if heldout:
        assert recipe.pts is not None
        result, rows = compare(source, ctx.out / "model", heldout, recipe.pts.max_new_tokens, recipe.pts.batch_size)
        write_jsonl(ctx.out / "heldout_replies.jsonl", rows)
        write_json(ctx.out / "heldout.json", result)
        metrics["heldout"] = result
        outputs["heldout"] = "heldout.json"
        b, a, m = result["before"], result["after"], result["mcnemar"]
        log.info("dpo: held-out accuracy %.3f -> %.3f on %d problems (McNemar exact p = %.3g: %d improved, %d regressed)",
                 b["accuracy"], a["accuracy"], b["n"], m["p_value"], m["improved"], m["regressed"])
    return StageResult(outputs=outputs, metrics=metrics)
