"""The sandbox contains what generated code may do, and reports it as a failed run; the caller goes on.

Every containment test runs in both modes: with namespaces (where this machine allows them) and in the
fallback that rests on rlimits and the audit hook alone.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from phiforge.synth import sandbox
from phiforge.synth.sandbox import CHILD, Limits, run_many, run_python

SHORT = Limits(timeout_s=2.0)


@pytest.fixture(params=["isolated", "plain"])
def mode(request, monkeypatch) -> str:
    if request.param == "isolated" and not sandbox.isolation():
        pytest.skip("this machine does not allow unprivileged user namespaces")
    if request.param == "plain":
        monkeypatch.setattr(sandbox, "isolation", lambda: False)
    return request.param


def sandbox_processes() -> list[str]:
    """Processes of runs still alive: forks of this checkout's sandbox server, other than the server."""
    found = []
    server = str(sandbox._server.proc.pid)
    for pid in filter(str.isdigit, (p.name for p in Path("/proc").iterdir())):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(CHILD) in cmdline and pid != server:
            found.append(pid)
    return found


def wait_until_gone() -> list[str]:
    for _ in range(50):  # killed processes take a moment to leave the process table
        if not (left := sandbox_processes()):
            return left
        time.sleep(0.1)
    return sandbox_processes()


def test_correct_code_passes(mode):
    r = run_python("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('fine')\n")
    assert (r.passed, r.status, r.exit_code) == (True, "ok", 0)
    assert r.stdout.strip() == "fine"


def test_wrong_code_fails(mode):
    r = run_python("def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n")
    assert (r.passed, r.status, r.exit_code) == (False, "failed", 1)
    assert "AssertionError" in r.stderr


def test_infinite_loop_times_out(mode):
    r = run_python("while True:\n    pass\n", SHORT)
    assert (r.passed, r.status) == (False, "timeout")
    assert wait_until_gone() == []


def test_fork_bomb_is_contained(mode):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except BaseException:\n        pass\n"
    r = run_python(bomb, SHORT)
    assert not r.passed and r.status == "blocked"
    assert wait_until_gone() == []


def test_ten_gigabytes_is_a_memory_error(mode):
    r = run_python("x = bytearray(10 * 1024**3)\nprint(len(x))\n")
    assert (r.passed, r.status) == (False, "memory")


def test_write_outside_the_run_directory_does_not_land(mode, tmp_path):
    target = tmp_path / "escaped.txt"
    r = run_python(f"open({str(target)!r}, 'w').write('gotcha')\n")
    assert not r.passed and r.status == "blocked"
    assert not target.exists()


def test_rm_rf_leaves_the_canary(mode, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "canary.txt").write_text("alive")
    for code in (f"import os\nos.system('rm -rf {victim}')\n", f"import shutil\nshutil.rmtree({str(victim)!r})\n"):
        r = run_python(code)
        assert not r.passed and r.status == "blocked"
    assert (victim / "canary.txt").read_text() == "alive"


def test_native_code_past_the_hook_meets_the_kernel(tmp_path):
    """ctypes bypasses the audit hook; with namespaces the file system outside is still read-only."""
    if not sandbox.isolation():
        pytest.skip("this machine does not allow unprivileged user namespaces")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "canary.txt").write_text("alive")
    r = run_python(f"import ctypes\nassert ctypes.CDLL(None).system(b'rm -rf {victim}') == 0\n")
    assert not r.passed and "Read-only file system" in r.stderr
    assert (victim / "canary.txt").read_text() == "alive"


def test_socket_to_a_local_listener_receives_nothing(mode):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'leak')\n"
        r = run_python(code)
        assert not r.passed and r.status == "blocked"
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing is waiting to be accepted
            listener.accept()


def test_secrets_in_the_environment_do_not_reach_the_code(mode, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    r = run_python("import os, sys\nprint(sorted(os.environ))\nprint(sys.path)\n")
    assert r.passed
    assert "OPENAI_API_KEY" not in r.stdout and "/somewhere" not in r.stdout


def test_run_many_keeps_order_and_isolates_runs():
    codes = [
        "open('state.txt', 'w').write('x')",
        "import os\nassert not os.path.exists('state.txt')",  # each run has its own directory
        "raise SystemExit(3)",
    ]
    results = run_many(codes * 2, workers=2)
    assert [r.status for r in results] == ["ok", "ok", "failed"] * 2
    assert results[2].exit_code == 3
