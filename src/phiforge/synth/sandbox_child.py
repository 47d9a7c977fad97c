"""The sandbox's fork server and the code that confines each run (started by sandbox.py).

`python -I -B sandbox_child.py FD` serves jobs over the SOCK_SEQPACKET socket FD: each message is a JSON job
with four file descriptors attached (stdout, stderr, the violation report, and the pipe its exit code goes
to); the server answers with the pid of the run's leader. The server only imports the standard library
and never runs submitted code, so every run starts from the same clean, pre-imported interpreter:

    server --fork--> leader: new session, the run's stdio, and (isolated jobs) new user, mount, network
                     and PID namespaces; waits and reports the exit code
      leader --fork--> program: (isolated) PID 1 of the new namespaces, read-only mounts except the run
                       directory; rlimits, the audit-hook guard, then the code as __main__

Standard library only, all imported before any run: nothing the code puts in its directory can shadow
a module the confinement uses. The rlimits apply to the program process (and what it forks) only.
"""

import atexit
import ctypes
import json
import math
import mmap
import os
import pkgutil  # noqa: F401 - runpy.run_path imports it; loaded once here instead of in every run
import re
import resource
import runpy
import signal
import socket
import struct
import sys
import threading
import traceback
from typing import Callable, NoReturn

MB = 1 << 20
# unshare(2) and mount(2) flags; a remount must repeat the flags the parent namespace locked.
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
LOCKED = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}
LIBC = ctypes.CDLL(None, use_errno=True)


def _c(s: str | None) -> bytes | None:
    return None if s is None else s.encode()


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> bool:
    return LIBC.mount(_c(source), _c(target), _c(fstype), flags, _c(data)) == 0


def enter_namespaces() -> None:
    """New user (mapped to the caller's ids), mount, network and PID namespaces; the next child is PID 1.

    Done with unshare(2) through ctypes (Python 3.11 has no os.unshare) so that no program is exec'd
    per run: the unshare and mount programs cost about 80 ms a run.
    """
    uid, gid = os.getuid(), os.getgid()
    if LIBC.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID) != 0:
        raise OSError(ctypes.get_errno(), "unshare failed: unprivileged user namespaces are not allowed here")
    for path, text in (("uid_map", f"0 {uid} 1"), ("setgroups", "deny"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{path}", "w") as f:
            f.write(text)


def confine(workdir: str) -> None:
    """In the new namespaces: fresh /proc, every mount read-only except `workdir`, private /dev/shm."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here propagates back out
    mount("proc", "/proc", "proc", LOCKED["nosuid"] | LOCKED["nodev"] | LOCKED["noexec"])
    if not mount(workdir, workdir, None, MS_BIND):
        raise OSError(ctypes.get_errno(), f"cannot bind {workdir}")
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point != workdir:  # a mount that refuses (rare pseudo file systems) stays as it was
            locked = sum(LOCKED.get(opt, 0) for opt in fields[5].split(","))
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | locked)
    if os.path.isdir("/dev/shm"):
        mount("tmpfs", "/dev/shm", "tmpfs", LOCKED["nosuid"] | LOCKED["nodev"], "size=64m")
    os.chdir(workdir)  # the old cwd is the directory under the bind mount, which is read-only now


class SandboxViolation(BaseException):
    """BaseException so that a program's `except Exception` does not swallow it."""


# Events that change the file system, with the argument positions that hold paths.
FILE_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
    "os.mkfifo": (0,), "os.mknod": (0,), "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,),
}
# Anything that starts another program escapes the hook, so it is refused outright.
SPAWN_EVENTS = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "os.forkpty"}
NET_EVENTS = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def install_guard(workdir: str, report_fd: int, max_forks: int) -> None:
    """The audit hook: refuse writes outside `workdir`, other programs, sockets, signals outside the run, and
    forks past `max_forks` in the whole process tree (counted in shared memory that forks inherit, so a
    fork bomb stops there rather than at max_forks per generation)."""
    forks = mmap.mmap(-1, 8)

    def inside(path) -> bool:
        if isinstance(path, int):  # an already open file descriptor: opening it was checked
            return True
        real = os.path.realpath(os.fsdecode(path))
        return real == os.devnull or real == workdir or real.startswith(workdir + os.sep)

    def own_group(target: int) -> bool:
        """kill(2)'s target (pid, 0 for our group, -pgid) lies in this run's process group."""
        try:
            group = os.getpgid(target) if target > 0 else -target if target < 0 else os.getpgrp()
        except OSError:  # no such process: the kill fails by itself
            return True
        return group == os.getpgrp()

    def block(event: str, args: tuple) -> None:
        os.write(report_fd, f"{event} {args!r}"[:300].encode("utf-8", "replace") + b"\n")
        raise SandboxViolation(f"sandbox: {event} is not allowed here")

    def guard(event: str, args: tuple) -> None:
        if event == "open":
            path, _mode, flags = args
            if flags & WRITE_FLAGS and path is not None and not inside(path):
                block(event, args)
        elif event in FILE_EVENTS:
            if any(args[i] is not None and not inside(args[i]) for i in FILE_EVENTS[event]):
                block(event, args)
        elif event in SPAWN_EVENTS or event in NET_EVENTS:
            block(event, args)
        elif event == "os.fork":
            (count,) = struct.unpack("q", forks[:8])
            if count >= max_forks:
                block(event, (count,))
            forks[:8] = struct.pack("q", count + 1)
        elif event in ("os.kill", "os.killpg") and not own_group(args[0] if event == "os.kill" else -args[0]):
            block(event, args)

    sys.addaudithook(guard)


def finish(code: int) -> NoReturn:
    """Exit as the interpreter would: join threads, run atexit hooks, flush; then leave without
    unwinding back into the server's frames."""
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run_program(job: dict, report_fd: int) -> NoReturn:
    cpu = math.ceil(job["timeout_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (job["memory_mb"] * MB, job["memory_mb"] * MB))
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["file_mb"] * MB, job["file_mb"] * MB))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    install_guard(job["workdir"], report_fd, job["max_forks"])
    sys.argv = [job["program"]]
    sys.path.insert(0, job["workdir"])  # as `python main.py` would (-I leaves it out)
    try:
        runpy.run_path(job["program"], run_name="__main__")
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException as e:  # noqa: BLE001 - the code's own error is the run's result
        sys.excepthook(type(e), e, e.__traceback__)
        code = 1
    finish(code)


def fork_and_wait(child: Callable[[], NoReturn]) -> int:
    """Run `child` (which never returns) in a new process; its exit code, 128 + signal if killed."""
    pid = os.fork()
    if pid == 0:
        child()
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return code if code >= 0 else 128 - code


def init(job: dict, report_fd: int) -> NoReturn:
    """Confine, then run the program as PID 1 of the new namespace (when it ends, all it started ends).

    PID 1 ignores signals whose action is the default unless the kernel forces them (a real segfault,
    SIGKILL), so SIGXCPU from RLIMIT_CPU gets a handler that exits as that signal would.
    """
    try:
        confine(job["workdir"])
    except OSError:
        traceback.print_exc()
        os._exit(1)
    if "probe" in job:  # exit 0 when a write outside the run directory fails
        try:
            open(job["probe"], "w").close()
        except OSError:
            os._exit(0)
        os._exit(1)
    signal.signal(signal.SIGXCPU, lambda *_: os._exit(128 + signal.SIGXCPU))
    run_program(job, report_fd)


def lead(job: dict, out: int, err: int, report: int, done: int) -> NoReturn:
    """The run's leader: stdio, environment, namespaces; reports the run's exit code on `done`."""
    code = 1
    try:
        os.setsid()  # the client kills the run as one process group
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.environ.clear()
        os.environ.update(job["env"])
        os.chdir(job["workdir"])
        if job["isolated"]:
            enter_namespaces()

        def child() -> NoReturn:
            os.close(done)  # the code must not be able to report an exit code of its choice
            if job["isolated"]:
                init(job, report)
            run_program(job, report)

        code = fork_and_wait(child)
    except BaseException:  # noqa: BLE001 - a setup failure is reported as this run's error
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os.write(done, str(code).encode())
        os._exit(0)


def serve(sock: socket.socket) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # leaders are reaped by the kernel; codes go by pipe
    while True:
        message, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
        if not message:  # the client closed its end
            return
        pid = os.fork()
        if pid == 0:
            sock.close()
            lead(json.loads(message), *fds)
        for fd in fds:
            os.close(fd)
        sock.send(str(pid).encode())


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
