"""Ablation stage: the report's central experiment in miniature. The same model, seed and token budget pretrained on
each mixture variant of the recipe's `ablation:` section (organic only, synthetic only, the Phi-4 mix), then one eval
of every base model: the suite (held-out math problems, prompted as plain text) and held-out loss on organic and on
synthetic text; a table and a figure with 95% intervals.

Each variant is the pretrain stage's own code (train/stages.py) run in ablation/variants/NAME/ with the recipe's
pretrain section and the variant's mixture, so it resumes from its checkpoints; a variant with result.json is
trained, one with suite/results.json and heldout.json is scored, and neither is done again.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from phiforge import progress
from phiforge.data.layouts import pack_stream
from phiforge.data.shards import Packed
from phiforge.data.sources import source_docs, source_stage
from phiforge.files import write_json, write_text, write_with
from phiforge.recipe import MixtureSource, Recipe
from phiforge.rundir import StageDir, StageResult
from phiforge.stage import Stage, StageContext
from phiforge.stats import bootstrap_mean

log = logging.getLogger("phiforge")

KINDS = {"corpus": "organic", "synth": "synthetic"}  # the stage a source comes from -> the kind of data it is


def variant_recipe(recipe: Recipe, mixture: dict[str, float]) -> Recipe:
    """The recipe with the variant's mixture in place of pretrain.mixture: every other setting is shared."""
    shares = {name: MixtureSource(share=share) for name, share in mixture.items()}
    return recipe.model_copy(update={"pretrain": recipe.pretrain.model_copy(update={"mixture": shares})})


def variant_sources(recipe: Recipe) -> list[str]:
    """Every source some variant draws from, in the recipe's order."""
    drawn = {name for mixture in recipe.ablation.variants.values() for name, share in mixture.items() if share > 0}
    return [name for name in recipe.data_sources() if name in drawn]


def train_variant(ctx: StageContext, name: str) -> dict:
    """The variant pretrained in ablation/variants/NAME (resumed from its checkpoints); its pretrain metrics."""
    from phiforge.train.stages import run_pretrain

    out = ctx.out / "variants" / name
    if (out / "result.json").is_file():
        return json.loads((out / "result.json").read_text())
    log.info("ablation: pretraining variant %s", name)
    recipe = variant_recipe(ctx.recipe, ctx.recipe.ablation.variants[name])
    sub = StageContext(recipe, ctx.run_dir, StageDir(ctx.run_dir, f"{ctx.stage.name}/variants/{name}"), ctx.stages)
    metrics = run_pretrain(sub).metrics
    write_json(out / "result.json", metrics)
    return metrics


def heldout_windows(ctx: StageContext, tok, seq_len: int, max_tokens: int) -> dict[str, Packed]:
    """kind (organic, synthetic) -> its sources' held-out documents in a seeded order, packed into rows of seq_len
    up to max_tokens: the same rows for every variant (one tokenizer)."""
    from phiforge.data.documents import tokenize
    from phiforge.tokenizer import document_separator_id

    by_kind: dict[str, list[str]] = {}
    for name in variant_sources(ctx.recipe):
        by_kind.setdefault(KINDS[source_stage(ctx.recipe, name)], []).extend(source_docs(ctx, name, "heldout"))
    packed = {}
    for kind, docs in by_kind.items():
        random.Random(ctx.recipe.seed).shuffle(docs)
        ids, total = [], 0
        for doc_ids in tokenize(tok, docs):
            if doc_ids:
                ids.append(doc_ids[: max_tokens - total + 1])
                total += len(ids[-1])
            if total > max_tokens:
                break
        if ids:
            packed[kind] = pack_stream(ids, seq_len, document_separator_id(tok))
    return packed


@torch.no_grad()
def row_losses(model: torch.nn.Module, rows: Packed, batch_size: int) -> np.ndarray:
    """Mean next-token loss (nats) of each packed row."""
    from phiforge.data.batches import shifted

    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        x, y, _ = shifted(rows, np.arange(start, min(len(rows), start + batch_size)))
        x, y = x.to(device), y.to(device)
        logits = model(input_ids=x, use_cache=False).logits.float()
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
        out.append(loss.mean(dim=1).cpu().numpy())
    return np.concatenate(out)


def heldout_loss(model_dir: Path, windows: dict, batch_size: int, seed: int) -> dict:
    """kind -> held-out loss (mean over rows) with a bootstrap 95% interval over rows and n rows."""
    from phiforge.model import load_model
    from phiforge.train.loop import pick_device

    model = load_model(model_dir).to(pick_device()).eval()
    scores = {}
    for kind, rows in windows.items():
        losses = row_losses(model, rows, batch_size)
        low, high = bootstrap_mean(losses, seed, bounds=(0.0, float("inf")))
        scores[kind] = {"value": float(losses.mean()), "n": len(losses), "ci95": [round(low, 4), round(high, 4)]}
    return scores


def score_variant(ctx: StageContext, name: str, tasks, training: list[str], windows: dict, checked: dict) -> dict:
    """The variant's suite results and held-out losses (suite/ and heldout.json in its directory, kept once written)."""
    from phiforge.eval.suite import open_model, run_suite

    out = ctx.out / "variants" / name
    model_dir = out / "model"
    cfg = ctx.recipe.ablation
    if not (out / "suite" / "results.json").is_file():
        model = open_model(model_dir, cfg.batch_size, ctx.out / "cache")
        model.name = name
        run_suite(model, tasks, out / "suite", training, checked)
    if not (out / "heldout.json").is_file():
        write_json(out / "heldout.json", heldout_loss(model_dir, windows, cfg.batch_size, ctx.recipe.seed))
    return {"suite": json.loads((out / "suite" / "results.json").read_text()),
            "heldout_loss": json.loads((out / "heldout.json").read_text())}


PROBLEM_LINE = re.compile(r"^Problem: (.*)$", re.MULTILINE)  # a synthetic math document's question (as_document)


def questions_in_training(tasks, training: list[str]) -> dict:
    """The math tasks' questions that some training document asks word for word (its `Problem:` line): the n-gram
    guard cannot match most of them (short, mostly numbers), and this check can. Their split by key hash keeps
    them out of every variant's data, so it should find none."""
    asked = {q for doc in training for q in PROBLEM_LINE.findall(doc)}
    found = {}
    for task in tasks:
        if task.task == "math":
            questions = [i.overlap_text.rsplit(" ", 1)[0] for i in task.items(None)]  # a math item needs no model
            found[task.label] = {"items": len(questions), "in_training": sum(q in asked for q in questions),
                                 "training_problems": len(asked)}
    return found


def columns(results: dict) -> list[tuple[str, str, str]]:
    """The table's measures: (where, task or kind, score): each suite task's headline scores, then held-out loss."""
    from phiforge.eval.scoring import SUITE_TASKS

    cols: list[tuple[str, str, str]] = []
    for res in results.values():
        for label, task in res["suite"]["tasks"].items():
            head = SUITE_TASKS[task["task"]].headline or tuple(task["scores"])
            cols += [("suite", label, s) for s in head if s in task["scores"] and ("suite", label, s) not in cols]
        cols += [("heldout_loss", kind, "loss") for kind in res["heldout_loss"] if ("heldout_loss", kind, "loss") not in cols]
    return cols


def score_of(res: dict, col: tuple[str, str, str]) -> dict | None:
    where, label, score = col
    if where == "suite":
        return res["suite"]["tasks"].get(label, {}).get("scores", {}).get(score)
    return res["heldout_loss"].get(label)


def col_title(col: tuple[str, str, str]) -> str:
    where, label, score = col
    return f"{label} held-out loss (nats/token, lower is better)" if where == "heldout_loss" else f"{label} {score}"


def table(results: dict, trained: dict) -> list[str]:
    """A row per variant: tokens trained, then each measure as value [95% CI] and its n."""
    cols = columns(results)
    lines = ["| variant | tokens trained | " + " | ".join(col_title(c) for c in cols) + " |",
             "|---" * (len(cols) + 2) + "|"]
    for name, res in results.items():
        cells = []
        for col in cols:
            s = score_of(res, col)
            cells.append(f"{s['value']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] n={s['n']}" if s else "")
        lines.append(f"| {name} | {trained[name]['tokens']:,} | " + " | ".join(cells) + " |")
    return lines


def plot(results: dict, path: Path, title: str) -> None:
    """A panel per measure, a bar per variant with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = columns(results)
    names = list(results)
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, col in zip(axes[0], cols):
        scores = [score_of(results[n], col) for n in names]
        values = [s["value"] if s else np.nan for s in scores]
        err = np.array([[s["value"] - s["ci95"][0], s["ci95"][1] - s["value"]] if s else [0, 0] for s in scores]).T
        ax.bar(names, values, yerr=err, capsize=4, color=colors[: len(names)])
        ax.set_title(col_title(col).replace(" (nats/token, lower is better)", "\n(nats/token, lower is better)"),
                     fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    write_with(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def run(ctx: StageContext) -> StageResult:
    from phiforge.eval.suite import load_suite
    from phiforge.tokenizer import load_tokenizer

    cfg, pre = ctx.recipe.ablation, ctx.recipe.pretrain
    tasks = load_suite(cfg.suite)  # a bad suite is found before hours of training
    trained = {name: train_variant(ctx, name) for name in cfg.variants}
    # The contamination guard checks each eval item against what any variant trained on.
    training = [d for name in variant_sources(ctx.recipe) for d in source_docs(ctx, name, "train")]
    windows = heldout_windows(ctx, load_tokenizer(ctx.input("tokenizer", "tokenizer")), pre.seq_len, cfg.heldout_tokens)
    overlap = questions_in_training(tasks, training)
    checked: dict[str, dict] = {}
    results = {name: score_variant(ctx, name, tasks, training, windows, checked) for name in cfg.variants}
    summary = {name: {"tokens": trained[name]["tokens"], "mixture": trained[name]["mixture"],
                      "val_loss": trained[name].get("val_loss"), **results[name]} for name in cfg.variants}
    write_json(ctx.out / "results.json", summary)
    lines = table(results, trained)
    for label, o in overlap.items():
        lines += ["", f"{label}: {o['in_training']} of {o['items']} questions asked word for word by one of the "
                  f"{o['training_problems']:,} training problems of any variant."]
    write_text(ctx.out / "table.md", "\n".join(lines) + "\n")
    plot(results, ctx.out / "ablation.png",
         f"{pre.steps} steps x {pre.batch_size * pre.grad_accum} x {pre.seq_len} tokens per variant, "
         f"model {ctx.recipe.model.preset}, seed {ctx.recipe.seed}")
    return StageResult(metrics={"variants": list(cfg.variants), "tokens": {n: t["tokens"] for n, t in trained.items()},
                                "suite": str(cfg.suite), "questions_in_training": overlap})


def _estimate(recipe: Recipe) -> float:
    return len(recipe.ablation.variants) * (2 * progress.FIXED_S + progress.training_s(recipe.pretrain))


STAGE = Stage("ablation", "Pretrain the same model on each ablation variant's mixture and evaluate every one.", run,
              "ablation", outputs={"results": "results.json", "table": "table.md", "figure": "ablation.png",
                                   "variants": "variants/"},
              needs=lambda recipe: recipe.ablation is not None, also_reads=("pretrain",), estimate=_estimate)
