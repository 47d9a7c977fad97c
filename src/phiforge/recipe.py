"""The recipe: one YAML file, validated by pydantic. An unknown key is an error.

Each stage has its own section; `phiforge STAGE RECIPE` runs one section alone and
`phiforge run RECIPE` runs them all in order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from phiforge.errors import UserError

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def digest(self) -> str:
        """Stable hash of this section: a finished stage is reused only when it matches."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


SourceKind = Literal["python_source", "python_docs", "package_readmes", "synthetic_math", "passkey", "jsonl"]


class SourceConfig(Section):
    """One named corpus source. Built-in kinds are found on the machine or generated; `jsonl` is yours."""

    name: str
    kind: SourceKind
    path: Path | None = None  # for kind: jsonl
    field: str = "text"  # for kind: jsonl
    max_docs: PositiveInt = 20_000
    max_chars: PositiveInt = 2_000_000

    @model_validator(mode="after")
    def _jsonl_needs_path(self) -> "SourceConfig":
        if self.kind == "jsonl" and self.path is None:
            raise ValueError(f"source '{self.name}' has kind jsonl but no path")
        return self


class CorpusConfig(Section):
    sources: list[SourceConfig]
    heldout_fraction: Fraction = 0.02
    sft_conversations: PositiveInt = 4000
    eval_problems: PositiveInt = 200
    # Benchmarks (built-in names such as humaneval, or jsonl paths) whose word n-grams no training
    # document may share; when set, the run's own held-out eval problems are checked too.
    decontaminate: list[str] = []

    @model_validator(mode="after")
    def _unique_names(self) -> "CorpusConfig":
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"corpus source names must be unique, got {names}")
        if not names:
            raise ValueError("corpus needs at least one source")
        return self


class TokenizerConfig(Section):
    vocab_size: Annotated[int, Field(ge=512)] = 8192
    # A path to an existing HF tokenizer (e.g. the real Phi-4 one) skips training.
    path: Path | None = None
    max_training_chars: PositiveInt = 20_000_000


class ModelConfig(Section):
    # A preset name (see `phiforge model list`) or a path to an HF config.json / model directory.
    preset: str = "tiny"


class TrainConfig(Section):
    """What every training stage shares: optimizer, schedule, batch, checkpointing, precision."""

    steps: PositiveInt
    batch_size: PositiveInt = 16
    grad_accum: PositiveInt = 1
    lr: PositiveFloat = 1e-3
    min_lr_ratio: Fraction = 0.0
    warmup_steps: NonNegInt = 0
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    betas: tuple[Fraction, Fraction] = (0.9, 0.95)
    grad_clip: Annotated[float, Field(ge=0)] = 1.0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False
    checkpoint_every: PositiveInt = 100
    keep_checkpoints: PositiveInt = 2
    log_every: PositiveInt = 10
    eval_every: NonNegInt = 0  # held-out loss every N steps; 0 = only at the end
    init_from: Path | None = None  # an HF model directory to start from instead of the previous stage

    @model_validator(mode="after")
    def _warmup_fits(self) -> "TrainConfig":
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps})")
        return self


class MixtureSource(Section):
    """A mixture entry with what the planner needs to know: its share and how many unique tokens it has."""

    share: Annotated[float, Field(ge=0)]
    unique_tokens: PositiveFloat | None = None  # e.g. 1.3e12; default: counted from the run's corpus


class PretrainConfig(TrainConfig):
    seq_len: PositiveInt = 256
    # Token share per corpus source (normalised); sources not listed are left out.
    # A value is a share, or {share: 0.15, unique_tokens: 1.3e12} for `phiforge mixture plan`.
    mixture: dict[str, MixtureSource]
    total_tokens: PositiveFloat | None = None  # the mixture's token budget; default: every training row once
    max_epochs: PositiveFloat = 10.0  # warn when the mixture repeats a source more often than this

    @field_validator("mixture", mode="before")
    @classmethod
    def _share_alone(cls, mixture: object) -> object:
        if isinstance(mixture, dict):
            return {n: {"share": v} if isinstance(v, (int, float)) else v for n, v in mixture.items()}
        return mixture

    @property
    def shares(self) -> dict[str, float]:
        """The sources with a positive share, and their shares."""
        return {n: v.share for n, v in self.mixture.items() if v.share > 0}

    @property
    def token_budget(self) -> int:
        """Tokens the mixture draws: total_tokens, else what steps x batch x grad_accum rows of seq_len + 1 hold."""
        if self.total_tokens is not None:
            return int(self.total_tokens)
        return self.steps * self.grad_accum * self.batch_size * (self.seq_len + 1)


class MidtrainConfig(TrainConfig):
    lr: PositiveFloat | None = None  # type: ignore[assignment]  # default: pretrain lr x lr_scale
    lr_scale: PositiveFloat = 0.1  # the report divides the pretraining lr by 10
    rope_theta: PositiveFloat = 250_000.0
    context_multiplier: PositiveInt = 4  # the new context = the model's x this; 4K -> 16K in the report
    long_share: Fraction = 0.3  # long documents; the rest is recall data from the pretraining mix
    long_min_tokens: PositiveInt | None = None  # default: half the new context


class SFTConfig(TrainConfig):
    seq_len: PositiveInt = 256
    data: Path | None = None  # jsonl of {"messages": [...]}; default: the corpus stage's generated set


class EvalConfig(Section):
    tasks: list[Literal["perplexity", "problems", "long_context", "passkey", "chat_format"]] = [
        "perplexity",
        "problems",
        "long_context",
        "passkey",
        "chat_format",
    ]
    # context lengths (tokens) for the long_context and passkey tasks
    passkey_lengths: list[PositiveInt] = [128, 512, 1024]
    passkey_trials: PositiveInt = 20
    perplexity_tokens: PositiveInt = 32_768
    max_problems: PositiveInt = 200
    batch_size: PositiveInt = 16
    models: list[Path] = []  # extra HF model dirs to evaluate beside the run's checkpoints


class Recipe(Section):
    name: str
    seed: int = 1234
    threads: NonNegInt = 0  # torch threads; 0 = all cores
    corpus: CorpusConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig
    midtrain: MidtrainConfig | None = None
    sft: SFTConfig | None = None
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _mixture_names(self) -> "Recipe":
        known = {s.name for s in self.corpus.sources}
        unknown = sorted(set(self.pretrain.mixture) - known)
        if unknown:
            raise ValueError(f"pretrain.mixture names unknown corpus sources {unknown}; known: {sorted(known)}")
        if not self.pretrain.shares:
            raise ValueError("pretrain.mixture needs at least one positive share")
        return self


def _resolve_paths(data: object, base: Path) -> object:
    """Make relative `path`-like values relative to the recipe file, not the working directory."""
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if k in {"path", "data", "init_from"} and isinstance(v, str) and not Path(v).is_absolute():
                candidate = base / v
                out[k] = str(candidate) if candidate.exists() else v
            elif k == "preset" and isinstance(v, str) and (base / v).exists():
                out[k] = str(base / v)
            else:
                out[k] = _resolve_paths(v, base)
        return out
    if isinstance(data, list):
        return [_resolve_paths(v, base) for v in data]
    return data


def _format_error(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{loc}' (check spelling; see recipes/tiny.yaml for the schema)"
    if err["type"] == "missing":
        return f"missing key '{loc}'"
    return f"'{loc}': {err['msg']} (got {err.get('input')!r})"


def load_recipe(path: Path | str) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of sections")
    try:
        return Recipe.model_validate(_resolve_paths(data, path.parent.resolve()))
    except ValidationError as e:
        raise UserError(f"{path}: {_format_error(e.errors()[0])}") from None
