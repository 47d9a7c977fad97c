"""Running the recipe's stages (phiforge/stages.py) in order: skip what is done, resume what is partial."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import time
from pathlib import Path

import torch

from phiforge import distributed, progress
from phiforge.errors import UserError
from phiforge.files import remove_stale_temporaries, write_with
from phiforge.recipe import Recipe
from phiforge.rundir import FINAL_DIR, StageDir, append_metrics, run_dir_lock, write_manifest
from phiforge.stage import Stage, StageContext
from phiforge.stages import STAGES

log = logging.getLogger("phiforge")


def stages_of(recipe: Recipe) -> list[Stage]:
    return [s for s in STAGES if s.section_of(recipe) is not None]


def depends_on(stage: Stage) -> tuple[str, ...]:
    """The stages whose sections enter this one's config hash: every earlier stage but those it declares it skips."""
    names = [s.name for s in STAGES]
    return tuple(n for n in names[: names.index(stage.name)] if n not in stage.hash_skips)


def config_hash(recipe: Recipe, stage: Stage) -> str:
    """Hash of this stage's section, the seed, the model choice and every upstream section (included or not)."""
    upstream = depends_on(stage)
    parts = [stage.name, str(recipe.seed), recipe.model.digest()]
    for s in STAGES:
        if s.name in upstream or s.name == stage.name:
            section = s.section_of(recipe)
            parts.append(f"{s.name}={section.digest() if section is not None else '-'}")
    for name in stage.also_reads:
        section = getattr(recipe, name)
        parts.append(f"reads {name}={section.digest() if section is not None else '-'}")
    if recipe.curation is not None and "corpus" in (stage.name, *upstream):  # curation runs in the corpus stage
        parts.append(f"curation={recipe.curation.digest()}|teacher={recipe.teacher.digest() if recipe.teacher else '-'}")
    if any(s.uses_teacher and s.section_of(recipe) is not None for s in STAGES if s.name in (stage.name, *upstream)):
        parts.append(f"judge_teacher={recipe.teacher.digest() if recipe.teacher else '-'}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def context(recipe: Recipe, run_dir: Path, name: str) -> StageContext:
    """What the stage `name` runs with in run_dir."""
    return StageContext(recipe, run_dir, StageDir(run_dir, name), STAGES)


def run_stage(recipe: Recipe, run_dir: Path, stage: Stage) -> None:
    if stage.all_ranks:
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
    ctx = context(recipe, run_dir, stage.name)
    try:
        result = stage.run(ctx)
    except UserError:
        # Rejected input before any work: leave no directory that would read as a partial run.
        if main and [p.name for p in sd.path.iterdir()] == ["started.json"]:
            shutil.rmtree(sd.path)
        raise
    if not main:
        return
    inputs = {dep: str(run_dir / dep) for dep in depends_on(stage) if StageDir(run_dir, dep).status() == "done"}
    if not sd.metrics_path.is_file():  # stages without a training log still leave their figures here
        append_metrics(sd.metrics_path, {k: v for k, v in result.metrics.items() if not isinstance(v, dict)})
    if stage.name == stages_of(recipe)[-1].name:
        write_final(ctx)
    outputs = {name: path for name, path in stage.outputs.items() if (sd.path / path).exists()}  # what it wrote
    write_manifest(sd, digest, inputs, outputs, result, time.perf_counter() - t0)
    log.info("%s: done in %.1fs", stage.name, time.perf_counter() - t0)


def write_final(ctx: StageContext) -> None:
    """FINAL_DIR: a copy of the last model trained in the run, once its last stage has run (before that stage's
    manifest, so a kill in between redoes both)."""
    trained = ctx.trained_models()
    if trained:
        last = list(trained.values())[-1]
        write_with(ctx.run_dir / FINAL_DIR, lambda p: shutil.copytree(last, p))


def run_all(recipe: Recipe, run_dir: Path) -> None:
    stages = stages_of(recipe)
    run = progress.RunProgress(recipe, stages)
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
