from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "src" / "phiforge" / "recipes"  # the built-in recipes, shipped in the package
SMOKE = RECIPES / "smoke.yaml"


def phiforge(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a subprocess."""
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run(
        [sys.executable, "-m", "phiforge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"phiforge {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """One full run of the smoke recipe, shared by the end-to-end tests."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    phiforge("run", SMOKE, "--run-dir", run_dir)
    return run_dir


@pytest.fixture
def copy_stages():
    def copy(src: Path, dst: Path, *names: str) -> None:
        for name in names:
            shutil.copytree(src / name, dst / name)

    return copy
