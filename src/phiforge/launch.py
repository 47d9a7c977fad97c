"""`phiforge launch slurm`: an sbatch script that runs a recipe under torchrun on every node of a Slurm job.

Slurm allocates the nodes and starts one torchrun per node (srun); torchrun starts the ranks on its node and
joins them through its c10d rendezvous on the allocation's first node. Nothing here schedules, restarts or
watches processes: Slurm and torchrun do, and `phiforge run` resumes a partial run when the job is resubmitted.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from phiforge.errors import UserError
from phiforge.files import write_text

SCRIPT_NAME = "slurm.sbatch"
# torchrun's c10d rendezvous listens on the first node at BASE + job id mod 10000: two jobs on one node differ.
RDZV_PORT_BASE = 20000


def sbatch_script(recipe: Path, run_dir: Path, nodes: int, procs_per_node: int, gpus: bool,
                  partition: str | None = None, time: str | None = None) -> str:
    """The sbatch script: `procs_per_node` ranks on each of `nodes` nodes (one per GPU, or CPU processes on
    gloo when `gpus` is false), all running `phiforge run RECIPE --run-dir RUN_DIR`."""
    if nodes < 1:
        raise UserError(f"--nodes {nodes}: a Slurm job needs at least 1 node")
    if procs_per_node < 1:
        raise UserError(f"--gpus-per-node {procs_per_node}: each node needs at least 1 process")
    run_dir = run_dir.resolve()
    # a recipe file by its absolute path (its relative paths resolve against it); a built-in recipe by its name
    recipe_arg = str(recipe.resolve()) if recipe.exists() else str(recipe)
    directives = {
        "job-name": f"phiforge-{run_dir.name}",
        "nodes": nodes,
        "ntasks-per-node": 1,  # one torchrun per node; it starts the node's ranks
        "exclusive": None,  # whole nodes: the ranks share the node's CPUs, memory and GPUs with nothing else
        "output": run_dir / "slurm-%j.out",
        "chdir": Path.cwd(),  # a built-in recipe's relative paths resolve against the directory it was launched from
    }
    if gpus:
        directives["gpus-per-node"] = procs_per_node
    if partition:
        directives["partition"] = partition
    if time:
        directives["time"] = time
    for key, value in directives.items():  # a directive line is not shell-quoted: whitespace would cut it short,
        if value is not None and any(c.isspace() for c in str(value)):  # and a newline would start a shell line
            raise UserError(f"{value!r}: sbatch's --{key} cannot hold whitespace; choose a run directory (and a "
                            f"working directory) without spaces or newlines")
    header = [f"#SBATCH --{k}" if v is None else f"#SBATCH --{k}={v}" for k, v in directives.items()]
    # The Python that wrote this script runs every rank (torchrun's -m), so the job uses this installation
    # of phiforge whatever PATH a node's shell sets up.
    python = shlex.quote(sys.executable)
    return "\n".join([
        "#!/bin/bash",
        *header,
        "set -euo pipefail",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        f"port=$(({RDZV_PORT_BASE} + SLURM_JOB_ID % 10000))",
        # srun: without --cpus-per-task its one task per node would be bound to a single CPU on a cgroup cluster
        'srun --kill-on-bad-exit=1 --cpus-per-task="$SLURM_CPUS_ON_NODE" \\',
        f"  {python} -m torch.distributed.run --nnodes {nodes} --nproc_per_node {procs_per_node} \\",
        '  --rdzv_backend c10d --rdzv_endpoint "$head_node:$port" --rdzv_id "$SLURM_JOB_ID" \\',
        f"  -m phiforge.cli run {shlex.quote(recipe_arg)} --run-dir {shlex.quote(str(run_dir))}",
        "",
    ])


def write_script(run_dir: Path, script: str) -> Path:
    path = run_dir / SCRIPT_NAME
    write_text(path, script)
    return path


def submit(script: Path) -> str:
    """sbatch the script; returns the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(f"sbatch not found on PATH: run this where Slurm's client commands are installed, "
                        f"or submit {script} with sbatch yourself")
    proc = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"sbatch refused {script}: {said}")
    return proc.stdout.strip().split(";")[0]  # --parsable prints "ID" or "ID;CLUSTER"
