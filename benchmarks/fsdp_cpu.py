"""FSDP2 on CPU: pretraining in 1 and 2 processes (torchrun, gloo) on the same global batch, against the plain
single-process loop.

    python benchmarks/fsdp_cpu.py [--steps 60] [--out /tmp/fsdp_bench]

Prints, per setup, the final loss, the largest per-step loss difference from the plain loop, and tokens/s
(from the stage's manifest); with the CPU's bf16 capability and the load average, since a shared machine
moves the throughput figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

SMOKE = Path(__file__).resolve().parents[1] / "src" / "phiforge" / "recipes" / "smoke.yaml"


def phiforge(launcher: list[str], *args) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([*launcher, sys.executable, "-m", "phiforge.cli", *map(str, args)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--no-python"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", type=Path, default=Path("/tmp/fsdp_bench"))
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    data = yaml.safe_load(SMOKE.read_text())
    data["pretrain"].update(steps=args.steps, checkpoint_every=args.steps, precision="fp32")
    recipe = args.out / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    base = args.out / "base"
    for stage in ("corpus", "synth", "tokenizer"):
        phiforge([], stage, recipe, "--run-dir", base)

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    print(f"cpu: {os.cpu_count()} cores, avx512_bf16: {'avx512_bf16' in flags}, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"pretrain, smoke recipe, {args.steps} steps, global batch {data['pretrain']['batch_size']} x "
          f"{data['pretrain']['seq_len']} tokens, fp32, 1 thread per process")
    setups = {"plain loop, 1 process": [], "FSDP2, torchrun 1 process": torchrun(1),
              "FSDP2, torchrun 2 processes": torchrun(2)}
    reference = None
    for name, launcher in setups.items():
        run_dir = args.out / name.replace(" ", "_").replace(",", "")
        shutil.copytree(base, run_dir)
        phiforge(launcher, "pretrain", recipe, "--run-dir", run_dir)
        metrics = json.loads((run_dir / "pretrain" / "manifest.json").read_text())["metrics"]
        losses = [json.loads(x)["loss"] for x in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
        reference = reference or losses
        diff = max(abs(a - b) for a, b in zip(losses, reference))
        print(f"{name:30s} final loss {metrics['final_loss']:.4f}  max |loss - plain| {diff:.1e}  "
              f"{metrics['tokens_per_s']:>9,.0f} tok/s  (load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
