"""Synth stage: curate seeds from the corpus, run every dataset type, split train/held-out, collect SFT data."""

from __future__ import annotations

import logging
from dataclasses import replace

from phiforge import progress
from phiforge.data.sources import SourceSplitter
from phiforge.files import read_jsonl, write_jsonl
from phiforge.generation import default_sampling, load_backend
from phiforge.generation.base import Backend
from phiforge.recipe import Recipe, TeacherConfig
from phiforge.rundir import StageResult
from phiforge.stage import Stage, StageContext
from phiforge.synth import seeds as seed_curation
from phiforge.synth.dataset import DatasetType, load_dataset_type
from phiforge.synth.engine import generate_dataset, read_records
from phiforge.synth.seeds import read_source_texts

log = logging.getLogger("phiforge")


def _needs_teacher(recipe: Recipe, types: list[DatasetType]) -> bool:
    return any(t.steps and any(s.kind not in ("parse", "verify") for s in t.steps) for t in types) or (
        recipe.synth.rate_seeds and bool(recipe.synth.seeds)
    )


def _seed_pool(ctx: StageContext, backend: Backend | None) -> list[dict]:
    path = ctx.out / "seeds.jsonl"
    if path.is_file():  # resumed: the pool is fixed once written
        return list(read_jsonl(path))
    pool = []
    for cfg in ctx.recipe.synth.seeds:
        if cfg.source is not None:
            docs = (row["text"] for row in read_jsonl(ctx.input("corpus", "train") / f"{cfg.source}.jsonl"))
        else:
            docs = read_source_texts(cfg.path, cfg.field)
        rater = backend if ctx.recipe.synth.rate_seeds else None
        picked = seed_curation.curate(docs, cfg.name, cfg.kind, cfg.max_seeds, cfg.min_chars, cfg.max_chars, rater)
        log.info("synth seeds %-16s %4d kept (%s)", cfg.name, len(picked), cfg.kind)
        pool += picked
    write_jsonl(path, pool)
    return pool


def _record_text(record: dict) -> str:
    """Everything a sample would put into training: its document and its conversation."""
    return "\n".join([record.get("text", ""), *(m["content"] for m in record.get("messages", []))])


def run(ctx: StageContext) -> StageResult:
    recipe, cfg = ctx.recipe, ctx.recipe.synth
    index = None
    if recipe.corpus.decontaminate:  # the same benchmarks as the corpus, synthetic data included
        from phiforge.data.corpus import decontamination_index

        problems = list(read_jsonl(ctx.input("corpus", "problems")))
        index = decontamination_index(recipe.corpus.decontaminate, problems)
    splitter = SourceSplitter(ctx.out, index)
    teacher = recipe.teacher or TeacherConfig()
    types = [load_dataset_type(d.type) for d in cfg.datasets]
    backend = load_backend(teacher, ctx.out / "cache") if _needs_teacher(recipe, types) else None
    pool = _seed_pool(ctx, backend)
    sampling = replace(default_sampling(teacher), seed=recipe.seed)
    stats, sft = {}, []
    for i, (dcfg, dtype, name) in enumerate(zip(cfg.datasets, types, cfg.dataset_names())):
        shard_dir = ctx.out / "datasets" / name
        result = generate_dataset(dtype, dcfg.count, shard_dir, backend, sampling, recipe.seed + i, pool, cfg.shard_size)
        records = list(read_records(shard_dir))
        clean = splitter.decontaminate(records, _record_text)
        contaminated, records = len(records) - len(clean), clean
        docs = [r["text"] for r in records if "text" in r]
        train, held = splitter.write(name, docs, cfg.heldout_fraction, recipe.seed + i)
        sft += [{"messages": r["messages"], "id": r["id"]} for r in records if "messages" in r]
        stats[name] = {"type": dtype.name, "made": result.made, "kept": result.kept, "dropped": result.dropped,
                       "contaminated_removed": contaminated, "docs": len(train), "chars": sum(map(len, train))}
        log.info("synth %-18s kept %5d of %5d  dropped %s", name, result.kept, result.made, result.dropped or "-")
    write_jsonl(ctx.out / "sft.jsonl", sft)
    metrics = {"datasets": stats, "seeds": len(pool), "sft_conversations": len(sft),
               "teacher": backend.model if backend is not None else None}
    if index is not None:
        metrics["decontamination"] = {
            "docs_removed": sum(s["contaminated_removed"] for s in stats.values()),
            "items_hit": splitter.items_hit_by_benchmark(),
        }
    return StageResult(metrics=metrics)


_GENERATORS = ("arithmetic", "algebra", "unit_conversion", "code_exercise")  # programmatic, no teacher


def _estimate(recipe: Recipe) -> float:
    max_tokens = recipe.teacher.max_tokens if recipe.teacher else 0
    teacher = sum(d.count for d in recipe.synth.datasets if d.type not in _GENERATORS)
    return progress.FIXED_S + teacher * 3 * max_tokens * progress.TEACHER_TOKEN_S  # about three teacher calls a sample


STAGE = Stage(
    "synth", "Generate RECIPE's synthetic datasets (seeds, teacher workflows, verification, provenance).", run, "synth",
    outputs={"seeds": "seeds.jsonl", "datasets": "datasets/", "train": "train/", "heldout": "heldout/", "sft": "sft.jsonl"},
    estimate=_estimate,
)
