"""Run untrusted generated Python and say whether it passed: a script (`run_python`), or a solution
against human-eval style tests (`run_check`, what the code verifier uses). docs/design.md ("Sandbox threat
model") states what each isolation level contains and what it does not.

Each run is a fresh process tree; the caller gets a SandboxResult (status ok, failed, timeout, memory,
blocked or crashed, a reason, the isolation level) and goes on, whatever the code did:

- Time and memory: the leader kills the run at its wall-clock timeout; RLIMIT_CPU, RLIMIT_AS (a 10 GB
  allocation is a MemoryError), RLIMIT_CORE 0; a fork budget in the audit hook.
- Environment: only PATH=/usr/bin:/bin, HOME and TMPDIR (the run directory), LANG and thread counts; the
  interpreter runs with `-I`; the job (the code, a check's tests) travels in memfds, never on disk.
- "namespaces" (where unprivileged user namespaces are allowed; probed once per process): new user, mount,
  network and PID namespaces; the run directory and /dev/shm share one tmpfs of `file_mb` (the run's total);
  every other mount is read-only, locked by a nested user namespace; no network; no other process visible.
- "weak" (elsewhere, only after `allow_weak_isolation(True)`, the recipe's `sandbox:` section): rlimits,
  RLIMIT_FSIZE per file, and an audit hook that refuses writes outside the run directory, other programs,
  sockets and name look-ups, other processes' /proc entries and signals outside the run; native code passes
  the hook. A subreaper leader kills whatever the run left behind.
- Both: a refused action raises an exception `except Exception` does not catch and is reported on a socket
  (which cannot be truncated): the status is "blocked", never "ok".
- A check's verdict comes from the process that runs the tests, never from the solution's (see run_check).

RLIMIT_NPROC is not used: it counts every process of the user id on the whole machine, and root ignores it.

Many runs: a fork server (one `python -I` that has imported only the standard library and never runs
submitted code) forks each run from that clean state and the run then enters its own new namespaces,
so runs share nothing, and interpreter start-up is paid once; `run_many` / `run_checks` run them in
parallel threads.
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

from phiforge.errors import UserError
from phiforge.synth.sandbox_child import REPORT_TAMPERED

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
    exit_code: int | None  # negative: killed by that signal; None: the leader never reported (killed)
    stdout: str  # last TAIL characters
    stderr: str
    wall_s: float
    isolation: str  # "namespaces" or "weak" (see isolation_level)
    reason: str = ""  # why it failed, or for a check what passing means


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

    def start(self, fds: Sequence[int]) -> int:
        """Hand over a run's descriptors (sandbox_child.lead's arguments); the run leader's pid."""
        socket.send_fds(self.sock, [b"run"], list(fds))
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


def _start(fds: Sequence[int]) -> int:
    with _server_lock:
        try:
            return _server_running().start(fds)
        except (OSError, ValueError):  # it died under us, or answered garbage: replace it, once
            assert _server is not None
            _server.proc.kill()
            _server.proc.wait()
            return _server_running().start(fds)


def _memfd(name: str, data: dict) -> int:
    """The job travels in an anonymous file the leader reads and closes: nothing of it is on disk, where
    the code could read it (the tests' expected answers), and it has no size limit."""
    fd = os.memfd_create(name)
    os.write(fd, json.dumps(data).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _drain(fd: int, kept: bytearray) -> bool:
    """Read what is waiting on a non-blocking fd, keeping the first TAIL bytes; False at end of file."""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        kept += chunk[: max(0, TAIL - len(kept))]


@dataclass(frozen=True)
class _Run:
    exit_code: int | None  # negative for a signal; None: no report from the leader
    timed_out: bool
    report: str  # the guard's violation reports
    verdict: dict | None  # a check's {"passed", "reason"}, written by the runner


def _launch(job: dict, tests: dict, out: int, err: int) -> _Run:
    """Run a job to its end or its timeout (the leader enforces it; this side only backs it up)."""
    report, report_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read_done, write_done = os.pipe()
    read_verdict, write_verdict = os.pipe()
    theirs = [report_theirs.fileno(), write_done, write_verdict, _memfd("job", job), _memfd("tests", tests)]
    try:
        leader = _start([out, err, *theirs])
    finally:
        report_theirs.close()
        for fd in theirs[1:]:
            os.close(fd)
    kept, done = bytearray(), bytearray()
    with report:
        report.setblocking(False)
        deadline = time.monotonic() + job["timeout_s"] + 5.0
        open_report = True
        while (left := deadline - time.monotonic()) > 0:  # drain reports as they come: a full socket stalls
            ready = select.select([read_done] + [report] * open_report, [], [], left)[0]
            if report in ready:
                open_report = _drain(report.fileno(), kept)
            if read_done in ready:
                break
        backstop = not select.select([read_done], [], [], 0)[0]
        try:  # the leader cleans up after the run; this only reaches it if it hangs
            os.killpg(leader, signal.SIGKILL)
        except ProcessLookupError:
            pass
        with os.fdopen(read_done, "rb") as f:
            done += f.read()
        while open_report and select.select([report], [], [], 0.5)[0] and _drain(report.fileno(), kept):
            pass
    verdict = bytearray()
    os.set_blocking(read_verdict, False)
    _drain(read_verdict, verdict)
    os.close(read_verdict)
    if not done:
        return _Run(None, backstop, kept.decode("utf-8", "replace"), None)
    code, timed_out = map(int, done.split())
    exit_code = 128 - code if code > 128 else code  # the leader reports a killed run as 128 + signal
    try:  # a runner killed while writing leaves no verdict, not half of one
        parsed = json.loads(verdict) if verdict else None
    except ValueError:
        parsed = None
    return _Run(exit_code, bool(timed_out), kept.decode("utf-8", "replace"), parsed)


@functools.cache
def isolation() -> bool:
    """True when runs get the namespaces: probed by trying, in one, to write outside a run directory and to
    remount the file system read-write."""
    base = Path(tempfile.mkdtemp(prefix="phiforge-sandbox-probe-")).resolve()
    try:
        run_dir = base / "run"  # the run's own tmpfs goes here, so the probe writes beside it
        (run_dir / "work").mkdir(parents=True)
        job = {"base": str(run_dir), "workdir": str(run_dir / "work"), "isolated": True,
               "env": _env(run_dir / "work"), "probe": str(base / "out"), "timeout_s": 30.0, "file_mb": 1}
        with open(base / "log", "wb") as log_file:
            run = _launch(job, {}, log_file.fileno(), log_file.fileno())
        ok = run.exit_code == 0 and not (base / "out").exists()
        why = (base / "log").read_text(errors="replace").strip().splitlines()[-1:] or ["a write outside succeeded"]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if ok:
        log.info("sandbox: user, network, PID and mount namespaces (read-only file system, no network)")
    else:
        log.warning("sandbox: namespaces unavailable here (%s); only weak isolation (rlimits and an audit hook)", why[0])
    return ok


_weak_allowed = False


def allow_weak_isolation(allowed: bool) -> None:
    """Whether generated code may run where namespaces are refused (the recipe's
    `sandbox: {allow_weak_isolation: true}`); without it such a run is a UserError."""
    global _weak_allowed
    _weak_allowed = allowed


def isolation_level() -> str:
    """What contains a run here: "namespaces" (the kernel) or "weak" (rlimits and an audit hook)."""
    if isolation():
        return "namespaces"
    if not _weak_allowed:
        raise UserError(
            "sandbox: this machine refuses unprivileged user namespaces, so generated code would run with weak "
            "isolation (it could read your processes' environments, reach the network through native code, "
            "signal your processes); run in a VM or container that allows them (sysctl "
            "kernel.unprivileged_userns_clone=1, or a seccomp profile allowing unshare), or accept the risk "
            "with `sandbox: {allow_weak_isolation: true}` in the recipe (--allow-weak-isolation for "
            "`phiforge verify`)"
        )
    return "weak"


def _env(workdir: Path) -> dict[str, str]:
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8", **threads}


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL))
        return f.read().decode("utf-8", "replace")


def _last_line(text: str) -> str:
    return next((line for line in reversed(text.splitlines()) if line.strip()), "")


def _script_status(run: _Run, stderr: str) -> tuple[str, str]:
    """A script's status from the leader's exit code and the report channel (neither of which the code
    can write): a MemoryError counts only if the program died of it, not if it printed the word."""
    code, last = run.exit_code, _last_line(stderr)
    if run.report or code == REPORT_TAMPERED:
        return "blocked", _last_line(run.report) or "the violation report channel was tampered with"
    if run.timed_out or code == -signal.SIGXCPU:
        return "timeout", "ran out of time"
    if code == 0:
        return "ok", ""
    if last.startswith("MemoryError"):
        return "memory", last
    if code is None or code < 0:
        return "crashed", f"killed by signal {signal.strsignal(-code)}" if code else "the run ended without a report"
    return "failed", last or f"exit code {code}"


def _check_status(run: _Run, stderr: str) -> tuple[str, str]:
    """A check passes only on the runner's verdict that every test ran to its end and passed."""
    if run.report or run.exit_code == REPORT_TAMPERED or (run.verdict or {}).get("tampered"):
        return "blocked", _last_line(run.report) or "the violation report channel was tampered with"
    if run.verdict is None:
        if run.timed_out:
            return "timeout", "ran out of time before the tests finished"
        return "crashed", f"no verdict: the tests' process ended early (exit code {run.exit_code})"
    reason = str(run.verdict["reason"])
    if run.verdict["passed"] is True:
        return "ok", reason
    if "ended before the tests finished" in reason and _last_line(stderr).startswith("MemoryError"):
        return "memory", _last_line(stderr)
    if "ended before the tests finished" in reason and _last_line(stderr):  # why: a SyntaxError, an exit message
        reason = f"{reason}: {_last_line(stderr)[:200]}"
    return ("memory" if reason.startswith("MemoryError") else "failed"), reason


def _run(job: dict, tests: dict, limits: Limits, status) -> SandboxResult:
    level = isolation_level()
    base = Path(tempfile.mkdtemp(prefix="phiforge-sandbox-")).resolve()  # the guard compares real paths
    try:
        work = base / "work"
        work.mkdir()
        job = {**job, "base": str(base), "workdir": str(work), "program": str(work / "main.py"),
               "isolated": level == "namespaces", "env": _env(work), "timeout_s": limits.timeout_s,
               "memory_mb": limits.memory_mb, "file_mb": limits.file_mb, "max_forks": limits.max_forks}
        start = time.perf_counter()
        with open(base / "stdout", "wb") as out, open(base / "stderr", "wb") as err:
            run = _launch(job, tests, out.fileno(), err.fileno())
        wall = time.perf_counter() - start
        stderr = _tail(base / "stderr")
        state, reason = status(run, stderr)
        return SandboxResult(state == "ok", state, run.exit_code, _tail(base / "stdout"), stderr, wall, level, reason)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_python(code: str, limits: Limits = Limits()) -> SandboxResult:
    """Run `code` as a script in a fresh sandbox; "ok" means it exited 0 (which the code decides: use
    run_check to verify a solution). Never raises because of what the code does."""
    return _run({"code": code}, {}, limits, _script_status)


def run_check(solution: str, test: str, entry_point: str, prompt: str = "", limits: Limits = Limits()) -> SandboxResult:
    """Verify `solution` against human-eval style tests: `test` defines check(candidate), called with the
    solution's `entry_point`. The tests run in a process of their own (with `prompt`'s helpers), the
    solution in another that never sees them; each call's arguments and answer cross as plain data, so
    passing needs right answers, whatever the solution does to its own process. Never raises because of
    what the code does."""
    return _run({"code": solution, "entry_point": entry_point}, {"test": test, "prompt": prompt}, limits, _check_status)


def run_many(codes: Sequence[str], limits: Limits = Limits(), workers: int | None = None) -> list[SandboxResult]:
    """Run each code in its own sandbox, `workers` at a time (default: one per CPU core); results in order."""
    return _parallel(lambda code: run_python(code, limits), codes, workers)


def run_checks(checks: Sequence[dict], limits: Limits = Limits(), workers: int | None = None) -> list[SandboxResult]:
    """run_check over dicts of its arguments (solution, test, entry_point, prompt), in parallel; in order."""
    return _parallel(lambda c: run_check(**c, limits=limits), checks, workers)


def _parallel(one, items: Sequence, workers: int | None) -> list[SandboxResult]:
    isolation_level()  # probe (and refuse) once before the threads start
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(one, items))
