"""AdamW with weight decay on matrices only, and the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from phiforge.recipe import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused AdamW runs the whole update in one kernel per dtype group: cheaper than the default loop.
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, fused=True)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak lr at `step`: linear warmup, then linear (the report) or cosine decay."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, progress)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return floor + (1 - floor) * (1 - progress)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of every step, resolved before training: `peak` times lr_factor(step, cfg) (warmup and
    decay from cfg). A stage whose peak is not its section's `lr` (midtraining's pretrain.lr * lr_scale) says so here."""

    peak: float
    cfg: TrainConfig


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    """Multiplies the optimizer's lr (the schedule's peak) by lr_factor at each step."""
    cfg = schedule.cfg
    # A plain function, so the scheduler's state_dict (in every checkpoint) holds no state of it.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
