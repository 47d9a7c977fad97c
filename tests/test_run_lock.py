"""One process per run directory: a second run (or stage) on it is a one-line error naming the holder's pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SMOKE, phiforge
from phiforge.errors import UserError
from phiforge.rundir import LOCK_FILE, run_dir_lock

# Takes the lock, says so, then waits; with "fork", a forked child that outlives it keeps waiting. The child
# says when it runs, so the test never races the child's start (its after-fork hook is what drops the lock).
# Each line is one write: print() under PYTHONUNBUFFERED writes the text and its newline apart, and the two
# processes' lines then interleave.
HOLDER = """
import os, sys, time
from phiforge.rundir import run_dir_lock
with run_dir_lock(sys.argv[1]):
    if sys.argv[2] == "fork" and os.fork() == 0:
        os.write(1, b"child\\n")
        time.sleep(600)
        os._exit(0)
    os.write(1, b"held\\n")
    time.sleep(600)
"""


def hold(run_dir: Path, fork: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), "fork" if fork else "-"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    lines = sorted(proc.stdout.readline() for _ in range(2 if fork else 1))
    assert lines == (["child\n", "held\n"] if fork else ["held\n"])
    return proc


def busy_message(run_dir: Path, pid: int) -> str:
    return (f"{run_dir} is in use by another phiforge process (pid {pid}); wait for it to finish or stop it, "
            "or choose another --run-dir")


def test_a_held_run_dir_refuses_others_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold(run_dir)
    try:
        with pytest.raises(UserError) as e:
            with run_dir_lock(run_dir):
                pass
        assert str(e.value) == busy_message(run_dir, holder.pid)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with run_dir_lock(run_dir):  # the kernel dropped the dead holder's lock
        with run_dir_lock(run_dir):  # and one process may nest its holds (run, then each stage)
            assert (run_dir / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_a_forked_child_does_not_keep_the_run_dir_after_its_parent_dies(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold(run_dir, fork=True)
    os.kill(holder.pid, signal.SIGKILL)  # its forked child lives on, as a stray worker of a killed run would
    holder.wait()
    try:
        with run_dir_lock(run_dir):
            pass
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the child, in the holder's session


def test_a_second_run_on_a_busy_run_dir_fails_in_one_line_and_the_first_finishes(tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "phiforge.cli", "corpus", str(SMOKE), "--run-dir", str(run_dir)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = run_dir / LOCK_FILE
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None and not (lock.is_file() and lock.read_text().strip()):
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGSTOP)  # holding the lock mid-corpus, for as long as the second needs
    try:
        assert not (run_dir / "corpus" / "manifest.json").exists(), "the corpus stage ended before the second run"
        second = phiforge("run", SMOKE, "--run-dir", run_dir, check=False)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines()[-1] == f"error: {busy_message(run_dir, first.pid)}"
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert (run_dir / "corpus" / "manifest.json").is_file()
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE, "corpus"]  # the second wrote nothing
