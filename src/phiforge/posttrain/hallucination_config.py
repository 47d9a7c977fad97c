"""Hallucination mitigation's settings (posttrain/hallucination.py): the questions the policy is asked, how it is
asked and what counts as known; the `hallucination:` recipe section's keys and `phiforge hallucination`'s options
are these models."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from phiforge.config import NonNegInt, PositiveFloat, PositiveInt, RecipePath, Section


class HallucinationQuestions(Section):
    qa: RecipePath | None = Field(
        None, description="jsonl of {question, answer, aliases?, verifier?}; default: generated facts.")
    facts: PositiveInt = Field(200, description="Generated facts (training split) to ask when there is no qa file.")
    bogus: NonNegInt = Field(50, description="Made-up-entity questions to add.")


class HallucinationConfig(Section):
    samples: NonNegInt = Field(4, description="Sampled answers per question beside the greedy one.")
    temperature: PositiveFloat = Field(0.8, description="Temperature of the sampled answers.")
    max_tokens: PositiveInt = Field(64, description="Tokens per answer.")
    known_share: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5, description="Share of right answers that makes a question known.")
