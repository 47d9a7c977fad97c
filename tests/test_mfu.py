"""MFU in metrics.jsonl (train/mfu.py): GPUs against the table of dense bf16 peaks, this CPU against its probed and
cached peak, and a warning for a GPU the table lacks."""

from __future__ import annotations

import logging

import pytest
import torch

from phiforge.data.layouts import pack_stream
from phiforge.model import build_model, load_config, train_flops_per_token
from phiforge.recipe import TrainConfig
from phiforge.rundir import read_metrics
from phiforge.train import mfu
from phiforge.train.loop import train
from phiforge.train.loss import NextTokenLoss
from phiforge.train.optim import LRSchedule


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12),
                                        ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L40S", 362e12),
                                        ("NVIDIA GeForce RTX 4090", None)])
def test_gpu_peaks_by_device_name(name, peak):
    assert mfu.gpu_peak(name) == peak


def test_an_unknown_gpu_is_warned_about(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Imaginary GPU 9000")
    with caplog.at_level(logging.WARNING, logger="phiforge"):
        assert mfu.device_peak(torch.device("cuda", 0), bf16=True, label="pretrain") is None
    assert "pretrain: no MFU: Imaginary GPU 9000 is not in the table" in caplog.text


def test_cpu_peak_is_probed_once_and_every_step_logs_its_mfu(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    peak = mfu.cpu_peak(torch.float32)
    assert peak > 1e8 and (tmp_path / "cache" / "phiforge" / "cpu_peak.json").is_file()
    monkeypatch.setattr(mfu, "probe", lambda dtype: pytest.fail("probed again"))
    assert mfu.cpu_peak(torch.float32) == peak

    data = pack_stream([list(range(5, 600))] * 4, seq_len=16, eos_id=0)
    model = build_model(load_config("nano"), seed=0)
    flops = train_flops_per_token(model.config, mfu.non_embedding_parameters(model), 16)
    cfg = TrainConfig(steps=2, batch_size=4, precision="fp32")
    train(model, cfg, LRSchedule(cfg.lr, cfg), NextTokenLoss(data, None, 4, seed=0), tmp_path / "run", "t")
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 2
    for row in rows:
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * flops / peak, rel=1e-3, abs=1e-5)
