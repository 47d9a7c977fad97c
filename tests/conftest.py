from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "src" / "phiforge" / "recipes"  # the built-in recipes, shipped in the package
SMOKE = RECIPES / "smoke.yaml"


def _run(command: list[str], args: tuple, cwd: Path | None, check: bool, env: dict | None = None):
    proc = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=dict(env or os.environ, COLUMNS="200"))
    if check and proc.returncode != 0:
        raise AssertionError(f"phiforge {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


class _Zygote:
    """tests/cli_zygote.py, started on first use: each `phiforge(...)` runs in a process of its own forked from it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.files = Path(tempfile.mkdtemp(prefix="phiforge-zygote-"))

    def start(self) -> subprocess.Popen:
        # the environment main() would give itself before the imports that read it (hub offline, rich's width)
        env = dict(os.environ, COLUMNS="200", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("cli_zygote.py"))], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if json.loads(proc.stdout.readline() or "{}") != {"ready": True}:
            raise RuntimeError(f"tests/cli_zygote.py did not start (exit {proc.wait()})")
        return proc

    def run(self, args: list[str], cwd: Path | None) -> subprocess.CompletedProcess:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self.start()
            out, err = self.files / "stdout", self.files / "stderr"
            request = {"args": args, "cwd": str(cwd or Path.cwd()), "env": dict(os.environ, COLUMNS="200"),
                       "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            reply = self.proc.stdout.readline()
            if not reply:
                raise RuntimeError(f"tests/cli_zygote.py died running phiforge {' '.join(args)}")
            return subprocess.CompletedProcess(["phiforge", *args], json.loads(reply)["returncode"],
                                               out.read_text(errors="replace"), err.read_text(errors="replace"))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait()
        shutil.rmtree(self.files, ignore_errors=True)


_zygote = _Zygote()
atexit.register(_zygote.stop)


def phiforge(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the checkout's CLI as a user would, in a process of its own (forked from tests/cli_zygote.py)."""
    proc = _zygote.run([str(a) for a in args], cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"phiforge {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@dataclass(frozen=True)
class Installed:
    """phiforge as `pip install .` leaves it: the wheel in a fresh venv, run from outside the checkout."""

    venv: Path
    home: Path  # a working directory with nothing of the checkout in it

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return _run([str(self.venv / "bin" / "phiforge")], args, self.home, check, env)


def kill_9_when(proc: subprocess.Popen, ready, too_soon: str, timeout_s: float = 300) -> None:
    """SIGKILL `proc` as soon as ready() holds (or timeout_s passed); fails with `too_soon` if it ended before."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    assert proc.poll() is None, too_soon
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


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
def installed(tmp_path_factory) -> Installed:
    """Build the wheel and install it into a fresh venv.

    The venv borrows this test environment's dependencies (installed from the same pyproject) through a
    .pth line, which puts their directory on the path without running the editable install's hook: what is
    tested is what the wheel ships, without downloading gigabytes of dependencies a second time."""
    base = tmp_path_factory.mktemp("installed")
    source = base / "source"  # a clean copy: setuptools' build/ in a checkout can hold stale modules
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(base / "dist"), str(source)], check=True, capture_output=True)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next((base / "dist").glob("phiforge-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True)
    home = base / "home"
    home.mkdir()
    return Installed(venv, home)


@pytest.fixture(scope="session")
def smoke_run(installed) -> Path:
    """One full run of the built-in smoke recipe by the installed wheel, shared by the end-to-end tests."""
    run_dir = installed.home / "runs" / "smoke"
    installed("run", "smoke", "--run-dir", run_dir)
    return run_dir


@pytest.fixture
def copy_stages():
    def copy(src: Path, dst: Path, *names: str) -> None:
        for name in names:
            shutil.copytree(src / name, dst / name)

    return copy


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running one-node Slurm (tests/slurm_cluster.py); SLURM_CONF points sbatch, squeue... at it."""
    import slurm_cluster

    if missing := slurm_cluster.missing_daemons():
        pytest.fail(f"Slurm is not installed ({', '.join(missing)} not found): `{slurm_cluster.INSTALL}` "
                    "(.ci/run installs them), then rerun")
    with slurm_cluster.running(tmp_path_factory.mktemp("slurm")) as cluster, pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
        yield cluster


@pytest.fixture(scope="session")
def tok():
    """A small byte-level BPE with the Phi-4 specials, trained on a few lines."""
    from phiforge.tokenizer import train_tokenizer

    texts = ["def add(a, b):\n    return a + b\n", "The answer is 42. What is 3 + 4?"] * 50
    return train_tokenizer(texts, 600)
