"""The recipe's stages in order, and running them: skip what is done, resume what is partial."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from phiforge import distributed, progress
from phiforge.errors import UserError
from phiforge.files import remove_stale_temporaries
from phiforge.recipe import Recipe, Section
from phiforge.rundir import StageDir, StageResult, append_metrics, run_dir_lock, write_manifest
from phiforge.stage import StageContext

log = logging.getLogger("phiforge")


@dataclass(frozen=True)
class Stage:
    name: str
    section: Callable[[Recipe], Section | None]  # None: the recipe leaves this stage out
    depends_on: tuple[str, ...]
    run: Callable[[StageContext], StageResult]


def _stages() -> list[Stage]:
    from phiforge import report
    from phiforge.data import corpus
    from phiforge.eval import stage as eval_stage
    from phiforge.posttrain import sft
    from phiforge.posttrain import stages as posttrain_stages
    from phiforge.synth import stage as synth_stage
    from phiforge.tokenizer import stage as tokenizer_stage
    from phiforge.train import stages as train_stages

    return [
        Stage("corpus", lambda r: r.corpus, (), corpus.run),
        Stage("synth", lambda r: r.synth, ("corpus",), synth_stage.run),
        Stage("tokenizer", lambda r: r.tokenizer if r.corpus else None, ("corpus", "synth"), tokenizer_stage.run),
        Stage("pretrain", lambda r: r.pretrain, ("corpus", "synth", "tokenizer"), train_stages.run_pretrain),
        Stage("midtrain", lambda r: r.midtrain, ("corpus", "synth", "tokenizer", "pretrain"), train_stages.run_midtrain),
        Stage("sft", lambda r: r.sft, ("corpus", "synth", "tokenizer", "pretrain", "midtrain"), sft.run),
        Stage("pts", lambda r: r.pts, ("corpus", "synth", "tokenizer", "pretrain", "midtrain", "sft"), posttrain_stages.run_pts_stage),
        Stage("dpo", lambda r: r.dpo, ("corpus", "synth", "tokenizer", "pretrain", "midtrain", "sft", "pts"),
              posttrain_stages.run_dpo_stage),
        Stage("judge_dpo", lambda r: r.judge_dpo, ("corpus", "synth", "tokenizer", "pretrain", "midtrain", "sft", "pts", "dpo"),
              posttrain_stages.run_judge_dpo_stage),
        Stage("hallucination", lambda r: r.hallucination,
              ("corpus", "synth", "tokenizer", "pretrain", "midtrain", "sft", "pts", "dpo", "judge_dpo"),
              posttrain_stages.run_hallucination_stage),
        # eval scores the corpus's held-out text and problems: a post-training-only recipe has none
        # (its dpo and hallucination stages compare the models before and after themselves)
        Stage("eval", lambda r: r.eval if r.corpus else None,
              ("corpus", "synth", "pretrain", "midtrain", "sft", "pts", "dpo", "judge_dpo", "hallucination"), eval_stage.run),
        Stage("report", lambda r: r.eval,
              ("corpus", "synth", "tokenizer", "pretrain", "midtrain", "sft", "pts", "dpo", "judge_dpo", "hallucination", "eval"),
              report.run),
    ]


STAGE_NAMES = ("corpus", "synth", "tokenizer", "pretrain", "midtrain", "sft", "pts", "dpo", "judge_dpo", "hallucination",
               "eval", "report")
TEACHER_STAGES = ("judge_dpo", "hallucination")  # a judge or grader may be the recipe's teacher


def stages_of(recipe: Recipe) -> list[Stage]:
    return [s for s in _stages() if s.section(recipe) is not None]


def config_hash(recipe: Recipe, stage: Stage) -> str:
    """Hash of this stage's section, the seed, the model choice and every included upstream section."""
    parts = [stage.name, str(recipe.seed), recipe.model.digest()]
    for s in _stages():
        if s.name in stage.depends_on or s.name == stage.name:
            section = s.section(recipe)
            parts.append(f"{s.name}={section.digest() if section is not None else '-'}")
    if recipe.curation is not None and "corpus" in (stage.name, *stage.depends_on):  # curation runs in the corpus stage
        parts.append(f"curation={recipe.curation.digest()}|teacher={recipe.teacher.digest() if recipe.teacher else '-'}")
    if any(getattr(recipe, n) is not None for n in TEACHER_STAGES if n in (stage.name, *stage.depends_on)):
        parts.append(f"judge_teacher={recipe.teacher.digest() if recipe.teacher else '-'}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


# Stages every torchrun rank runs together (FSDP2); the others run on rank 0 alone while the rest wait.
ALL_RANK_STAGES = ("pretrain", "midtrain", "sft")  # not rundir.TRAINING_STAGES: DPO still trains on rank 0


def run_stage(recipe: Recipe, run_dir: Path, stage: Stage) -> None:
    if stage.name in ALL_RANK_STAGES:
        with _held(run_dir):
            _run_stage(recipe, run_dir, stage)
        distributed.wait_for_main(f"the {stage.name} stage's manifest")
        return
    with distributed.main_alone(f"rank 0 to run the {stage.name} stage") as runs_here:
        if runs_here:
            with _held(run_dir):
                _run_stage(recipe, run_dir, stage)


def _held(run_dir: Path):
    """The run directory's lock, taken by rank 0 alone: the other ranks of a torchrun job are the same run."""
    return run_dir_lock(run_dir) if distributed.is_main() else contextlib.nullcontext()


def _run_stage(recipe: Recipe, run_dir: Path, stage: Stage) -> None:
    main = distributed.is_main()
    sd = StageDir(run_dir, stage.name)
    digest = config_hash(recipe, stage)
    if sd.status() == "done":
        if sd.manifest()["config_hash"] == digest:
            log.info("%s: done, skipped", stage.name)
            return
        raise UserError(
            f"stage '{stage.name}' in {run_dir} finished with another config; choose a new --run-dir "
            f"or delete {sd.path} (and the stages after it) to redo it"
        )
    resuming = sd.status() == "partial"
    if main:
        sd.begin(digest)
        if resuming:  # what a killed write left behind (a checkpoint's size, at scale); the lock says it is no one's now
            for stale in remove_stale_temporaries(sd.path):
                log.info("%s: removed %s, left by an interrupted write", stage.name, stale)
    distributed.wait_for_main(f"rank 0 to claim {sd.path}")  # a claim it refuses stops every rank here
    log.info("%s: %s", stage.name, "resuming" if resuming else "starting")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    t0 = time.perf_counter()
    try:
        result = stage.run(StageContext(recipe, run_dir, sd))
    except UserError:
        # Rejected input before any work: leave no directory that would read as a partial run.
        if main and [p.name for p in sd.path.iterdir()] == ["started.json"]:
            shutil.rmtree(sd.path)
        raise
    if not main:
        return
    inputs = {dep: str(run_dir / dep) for dep in stage.depends_on if StageDir(run_dir, dep).status() == "done"}
    if not sd.metrics_path.is_file():  # stages without a training log still leave their figures here
        append_metrics(sd.metrics_path, {k: v for k, v in result.metrics.items() if not isinstance(v, dict)})
    write_manifest(sd, digest, inputs, result, time.perf_counter() - t0)
    log.info("%s: done in %.1fs", stage.name, time.perf_counter() - t0)


def run_all(recipe: Recipe, run_dir: Path) -> None:
    stages = stages_of(recipe)
    run = progress.RunProgress(recipe, [s.name for s in stages])
    progress.activate(run)
    try:
        with _held(run_dir):  # one hold for the whole run: no other process slips in between stages
            for i, stage in enumerate(stages):
                run.begin(i)
                done_before = StageDir(run_dir, stage.name).status() == "done"
                if not done_before:
                    log.info("%s", run.line())
                run_stage(recipe, run_dir, stage)
                run.end(i, ran=not done_before)
    finally:
        progress.activate(None)
