"""Pretraining under torchrun (2 processes, FSDP2 on gloo) takes the same steps as one process, and a 2-process
run with asynchronous checkpoints whose rank dies while a checkpoint is in flight stops, then resumes in one
process to the same end; the post-training stages (dpo, judge_dpo, hallucination) under torchrun take the same
steps as one process."""

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
from phiforge.generation.fake_server import FakeOpenAIServer
from phiforge.pipeline import run_all
from phiforge.recipe import load_recipe
from planted import train_planted_hf

STEPS = 25


def pretrain_recipe(path, **settings):
    data = yaml.safe_load(SMOKE.read_text())
    data["pretrain"].update(steps=STEPS, checkpoint_every=5, batch_size=8, seq_len=64, precision="fp32", **settings)
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


def test_two_processes_match_one_and_resume_on_one_after_kill(smoke_run, tmp_path, copy_stages):
    recipe = pretrain_recipe(tmp_path / "fsdp.yaml")
    background = pretrain_recipe(tmp_path / "async.yaml", async_checkpoint=True)
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

    # Checkpoints written in the background: killed while one is in flight (its `.step_N.tmp` not yet renamed,
    # .metadata or not), after an earlier one is complete (renamed into place).
    killed = torchrun("pretrain", background, "--run-dir", runs["killed"])
    checkpoints = runs["killed"] / "pretrain" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None:
        names = [p.name for p in checkpoints.iterdir()] if checkpoints.is_dir() else []
        if any(n.startswith("step_") for n in names) and any(n.endswith(".tmp") for n in names):
            break
        time.sleep(0.01)
    assert killed.poll() is None, "pretraining ended before it could be killed; raise STEPS"
    # One rank dies: torchrun stops the other and fails, in bounded time rather than a hang.
    ranks = [p for p in psutil.Process(killed.pid).children() if "phiforge.cli" in " ".join(p.cmdline())]
    assert len(ranks) == 2
    ranks[-1].send_signal(signal.SIGKILL)
    assert killed.wait(120) != 0
    assert not (runs["killed"] / "pretrain" / "manifest.json").exists()

    resumed = phiforge("pretrain", background, "--run-dir", runs["killed"])  # one process
    assert "resuming from checkpoint" in resumed.stderr
    assert "unreadable" not in resumed.stderr  # the save in flight was never taken for a checkpoint
    assert 0 < metrics(runs["killed"])["resumed_from"] < STEPS
    assert losses(runs["killed"]) == pytest.approx(losses(runs["one"]), abs=2e-3)
    assert metrics(runs["killed"])["val_loss"] == pytest.approx(metrics(runs["one"])["val_loss"], abs=2e-3)


def digit_grades(body: dict) -> list[tuple[str, float]]:
    """A judge's digit log-probabilities (judge_dpo `method: probs`): answers holding 7 graded high, others low."""
    response = body["messages"][-1]["content"].split("[Response]\n")[1]
    return [("5", 0.0), ("0", -4.0)] if "7" in response else [("0", 0.0), ("5", -4.0)]


def test_post_training_stages_on_two_processes_take_the_steps_of_one(tmp_path):
    """dpo, judge_dpo and hallucination (its refusal SFT, then DPO) of a post-training-only recipe in one torchrun
    run: 2 ranks train (FSDP2), rank 0 alone generates, judges, grades and summarises; every training step, the
    pairs and the summaries follow one process on the same global batch."""
    train_planted_hf(tmp_path / "model")
    replies = ["x y 7", "x 7", "y y 7", "x y x 7", "7"]
    wrong = ["x y 3", "3", "y 3", "x x y 3", "x y y x 3"]
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": "Q", "chosen": c, "rejected": r}) + "\n" for c in replies for r in wrong[:3]))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Q", "Q Q", "x Q", "Q x")))
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"question": q, "answer": "7"}) + "\n" for q in ("Q", "Q Q", "x Q")))
    train = {"batch_size": 4, "lr": 3e-3, "precision": "fp32", "log_every": 1}
    with FakeOpenAIServer(top_logprobs=digit_grades) as judge:
        recipe = tmp_path / "post.yaml"
        recipe.write_text(yaml.safe_dump({
            "name": "post2", "seed": 3, "teacher": {"backend": "openai", "model": "judge", "base_url": judge.url},
            "dpo": {"init_from": str(tmp_path / "model"), "pairs": str(tmp_path / "pairs.jsonl"), "steps": 6,
                    "grad_accum": 2, "checkpoint_every": 6, **train},
            "judge_dpo": {"prompts": str(tmp_path / "prompts.jsonl"), "method": "probs", "samples": 4, "max_tokens": 8,
                          "steps": 4, "checkpoint_every": 2, **train},
            "hallucination": {"qa": str(tmp_path / "qa.jsonl"), "heldout_qa": str(tmp_path / "qa.jsonl"), "bogus": 4,
                              "heldout_bogus": 3, "samples": 2, "max_tokens": 8, "steps": 4, "checkpoint_every": 2,
                              "sft_steps": 2, "sft_seq_len": 48, **train}}))
        run_all(load_recipe(recipe), tmp_path / "one")  # one process: this one
        two = torchrun("run", recipe, "--run-dir", tmp_path / "two")
        assert two.wait(600) == 0, two.stderr.read()[-4000:]

    def read(run, name):  # the run directory's own path left out (the judge's record names the policy by it)
        text = (tmp_path / run / name).read_text().replace(str(tmp_path / run), "RUN")
        return [json.loads(x) for x in text.splitlines()] if name.endswith(".jsonl") else json.loads(text)

    trained = {"dpo": 6, "judge_dpo": 4, "hallucination": 4, "hallucination/sft": 2}
    for stage, steps in trained.items():
        one, both = read("one", f"{stage}/metrics.jsonl"), read("two", f"{stage}/metrics.jsonl")
        assert len(both) == steps and one[-1]["loss"] < one[0]["loss"], stage  # it learned something
        keys = ("loss", "grad_norm") + (("reward_margin", "reward_accuracy") if stage != "hallucination/sft" else ())
        for key in keys:  # a norm near 19 of gradients FSDP reduced over ranks: measured 2e-4 apart on one CPU
            rel = 1e-3 if key == "grad_norm" else 0
            assert [r[key] for r in both] == pytest.approx([r[key] for r in one], rel=rel, abs=1e-4), (stage, key)
        assert (tmp_path / "two" / stage / "model" / "model.safetensors").is_file()
    assert read("two", "judge_dpo/pairs.jsonl") == read("one", "judge_dpo/pairs.jsonl")
    assert len(read("one", "judge_dpo/pairs.jsonl")) >= 1
    assert read("two", "hallucination/data/pairs.jsonl") == read("one", "hallucination/data/pairs.jsonl")
    for name in ("dpo/summary.json", "judge_dpo/summary.json", "hallucination/summary.json", "hallucination/rates.json"):
        assert flat(read("two", name)) == pytest.approx(flat(read("one", name)), abs=1e-3), name


def flat(tree: dict, prefix: str = "") -> dict:
    """A nested dict's leaves by their dotted paths (pytest.approx compares flat dicts)."""
    leaves = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            leaves |= flat(value, f"{prefix}{key}.")
        else:
            leaves[prefix + key] = value
    return leaves


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
