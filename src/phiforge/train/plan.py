"""The compute planner: FLOPs, memory per GPU under FSDP, and days to finish, before anything is allocated.

Memory follows the usual accounting for sharded mixed-precision training (ZeRO-3 / FSDP2 `fully_shard`):
fp32 master weights, fp32 gradients and two fp32 Adam moments, sharded over the GPUs (16 bytes a parameter
in all), plus what is never sharded: the all-gathered bf16 weights and fp32 gradients of the blocks in
flight (two, with FSDP's prefetch), the activations one micro-batch keeps for backward, and the logits.
Activations per token and layer count the tensors a Phi-3 block (transformers' Phi3DecoderLayer with SDPA)
saves for backward, listed with autograd's saved-tensor hooks: 8 hidden-size vectors outside attention (each
RMSNorm's input and normalised value, the projections' inputs), (2 + 3r) inside it (fused qkv output, q and k
after RoPE; r = kv heads / heads) and 4 intermediate-size ones (gate and up projections, the activation,
their product); tests/test_plan.py checks the count against a real forward pass. Estimates still: real runs
add allocator fragmentation and communication buffers, hence the headroom.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from transformers import PretrainedConfig

from phiforge.errors import UserError
from phiforge.model import Checkpointing, ModelInfo, activation_values, attention_flops_per_token, load_config, model_info
from phiforge.recipe import Recipe

# Dense bf16 peak (no sparsity) and memory, from the vendors' data sheets.
GPUS: dict[str, tuple[float, float]] = {  # name: (peak FLOP/s, memory GiB)
    "h100": (989e12, 80),  # H100 SXM
    "h200": (989e12, 141),
    "a100": (312e12, 80),  # A100 SXM 80GB
    "a100-40g": (312e12, 40),
    "l40s": (362e12, 48),
}
# Well-tuned FSDP runs reach 33-41% (torchtitan: Llama-3 8B on 8 H100, OLMo-core: 1B); a first run less.
DEFAULT_MFU = 0.35
HEADROOM = 0.9  # plan to fill at most this much of a GPU's memory
GPU_COUNTS = (1, 8, 64, 256, 512, 1024, 2048, 4096)


@dataclass
class StagePlan:
    stage: str
    seq_len: int
    tokens: float
    flops_per_token: float
    flops: float


@dataclass
class MemoryPlan:
    """GiB per GPU."""

    sharded_states: float  # fp32 weights, gradients, Adam moments / GPUs
    gathered_blocks: float  # bf16 weights + fp32 gradients of the blocks in flight
    activations: float
    logits: float
    total: float
    fits: bool


@dataclass
class Plan:
    gpu: str
    gpus: int
    mfu: float
    micro_batch: int
    checkpointing: str
    model: dict
    stages: list[StagePlan]
    flops: float
    memory: MemoryPlan
    days: float
    grad_accum: float  # micro-batches per GPU per optimizer step, from the recipe's global batch
    warnings: list[str]
    by_gpu_count: list[dict]

    def as_dict(self) -> dict:
        return asdict(self)


def stage_plans(recipe: Recipe, config: PretrainedConfig, info: ModelInfo) -> list[StagePlan]:
    """The training stages that dominate compute: pretraining, and midtraining at its longer context."""
    plans = []
    if recipe.pretrain is not None:
        p = recipe.pretrain
        plans.append(_stage("pretrain", p.seq_len, p.token_budget, config, info))
        if recipe.midtrain is not None:
            m = recipe.midtrain
            context = p.seq_len * m.context_multiplier
            plans.append(_stage("midtrain", context, m.steps * m.grad_accum * m.batch_size * context, config, info))
    if not plans:
        raise UserError("the recipe has no pretrain section: nothing to plan (the planner sizes pretraining)")
    return plans


def _stage(name: str, seq_len: int, tokens: float, config: PretrainedConfig, info: ModelInfo) -> StagePlan:
    per_token = 6 * info.non_embedding_parameters + attention_flops_per_token(config, seq_len)
    return StagePlan(name, seq_len, float(tokens), float(per_token), float(tokens) * per_token)


def memory_per_gpu(config: PretrainedConfig, info: ModelInfo, gpus: int, seq_len: int, micro_batch: int,
                   checkpointing: Checkpointing, gpu_gib: float) -> MemoryPlan:
    gib = 2**30
    layers = config.num_hidden_layers
    block_params = (info.parameters - info.embedding_parameters * (1 if info.tied_embeddings else 2)) / layers
    sharded = 16 * info.parameters / gpus
    gathered = 2 * block_params * (2 + 4) if gpus > 1 else 0.0  # two blocks: bf16 weights, fp32 grads
    tokens = seq_len * micro_batch
    activations = 2 * activation_values(info, tokens, checkpointing)  # bf16
    logits = (2 + 4) * tokens * config.vocab_size  # bf16 logits and their fp32 copy for the loss
    total = (sharded + gathered + activations + logits) / gib
    return MemoryPlan(round(sharded / gib, 2), round(gathered / gib, 2), round(activations / gib, 2),
                      round(logits / gib, 2), round(total, 2), total <= HEADROOM * gpu_gib)


def plan(recipe: Recipe, gpus: int, gpu: str, mfu: float = DEFAULT_MFU, micro_batch: int = 1,
         checkpointing: Checkpointing = "none") -> Plan:
    if gpu not in GPUS:
        raise UserError(f"--gpu {gpu}: unknown device; known: {', '.join(GPUS)}")
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu}: give a fraction of peak between 0 and 1, e.g. 0.35")
    if gpus < 1 or micro_batch < 1:
        raise UserError("--gpus and --micro-batch must be at least 1")
    config = load_config(recipe.model.preset)
    info = model_info(config)
    stages = stage_plans(recipe, config, info)
    flops = sum(s.flops for s in stages)
    peak, gpu_gib = GPUS[gpu]
    longest = max(s.seq_len for s in stages)  # memory at the stage with the longest context

    def days(n: int) -> float:
        return flops / (n * peak * mfu) / 86400

    def memory(n: int) -> MemoryPlan:
        return memory_per_gpu(config, info, n, longest, micro_batch, checkpointing, gpu_gib)

    global_batch = recipe.pretrain.batch_size * recipe.pretrain.grad_accum  # sequences per optimizer step
    grad_accum = global_batch / (gpus * micro_batch)
    warnings = []
    if grad_accum < 1:
        warnings.append(f"{gpus:,} GPUs x micro-batch {micro_batch} exceed the global batch of {global_batch:,} sequences: "
                        f"some GPUs would idle; use fewer GPUs or a larger pretrain.batch_size")
    mine = memory(gpus)
    if not mine.fits:
        warnings.append(f"{mine.total:,.1f} GiB per GPU does not fit {HEADROOM:.0%} of a {gpu}'s {gpu_gib} GiB: "
                        f"use more GPUs, --checkpointing block or a smaller --micro-batch")
    counts = sorted({*GPU_COUNTS, gpus})
    table = [{"gpus": n, "memory_gib": m.total, "fits": m.fits, "days": round(days(n), 2)}
             for n, m in ((n, memory(n)) for n in counts)]
    return Plan(gpu, gpus, mfu, micro_batch, checkpointing,
                {"preset": recipe.model.preset, "parameters": info.parameters,
                 "non_embedding_parameters": info.non_embedding_parameters},
                stages, flops, mine, days(gpus), grad_accum, warnings, table)
