from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"


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


@pytest.fixture(autouse=True)
def weak_sandbox_allowed(monkeypatch) -> None:
    """Tests run their own code in the sandbox: where namespaces are refused they accept weak isolation."""
    from phiforge.synth import sandbox

    monkeypatch.setattr(sandbox, "_weak_allowed", True)


@pytest.fixture(params=["isolated", "plain"])
def mode(request, monkeypatch) -> str:
    """Run a sandbox test with namespaces (where this machine allows them) and in the weak fallback."""
    from phiforge.synth import sandbox

    if request.param == "isolated" and not sandbox.isolation():
        pytest.skip("this machine does not allow unprivileged user namespaces")
    if request.param == "plain":
        monkeypatch.setattr(sandbox, "isolation", lambda: False)
    return request.param


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """One full run of recipes/smoke.yaml, shared by the end-to-end tests."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    phiforge("run", SMOKE, "--run-dir", run_dir)
    return run_dir


@pytest.fixture
def copy_stages():
    def copy(src: Path, dst: Path, *names: str) -> None:
        for name in names:
            shutil.copytree(src / name, dst / name)

    return copy
