"""Corpus stage: gather every source's documents, split off held-out text, generate SFT and eval sets."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from phiforge import progress
from phiforge.data import synthetic_math
from phiforge.data.sources import iter_documents, split_heldout
from phiforge.errors import UserError
from phiforge.files import read_jsonl, write_jsonl
from phiforge.recipe import Recipe
from phiforge.rundir import StageResult
from phiforge.stage import Stage, StageContext

log = logging.getLogger("phiforge")


def source_stage(recipe: Recipe, name: str) -> str:
    """Which stage holds a data source: the synth stage for a synthetic dataset, else the corpus stage."""
    return "synth" if recipe.synth and name in recipe.synth.dataset_names() else "corpus"


def source_docs(ctx: StageContext, name: str, split: str = "train") -> Iterator[str]:
    """Documents of one data source from its finished stage (split: its `train` or `heldout` output), one at a time."""
    path = ctx.input(source_stage(ctx.recipe, name), split) / f"{name}.jsonl"
    return (row["text"] for row in read_jsonl(path))


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
    items_hit: dict[str, set[str]] = {}
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
            from phiforge.data.decontam import drop_contaminated

            kept, hits = drop_contaminated(index, docs)
            removed = len(docs) - len(kept)
            docs = kept
            for bench, item in (pair for h in hits for pair in h.items):
                items_hit.setdefault(bench, set()).add(item)
            if removed:
                log.info("corpus %-16s %6d docs removed as benchmark contamination", name, removed)
            _check_not_empty(ctx.recipe, name, docs, " left after decontamination")
        train, held = split_heldout(docs, cfg.heldout_fraction, seed + i)
        write_jsonl(ctx.out / "train" / f"{name}.jsonl", ({"text": d, "source": name} for d in train))
        write_jsonl(ctx.out / "heldout" / f"{name}.jsonl", ({"text": d, "source": name} for d in held))
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
            "items_hit": {b.name: sorted(items_hit.get(b.name, ())) for b in index.benchmarks},
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
