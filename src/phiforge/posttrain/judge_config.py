"""Judge-guided pairs' settings (posttrain/judge.py): the `judge_dpo:` recipe section's judging keys and
`phiforge judge-pairs`'s options, declared once here."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from phiforge.config import PositiveFloat, PositiveInt, Section


class JudgeConfig(Section):
    method: Literal["generate", "probs"] = Field(
        "generate", description="generate: the judge writes score lines; probs: its digit probabilities per "
                                "dimension (for small judges such as smollm2).")
    samples: Annotated[int, Field(ge=2)] = Field(4, description="Responses sampled per prompt (at least 2 to pair).")
    min_gap: Annotated[float, Field(ge=0)] = Field(
        2.0, description="Least mean-score gap (0-10) between chosen and rejected.")
    temperature: PositiveFloat = Field(0.8, description="Policy sampling temperature; the judge answers greedily.")
    top_p: Annotated[float, Field(gt=0, le=1)] = Field(0.95, description="Policy nucleus sampling.")
    max_tokens: PositiveInt = Field(256, description="Tokens per policy response.")
    judge_max_tokens: PositiveInt = Field(256, description="Tokens per judge answer (generate).")
    batch_prompts: PositiveInt = Field(16, description="Prompts sampled and judged per step.")
