"""The shared training loop (train/loop.py) on a tiny model: accumulation, compilation."""

from __future__ import annotations

import pytest
import torch

from phiforge.data.layouts import pack_stream
from phiforge.model import build_model, load_config
from phiforge.recipe import TrainConfig
from phiforge.rundir import read_metrics
from phiforge.train.loop import train
from phiforge.train.loss import NextTokenLoss
from phiforge.train.optim import LRSchedule


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    config = load_config("nano")
    data = pack_stream([list(range(5, 600))] * 4, seq_len=16, eos_id=0)
    results = []
    for batch, accum in ((8, 1), (4, 2)):
        model = build_model(config, seed=0)
        cfg = TrainConfig(steps=2, batch_size=batch, grad_accum=accum, lr=1e-2, precision="fp32")
        objective = NextTokenLoss(data, None, batch, seed=0)
        train(model, cfg, LRSchedule(cfg.lr, cfg), objective, tmp_path / f"b{batch}", label="t")
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    # Adam divides by sqrt(v): float noise in near-zero gradients shows up at 1e-4 in a few of the weights,
    # while every step moves the weights by about lr = 1e-2.
    assert torch.allclose(results[0], results[1], atol=5e-4)
    assert not torch.allclose(results[0], torch.cat([p.flatten() for p in build_model(config, seed=0).parameters()]))


def test_compiled_loop_trains_like_the_eager_one(tmp_path):
    """`compile: true` (the tiny recipe's setting) runs the same maths through torch.compile."""
    data = pack_stream([list(range(5, 900))] * 4, seq_len=32, eos_id=0)
    losses = []
    for compiled in (False, True):
        cfg = TrainConfig(steps=3, batch_size=4, lr=1e-3, precision="fp32", compile=compiled)
        objective = NextTokenLoss(data, None, cfg.batch_size, seed=0, compile=compiled)
        model = build_model(load_config("nano"), seed=0)
        result = train(model, cfg, LRSchedule(cfg.lr, cfg), objective, tmp_path / str(compiled), "t")
        losses.append(result.final_loss)
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


def test_block_checkpointing_trains_as_without_it(tmp_path):
    """activation_checkpointing: block recomputes each block in backward: the same losses and weights."""
    data = pack_stream([list(range(5, 900))] * 4, seq_len=32, eos_id=0)
    runs = []
    for mode in ("none", "block"):
        cfg = TrainConfig(steps=3, batch_size=4, lr=1e-2, precision="fp32", activation_checkpointing=mode)
        model = build_model(load_config("nano"), seed=0)
        train(model, cfg, LRSchedule(cfg.lr, cfg), NextTokenLoss(data, None, cfg.batch_size, seed=0), tmp_path / mode, "t")
        assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # left as it came
        runs.append(([r["loss"] for r in read_metrics(tmp_path / mode / "metrics.jsonl")],
                     torch.cat([p.detach().flatten() for p in model.parameters()])))
    assert runs[1][0] == pytest.approx(runs[0][0], abs=1e-6)
    assert torch.allclose(runs[1][1], runs[0][1], atol=1e-6)


class Crash(NextTokenLoss):
    """Dies (as a killed process would) before micro-batch `at`."""

    at: int = 1 << 30

    def micro_batch(self, model, index, device, rank=0, world=1):
        if index == self.at:
            raise KeyboardInterrupt
        return super().micro_batch(model, index, device, rank, world)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    data = pack_stream([list(range(5, 700))] * 4, seq_len=16, eos_id=0)
    cfg = TrainConfig(steps=5, batch_size=4, lr=1e-2, warmup_steps=2, precision="fp32", checkpoint_every=2)
    schedule = LRSchedule(cfg.lr / 2, cfg)  # a peak that is not cfg.lr: the schedule's, not the section's, is used
    whole = build_model(load_config("nano"), seed=0)
    train(whole, cfg, schedule, NextTokenLoss(data, None, 4, seed=3), tmp_path / "whole", "t")
    crash = Crash(data, None, 4, seed=3)
    crash.at = 3  # during step 4, after the checkpoint of step 2
    with pytest.raises(KeyboardInterrupt):
        train(build_model(load_config("nano"), seed=0), cfg, schedule, crash, tmp_path / "cut", "t")
    resumed = build_model(load_config("nano"), seed=0)
    result = train(resumed, cfg, schedule, NextTokenLoss(data, None, 4, seed=3), tmp_path / "cut", "t")
    assert result.resumed_from == 2 and result.steps == 5
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    rows = {name: read_metrics(tmp_path / name / "metrics.jsonl") for name in ("whole", "cut")}
    timed = ("tokens_per_s", "mfu")
    same = [{k: v for k, v in r.items() if k not in timed} for r in rows["whole"]]
    assert same == [{k: v for k, v in r.items() if k not in timed} for r in rows["cut"]]
    assert [r["step"] for r in rows["cut"]] == [1, 2, 3, 4, 5]
    assert rows["whole"][0]["lr"] == pytest.approx(cfg.lr / 2)  # step 2's lr (warmup 2 of 2) at the schedule's peak


class OutOfMemory(NextTokenLoss):
    """A step that runs out of device memory, as a CUDA allocation that fails raises it."""

    def micro_batch(self, model, index, device, rank=0, world=1):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_names_the_knobs_with_the_planners_estimate(tmp_path):
    from phiforge.errors import UserError
    from phiforge.model import model_info
    from phiforge.train.plan import memory_per_gpu

    config = load_config("nano")
    data = pack_stream([list(range(5, 600))] * 4, seq_len=16, eos_id=0)
    cfg = TrainConfig(steps=2, batch_size=4, precision="fp32", activation_checkpointing="block")
    with pytest.raises(UserError) as e:
        train(build_model(config, seed=0), cfg, LRSchedule(cfg.lr, cfg), OutOfMemory(data, None, 4, seed=0),
              tmp_path, "pretrain")
    estimate = memory_per_gpu(config, model_info(config), 1, 16, 4, "block", 1.0).total
    message = str(e.value)
    assert message.startswith("pretrain: out of memory on cpu") and "at step 1, micro-batch 4 x 16 tokens" in message
    assert f"the planner estimates {estimate:,.1f} GiB" in message
    for knob in ("Lower the micro-batch (batch_size", "activation_checkpointing: block (it is on)", "more GPUs"):
        assert knob in message
