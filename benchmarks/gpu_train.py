"""One GPU, phiforge's training step: tokens/s and MFU of a ~1.3B Phi-3-architecture model, and the largest model
that fits with and without activation checkpointing.

The step is the training loop's own (train/loop.py: forward_backward, optimizer_step) on a one-process FSDP2
group, with the GPU switches a recipe sets: `mixed_precision: bf16` (FSDP2 MixedPrecisionPolicy: bf16 compute, fp32
gradient reduction and AdamW weights), `compile_blocks: true` and `precision: bf16`; SDPA is restricted to its flash
kernel (an error, not a silent fallback, where flash cannot run). MFU is model FLOPs (6 x non-embedding parameters +
attention, train/mfu.py; recomputation not counted) over the device's dense bf16 peak (train/plan.py: GPUS; a CPU:
its measured matmul peak). Data: random tokens (speed does not depend on them).

The largest model: a binary search over a ladder of Phi-3/Phi-4 shapes (width w, depth w/128, w/128 heads, a
quarter as many KV heads, MLP 3.5w: 2048 is the ~1.3B model, 5120 is Phi-4's shape), then over the depth at the
widest width that fits; each try is a process of its own that trains two steps at micro-batch 1 and reports an
out-of-memory error as "does not fit". Beside each result, the planner's estimate (`phiforge plan`'s memory model).

    python benchmarks/gpu_train.py                                   # a GPU: ~1.3B model, then the search
    python benchmarks/gpu_train.py --device cpu --size tiny --steps 3 --warmup 1 --memory-gib 2   # proves it on a CPU

On a CPU, --memory-gib caps each try's address space (there is no OOM exception otherwise); on a GPU it caps the
caching allocator (default: the whole device).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

VOCAB = 100352  # Phi-4's


def shape(width: int, layers: int | None = None) -> dict:
    """A Phi-3-architecture shape of the ladder (Phi-4's proportions); `layers` overrides the depth."""
    heads = width // 128
    return dict(hidden_size=width, num_hidden_layers=layers or width // 128, num_attention_heads=heads,
                num_key_value_heads=max(1, heads // 4), intermediate_size=width * 7 // 2)


LADDER = {"gpu": [1024, 1536, 2048, 2560, 3072, 4096, 5120, 6144, 8192], "tiny": [128, 256, 384, 512, 768, 1024]}
MAIN = {"1b": shape(2048), "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=768)}


def model_config(dims: dict, seq_len: int, vocab: int):
    from phiforge.model import phi3_config

    return phi3_config(vocab_size=vocab, max_position_embeddings=seq_len, rope_theta=250_000.0,
                       tie_word_embeddings=False, bos_token_id=0, eos_token_id=3, pad_token_id=4, **dims)


def parameters(dims: dict, vocab: int) -> int:
    from phiforge.model import model_info

    return model_info(model_config(dims, 4096, vocab)).parameters


def planned_gib(dims: dict, seq_len: int, micro: int, vocab: int, checkpointing: str, device_gib: float) -> float:
    from phiforge.model import model_info
    from phiforge.train.plan import memory_per_gpu

    config = model_config(dims, seq_len, vocab)
    return memory_per_gpu(config, model_info(config), 1, seq_len, micro, checkpointing, device_gib).total


# -- one try, in a process of its own --------------------------------------------------------------------------


def join_one_process_group() -> None:
    """FSDP2 (and so mixed_precision) needs a process group: this process as the only rank, as torchrun would."""
    from phiforge import distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init()


def out_of_memory(e: BaseException | None) -> bool:
    """CUDA's OOM, or a CPU allocation refused under the address-space cap (also when compilation wrapped it)."""
    while e is not None:
        if isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(e):
            return True
        e = e.__cause__
    return False


def train_steps(dims: dict, a: argparse.Namespace) -> dict:
    """Build the model on the device, shard it (one rank), train warmup + steps steps: the median step's figures."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from phiforge import distributed
    from phiforge.config import TrainConfig
    from phiforge.data.shards import Packed
    from phiforge.model import build_model, train_flops_per_token
    from phiforge.train import mfu
    from phiforge.train.checkpoint import Checkpointer, TrainState
    from phiforge.train.loop import Run, forward_backward, optimizer_step, speed_switches
    from phiforge.train.loss import NextTokenLoss
    from phiforge.train.optim import LRSchedule, build_optimizer, build_scheduler

    device = torch.device(a.device, 0) if a.device == "cuda" else torch.device("cpu")
    steps = a.warmup + a.steps
    cfg = TrainConfig(steps=steps, batch_size=a.micro_batch, lr=1e-4, precision="bf16", mixed_precision="bf16",
                      activation_checkpointing=a.checkpointing, compile_blocks=a.compile, checkpoint_every=10**9)
    config = model_config(dims, a.seq_len, a.vocab)
    with torch.device(device):  # initialised where it trains: no host copy, no second copy on the device
        model = build_model(config, seed=0)
    flops_per_token = train_flops_per_token(config, mfu.non_embedding_parameters(model), a.seq_len)
    n_params = sum(p.numel() for p in model.parameters())
    trained = distributed.shard(speed_switches(model, cfg), bf16=True)
    trained.train()
    optimizer = build_optimizer(trained, cfg, cfg.lr)
    # start_run's pieces, less its copy of the caller's model; the step writes no checkpoint and no metrics
    run = Run(trained, device, TrainState(trained, optimizer, build_scheduler(optimizer, LRSchedule(cfg.lr, cfg))),
              Checkpointer(Path(os.devnull), 1), Path(os.devnull), None, 0, 1, True)
    rows = np.random.default_rng(0).integers(5, a.vocab, size=(steps * a.micro_batch, a.seq_len + 1))
    objective = NextTokenLoss(Packed([rows]), None, a.micro_batch, seed=0)
    times = []
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        for _ in range(steps):
            t0 = time.perf_counter()
            _, tokens, _ = forward_backward(run, objective, cfg)
            optimizer_step(run, cfg.grad_clip, tokens)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[a.warmup:])
    tokens_per_s = a.micro_batch * a.seq_len / step_s
    peak = mfu.device_peak(device, True, "benchmark")
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {"fits": True, "parameters": n_params, "step_s": step_s, "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * flops_per_token / peak if peak else None, "peak_gib": peak_gib}


def one_try(a: argparse.Namespace) -> None:
    """--try: print one JSON line, {"fits": false} on running out of memory."""
    if a.memory_gib:
        if a.device == "cuda":
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, a.memory_gib * 2**30 / total), 0)
        else:  # what this process already maps (torch, Python) plus the cap
            mapped = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            limit = mapped + int(a.memory_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    join_one_process_group()
    try:
        result = train_steps(json.loads(a.dims), a)
    except BaseException as e:
        if not out_of_memory(e):
            raise
        result = {"fits": False, "error": str(e).splitlines()[0][:160]}
    print(json.dumps(result), flush=True)
    torch.distributed.destroy_process_group()


# -- the driver -------------------------------------------------------------------------------------------------


def run_try(a: argparse.Namespace, dims: dict, micro: int, checkpointing: str, steps: int, warmup: int) -> dict:
    command = [sys.executable, __file__, "--try", "--dims", json.dumps(dims), "--device", a.device,
               "--seq-len", str(a.seq_len), "--vocab", str(a.vocab), "--micro-batch", str(micro),
               "--checkpointing", checkpointing, "--steps", str(steps), "--warmup", str(warmup)]
    command += [] if a.compile else ["--no-compile"]
    command += ["--memory-gib", str(a.memory_gib)] if a.memory_gib else []
    proc = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    if proc.returncode in (-9, 137):  # the kernel's OOM killer (host memory)
        return {"fits": False, "error": "killed (host out of memory)"}
    sys.exit(f"a try failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def device_line(a: argparse.Namespace) -> tuple[str, float]:
    """What this runs on, and its memory in GiB."""
    import psutil

    from phiforge.train import mfu

    if a.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        peak = mfu.gpu_peak(p.name)
        return (f"{p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, dense bf16 peak "
                f"{peak / 1e12:.0f} TFLOP/s" if peak else f"{p.name}: not in train/mfu.py's peak table (no MFU)",
                a.memory_gib or p.total_memory / 2**30)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return (f"CPU, {os.cpu_count()} cores, torch capability {torch.backends.cpu.get_cpu_capability()}, "
            f"avx512_bf16: {'avx512_bf16' in flags}, load average {os.getloadavg()[0]:.2f}",
            a.memory_gib or psutil.virtual_memory().total / 2**30)


def throughput(a: argparse.Namespace, device_gib: float) -> None:
    """The main model at the largest power-of-two micro-batch the planner fits (halved on a real OOM)."""
    dims = MAIN[a.size]
    micro = a.micro_batch or next(m for m in (64, 32, 16, 8, 4, 2, 1)
                                  if planned_gib(dims, a.seq_len, m, a.vocab, "none", device_gib) <= 0.9 * device_gib
                                  or m == 1)
    for checkpointing in ("none", "block"):
        m = micro
        while True:
            r = run_try(a, dims, m, checkpointing, a.steps, a.warmup)
            if r["fits"] or m == 1:
                break
            m //= 2
        if not r["fits"]:
            print(f"{a.size}, checkpointing {checkpointing}: out of memory even at micro-batch 1 ({r['error']})")
            continue
        mfu = f"MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else "no MFU (unknown peak)"
        print(f"{a.size} ({r['parameters'] / 1e9:.2f}B parameters), checkpointing {checkpointing}: micro-batch {m} x "
              f"{a.seq_len} tokens, {r['step_s']:.3f} s/step (median of {a.steps}), {r['tokens_per_s']:,.0f} tok/s, "
              f"{mfu}, peak memory {r['peak_gib']:.1f} GiB (planner {planned_gib(dims, a.seq_len, m, a.vocab, checkpointing, device_gib):.1f})",
              flush=True)


def largest(a: argparse.Namespace, checkpointing: str, device_gib: float) -> None:
    """Binary search over the width ladder, then over depth at the widest width that fits."""
    widths = LADDER["tiny" if a.size == "tiny" else "gpu"]
    tried: dict[tuple[int, int], dict] = {}

    def fits(width: int, layers: int) -> bool:
        if (width, layers) not in tried:
            tried[width, layers] = run_try(a, shape(width, layers), 1, checkpointing, 2, 1)
            print(f"  try {width} x {layers} layers ({parameters(shape(width, layers), a.vocab) / 1e9:.2f}B): "
                  f"{'fits' if tried[width, layers]['fits'] else 'does not fit'}", flush=True)
        return tried[width, layers]["fits"]

    lo, hi = -1, len(widths)  # widths[lo] fits (or none), widths[hi] does not (or beyond the ladder)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(widths[mid], widths[mid] // 128) else (lo, mid)
    if lo < 0:
        print(f"checkpointing {checkpointing}: not even {widths[0]} x {widths[0] // 128} fits")
        return
    width = widths[lo]
    deep, shallow = 2 * (width // 128) + 1, width // 128  # deeper than twice the ladder's depth: the next width's size
    while deep - shallow > 1:
        mid = (shallow + deep) // 2
        shallow, deep = (mid, deep) if fits(width, mid) else (shallow, mid)
    dims, r = shape(width, shallow), tried[width, shallow]
    print(f"largest with checkpointing {checkpointing}: width {width} x {shallow} layers, "
          f"{parameters(dims, a.vocab) / 1e9:.2f}B parameters, micro-batch 1 x {a.seq_len} tokens, peak memory "
          f"{r['peak_gib']:.1f} GiB (planner {planned_gib(dims, a.seq_len, 1, a.vocab, checkpointing, device_gib):.1f})",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", choices=list(MAIN), default="1b", help="1b: 2048 wide, 16 layers; tiny: the tiny preset")
    ap.add_argument("--seq-len", type=int, help="tokens a row (default 4096; tiny: 128)")
    ap.add_argument("--vocab", type=int, help="vocabulary (default Phi-4's 100,352; tiny: 8192)")
    ap.add_argument("--micro-batch", type=int, default=0, help="rows a step (default: the planner's largest fit)")
    ap.add_argument("--steps", type=int, default=20, help="measured steps (median)")
    ap.add_argument("--warmup", type=int, default=5, help="steps before measuring (compilation)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="compile_blocks off")
    ap.add_argument("--no-search", dest="search", action="store_false", help="skip the largest-model search")
    ap.add_argument("--memory-gib", type=float, default=0.0, help="cap a try's memory (a CPU needs one to search)")
    ap.add_argument("--try", dest="one_try", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dims", help=argparse.SUPPRESS)
    ap.add_argument("--checkpointing", default="none", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.seq_len = a.seq_len or (128 if a.size == "tiny" else 4096)
    a.vocab = a.vocab or (8192 if a.size == "tiny" else VOCAB)
    if a.one_try:
        return one_try(a)
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here (--device cpu --size tiny runs on a CPU)")
    line, device_gib = device_line(a)
    print(f"device: {line}; torch {torch.__version__}", flush=True)
    print(f"switches: mixed_precision bf16 (FSDP2, 1 process), precision bf16, compile_blocks {a.compile}, SDPA flash "
          f"only; seq_len {a.seq_len}, vocab {a.vocab:,}", flush=True)
    throughput(a, device_gib)
    if a.search:
        for checkpointing in ("none", "block"):
            largest(a, checkpointing, device_gib)


if __name__ == "__main__":
    main()
