"""Corpus stage: gather every source's documents, split off held-out text, generate SFT and eval sets."""

from __future__ import annotations

import logging

from phiforge import progress
from phiforge.data import synthetic_math
from phiforge.data.sources import SourceSplitter, iter_documents
from phiforge.errors import UserError
from phiforge.files import write_jsonl
from phiforge.recipe import Recipe
from phiforge.rundir import StageResult
from phiforge.stage import Stage, StageContext

log = logging.getLogger("phiforge")


def gather(recipe: Recipe, names: set[str] | None = None) -> dict[str, list[str]]:
    """The documents of the recipe's corpus sources (those in names, when given), capped as configured."""
    return {s.name: list(iter_documents(s, recipe.seed + i))
            for i, s in enumerate(recipe.corpus.sources) if names is None or s.name in names}


def decontamination_index(entries: list, problems: list[dict]):
    """An index of the recipe's benchmarks (names, or entries with a rule) plus this run's held-out eval problems."""
    from phiforge.data.decontam import Benchmark, BenchmarkIndex, Overlap, load_benchmark

    benchmarks = [
        load_benchmark(e) if isinstance(e, str)
        else load_benchmark(e.benchmark, Overlap(e.n, e.fraction) if e.rule == "overlap" else None)
        for e in entries
    ]
    heldout = Benchmark("problems_heldout", problems, [p["key"] for p in problems])
    return BenchmarkIndex([*benchmarks, heldout])


def _check_not_empty(recipe: Recipe, name: str, docs: list[str], why: str) -> None:
    """A source the pretraining mixture draws from must have text: an empty one would be packed as nothing."""
    mixed = recipe.pretrain.shares if recipe.pretrain else {}
    if name in mixed and not any(d.strip() for d in docs):
        raise UserError(f"corpus source '{name}' has no documents with text{why}, but pretrain.mixture gives it a "
                        f"share; fix the source or take '{name}' out of pretrain.mixture")


def run(ctx: StageContext) -> StageResult:
    cfg, seed = ctx.recipe.corpus, ctx.recipe.seed
    problems = [
        {"key": p.key, "family": p.family, "question": p.question, "steps": p.steps, "answer": p.answer}
        for p in synthetic_math.generate(cfg.eval_problems, seed + 2000, heldout=True)
    ]
    index = decontamination_index(cfg.decontaminate, problems) if cfg.decontaminate else None
    splitter = SourceSplitter(ctx.out, index)
    stats = {}
    docs_by_source = gather(ctx.recipe)
    kinds = {s.name: s.kind for s in cfg.sources}
    curation = None
    if ctx.recipe.curation is not None:  # curated documents replace their source's, curated files join as sources
        from phiforge.data.curation.corpus import curate_corpus

        curated, curation = curate_corpus(ctx.recipe, docs_by_source, ctx.out / "curation")
        docs_by_source |= curated
        kinds |= {i.name: f"{kinds.get(i.name, i.kind)}, curated" for i in ctx.recipe.curation.inputs}
    for name, docs in docs_by_source.items():  # before anything is written
        _check_not_empty(ctx.recipe, name, docs, "")
    for i, (name, docs) in enumerate(docs_by_source.items()):
        if not docs:
            log.warning("corpus source '%s' yielded no documents", name)
        removed = 0
        if index is not None:
            kept = splitter.decontaminate(docs)
            removed, docs = len(docs) - len(kept), kept
            if removed:
                log.info("corpus %-16s %6d docs removed as benchmark contamination", name, removed)
            _check_not_empty(ctx.recipe, name, docs, " left after decontamination")
        train, held = splitter.write(name, docs, cfg.heldout_fraction, seed + i)
        stats[name] = {
            "kind": kinds[name],
            "docs": len(train),
            "heldout_docs": len(held),
            "chars": sum(map(len, train)),
            **({"contaminated_docs_removed": removed} if index is not None else {}),
        }
        log.info("corpus %-16s %6d docs %11s chars", name, len(train), f"{stats[name]['chars']:,}")

    # Training conversations come from the training split of the problem generators, the eval
    # problems from the held-out split: the two never share a problem.
    sft = synthetic_math.generate(cfg.sft_conversations, seed + 1000, heldout=False)
    write_jsonl(ctx.out / "sft.jsonl", ({"messages": p.as_messages(), "key": p.key} for p in sft))
    write_jsonl(ctx.out / "problems_heldout.jsonl", problems)
    metrics = {"sources": stats, "sft_conversations": len(sft), "eval_problems": len(problems)}
    if curation is not None:
        metrics["curation"] = curation
    if index is not None:
        metrics["decontamination"] = {
            "against": [b.name for b in index.benchmarks],
            "ngram": index.n,
            "short_ngram": index.short_n,
            "docs_removed": sum(s["contaminated_docs_removed"] for s in stats.values()),
            "items_hit": splitter.items_hit_by_benchmark(),
        }
    return StageResult(metrics=metrics)


def _estimate(recipe: Recipe) -> float:
    labels = recipe.curation.classifier.label_sample if recipe.curation and recipe.curation.classifier else 0
    return progress.FIXED_S + labels * progress.LABEL_S


STAGE = Stage(
    "corpus", "Gather RECIPE's corpus sources, split held-out text, generate SFT and eval sets.", run, "corpus",
    outputs={"train": "train/", "heldout": "heldout/", "sft": "sft.jsonl", "problems": "problems_heldout.jsonl",
             "curation": "curation/"},
    estimate=_estimate,
)
