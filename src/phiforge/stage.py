"""A stage's declaration (`Stage`) and what it gets to do its work (`StageContext`).

Each stage module declares `STAGE = Stage(...)` next to its run function; `phiforge/stages.py` lists them in run
order, and the pipeline, `phiforge status` and the per-stage commands are derived from that list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from phiforge.errors import UserError
from phiforge.recipe import Recipe, Section
from phiforge.rundir import StageDir, StageResult


TRAINING_OUTPUTS = {"model": "model/", "data": "data/", "metrics": "metrics.jsonl"}  # pretrain's, midtrain's, sft's


def _fixed_estimate(recipe: Recipe) -> float:
    return 5.0  # a stage with no size in the recipe: seconds on the reference machine


@dataclass(frozen=True)
class Stage:
    """One stage of the recipe, declared once."""

    name: str  # its directory in the run, its command (`phiforge NAME RECIPE`) and its line in `phiforge status`
    help: str  # one line: the command's help
    run: Callable[[StageContext], StageResult]
    section: str  # the Recipe attribute it reads; its digest enters this and every later stage's config hash
    outputs: Mapping[str, str] = field(default_factory=dict)  # declared name -> path relative to the stage directory
    needs: Callable[[Recipe], bool] | None = None  # beyond its section: when the recipe includes it
    trains: bool = False  # leaves outputs["model"], a Hugging Face model (not when it found nothing to train on)
    passes_model: bool = False  # the next stage starts from its model: its own when it trained one, else the one it had
    all_ranks: bool = False  # every torchrun rank runs it together (FSDP2); other stages run on rank 0 alone
    uses_teacher: bool = False  # a judge or grader may be the recipe's teacher: the teacher enters its config hash
    hash_skips: tuple[str, ...] = ()  # earlier stages whose sections do not enter its config hash
    # recipe sections it reads beyond its own (the ablation's variants train with pretrain's settings): they enter its
    # config hash even where their own stage is left out of the recipe
    also_reads: tuple[str, ...] = ()
    estimate: Callable[[Recipe], float] = _fixed_estimate  # seconds on the reference machine (phiforge/progress.py)

    def section_of(self, recipe: Recipe) -> Section | None:
        """The stage's recipe section; None when the recipe leaves the stage out."""
        if self.needs is not None and not self.needs(recipe):
            return None
        return getattr(recipe, self.section)


@dataclass
class StageContext:
    recipe: Recipe
    run_dir: Path
    stage: StageDir
    stages: tuple[Stage, ...]  # every declared stage, in run order (the recipe's and the others)

    @property
    def out(self) -> Path:
        return self.stage.path

    def upstream(self, name: str) -> Path:
        """The directory of a finished upstream stage; a clear error when it has not run."""
        other = StageDir(self.run_dir, name)
        other.manifest()  # raises a UserError naming the command to run first
        return other.path

    def declared(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def input(self, stage: str, output: str) -> Path:
        """A finished upstream stage's output, by the name its declaration gives it."""
        return self.upstream(stage) / self.declared(stage).outputs[output]

    def before(self) -> list[Stage]:
        """The stages before this one, in run order."""
        names = [s.name for s in self.stages]
        return list(self.stages[: names.index(self.stage.name)])

    def trained_models(self) -> dict[str, Path]:
        """stage name -> model, for every finished stage that left one, in run order (the recipe's or not)."""
        found = {}
        for s in self.stages:
            if s.trains and StageDir(self.run_dir, s.name).status() == "done":
                model = self.run_dir / s.name / s.outputs["model"]
                if model.is_dir():
                    found[s.name] = model
        return found

    def start_model(self, init_from: str | Path | None) -> Path:
        """The model this stage starts from: init_from (`smollm2` is the embedded SmolLM2-135M-Instruct), else the
        model the nearest earlier stage of the recipe passes on: the one it trained, or the one it worked on when
        it trained nothing (pts searches; a stage without pairs skips training)."""
        if init_from is not None:
            if str(init_from) == "smollm2":
                from phiforge.generation.hf import smollm2_dir

                return smollm2_dir()
            return Path(init_from)
        for s in reversed(self.before()):
            if s.passes_model and s.section_of(self.recipe) is not None:
                directory = self.upstream(s.name)
                if s.trains and (directory / s.outputs["model"]).is_dir():
                    return directory / s.outputs["model"]
                return Path(StageDir(self.run_dir, s.name).manifest()["metrics"]["init_from"])
        raise UserError(f"the {self.stage.name} stage needs a model: give {self.stage.name}.init_from, "
                        "or an earlier training stage in the recipe")
