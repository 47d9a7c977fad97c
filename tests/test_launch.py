"""`phiforge launch slurm`: the sbatch script runs the smoke recipe (a shorter sft) under torchrun on a real
one-node Slurm (2 CPU ranks) to a complete run directory whose pretraining follows the one-process run."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import SMOKE, phiforge
from test_distributed import losses


def test_a_slurm_job_runs_the_smoke_recipe_on_two_ranks(slurm, smoke_run, installed, copy_stages):
    run_dir = installed.home / "runs" / "slurm"
    run_dir.mkdir()
    # stages that run on rank 0 alone come from the one-process run, to keep the test short; the job runs the rest
    copy_stages(smoke_run, run_dir, "corpus", "synth", "tokenizer")
    # pretrain as in the smoke run (its losses are compared below); a short sft and eval after it
    recipe = yaml.safe_load(SMOKE.read_text())
    recipe["sft"].update(steps=20, checkpoint_every=20, log_every=10)
    recipe["eval"].update(max_problems=8, passkey_trials=2)
    (run_dir.parent / "slurm.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))  # the mixture in its order
    proc = installed("launch", "slurm", str(run_dir.parent / "slurm.yaml"), "--nodes", "1", "--gpus-per-node", "2",
                     "--cpu", "--run-dir", run_dir, "--submit")
    job = re.search(r"submitted job (\d+)", proc.stdout).group(1)
    script = (run_dir / "slurm.sbatch").read_text()
    assert "--nnodes 1 --nproc_per_node 2" in script and "--rdzv_backend c10d" in script
    assert "--gpus-per-node" not in script
    slurm.wait_all(timeout=1800)
    log = run_dir / f"slurm-{job}.out"
    assert slurm.job_state(job) == "COMPLETED", log.read_text()[-4000:]

    stages = sorted(p.parent.name for p in smoke_run.glob("*/manifest.json"))
    assert "pretrain" in stages and "sft" in stages
    assert sorted(p.parent.name for p in run_dir.glob("*/manifest.json")) == stages
    assert (run_dir / "report.md").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "final")
    # 2 ranks take the same steps as the one-process smoke run (global batch split, bf16 where the CPU has it)
    assert len(losses(run_dir)) == len(losses(smoke_run))
    assert losses(run_dir) == pytest.approx(losses(smoke_run), abs=2e-2)


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0", "--gpus-per-node", "2"], "--nodes 0: a Slurm job needs at least 1 node"),
    (["--gpus-per-node", "0"], "--gpus-per-node 0: each node needs at least 1 process"),
])
def test_bad_launch_input_is_one_error_line(tmp_path, args, message):
    proc = phiforge("launch", "slurm", "smoke", *args, "--run-dir", tmp_path / "run", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "run" / "slurm.sbatch").exists()


def test_a_run_directory_that_would_break_a_directive_line_is_refused(tmp_path):
    for name in ("two words", "x\nrm -rf ~"):  # a newline would make the rest of the name a line of the script
        proc = phiforge("launch", "slurm", "smoke", "--gpus-per-node", "1", "--run-dir", tmp_path / name, check=False)
        assert proc.returncode == 2
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith("error: ") and "cannot hold whitespace" in line
        assert not (tmp_path / name / "slurm.sbatch").exists()


def test_submit_without_sbatch_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "phiforge.cli", "launch", "slurm", "smoke", "--gpus-per-node", "1",
                           "--run-dir", str(tmp_path / "run"), "--submit"],
                          capture_output=True, text=True, env=dict(os.environ, PATH=str(tmp_path), COLUMNS="200"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: sbatch not found on PATH: run this where Slurm's client commands are installed, "
        f"or submit {tmp_path / 'run' / 'slurm.sbatch'} with sbatch yourself"]
