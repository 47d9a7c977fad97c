"""The sandbox contains what generated code may do, and reports it as a failed run; the caller goes on.

Every containment test runs in both modes where both contain it: with namespaces (where this machine allows
them) and in the weak fallback that rests on rlimits and the audit hook alone; what only the namespaces
contain (native code past the hook) is tested with them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from phiforge.errors import UserError
from phiforge.synth import sandbox
from phiforge.synth.sandbox import CHILD, Limits, run_many, run_python

SHORT = Limits(timeout_s=2.0)


@pytest.fixture
def isolated() -> None:
    if not sandbox.isolation():
        pytest.skip("this machine does not allow unprivileged user namespaces")


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


def test_weak_isolation_is_refused_unless_allowed(monkeypatch):
    monkeypatch.setattr(sandbox, "isolation", lambda: False)
    monkeypatch.setattr(sandbox, "_weak_allowed", False)
    with pytest.raises(UserError, match="allow_weak_isolation"):
        run_python("print(1)")
    sandbox.allow_weak_isolation(True)
    assert run_python("print(1)").isolation == "weak"


def test_the_file_size_limit_is_the_runs_total(isolated):
    code = "for i in range(5):\n    open(f'f{i}', 'wb').write(bytes(6 * 1024 * 1024))\n"
    r = run_python(code, Limits(file_mb=8))
    assert not r.passed and "No space left on device" in r.stderr
    shm = (  # /dev/shm is in the same total (written natively: the hook refuses writes outside the run directory)
        "import ctypes, os\nopen('big', 'wb').write(bytes(6 * 1024 * 1024))\nlibc = ctypes.CDLL(None)\n"
        "fd = libc.open(b'/dev/shm/big', os.O_CREAT | os.O_WRONLY, 0o644)\n"
        "print(fd, libc.write(fd, bytes(6 * 1024 * 1024), 6 * 1024 * 1024))\n"
    )
    fd, written = map(int, run_python(shm, Limits(file_mb=8)).stdout.split())
    assert fd >= 0 and written < 3 * 1024 * 1024


def test_the_callers_environment_is_out_of_reach(mode, monkeypatch):
    monkeypatch.setenv("PHIFORGE_TEST_SECRET", "sk-secret-456")
    code = f"print(open('/proc/{os.getpid()}/environ', 'rb').read())\n"
    r = run_python(code)
    assert not r.passed and "sk-secret-456" not in r.stdout


def test_native_code_cannot_read_the_callers_environment(isolated, monkeypatch):
    monkeypatch.setenv("PHIFORGE_TEST_SECRET", "sk-secret-456")
    code = (f"import ctypes\nlibc = ctypes.CDLL(None)\nfd = libc.open(b'/proc/{os.getpid()}/environ', 0)\n"
            "buf = ctypes.create_string_buffer(1 << 16)\nprint(fd, libc.read(fd, buf, 1 << 16), buf.value[:2000])\n")
    r = run_python(code)
    assert r.passed and "sk-secret-456" not in r.stdout, r.stdout


def test_name_lookups_are_refused(mode):
    r = run_python("import socket\nprint(socket.getaddrinfo('localhost', 80))\n")
    assert (r.passed, r.status) == (False, "blocked")


def test_native_connect_to_a_local_listener_gets_nowhere(isolated):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        code = (
            "import ctypes, socket, struct\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"addr = struct.pack('!HH4s8x', socket.AF_INET, {port}, socket.inet_aton('127.0.0.1'))\n"
            "addr = struct.pack('H', socket.AF_INET) + addr[2:]\n"
            "fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)\n"
            "print(libc.connect(fd, addr, len(addr)), ctypes.get_errno())\n"
        )
        r = run_python(code)
        assert r.stdout.startswith("-1")
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_the_callers_processes_cannot_be_signalled(mode):
    with subprocess.Popen(["sleep", "30"]) as victim:
        try:
            r = run_python(f"import os, signal\nos.kill({victim.pid}, signal.SIGKILL)\n")
            assert not r.passed
            native = run_python(f"import ctypes\nprint(ctypes.CDLL(None).kill({victim.pid}, 9))\n")
            assert victim.poll() is None or mode == "plain"  # native code past the hook: only namespaces stop it
            if mode == "isolated":
                assert native.stdout.startswith("-1")
        finally:
            victim.kill()


def test_dev_shm_writes_do_not_reach_the_host(mode):
    name = f"phiforge-test-{uuid.uuid4().hex}"
    run_python(f"open('/dev/shm/{name}', 'w').write('x')\n")
    assert not Path("/dev/shm", name).exists()


def test_a_setsid_child_does_not_outlive_the_run(mode):
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\nelse:\n    time.sleep(0.2)\n"
    r = run_python(code)
    assert r.passed
    assert wait_until_gone() == []


def test_the_read_only_file_system_cannot_be_remounted(isolated, tmp_path):
    target = tmp_path / "escaped.txt"
    code = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.mount(None, b'/', None, 32 | 4096, None), ctypes.get_errno())\n"  # MS_REMOUNT | MS_BIND
        f"print(libc.open({str(target).encode()!r}, 0o101, 0o644))\n"
    )
    r = run_python(code)
    assert r.stdout.splitlines()[0].startswith("-1")
    assert not target.exists()
