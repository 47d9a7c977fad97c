"""Killing pretraining with SIGKILL and rerunning ends with the same model as an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import SMOKE, kill_9_when, phiforge
from phiforge.train.checkpoint import Checkpointer


def test_kill_9_mid_pretraining_then_resume_matches_uninterrupted(smoke_run, tmp_path, copy_stages):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    copy_stages(smoke_run, run_dir, "corpus", "synth", "tokenizer")  # same inputs as the uninterrupted run
    proc = subprocess.Popen(
        [sys.executable, "-m", "phiforge.cli", "pretrain", str(SMOKE), "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = run_dir / "pretrain" / "checkpoints"
    # a finished checkpoint: a .step_*.tmp dir has .metadata too before its rename, and resume ignores it
    kill_9_when(proc, lambda: Checkpointer(checkpoints, keep=0).steps() != [],
                "pretraining ended before it could be killed; raise smoke pretrain steps")
    assert not (run_dir / "pretrain" / "manifest.json").exists()

    status = phiforge("status", run_dir).stdout
    assert any("pretrain" in line and "partial" in line for line in status.splitlines()), status
    # what a kill in the middle of a checkpoint save (or a shard write) leaves: atomic_path's temporaries
    stale = [Path(tempfile.mkdtemp(prefix=".step_0000099.", suffix=".tmp", dir=checkpoints)),
             Path(tempfile.mkdtemp(prefix=".shard_00009.npy.", suffix=".tmp", dir=run_dir / "pretrain"))]
    (stale[0] / "state.pt").write_bytes(b"\0" * 100_000)

    resumed = phiforge("pretrain", SMOKE, "--run-dir", run_dir)
    assert "resuming from checkpoint" in resumed.stderr
    assert not any(p.exists() for p in stale)
    assert not [p for p in (run_dir / "pretrain").rglob("*.tmp")]
    ours_model = load_file(run_dir / "pretrain" / "model" / "model.safetensors")
    reference_model = load_file(smoke_run / "pretrain" / "model" / "model.safetensors")
    assert ours_model.keys() == reference_model.keys()
    for name, weights in ours_model.items():
        assert torch.allclose(weights, reference_model[name], atol=1e-4), name
    ours = json.loads((run_dir / "pretrain" / "manifest.json").read_text())["metrics"]
    reference = json.loads((smoke_run / "pretrain" / "manifest.json").read_text())["metrics"]
    assert ours["resumed_from"] is not None and ours["resumed_from"] < yaml.safe_load(SMOKE.read_text())["pretrain"]["steps"]
    assert ours["final_loss"] == pytest.approx(reference["final_loss"], abs=1e-4)
    assert ours["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-4)
    losses = [json.loads(x)["loss"] for x in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x)["loss"] for x in (smoke_run / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(ref, abs=1e-4)  # the log has one row per step, none lost or doubled


def test_nan_loss_stops_cleanly_and_keeps_last_checkpoint(smoke_run, tmp_path, copy_stages):
    data = yaml.safe_load(SMOKE.read_text())
    data["pretrain"].update(lr=1.0e4, warmup_steps=0, grad_clip=0, steps=40, checkpoint_every=1)
    recipe = tmp_path / "explode.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    copy_stages(smoke_run, run_dir, "corpus", "synth", "tokenizer")
    proc = phiforge("pretrain", recipe, "--run-dir", run_dir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pretrain: loss became") and "last good checkpoint" in last
    assert not (run_dir / "pretrain" / "manifest.json").exists()
    assert not (run_dir / "pretrain" / "model").exists()
