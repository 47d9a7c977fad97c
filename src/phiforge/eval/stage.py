"""Eval stage: run the recipe's tasks on the untrained model, every stage checkpoint and any extra models."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from phiforge import progress
from phiforge.data.sources import source_docs
from phiforge.eval.tasks import TASKS, EvalInput, load_problems
from phiforge.files import write_json, write_text
from phiforge.model import build_model, load_config, load_model
from phiforge.recipe import Recipe
from phiforge.rundir import StageDir, StageResult, append_metrics
from phiforge.stage import Stage, StageContext
from phiforge.tokenizer import load_tokenizer
from phiforge.train.loop import autocast, pick_device

log = logging.getLogger("phiforge")


def models_to_evaluate(ctx: StageContext) -> dict[str, Path | None]:
    """name -> model directory; None stands for the untrained model (same config and seed as pretraining)."""
    found: dict[str, Path | None] = {}
    if StageDir(ctx.run_dir, "pretrain").status() == "done":
        found["untrained"] = None
    found |= ctx.trained_models()
    for path in ctx.recipe.eval.models:
        found[Path(path).name] = Path(path)
    return found


def evaluate(name: str, model, tok, ctx: StageContext, heldout: list[str], problems: list[dict]) -> dict:
    cfg = ctx.recipe.eval
    inp = EvalInput(model.eval(), tok, cfg, heldout, problems, ctx.recipe.pretrain.seq_len, ctx.recipe.seed)
    results = {}
    for task_name in cfg.tasks:
        t0 = time.perf_counter()
        with autocast("auto", pick_device()):
            results[task_name] = TASKS[task_name](inp)
        log.info("eval %-10s %-12s %s (%.1fs)", name, task_name,
                 " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in results[task_name].items()),
                 time.perf_counter() - t0)
    return results


def run_suite_on_models(ctx: StageContext, models: dict[str, Path | None]) -> dict:
    """eval.suite on every model with a directory (the untrained one has none), each in suite/NAME/, with the
    run's training documents for the contamination check; suite.json and suite.md hold the table, a row a model."""
    from phiforge.eval.suite import checkpoint_table, load_suite, open_model, run_suite

    tasks = load_suite(ctx.recipe.eval.suite)
    training = [d for name in ctx.recipe.data_sources() for d in source_docs(ctx, name, "train")]
    checked: dict[str, dict] = {}  # the checkpoints share their eval sets: each is checked once
    by_model = {}
    for name, path in models.items():
        if path is None:
            continue
        out = ctx.out / "suite" / name
        if (out / "results.json").is_file():  # resumable: a model already scored is not scored again
            by_model[name] = json.loads((out / "results.json").read_text())
            continue
        model = open_model(path, ctx.recipe.eval.batch_size, ctx.out / "suite" / "cache", ctx.recipe.eval.engine)
        by_model[name] = run_suite(model, tasks, out, training, checked)
    write_json(ctx.out / "suite.json", by_model)
    write_text(ctx.out / "suite.md", "\n".join(checkpoint_table(by_model)) + "\n")
    return by_model


def run(ctx: StageContext) -> StageResult:
    heldout = [d for name in ctx.recipe.data_sources() for d in source_docs(ctx, name, "heldout")]
    problems = load_problems(ctx.input("corpus", "problems"))
    models = models_to_evaluate(ctx)
    if ctx.recipe.eval.suite is not None:
        run_suite_on_models(ctx, models)
    all_results = {}
    for name, path in models.items():
        cached = ctx.out / "models" / f"{name}.json"
        if cached.is_file():  # resumable: a model already scored is not scored again
            all_results[name] = json.loads(cached.read_text())
            continue
        if path is None:
            pre = ctx.input("pretrain", "model")
            model, tok = build_model(load_config(str(pre)), ctx.recipe.seed), load_tokenizer(pre)
        else:
            model, tok = load_model(path), load_tokenizer(path)
        model.to(pick_device())
        with torch.no_grad():
            all_results[name] = evaluate(name, model, tok, ctx, heldout, problems)
        write_json(cached, all_results[name])
        append_metrics(ctx.stage.metrics_path, {"model": name, **all_results[name]})
    write_json(ctx.out / "results.json", all_results)
    return StageResult(metrics=all_results)


def _estimate(recipe: Recipe) -> float:
    cfg = recipe.eval
    return progress.FIXED_S + cfg.max_problems * 0.2 + cfg.passkey_trials * len(cfg.passkey_lengths)


# eval scores the corpus's held-out text and problems: a post-training-only recipe has none (its dpo and
# hallucination stages compare the models before and after themselves). The models it scores carry their
# tokenizers, so the tokenizer section is not part of its config hash. An ablation recipe's stage of that name
# evaluates its variants itself; the ablation section stays out of this hash (it is not read here).
STAGE = Stage("eval", "Evaluate the untrained model, every finished stage and eval.models.", run, "eval",
              outputs={"results": "results.json", "suite": "suite.json"},
              needs=lambda recipe: recipe.corpus is not None and recipe.ablation is None,
              hash_skips=("tokenizer", "ablation"), estimate=_estimate)
