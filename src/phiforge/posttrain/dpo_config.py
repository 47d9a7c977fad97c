"""DPO's settings (posttrain/dpo.py): the training loop's with DPO's defaults and its own knobs; the `dpo:` recipe
section and `phiforge dpo`'s options are both this model."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from phiforge.config import PositiveFloat, PositiveInt, TrainConfig


class DPOConfig(TrainConfig):
    """The loop's settings with DPO's defaults (a small constant lr, no decay) and its own knobs."""

    lr: PositiveFloat = Field(5e-7, description="Learning rate.")
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.0, description="AdamW weight decay.")
    schedule: Literal["linear", "cosine", "constant"] = Field("constant", description="Learning-rate decay after warmup.")
    batch_size: PositiveInt = Field(8, description="Pairs per micro-batch, over all processes.")
    beta: PositiveFloat = Field(0.1, description="Strength of the pull towards the reference model.")
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = Field(
        0.0, description="Conservative DPO: the assumed rate of flipped labels.")
    max_length: Annotated[int, Field(gt=1)] = Field(
        2048, description="Prompt + response tokens; the prompt is cut from the left.")
    checkpoint_every: PositiveInt = Field(50, description="Steps between checkpoints.")
    # Training length: `steps`, or `epochs` (passes over the pairs) to make it follow the pair count. A PTS run
    # finds a number of pairs that is not known in advance, and on SmolLM2 the passes decided the outcome: about
    # 5 helped, 15 over the same pairs broke the model (docs/posttrain.md).
    steps: PositiveInt | None = Field(None, description="Training steps, instead of epochs.")  # type: ignore[assignment]
    epochs: PositiveFloat | None = Field(None, description="Passes over the pairs, instead of steps.")

    @model_validator(mode="after")
    def _one_length(self) -> "DPOConfig":
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give the training length as either steps or epochs (passes over the pairs), not "
                             + ("both" if self.steps else "neither"))
        return self

    def for_pairs(self, pairs: int) -> "DPOConfig":
        """These settings with `epochs` turned into steps for `pairs` pairs (at least one step)."""
        if self.steps is not None:
            return self
        steps = max(1, round(self.epochs * pairs / (self.batch_size * self.grad_accum)))
        return self.model_copy(update={"steps": steps, "warmup_steps": min(self.warmup_steps, steps)})
