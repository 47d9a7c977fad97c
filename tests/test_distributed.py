"""Pretraining under torchrun (2 processes, FSDP2 on gloo) takes the same steps as one process, and a 2-process
run whose rank dies mid-pretraining stops, then resumes in one process to the same end; DPO under torchrun takes
the same steps as one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from conftest import SMOKE, phiforge
from phiforge.pipeline import run_stage
from phiforge.posttrain.stages import DPO
from phiforge.recipe import load_recipe
from planted import train_planted_hf

STEPS = 40


@pytest.fixture
def recipe(tmp_path):
    data = yaml.safe_load(SMOKE.read_text())
    data["pretrain"].update(steps=STEPS, checkpoint_every=5, batch_size=8, seq_len=64, precision="fp32")
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def torchrun(*args, **popen):
    """2 ranks on this machine, one thread each (the CPUs are shared)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--no-python",
               sys.executable, "-m", "phiforge.cli", *map(str, args)]
    return subprocess.Popen(command, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **popen)


def losses(run_dir):
    return [json.loads(x)["loss"] for x in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]


def metrics(run_dir):
    return json.loads((run_dir / "pretrain" / "manifest.json").read_text())["metrics"]


def test_two_processes_match_one_and_resume_on_one_after_kill(smoke_run, recipe, tmp_path, copy_stages):
    runs = {name: tmp_path / name for name in ("one", "two", "killed")}
    for run_dir in runs.values():
        run_dir.mkdir()
        copy_stages(smoke_run, run_dir, "corpus", "synth", "tokenizer")

    phiforge("pretrain", recipe, "--run-dir", runs["one"])
    two = torchrun("pretrain", recipe, "--run-dir", runs["two"])
    assert two.wait(600) == 0, two.stderr.read()[-4000:]
    assert len(losses(runs["two"])) == STEPS
    assert losses(runs["two"]) == pytest.approx(losses(runs["one"]), abs=2e-3)
    assert metrics(runs["two"])["val_loss"] == pytest.approx(metrics(runs["one"])["val_loss"], abs=2e-3)
    assert (runs["two"] / "pretrain" / "model" / "model.safetensors").is_file()

    killed = torchrun("pretrain", recipe, "--run-dir", runs["killed"])
    checkpoints = runs["killed"] / "pretrain" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None:
        # a complete checkpoint: renamed into place (a `.step_N.tmp` holds .metadata before its rename)
        if checkpoints.is_dir() and any(p.name.startswith("step_") and (p / ".metadata").is_file()
                                        for p in checkpoints.iterdir()):
            break
        time.sleep(0.02)
    assert killed.poll() is None, "pretraining ended before it could be killed; raise STEPS"
    # One rank dies: torchrun stops the other and fails, in bounded time rather than a hang.
    ranks = [p for p in psutil.Process(killed.pid).children() if "phiforge.cli" in " ".join(p.cmdline())]
    assert len(ranks) == 2
    ranks[-1].send_signal(signal.SIGKILL)
    assert killed.wait(120) != 0
    assert not (runs["killed"] / "pretrain" / "manifest.json").exists()

    resumed = phiforge("pretrain", recipe, "--run-dir", runs["killed"])  # one process
    assert "resuming from checkpoint" in resumed.stderr
    assert 0 < metrics(runs["killed"])["resumed_from"] < STEPS
    assert losses(runs["killed"]) == pytest.approx(losses(runs["one"]), abs=2e-3)
    assert metrics(runs["killed"])["val_loss"] == pytest.approx(metrics(runs["one"])["val_loss"], abs=2e-3)


def test_dpo_on_two_processes_takes_the_steps_of_one(tmp_path):
    """The dpo stage of a post-training-only recipe: 2 ranks train (FSDP2), rank 0 alone computes the reference
    and the summary; losses, rewards and the summary follow one process on the same global batch."""
    train_planted_hf(tmp_path / "model")
    replies = ["x y 7", "x 7", "y y 7", "x y x 7", "7"]
    wrong = ["x y 3", "3", "y 3", "x x y 3", "x y y x 3"]
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": "Q", "chosen": c, "rejected": r}) + "\n" for c in replies for r in wrong[:3]))
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(yaml.safe_dump({"name": "dpo2", "seed": 3, "dpo": {
        "init_from": str(tmp_path / "model"), "pairs": str(tmp_path / "pairs.jsonl"), "steps": 6, "batch_size": 4,
        "grad_accum": 2, "lr": 3e-3, "precision": "fp32", "checkpoint_every": 6, "log_every": 1}}))
    run_stage(load_recipe(recipe), tmp_path / "one", DPO)  # one process: this one
    two = torchrun("dpo", recipe, "--run-dir", tmp_path / "two")
    assert two.wait(300) == 0, two.stderr.read()[-4000:]

    def rows(run):
        return [json.loads(x) for x in (tmp_path / run / "dpo" / "metrics.jsonl").read_text().splitlines()]

    one, both = rows("one"), rows("two")
    assert len(both) == 6 and one[-1]["loss"] < one[0]["loss"]  # it learned something
    for key in ("loss", "reward_margin", "reward_accuracy", "grad_norm"):
        assert [r[key] for r in both] == pytest.approx([r[key] for r in one], abs=1e-4), key
    summary = {run: json.loads((tmp_path / run / "dpo" / "summary.json").read_text()) for run in ("one", "two")}
    assert summary["two"] == pytest.approx(summary["one"], abs=1e-3)
    assert (tmp_path / "two" / "dpo" / "model" / "model.safetensors").is_file()


SWITCHED = """
import json, sys
from pathlib import Path
from phiforge import distributed
from phiforge.data.layouts import pack_stream
from phiforge.model import build_model, load_config
from phiforge.recipe import TrainConfig
from phiforge.train.loop import train
from phiforge.train.loss import NextTokenLoss
from phiforge.train.optim import LRSchedule

distributed.init()
cfg = TrainConfig(**json.loads(sys.argv[2]))
data = pack_stream([list(range(5, 900))] * 4, seq_len=32, eos_id=0)
train(build_model(load_config("nano"), seed=0), cfg, LRSchedule(cfg.lr, cfg),
      NextTokenLoss(data, None, cfg.batch_size, seed=0), Path(sys.argv[1]), "t")
"""


def test_gpu_switches_run_on_two_processes(tmp_path):
    """bf16 FSDP2 parameters with fp32 gradient reduction, block checkpointing and per-block compilation together
    on 2 gloo ranks: the run finishes and its losses follow the plain fp32 loop within bf16's precision."""
    script = tmp_path / "switched.py"
    script.write_text(SWITCHED)
    plain = {"steps": 4, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "log_every": 1}
    switched = plain | {"mixed_precision": "bf16", "activation_checkpointing": "block", "compile_blocks": True}
    subprocess.run([sys.executable, script, tmp_path / "plain", json.dumps(plain)], check=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", script,
                           tmp_path / "switched", json.dumps(switched)], env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    losses = {run: [json.loads(x)["loss"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("plain", "switched")}
    assert len(losses["switched"]) == 4
    assert losses["switched"] == pytest.approx(losses["plain"], rel=2e-2)  # bf16 keeps 8 bits of mantissa
