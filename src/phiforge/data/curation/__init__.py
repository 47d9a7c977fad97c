"""Organic data curation on datatrove (the Phi-4 report's filtered web, books and code).

`curate(config, out_dir, teacher=...)` reads jsonl, parquet, WARC, text, HTML, PDF and TeX sources, identifies
languages, applies heuristic quality filters, removes exact and near duplicates, trains a quality classifier on
teacher labels and writes curated jsonl per language, `stats.json` and the classifier's score histogram.
See `pipeline.py` for the stages.
"""

from __future__ import annotations

from pathlib import Path

from phiforge.data.curation.classifier import FileLabels, HeuristicLabeler, Labeler, TeacherLabeler
from phiforge.generation.base import Backend
from phiforge.recipe import CurationConfig


def curate(
    config: CurationConfig,
    out_dir: Path,
    *,
    teacher: Backend | None = None,
    labels: Path | None = None,
    heuristic_labels: bool = False,
) -> dict | None:
    """Run the curation pipeline; the classifier's labels come from exactly one of teacher, labels, heuristic_labels
    (or `classifier.labels: heuristic` in the config when none is given).

    Returns the stats written to OUT_DIR/stats.json (None when the Slurm executor only submitted the jobs).
    """
    from phiforge.data.curation.pipeline import run_curation
    from phiforge.errors import UserError
    from phiforge.generation.base import Sampling

    if teacher is None and labels is None and config.classifier.labels == "heuristic":
        heuristic_labels = True

    given = [x for x in (teacher, labels, heuristic_labels or None) if x is not None]
    if len(given) > 1:
        raise UserError("give the quality classifier one source of labels: a teacher, a labels file or heuristic labels")
    labeler: Labeler | None = None
    if teacher is not None:
        c = config.classifier
        labeler = TeacherLabeler(teacher, c.label_method, Sampling(temperature=0.0, max_tokens=c.label_max_tokens),
                                 max_chars=c.label_max_chars)
    elif labels is not None:
        labeler = FileLabels(Path(labels))
    elif heuristic_labels:
        labeler = HeuristicLabeler()
    return run_curation(config, Path(out_dir), labeler)
