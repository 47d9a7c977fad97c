"""What every settings model shares, low in the package: the `Section` base, constrained numbers, path fields
resolved against the recipe file, and the training loop's settings (which DPO extends).

The recipe (recipe.py) and the methods' own settings (posttrain/pts/config.py, posttrain/dpo_config.py, ...)
build on this module; it imports nothing of phiforge, so either can import it without a cycle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationInfo, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1)]  # a data row's text field

RECIPE_DIR = "recipe_dir"  # the validation context key load_recipe sets: the recipe file's directory


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Fields added after run directories existed: left out of the digest while at their default, so a stage
    # finished before them keeps its config hash (tests/test_stages.py pins the built-in recipes').
    hashed_when_set: ClassVar[frozenset[str]] = frozenset()

    def digest(self) -> str:
        """Stable hash of this section: a finished stage is reused only when it matches."""
        data = self.model_dump(mode="json")
        for name in self.hashed_when_set:
            if getattr(self, name) == type(self).model_fields[name].default:
                del data[name]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _beside_recipe(value: object, info: ValidationInfo) -> object:
    """A relative path that names something beside the recipe file becomes that file's path. Anything else stays as
    given: an absolute path, a name that is no file there (`smollm2`, a preset, a built-in dataset type), a path
    meant from the working directory, and every value validated without a recipe file (the CLI, code)."""
    base = (info.context or {}).get(RECIPE_DIR)
    if base is None or not isinstance(value, (str, Path)) or Path(value).is_absolute():
        return value
    candidate = Path(base) / value
    try:
        there = candidate.exists()
    except (OSError, ValueError):  # no possible file name (too long, a NUL byte): the field's own check says so
        return value
    return type(value)(candidate) if there else value


# A path field of a recipe (a file or directory the user gives), resolved against the recipe file's directory.
RecipePath = Annotated[Path, BeforeValidator(_beside_recipe)]
# A name or a path (a model: `smollm2` or a directory; a preset or a config.json; a dataset type or a YAML file).
NameOrPath = Annotated[str, BeforeValidator(_beside_recipe)]


class TrainConfig(Section):
    """What every training stage shares: optimizer, schedule, batch, checkpointing, precision."""

    steps: PositiveInt = Field(description="Optimizer steps.")
    batch_size: PositiveInt = Field(16, description="Sequences (or pairs) per micro-batch, over all processes.")
    grad_accum: PositiveInt = Field(1, description="Micro-batches per optimizer step.")
    lr: PositiveFloat = Field(1e-3, description="Peak learning rate.")
    min_lr_ratio: Fraction = Field(0.0, description="The learning rate at the end, as a share of lr.")
    warmup_steps: NonNegInt = Field(0, description="Steps of linear warmup.")
    schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="Learning-rate decay after warmup.")
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.1, description="AdamW weight decay.")
    betas: tuple[Fraction, Fraction] = Field((0.9, 0.95), description="AdamW betas.")
    grad_clip: Annotated[float, Field(ge=0)] = Field(1.0, description="Gradient norm clip; 0: none.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 where the device has it.")
    compile: bool = Field(False, description="torch.compile the model.")
    # GPU recipe switches (train/loop.py: start_run applies them).
    mixed_precision: Literal["none", "bf16"] = Field(
        "none", description="Under torchrun: FSDP2 keeps bf16 parameters for forward and backward and reduces "
        "gradients in fp32 (MixedPrecisionPolicy); the optimizer still steps fp32 weights. One process: see precision.")
    activation_checkpointing: Literal["none", "block"] = Field(
        "none", description="block: each decoder block keeps only its input and recomputes the rest in backward "
        "(less memory, about a third more compute).")
    compile_blocks: bool = Field(
        False, description="torch.compile each decoder block (the way that composes with FSDP2), instead of compile.")
    hashed_when_set: ClassVar[frozenset[str]] = frozenset({"mixed_precision", "activation_checkpointing", "compile_blocks",
                                                           "async_checkpoint"})
    checkpoint_every: PositiveInt = Field(100, description="Steps between checkpoints.")
    async_checkpoint: bool = Field(
        False, description="Write each checkpoint in the background (torch.distributed.checkpoint.async_save) while "
        "training goes on: a step waits only for the state's copy to CPU memory, at the cost of that copy's memory. "
        "A checkpoint counts once fully written; the next save and the end of training wait for it.")
    keep_checkpoints: PositiveInt = Field(2, description="Checkpoints kept on disk.")
    log_every: PositiveInt = Field(10, description="Steps between metrics rows.")
    eval_every: NonNegInt = Field(0, description="Held-out loss every N steps; 0: only at the end.")
    init_from: RecipePath | None = Field(
        None, description="An HF model directory to start from instead of the previous stage's model.")

    @model_validator(mode="after")
    def _warmup_fits(self) -> "TrainConfig":
        if self.steps is not None and self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps})")
        if self.compile and self.compile_blocks:
            raise ValueError("compile (the whole model) and compile_blocks (each block): choose one")
        return self


def values_of(settings: Section, model: type[Section]) -> dict:
    """The values of `model`'s fields in `settings`: a method's settings out of a recipe section that extends them."""
    return settings.model_dump(include=set(model.model_fields))
