"""What a stage gets to do its work: the recipe, its own directory, and its upstream stages' outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from phiforge.recipe import Recipe
from phiforge.rundir import StageDir


@dataclass
class StageContext:
    recipe: Recipe
    run_dir: Path
    stage: StageDir

    @property
    def out(self) -> Path:
        return self.stage.path

    def upstream(self, name: str) -> Path:
        """The directory of a finished upstream stage; a clear error when it has not run."""
        other = StageDir(self.run_dir, name)
        other.manifest()  # raises a UserError naming the command to run first
        return other.path
