"""The curation pipeline as a chain of datatrove stages, run by datatrove's local, Slurm or Ray executor.

    read (per input: reader -> [trafilatura] -> language id -> heuristic filters)
    -> exact dedup (signatures, find, filter) -> MinHash dedup (signatures, buckets, clusters, filter)
    -> quality classifier (label + train on one task, then filter) -> finalize (stats, plot, output)

Intermediate files and datatrove's logs live in OUT/work/; the curated jsonl (`curated/LANG/*.jsonl`), `classifier/`
and the score plot appear in OUT only when the final stage moves them there, and `stats.json` is written last: a
run that stops early leaves no stats.json, so it never looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig

from phiforge.data.curation.classifier import (
    Labeler,
    QualityClassifierFilter,
    TrainQualityClassifier,
    plot_scores,
)
from phiforge.data.curation.readers import BadInput, make_reader
from phiforge.data.curation.steps import WORDS, HeuristicFilters, LanguageTagger, MarkPassed, heuristic_filters
from phiforge.errors import UserError
from phiforge.files import TEMPORARY, read_jsonl, write_json
from phiforge.recipe import CurationConfig

log = logging.getLogger("phiforge")


@dataclass
class Stage:
    name: str
    pipeline: list[PipelineStep]
    tasks: int
    output: Path | None = None  # documents the next stages read; none left stops the run with a clear message


def document_text(doc) -> str:
    """Exact dedup key (a module-level function, so datatrove can pickle it)."""
    return doc.text


# sha1, not datatrove's default xxhash: in datatrove 0.10.1 its xxhash path fails on str input (MinHash shingles).
SHA1 = HashConfig(hash_fc="sha1")


def build_stages(cfg: CurationConfig, out: Path, labeler: Labeler | None) -> list[Stage]:
    work = out / "work"
    issues = work / "issues"
    stages = []
    filters = heuristic_filters(cfg.filters)
    for inp in cfg.inputs:
        if inp.kind == "corpus":
            raise UserError(f"curation input '{inp.name}' has kind corpus: curate it from a recipe "
                            "(`phiforge curate RECIPE` or the recipe's corpus stage)")
        if not inp.path.exists():
            raise UserError(f"curation input '{inp.name}': {inp.path} not found (a file or a folder of {inp.kind} files)")
        steps: list[PipelineStep] = [make_reader(inp, issues, cfg.on_bad_input == "stop")]
        if inp.kind in ("warc", "html"):
            steps.append(Trafilatura(favour_precision=True, timeout=30.0))
        steps.append(LanguageTagger(cfg.filters.keep_languages, cfg.filters.min_language_score))
        if inp.filters:
            steps.append(HeuristicFilters(filters, cfg.filters.languages))
        steps.append(JsonlWriter(str(work / "filtered" / inp.name)))
        stages.append(Stage(f"read_{inp.name}", steps, cfg.tasks))
    current = stages[-1].output = work / "filtered"

    if cfg.dedup.exact:
        exact = ExactDedupConfig(content_getter=document_text, hash_config=SHA1)
        stages += [
            Stage("exact_signatures", [JsonlReader(str(current)), ExactDedupSignature(str(work / "exact/sigs"), exact)], cfg.tasks),
            Stage("exact_find", [ExactFindDedups(str(work / "exact/sigs"), str(work / "exact/dups"), exact)], 1),
            Stage(
                "exact_filter",
                [JsonlReader(str(current)), ExactDedupFilter(str(work / "exact/dups"), exact),
                 MarkPassed("exact_dedup"), JsonlWriter(str(work / "exact/out"))],
                cfg.tasks,
            ),
        ]
        current = stages[-1].output = work / "exact/out"

    if cfg.dedup.minhash:
        mh = MinhashConfig(
            n_grams=cfg.dedup.minhash_ngrams,
            num_buckets=cfg.dedup.minhash_buckets,
            hashes_per_bucket=cfg.dedup.minhash_hashes_per_bucket,
            seed=cfg.seed,
            hash_config=SHA1,
        )
        m = work / "minhash"
        stages += [
            Stage("minhash_signatures", [JsonlReader(str(current)), MinhashDedupSignature(str(m / "sigs"), mh, language=WORDS)], cfg.tasks),
            Stage("minhash_buckets", [MinhashDedupBuckets(str(m / "sigs"), str(m / "buckets"), config=mh)], mh.num_buckets),
            Stage("minhash_cluster", [MinhashDedupCluster(str(m / "buckets"), str(m / "remove"), config=mh)], 1),
            Stage(
                "minhash_filter",
                [JsonlReader(str(current)), MinhashDedupFilter(str(m / "remove")),
                 MarkPassed("minhash_dedup"), JsonlWriter(str(m / "out"))],
                cfg.tasks,
            ),
        ]
        current = stages[-1].output = m / "out"

    route = JsonlWriter(str(work / "curated"), output_filename="${language}/${rank}.jsonl", compression=None)
    if cfg.classifier.enabled:
        if labeler is None:
            raise UserError(
                "the quality classifier needs labels: a `teacher:` section in the config (or a teacher in Python), "
                "--labels LABELS.jsonl, --heuristic-labels (or classifier.labels: heuristic), or set "
                "curation.classifier.enabled: false"
            )
        model = work / "classifier" / "model.pkl"
        unscored = {i.name for i in cfg.inputs if not i.classifier}
        stages += [
            Stage("classifier_train", [JsonlReader(str(current)),
                                       TrainQualityClassifier(labeler, cfg.classifier, str(work / "classifier"), cfg.seed, unscored)], 1),
            Stage("classifier_filter", [JsonlReader(str(current)),
                                        QualityClassifierFilter(str(model), cfg.classifier.threshold, str(work / "scores"), unscored), route], cfg.tasks),
        ]
    else:
        stages.append(Stage("route", [JsonlReader(str(current)), route], cfg.tasks))
    stages.append(Stage("finalize", [Finalize(str(out), cfg.classifier.threshold)], 1))
    for i, s in enumerate(stages):
        s.name = f"{i:02d}_{s.name}"
    return stages


def make_executor(stage: Stage, cfg: CurationConfig, logs: Path, depends=None):
    logging_dir = str(logs / stage.name)
    if cfg.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        # The jobs run datatrove's `launch_pickled_pipeline` from PATH: this Python's bin first, so they use the
        # installation that submitted them even when its environment was not activated.
        here = shlex.quote(str(Path(sys.executable).parent))
        return SlurmPipelineExecutor(
            stage.pipeline, tasks=stage.tasks, time=cfg.slurm_time, partition=cfg.slurm_partition,
            logging_dir=logging_dir, job_name=f"phiforge-{stage.name}", depends=depends,
            env_command=f'export PATH={here}:"$PATH"',
        )
    if cfg.executor == "ray":
        from datatrove.executor import RayPipelineExecutor

        return RayPipelineExecutor(stage.pipeline, tasks=stage.tasks, workers=cfg.workers, logging_dir=logging_dir)
    from datatrove.executor import LocalPipelineExecutor

    return LocalPipelineExecutor(stage.pipeline, tasks=stage.tasks, workers=min(cfg.workers, stage.tasks), logging_dir=logging_dir)


def _inputs_digest(cfg: CurationConfig) -> str:
    """Names, sizes and modification times of every input file: edited inputs invalidate finished tasks."""
    h = hashlib.sha256()
    for inp in cfg.inputs:
        files = [inp.path] if inp.path.is_file() else sorted(p for p in inp.path.rglob(inp.glob or "*") if p.is_file())
        for f in files:
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _prepare_work_dir(cfg: CurationConfig, out: Path, labeler: Labeler | None) -> None:
    """Reuse finished tasks of an identical earlier run (datatrove skips completed ranks); else start clean."""
    work = out / "work"
    key = {"config": cfg.digest(), "labeler": labeler.name if labeler else None, "inputs": _inputs_digest(cfg)}
    stamp = work / "config.json"
    if not stamp.is_file():  # no curation run has been here: what is in the way is the user's, never deleted
        for name in ("work", "curated", "classifier"):
            theirs = out / name
            if theirs.exists() and (not theirs.is_dir() or any(not TEMPORARY.fullmatch(p.name) for p in theirs.iterdir())):
                raise UserError(f"{theirs} was not written by a curation run and is left as it is; "
                                "move it away or choose another output directory")
    if work.exists() and (not stamp.is_file() or json.loads(stamp.read_text()) != key):
        shutil.rmtree(work)
    (out / "stats.json").unlink(missing_ok=True)  # this run is not complete until it writes stats.json again
    for done in (work / "logs").glob("*_finalize"):
        shutil.rmtree(done)  # finalize always reruns: it writes stats.json
    write_json(stamp, key)


def run_curation(cfg: CurationConfig, out: Path, labeler: Labeler | None) -> dict | None:
    """Run every stage; returns the stats (None for Slurm, whose jobs finish later)."""
    from rich.progress import Progress

    out = Path(out).resolve()  # Slurm and Ray tasks run elsewhere: every path they get is absolute
    stages = build_stages(cfg, out, labeler)
    _prepare_work_dir(cfg, out, labeler)
    logs = out / "work" / "logs"
    if cfg.executor == "slurm":
        executor = None
        for stage in stages:
            executor = make_executor(stage, cfg, logs, depends=executor)
        executor.run()  # submits the chain; each job waits for the previous one
        log.info("submitted %d Slurm jobs; %s appears when they finish", len(stages), out / "stats.json")
        return None
    with Progress() as progress:
        bar = progress.add_task("curation", total=len(stages))
        for stage in stages:
            progress.update(bar, description=f"curation: {stage.name}")
            executor = make_executor(stage, cfg, logs)
            try:
                # datatrove logs every task to stderr and to logs/STAGE/logs/task_N.log; keep the console to our bar
                with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):
                    executor.run()
            except BadInput as e:  # on_bad_input: stop (raised in the task, also across worker processes)
                raise UserError(f"{e} (on_bad_input is stop; set it to skip to drop and report bad records)") from None
            except UserError:
                raise
            except Exception as e:
                raise UserError(f"curation stage {stage.name} failed ({type(e).__name__}: {e}); "
                                f"logs in {logs / stage.name}") from e
            if executor.get_incomplete_ranks():
                raise UserError(f"curation stage {stage.name} left tasks unfinished; logs in {logs / stage.name}")
            if stage.output and not any(p.is_file() for p in stage.output.rglob("*")):
                raise UserError(f"no documents left after {stage.name} (what was dropped and why: "
                                f"{logs}/*/stats.json); loosen curation.filters or check the inputs")
            progress.advance(bar)
    return json.loads((out / "stats.json").read_text())


def _issues(issues_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(issues_dir.glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(rows, key=lambda r: (r["file"], r["line"]))


def _stage_counters(logs: Path) -> dict[str, dict[str, dict[str, int]]]:
    """Per stage, per step: datatrove's counters summed over tasks."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for stage_dir in sorted(p for p in logs.iterdir() if p.is_dir()):
        steps: dict[str, Counter] = {}
        for rank_file in sorted((stage_dir / "stats").glob("*.json")):
            for step in json.loads(rank_file.read_text()):
                counter = steps.setdefault(step["name"], Counter())
                for key, value in step["stats"].items():
                    if isinstance(value, dict) and "total" in value and key not in ("total_time",):
                        counter[key] += int(value["total"]) if isinstance(value["total"], (int, float)) else 0
                    elif isinstance(value, (int, float)):
                        counter[key] += int(value)
        out[stage_dir.name] = {name: dict(c) for name, c in steps.items()}
    return out


class Finalize(PipelineStep):
    """Last stage: stats.json (counts per stage, bad input with file:line, classifier metrics), the score plot,
    and the curated output moved into place."""

    type = "🧹 - PHIFORGE"
    name = "finalize"

    def __init__(self, out: str, threshold: float) -> None:
        super().__init__()
        self.out = Path(out)
        self.threshold = threshold

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        work = self.out / "work"
        counters = _stage_counters(work / "logs")
        issues = _issues(work / "issues")
        stats: dict = {
            "inputs": {},
            "bad_input": {
                "count": len(issues),
                "by_problem": dict(Counter(i["problem"].split(" (")[0] for i in issues)),
                "issues": issues[:1000],
            },
            "language": Counter(),
            "dropped": Counter(),
        }
        for stage, steps in counters.items():
            for step, c in steps.items():
                if stage.split("_", 1)[1].startswith("read_") and "documents" in c:
                    stats["inputs"][stage.split("_", 1)[1][5:]] = c["documents"]
                for key, value in c.items():
                    if key.startswith("language/"):
                        stats["language"][key[9:]] += value
                    elif key.startswith("dropped/"):
                        stats["dropped"][key[8:]] += value
                    elif key == "dropped" and "classifier" in step:
                        stats["dropped"]["quality_classifier"] += value
                    elif key == "dropped" and "dedup" in step.lower():
                        stats["dropped"][stage.split("_", 1)[1].replace("_filter", "_dedup")] += value
        scores_dir = work / "scores"
        if (work / "classifier" / "metrics.json").is_file():
            stats["classifier"] = json.loads((work / "classifier" / "metrics.json").read_text())
            scores = [s for p in sorted(scores_dir.glob("*.json")) for s in json.loads(p.read_text())]
            stats["classifier"] |= {"scored": len(scores), "kept": sum(s >= self.threshold for s in scores)}
            labels = [row["score"] for row in read_jsonl(work / "classifier" / "labels.jsonl")]
            plot_scores(scores, self.threshold, labels, stats["classifier"]["label_cut"], self.out / "quality_scores.png")
            _replace(work / "classifier", self.out / "classifier", copy=True)
        curated = self.out / "curated"
        _replace(work / "curated", curated)
        stats["output"] = {
            lang.name: sum(1 for f in lang.glob("*.jsonl") for _ in open(f, encoding="utf-8"))
            for lang in sorted(curated.iterdir()) if lang.is_dir()
        }
        stats["stages"] = counters
        write_json(self.out / "stats.json", stats)
        yield from ()


def _replace(src: Path, dst: Path, copy: bool = False) -> None:
    """Put src at dst in one rename (a copy first when src must stay), replacing an older dst."""
    if not src.exists() and dst.exists():
        return  # an earlier finalize of this same run already moved it
    tmp = dst.with_name(f".{dst.name}.new")
    shutil.rmtree(tmp, ignore_errors=True)
    if copy:
        shutil.copytree(src, tmp)
    elif src.exists():
        os.replace(src, tmp)
    else:
        tmp.mkdir(parents=True)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old)
    else:
        os.replace(tmp, dst)
