"""Model presets (Phi-3/Phi-4 architecture as transformers' Phi3ForCausalLM) and their facts.

The model code is transformers' own: no parallelism lives here, so FSDP2 can wrap it later.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, Phi3Config

from phiforge.errors import UserError

# Phi-4 as published (microsoft/phi-4 config.json): Phi-3-medium shape, full attention, 100,352 vocab,
# untied embeddings, 16K positions with RoPE base 250,000 after midtraining.
# The special-token ids of tokenizers trained here (see phiforge.tokenizer.SPECIAL_TOKENS).
SMALL_SPECIAL_IDS = dict(bos_token_id=0, eos_token_id=3, pad_token_id=4)

PRESETS: dict[str, dict] = {
    "phi-4": dict(
        hidden_size=5120,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=10,
        intermediate_size=17920,
        vocab_size=100352,
        max_position_embeddings=16384,
        original_max_position_embeddings=16384,
        rope_theta=250_000.0,
        tie_word_embeddings=False,
        bos_token_id=100257,
        eos_token_id=100265,
        pad_token_id=100349,
    ),
    # Small shapes for CPU runs; vocab and special token ids come from the run's tokenizer.
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=768,
        vocab_size=8192,
        max_position_embeddings=256,
        rope_theta=10_000.0,
        tie_word_embeddings=False,
        **SMALL_SPECIAL_IDS,
    ),
    "nano": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=192,
        vocab_size=1024,
        max_position_embeddings=128,
        rope_theta=10_000.0,
        tie_word_embeddings=False,
        **SMALL_SPECIAL_IDS,
    ),
}


def phi3_config(**kw) -> Phi3Config:
    theta = kw.pop("rope_theta", 10_000.0)
    kw.setdefault("original_max_position_embeddings", kw.get("max_position_embeddings", 4096))
    return Phi3Config(
        rope_parameters={"rope_type": "default", "rope_theta": float(theta)},
        sliding_window=None,  # full attention, as in Phi-4
        **kw,
    )


def extend_context(config: PretrainedConfig, context: int, theta: float) -> PretrainedConfig:
    """A copy of `config` with a longer context and a new RoPE base (midtraining)."""
    config = config.__class__.from_dict(config.to_dict())
    config.max_position_embeddings = context
    if hasattr(config, "original_max_position_embeddings"):
        config.original_max_position_embeddings = context
    config.rope_parameters = {**(getattr(config, "rope_parameters", None) or {}), "rope_theta": float(theta)}
    return config


def rope_theta(config: PretrainedConfig) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10_000.0)))


def load_config(preset: str) -> PretrainedConfig:
    """A preset name, a config.json path, or an HF model directory."""
    if preset in PRESETS:
        return phi3_config(**PRESETS[preset])
    path = Path(preset)
    if path.is_file() and path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({getattr(e, 'msg', e)})") from None
        if not isinstance(data, dict) or not data.get("model_type"):
            raise UserError(f"{path}: config has no model_type; a Hugging Face config.json is a JSON object with one")
        return _config_or_error(path, lambda: AutoConfig.for_model(**data))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a Hugging Face model directory (no config.json)")
        return _config_or_error(path, lambda: AutoConfig.from_pretrained(str(path)))
    raise UserError(f"unknown model preset '{preset}': use one of {sorted(PRESETS)} or a path to a config.json")


# What transformers raises for a config it cannot read or whose values do not make a model (an unknown model_type,
# unreadable JSON, zero heads, shapes that do not divide): the config's fault, so reported as the user's.
CONFIG_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError, OverflowError,
                 RuntimeError, AssertionError)


def _config_or_error(path: Path, read) -> PretrainedConfig:
    try:
        return read()
    except CONFIG_ERRORS as e:
        raise UserError(f"{path}: not a usable model config ({str(e).splitlines()[0][:200]})") from None


def load_preset(preset: str) -> PretrainedConfig:
    """The recipe's `model.preset`: a Phi-3 architecture config (what pretraining builds) that makes a model."""
    config = load_config(preset)
    if config.model_type != "phi3":
        raise UserError(f"model.preset {preset!r} is a {config.model_type} config; the recipe pretrains the Phi-3/Phi-4 "
                        f"architecture: use a preset ({', '.join(PRESETS)}) or a Phi-3 config.json")
    describe(config, preset)  # builds it on the meta device: a config whose shapes do not fit fails here
    return config


def config_for_tokenizer(config: PretrainedConfig, tokenizer, max_positions: int) -> PretrainedConfig:
    """Fit a preset to the run's tokenizer: vocab (padded to a multiple of 64) and special ids.

    Phi3Config's default pad id (32000) would point outside a small vocabulary.
    """
    from phiforge.tokenizer import ENDOFTEXT, IM_END, PAD

    config = config.__class__.from_dict(config.to_dict())
    config.vocab_size = -(-len(tokenizer) // 64) * 64
    config.bos_token_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    config.pad_token_id = tokenizer.convert_tokens_to_ids(PAD)
    config.eos_token_id = tokenizer.convert_tokens_to_ids(IM_END)
    config.max_position_embeddings = max_positions
    if hasattr(config, "original_max_position_embeddings"):
        config.original_max_position_embeddings = max_positions
    return config


def build_model(config: PretrainedConfig, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def load_model(path: Path | str, config: PretrainedConfig | None = None) -> PreTrainedModel:
    """Load an HF causal LM in fp32 for training; `config` overrides the stored one (e.g. a new RoPE base)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a Hugging Face model directory (no config.json)")
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(path), config=config, attn_implementation="sdpa", dtype=torch.float32
        )
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: the model does not load ({str(e).splitlines()[0]})") from None


@dataclass
class ModelInfo:
    architecture: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    max_position_embeddings: int
    rope_theta: float
    parameters: int
    embedding_parameters: int
    non_embedding_parameters: int
    bf16_weights_gib: float
    flops_per_token_train: int  # 6 x non-embedding params + attention, at max_position_embeddings

    def as_dict(self) -> dict:
        return asdict(self)


def attention_flops_per_token(config: PretrainedConfig, seq_len: int) -> int:
    """Training FLOPs of the attention scores and weighted sum (QK^T and AV), per token.

    Causal: each token attends to seq_len/2 positions on average; 2 matmuls x 2 FLOPs x 3 (fwd+bwd).
    """
    return 6 * config.num_hidden_layers * config.hidden_size * seq_len


def train_flops_per_token(config: PretrainedConfig, non_embedding_params: int, seq_len: int) -> int:
    return 6 * non_embedding_params + attention_flops_per_token(config, seq_len)


def describe(config: PretrainedConfig, name: str) -> ModelInfo:
    """model_info, with a config it cannot read (not a decoder-only causal LM, shapes that do not fit) as a UserError."""
    try:
        return model_info(config)
    except CONFIG_ERRORS as e:
        raise UserError(f"{name}: a {config.model_type} config that does not make a decoder-only causal LM "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None


def model_info(config: PretrainedConfig) -> ModelInfo:
    """Architecture facts and parameter counts from a meta-device model: no weights allocated."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    heads = config.num_attention_heads
    return ModelInfo(
        architecture=(config.architectures or [type(model).__name__])[0],
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_attention_heads=heads,
        num_kv_heads=config.num_key_value_heads or heads,
        head_dim=config.hidden_size // heads,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        tied_embeddings=bool(config.tie_word_embeddings),
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=rope_theta(config),
        parameters=total,
        embedding_parameters=embed,
        non_embedding_parameters=total - embed,
        bf16_weights_gib=round(total * 2 / 2**30, 2),
        flops_per_token_train=train_flops_per_token(config, total - embed, config.max_position_embeddings),
    )


Checkpointing = Literal["none", "block"]


def activation_values(info: ModelInfo, tokens: int, checkpointing: Checkpointing) -> float:
    """Values a Phi-3 model's blocks keep for backward over `tokens` tokens (counted in train/plan.py's docstring)."""
    r = info.num_kv_heads / info.num_attention_heads
    block = tokens * ((10 + 3 * r) * info.hidden_size + 4 * info.intermediate_size)
    if checkpointing == "block":  # each block keeps its input; one block's activations are rebuilt at a time
        return tokens * info.hidden_size * info.num_layers + block
    return block * info.num_layers


def training_memory(info: ModelInfo, batch_size: int, seq_len: int) -> dict[str, int]:
    """A lower bound on the bytes one training step holds: fp32 weights, gradients and AdamW's two moments (16 bytes
    a parameter), the fp32 logits of a micro-batch, and the fp32 activations even block checkpointing would keep."""
    tokens = batch_size * seq_len
    return {"weights, gradients and optimizer": 16 * info.parameters,
            "logits": 4 * tokens * info.vocab_size,
            "activations": int(4 * activation_values(info, tokens, "block"))}


def available_memory() -> tuple[int, str]:
    """Bytes free where training runs (the GPU's, else the machine's available RAM) and that place's name."""
    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0], "the GPU"
    import psutil

    return psutil.virtual_memory().available, "this machine"


def check_fits(stage: str, config: PretrainedConfig, batch_size: int, seq_len: int, knobs: str) -> None:
    """Refuse a training stage that clearly cannot fit in memory, before it packs data or allocates a weight."""
    need = training_memory(describe(config, stage), batch_size, seq_len)
    free, where = available_memory()
    if sum(need.values()) > free:
        parts = ", ".join(f"{k} {v / 2**30:,.1f}" for k, v in need.items())
        raise UserError(f"{stage} needs at least {sum(need.values()) / 2**30:,.1f} GiB for batch_size {batch_size} x "
                        f"{seq_len:,} tokens ({parts}) but {where} has {free / 2**30:,.1f} GiB free; lower {knobs}")
