"""Curation inside a recipe run: the corpus stage curates what the recipe's `curation:` section names.

An input of kind `corpus` is the corpus source of that name: its documents are written to RAW/NAME.jsonl and
curated like any jsonl input; the curated documents replace the source's. Inputs of other kinds (files) become
corpus sources of their own name. Either way the corpus stage then decontaminates and splits them as usual,
so the tokenizer, the mixture and eval read curated sources like any other.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from phiforge.data.curation.steps import FILTERS
from phiforge.files import write_text
from phiforge.recipe import CurationConfig, Recipe, TeacherConfig

log = logging.getLogger("phiforge")


def materialize(cfg: CurationConfig, docs_by_source: dict[str, list[str]], raw_dir: Path) -> CurationConfig:
    """The config with each `corpus` input replaced by a jsonl of that source's documents."""
    inputs = []
    for inp in cfg.inputs:
        if inp.kind == "corpus":
            path = raw_dir / f"{inp.name}.jsonl"
            text = "".join(json.dumps({"id": f"{inp.name}/{i:07d}", "text": d}) + "\n"
                           for i, d in enumerate(docs_by_source[inp.name]) if d.strip())
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                write_text(path, text)  # unchanged files keep their mtime, so a resumed curation reuses its work
            inp = inp.model_copy(update={"kind": "jsonl", "path": path})
        inputs.append(inp)
    return cfg.model_copy(update={"inputs": inputs})


def curated_documents(out: Path) -> dict[str, list[str]]:
    """The curated output, by source, in the order of the documents' ids."""
    rows: dict[str, list[tuple[str, str]]] = {}
    for path in sorted((out / "curated").rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            rows.setdefault(row["metadata"]["source"], []).append((row["id"], row["text"]))
    return {source: [text for _, text in sorted(docs)] for source, docs in rows.items()}


def summary(stats: dict, kept: dict[str, int]) -> dict:
    """What the report shows: documents read per input, removed per step in pipeline order, kept per source."""
    removed = Counter()
    for key, n in stats["dropped"].items():
        removed[key.split("/")[0]] += n
    order = ["language", *FILTERS, "exact_dedup", "minhash_dedup", "quality_classifier"]
    out = {
        "read": stats["inputs"],
        "bad_input": stats["bad_input"]["count"],
        "steps": [{"step": step, "removed": removed[step]} for step in order if step in removed],
        "kept": kept,
    }
    if c := stats.get("classifier"):
        keys = ("labeler", "labelled", "unparseable", "label_seconds", "label_quartiles", "label_cut",
                "label_positive_rate", "train_labels", "heldout_labels", "heldout_positive_rate", "precision", "recall",
                "threshold", "scored", "kept")
        out["classifier"] = {k: c.get(k) for k in keys}
    return out


def curate_corpus(recipe: Recipe, docs_by_source: dict[str, list[str]], out: Path) -> tuple[dict[str, list[str]], dict]:
    """Run the recipe's curation over its corpus sources and input files; the curated documents per source, and the
    summary. The classifier's teacher is the recipe's `teacher:` (SmolLM2 when it has none)."""
    from phiforge.data.curation import curate
    from phiforge.generation import load_backend

    cfg = recipe.curation
    assert cfg is not None
    c = cfg.classifier
    teacher = None
    if c.enabled and c.labels == "teacher":
        teacher = load_backend(recipe.teacher or TeacherConfig(), out / "cache")
    stats = curate(materialize(cfg, docs_by_source, out / "raw"), out, teacher=teacher)
    assert stats is not None  # the recipe refuses executor slurm
    curated = curated_documents(out)
    curated = {inp.name: curated.get(inp.name, []) for inp in cfg.inputs}
    info = summary(stats, {name: len(docs) for name, docs in curated.items()})
    for name, n in info["kept"].items():
        log.info("curation %-16s %6d of %6d docs kept", name, n, info["read"].get(name, 0))
    return curated, info
