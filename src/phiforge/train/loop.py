"""The training loop every training stage shares (pretrain, midtrain, SFT, DPO).

It reads top to bottom: restore the latest checkpoint if there is one, then for each optimizer step
accumulate gradients over micro-batches, clip, step, log, and checkpoint every N steps and at the end.
What is optimised is the stage's Objective (train/loss.py: NextTokenLoss; posttrain/dpo.py: DPOLoss).
Batches are a pure function of (seed, step), so a resumed run continues exactly where it stopped.

Under torchrun (phiforge.distributed) the loop trains an FSDP2-sharded copy of the model on every rank: each
micro-batch's rows are split over the ranks, and its loss is divided by the count of labelled items over all
ranks, so N processes take the same optimizer steps as one on the same recipe. At the end the trained
weights are gathered into the caller's model on rank 0, the only rank that logs and writes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from phiforge import distributed
from phiforge.errors import UserError
from phiforge.recipe import TrainConfig
from phiforge.rundir import append_metrics, read_metrics, truncate_metrics
from phiforge.train.checkpoint import Checkpointer, TrainState
from phiforge.train.loss import MicroLoss
from phiforge.train.optim import build_optimizer, build_scheduler
from phiforge.progress import bar_label

log = logging.getLogger("phiforge")


class Objective(Protocol):
    """What a stage optimises: micro-batch `index` is a pure function of it (and the objective's seed)."""

    def micro_batch(self, model: torch.nn.Module, index: int, device: torch.device, rank: int = 0,
                    world: int = 1) -> MicroLoss:
        """This rank's share (rows_at/batch_at with rank, world) of the whole micro-batch `index`."""

    def val_loss(self, model: torch.nn.Module) -> float | None: ...


@dataclass
class LoopResult:
    steps: int
    tokens: int
    final_loss: float
    final_val_loss: float | None
    wall_time_s: float
    tokens_per_s: float
    resumed_from: int | None

    def metrics(self) -> dict:
        """The figures every training stage's manifest reports."""
        return {
            "final_loss": self.final_loss,
            "val_loss": self.final_val_loss,
            "tokens": self.tokens,
            "tokens_per_s": round(self.tokens_per_s, 1),
            "resumed_from": self.resumed_from,
        }


def pick_device() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())  # under torchrun: this rank's GPU


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast where the device does bf16 matmuls natively ("auto"), or as asked."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "auto" and not bf16_supported(device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def progress_bar(label: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{bar_label(label)}[/]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TimeRemainingColumn(),
        disable=not distributed.is_main(),
    )


def train(
    model: torch.nn.Module,
    cfg: TrainConfig,
    lr: float,
    objective: Objective,
    out_dir: Path,
    label: str,
) -> LoopResult:
    device = pick_device()
    rank, world = distributed.rank(), distributed.world()
    distributed.local_batch(cfg.batch_size, label)  # a clear error before any work when it does not split
    if distributed.active():
        # The caller keeps its unsharded model (rank 0 gets the trained weights back at the end).
        trained = distributed.shard(copy.deepcopy(model).to(device))
    else:
        trained = model.to(device)
    trained.train()
    optimizer = build_optimizer(trained, cfg, lr)
    state = TrainState(trained, optimizer, build_scheduler(optimizer, cfg))
    checkpoints = Checkpointer(out_dir / "checkpoints", cfg.keep_checkpoints)
    metrics_path = out_dir / "metrics.jsonl"
    main = distributed.is_main()
    resumed_from = checkpoints.restore_latest(state)
    if resumed_from is not None:
        log.info("%s: resuming from checkpoint at step %d", label, resumed_from)
    if main:
        truncate_metrics(metrics_path, state.step)

    val_loss = float("nan")
    start, trained_tokens = time.perf_counter(), 0
    with progress_bar(label) as bar:
        task = bar.add_task(label, total=cfg.steps, completed=state.step, loss=float("nan"), tps=0.0)
        while state.step < cfg.steps:
            t0 = time.perf_counter()
            loss_sum, step_tokens, stats = 0.0, 0, defaultdict(float)
            for micro in range(cfg.grad_accum):
                with autocast(cfg.precision, device):
                    mb = objective.micro_batch(trained, state.step * cfg.grad_accum + micro, device, rank, world)
                # Mean over the items of each whole micro-batch (all ranks'), averaged over micro-batches. FSDP
                # averages gradients over ranks, so each rank's part is scaled by `world` to make that a sum.
                (n,) = distributed.all_sum([float(mb.count)], device)
                scale = world / max(1.0, n) / cfg.grad_accum
                (mb.loss_sum * scale).backward()
                loss_sum += mb.loss_sum.item() * scale / world
                step_tokens += mb.tokens
                for k, v in mb.stats.items():
                    stats[k] += float(v) * scale / world
            keys = sorted(stats)
            loss_sum, step_tokens, *summed = distributed.all_sum([loss_sum, step_tokens, *(stats[k] for k in keys)],
                                                                 device)
            step_tokens, stats = int(step_tokens), dict(zip(keys, summed))
            if not math.isfinite(loss_sum):
                last = checkpoints.steps()
                where = f"step {last[-1]} in {checkpoints.root}" if last else "none was written yet"
                raise UserError(
                    f"{label}: loss became {loss_sum} at step {state.step + 1}; stopped without saving that step "
                    f"(last good checkpoint: {where}). Lower the lr or raise warmup_steps."
                )
            grad_norm = torch.nn.utils.clip_grad_norm_(trained.parameters(), cfg.grad_clip or float("inf"))
            if isinstance(grad_norm, torch.distributed.tensor.DTensor):
                grad_norm = grad_norm.full_tensor()
            optimizer.step()
            state.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens_seen += step_tokens
            trained_tokens += step_tokens
            loss = loss_sum

            last_step = state.step == cfg.steps
            row = {
                "step": state.step,
                "loss": round(loss, 5),
                "lr": optimizer.param_groups[0]["lr"],
                "grad_norm": round(float(grad_norm), 4),
                "tokens": state.tokens_seen,
                "tokens_per_s": round(step_tokens / (time.perf_counter() - t0), 1),
                **{k: round(v, 5) for k, v in stats.items()},
            }
            if last_step or (cfg.eval_every and state.step % cfg.eval_every == 0):
                with autocast(cfg.precision, device):
                    measured = objective.val_loss(trained)  # every rank: FSDP's forward is collective
                if measured is not None:
                    val_loss = measured
                    row["val_loss"] = round(val_loss, 5)
            if main:
                append_metrics(metrics_path, row)
            bar.update(task, completed=state.step, loss=loss, tps=row["tokens_per_s"])
            if main and (state.step % cfg.log_every == 0 or last_step):
                extra = f" val {val_loss:.4f}" if "val_loss" in row else ""
                log.info("%s step %d/%d loss %.4f%s lr %.2e %s tok/s", label, state.step, cfg.steps, loss, extra,
                         row["lr"], f"{row['tokens_per_s']:,.0f}")
            if state.step % cfg.checkpoint_every == 0 or last_step:
                checkpoints.save(state)

    wall = time.perf_counter() - start
    if distributed.active():
        full = distributed.full_state_dict(trained)
        if main:
            model.load_state_dict(full)
            model.to(device)
        distributed.wait_for_main(f"{label}'s trained weights")  # the metrics log is whole once rank 0 is here
    rows = read_metrics(metrics_path)  # also right when a resumed run had no step left to take
    val_rows_logged = [r["val_loss"] for r in rows if "val_loss" in r]
    return LoopResult(
        steps=state.step,
        tokens=state.tokens_seen,
        final_loss=rows[-1]["loss"] if rows else float("nan"),
        final_val_loss=val_rows_logged[-1] if val_rows_logged else None,
        wall_time_s=wall,
        tokens_per_s=trained_tokens / wall if wall > 0 else 0.0,
        resumed_from=resumed_from,
    )
