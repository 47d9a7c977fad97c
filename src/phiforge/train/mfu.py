"""Model FLOPs utilisation: the training FLOPs a second (6 x non-embedding parameters + attention per token,
counted as the planner counts them, phiforge.model.train_flops_per_token) over the devices' peak.

GPUs are read against their dense bf16 peak from the planner's table (train/plan.py: GPUS); a CPU against its own
peak in the dtype training computes in, measured once by a matmul probe and cached on disk (the same machine and
thread count reads it back). A GPU not in the table gets a warning and no MFU.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from phiforge.files import write_json
from phiforge.train.plan import GPUS

log = logging.getLogger("phiforge")

# Substrings of torch.cuda.get_device_name() -> the planner's GPU names.
GPU_NAMES = {"H100": "h100", "H200": "h200", "A100": "a100", "L40S": "l40s"}


def gpu_peak(name: str) -> float | None:
    """Dense bf16 FLOP/s of a CUDA device by its name, or None when it is not in the table."""
    for part, gpu in GPU_NAMES.items():
        if part in name.upper():
            return GPUS[gpu][0]
    return None


def cache_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "phiforge" / "cpu_peak.json"


def cpu_peak(dtype: torch.dtype) -> float:
    """This CPU's best square-matmul FLOP/s in `dtype` with this process's threads, probed once and cached."""
    key = f"{torch.backends.cpu.get_cpu_capability()}/{os.cpu_count()} cpus/{torch.get_num_threads()} threads/{dtype}"
    path = cache_path()
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if key not in cached:
        cached[key] = probe(dtype)
        write_json(path, cached)
    return float(cached[key])


def probe(dtype: torch.dtype, seconds: float = 0.5) -> float:
    """Best FLOP/s of 1024 x 1024 matmuls over `seconds` (large enough to reach the kernels' peak on a CPU)."""
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def device_peak(device: torch.device, bf16: bool, label: str) -> float | None:
    """Peak FLOP/s of one training device (bf16: whether training computes in bf16), None (with a warning) when
    unknown."""
    if device.type == "cpu":
        return cpu_peak(torch.bfloat16 if bf16 else torch.float32)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    peak = gpu_peak(name)
    if peak is None:
        log.warning("%s: no MFU: %s is not in the table of bf16 peaks (%s)", label, name, ", ".join(GPU_NAMES))
    return peak


def non_embedding_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
