"""Run untrusted generated Python (a generated solution plus its tests) and say whether it passed.

Each run is a fresh process tree in a throwaway directory; the caller gets a SandboxResult (status ok,
failed, timeout, memory, blocked or crashed) and goes on, whatever the code did. What is contained, how:

- Time: a wall-clock timeout kills the run's whole process group, and RLIMIT_CPU stops a busy process
  even if the caller is stalled.
- Memory and disk: RLIMIT_AS (a 10 GB allocation is a MemoryError), RLIMIT_FSIZE (no file, stdout and
  stderr included, grows past `file_mb`), RLIMIT_CORE 0.
- Environment: only PATH=/usr/bin:/bin, HOME and TMPDIR (both the run directory), LANG and thread counts;
  no API keys or tokens reach the code; the interpreter runs with `-I` (no PYTHON* variables, no user
  site directory, no PYTHONPATH) and the run directory first on sys.path.
- Where the machine allows unprivileged user namespaces (probed once per process by trying it), each run
  gets new user, mount, network and PID namespaces (unshare(2); the caller's uid maps to root inside):
  - no network at all: the new network namespace holds only a loopback device that is down;
  - every mount is remounted read-only except the run directory (and a private /dev/shm), so writes and
    removals elsewhere fail in the kernel, also from native code and from programs the code starts;
  - the code sees only its own processes, cannot signal any other, and everything it started dies with
    it (killing the namespace's init takes the namespace down).
- Always, in the run's process before the code starts (sandbox_child.py), a Python audit hook refuses:
  writes, renames and removals outside the run directory; starting any other program (os.system,
  subprocess, exec, posix_spawn), since a started program escapes the hook; socket connect/bind/send;
  signals outside the run's process group; more than `max_forks` forks in the run's whole process tree
  (counted in shared memory, so a fork bomb stops there). A refused action raises an exception the code
  cannot catch with `except Exception` and is recorded: the run's status is "blocked", never "ok".

Limits of the approach: the code runs as the caller's user id, and can read whatever the caller can read
(files on disk; not the caller's environment). With namespaces the kernel enforces the network and
file-system rules; without them (`isolation()` False, logged once) those rest on the audit hook, which
stops mistakes and ordinary destructive code but is not a security boundary: native code (ctypes, C
extensions) passes it, and a process that calls setsid() leaves the group killed on timeout (it still
dies at its CPU limit unless it sleeps). RLIMIT_NPROC is not used: it counts every process of the user id
on the whole machine, and root ignores it; the hook's fork budget and the PID namespace do that job.
For hostile code put the whole job in a VM or container as well.

Many runs: a fork server (one `python -I` that has imported only the standard library and never runs
submitted code) forks each run from that clean state and the run then enters its own new namespaces,
so runs share nothing, and interpreter start-up is paid once; `run_many` runs them in parallel threads.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("phiforge")

CHILD = Path(__file__).with_name("sandbox_child.py")
TAIL = 4000


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    memory_mb: int = 2048
    file_mb: int = 64
    max_forks: int = 16


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str  # ok | failed | timeout | memory | blocked | crashed
    exit_code: int | None  # negative: killed by that signal; None: killed on timeout
    stdout: str  # last TAIL characters
    stderr: str
    wall_s: float


class _ForkServer:
    """One pre-imported interpreter (sandbox_child.py) that forks a fresh, confined process tree per run.

    It imports only the standard library and never runs submitted code, so a run starts from the same
    clean state as a new `python -I` process, without paying for interpreter start-up each time.
    """

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-B", str(CHILD), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=_env(Path(tempfile.gettempdir())), cwd="/",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
            )
        self.sock = ours

    def start(self, job: dict, fds: Sequence[int]) -> int:
        """Hand over a job with its stdout, stderr, report and done descriptors; the run leader's pid."""
        socket.send_fds(self.sock, [json.dumps(job).encode()], list(fds))
        return int(self.sock.recv(32))

    def close(self) -> None:
        self.sock.close()  # the server exits when its end reads nothing
        self.proc.wait(timeout=10)


_server: _ForkServer | None = None
_server_lock = threading.Lock()


def _server_running() -> _ForkServer:
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = _ForkServer()
        atexit.register(_server.close)
    return _server


def _start(job: dict, fds: Sequence[int]) -> int:
    with _server_lock:
        try:
            return _server_running().start(job, fds)
        except (OSError, ValueError):  # it died under us, or answered garbage: replace it, once
            assert _server is not None
            _server.proc.kill()
            _server.proc.wait()
            return _server_running().start(job, fds)


def _launch(job: dict, out: int, err: int, report: int, timeout_s: float) -> tuple[int | None, bool]:
    """Run a job to its end or its timeout; (exit code, negative for a signal, or None; timed out)."""
    read_done, write_done = os.pipe()
    try:
        leader = _start(job, (out, err, report, write_done))
    finally:
        os.close(write_done)
    with os.fdopen(read_done, "rb") as done:
        timed_out = not select.select([done], [], [], timeout_s)[0]
        try:  # always: in the fallback mode the code may have left processes behind in its group
            os.killpg(leader, signal.SIGKILL)
        except ProcessLookupError:
            pass
        reply = done.read()
    if not reply:
        return None, timed_out
    code = int(reply)
    return (128 - code if code > 128 else code), timed_out  # the leader reports a killed run as 128 + signal


@functools.cache
def isolation() -> bool:
    """True when runs get the namespaces: probed by trying to write outside a run directory in one."""
    base = Path(tempfile.mkdtemp(prefix="phiforge-sandbox-probe-")).resolve()
    try:
        (base / "work").mkdir()
        job = {"workdir": str(base / "work"), "isolated": True, "env": _env(base / "work"), "probe": str(base / "out")}
        with open(base / "log", "wb") as log_file:
            code, _ = _launch(job, log_file.fileno(), log_file.fileno(), log_file.fileno(), 30.0)
        ok = code == 0 and not (base / "out").exists()
        why = (base / "log").read_text(errors="replace").strip().splitlines()[-1:] or ["a write outside succeeded"]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if ok:
        log.info("sandbox: user, network, PID and mount namespaces (read-only file system, no network)")
    else:
        log.warning("sandbox: namespaces unavailable here (%s); relying on rlimits and an audit hook", why[0])
    return ok


def _env(workdir: Path) -> dict[str, str]:
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8", **threads}


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL))
        return f.read().decode("utf-8", "replace")


def _status(exit_code: int | None, timed_out: bool, blocked: bool, stderr: str) -> str:
    if blocked:
        return "blocked"
    if timed_out or exit_code == -signal.SIGXCPU:
        return "timeout"
    if "MemoryError" in stderr:
        return "memory"
    if exit_code == 0:
        return "ok"
    return "crashed" if exit_code is None or exit_code < 0 else "failed"


def run_python(code: str, limits: Limits = Limits()) -> SandboxResult:
    """Run `code` as a script in a fresh sandbox; never raises because of what the code does."""
    isolated = isolation()
    base = Path(tempfile.mkdtemp(prefix="phiforge-sandbox-")).resolve()  # the guard compares real paths
    try:
        work = base / "work"
        work.mkdir()
        program = work / "main.py"
        program.write_text(code, encoding="utf-8")
        job = {"workdir": str(work), "program": str(program), "isolated": isolated, "env": _env(work),
               "timeout_s": limits.timeout_s, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
               "max_forks": limits.max_forks}
        start = time.perf_counter()
        files = [open(base / name, "wb") for name in ("stdout", "stderr", "blocked")]
        try:
            exit_code, timed_out = _launch(job, *(f.fileno() for f in files), limits.timeout_s)
        finally:
            for f in files:
                f.close()
        wall = time.perf_counter() - start
        stderr = _tail(base / "stderr")
        status = _status(exit_code, timed_out, (base / "blocked").stat().st_size > 0, stderr)
        return SandboxResult(status == "ok", status, exit_code, _tail(base / "stdout"), stderr, wall)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_many(codes: Sequence[str], limits: Limits = Limits(), workers: int | None = None) -> list[SandboxResult]:
    """Run each code in its own sandbox, `workers` at a time (default: one per CPU core); results in order."""
    isolation()  # probe once before the threads start
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda code: run_python(code, limits), codes))
