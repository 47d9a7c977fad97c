"""Dataset types: a YAML file of prompt templates, a workflow of steps, a verifier and an output shape.

Adding a dataset type needs no Python: write a YAML file like the built-in ones in
`synth/datasets/` and name its path in the recipe's `synth.datasets` list (docs/synthetic-data.md).

A sample is a flat dict of fields. Seeds or a programmatic generator provide the first fields
(`seed`, `seed_id`, or `question`/`answer`/...); each step reads fields through `{name}` templates
and writes new ones. A step that cannot use a sample (no parse, failed check) drops it with a reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from phiforge.errors import UserError

BUILTIN_DIR = Path(__file__).parent / "datasets"


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingOverride(Spec):
    temperature: float | None = None
    max_tokens: int | None = None


class Generate(Spec):
    """Rewrite and augment: one prompt per sample, the reply becomes a field."""

    kind: Literal["generate"]
    prompt: str
    system: str | None = None
    output: str
    sampling: SamplingOverride = SamplingOverride()


class Parse(Spec):
    """Split a reply into fields with a regex of named groups; a reply that does not match is dropped."""

    kind: Literal["parse"]
    input: str
    pattern: str


class Role(Spec):
    name: str
    system: str


class Dialogue(Spec):
    """Multi-agent prompting: roles take turns in one conversation, each seeing the others as the user."""

    kind: Literal["dialogue"]
    roles: Annotated[list[Role], Field(min_length=2)]
    opening: str  # the first message, addressed to the first role
    turns: Annotated[int, Field(ge=1)] = 4
    output: str
    sampling: SamplingOverride = SamplingOverride()


class Revise(Spec):
    """Self-revision: critique a draft against a rubric, then revise it; N rounds, history kept."""

    kind: Literal["revise"]
    input: str
    rubric: str
    critique: str  # template with {draft} and {rubric}
    revise: str  # template with {draft} and {critique}
    rounds: Annotated[int, Field(ge=1)] = 1
    output: str
    sampling: SamplingOverride = SamplingOverride()


class Reverse(Spec):
    """Instruction reversal: artifact -> instruction -> regenerated artifact; keep consistent pairs."""

    kind: Literal["reverse"]
    input: str  # the artifact (code or text)
    instruct: str  # template with {artifact}: asks for the instruction that would produce it
    regenerate: str  # template with {instruction}: asks for the artifact again
    min_similarity: Annotated[float, Field(ge=0, le=1)] = 0.5
    output: str  # the instruction field; `<output>_artifact` holds the regenerated artifact
    sampling: SamplingOverride = SamplingOverride()


class Plurality(Spec):
    """Sample k answers; keep questions whose majority agreement lies inside the band."""

    kind: Literal["plurality"]
    prompt: str
    k: Annotated[int, Field(ge=2)] = 5
    band: tuple[float, float] = (0.2, 0.8)
    output: str  # the majority answer; `<output>_agreement` holds its share
    sampling: SamplingOverride = SamplingOverride(temperature=0.8)


class Verify(Spec):
    """Check a field with a verifier (synth/verify.py); failures are dropped and the verdict kept."""

    kind: Literal["verify"]
    verifier: str = "numeric"
    completion: str  # the field holding the candidate
    problem: dict[str, str] = {}  # problem keys -> templates over fields, e.g. {answer: "{answer}"}


StepSpec = Annotated[Union[Generate, Parse, Dialogue, Revise, Reverse, Plurality, Verify], Field(discriminator="kind")]


class Seeds(Spec):
    """Which seeds this type reads from the synth stage's seed pool."""

    kinds: list[Literal["text", "code"]] = ["text"]
    min_chars: int = 200
    max_chars: int = 2000


class Generator(Spec):
    kind: Literal["arithmetic", "algebra", "unit_conversion", "code_exercise"]


class Message(Spec):
    role: Literal["system", "user", "assistant"]
    content: str  # a template over the sample's fields


class Output(Spec):
    text: str | None = None  # a pretraining document
    messages: list[Message] | None = None  # an SFT conversation

    @model_validator(mode="after")
    def _something(self) -> "Output":
        if self.text is None and self.messages is None:
            raise ValueError("output needs `text`, `messages` or both")
        return self


class DatasetType(Spec):
    name: str
    description: str
    seeds: Seeds | None = None
    generator: Generator | None = None
    steps: list[StepSpec] = []
    output: Output

    @model_validator(mode="after")
    def _one_origin(self) -> "DatasetType":
        if (self.seeds is None) == (self.generator is None):
            raise ValueError("a dataset type needs exactly one of `seeds` or `generator`")
        if self.generator is None and not self.steps:
            raise ValueError("a seeded dataset type needs at least one step")
        return self


def render(template: str, fields: dict, dataset: str, where: str) -> str:
    """Fill `{field}` slots; a slot the sample does not have is a one-line error naming type and field."""
    try:
        return template.format_map(fields)
    except KeyError as e:
        known = ", ".join(sorted(k for k in fields if not k.startswith("_")))
        raise UserError(f"dataset type '{dataset}', {where}: template uses field {e.args[0]!r}, which the sample lacks (has: {known})") from None
    except (ValueError, IndexError) as e:
        raise UserError(f"dataset type '{dataset}', {where}: broken template ({e}); write literal braces as {{{{ }}}}") from None


def load_dataset_type(name_or_path: str | Path) -> DatasetType:
    """A built-in type by name (`synth/datasets/<name>.yaml`) or a user's YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UserError(f"unknown dataset type {str(name_or_path)!r}; built in: {', '.join(builtin_types())}, or give a YAML path")
    if not path.is_file():
        raise UserError(f"{path}: dataset type file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return DatasetType.model_validate(data)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML ({getattr(e, 'problem', e)})") from None
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise UserError(f"{path}: dataset type field '{loc}': {err['msg']}") from None


def builtin_types() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))
