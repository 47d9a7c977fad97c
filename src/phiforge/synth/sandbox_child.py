"""Runs inside the sandbox: confines itself, sets rlimits, installs the audit-hook guard, runs the program.

Started by sandbox.py as `python -I -B sandbox_child.py MODE WORKDIR PROGRAM REPORT_FD TIMEOUT_S MEMORY_MB
FILE_MB MAX_FORKS`; refused actions are written to the open file REPORT_FD. MODE is `isolated` (inside
fresh namespaces, see sandbox.py), `plain`, or `probe` (confine, then exit 0 only if a write outside WORKDIR
fails). The rlimits are set here rather than in a preexec_fn, which is unsafe in the threads run_many uses.
Standard library only: nothing the program could shadow is imported before the hook is in place.
"""

import ctypes
import math
import mmap
import os
import re
import resource
import runpy
import struct
import sys

MODE = sys.argv[1]
WORKDIR = os.path.realpath(sys.argv[2])
MB = 1 << 20
# mount(2) flags; a remount must repeat the flags the parent namespace locked (nosuid, nodev, ...).
MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
LOCKED = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}


def confine() -> None:
    """Make every mount read-only except WORKDIR, give a private /dev/shm, and move into WORKDIR.

    Done with mount(2) through ctypes rather than the mount program: one exec per mount point cost
    about 80 ms per run.
    """
    libc = ctypes.CDLL(None, use_errno=True)

    def mount(source, target: str, fstype, flags: int, data=None) -> bool:
        enc = lambda s: None if s is None else s.encode()  # noqa: E731
        return libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) == 0

    if not mount(WORKDIR, WORKDIR, None, MS_BIND):
        sys.exit(f"sandbox: cannot bind {WORKDIR} (errno {ctypes.get_errno()})")
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point != WORKDIR:  # a mount that refuses (rare pseudo file systems) stays as it was
            locked = sum(LOCKED.get(opt, 0) for opt in fields[5].split(","))
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | locked)
    if os.path.isdir("/dev/shm"):
        mount("tmpfs", "/dev/shm", "tmpfs", LOCKED["nosuid"] | LOCKED["nodev"], "size=64m")
    os.chdir(WORKDIR)  # the old cwd is the directory under the bind mount, which is read-only now


def run_as_init() -> None:
    """In a new PID namespace this process is init, which ignores default-action signals (a segfault,
    SIGXCPU): the program runs in a child, and init exits with its status, 128 + signal if killed."""
    pid = os.fork()
    if pid:
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        os._exit(code if code >= 0 else 128 - code)


if MODE == "probe":
    confine()
    try:
        open(sys.argv[3], "w").close()
    except OSError:
        sys.exit(0)
    sys.exit(1)
if MODE == "isolated":
    confine()
    run_as_init()

PROGRAM = sys.argv[3]
REPORT_FD = int(sys.argv[4])
TIMEOUT_S, MEMORY_MB, FILE_MB, MAX_FORKS = float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
ALLOWED_WRITES = {os.devnull}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

# Events that change the file system, with the argument positions that hold paths.
FILE_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
    "os.mkfifo": (0,), "os.mknod": (0,), "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,),
}
# Anything that starts another program escapes this hook, so it is refused outright.
SPAWN_EVENTS = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "os.forkpty"}
NET_EVENTS = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"}

# Fork count shared by the whole process tree (anonymous shared memory survives fork), so a fork bomb
# stops after MAX_FORKS processes in total rather than MAX_FORKS per generation.
forks = mmap.mmap(-1, 8)


class SandboxViolation(BaseException):
    """BaseException so that a program's `except Exception` does not swallow it."""


def inside(path) -> bool:
    if isinstance(path, int):  # an already open file descriptor: opening it was checked
        return True
    real = os.path.realpath(os.fsdecode(path))
    return real in ALLOWED_WRITES or real == WORKDIR or real.startswith(WORKDIR + os.sep)


def block(event: str, args: tuple) -> None:
    os.write(REPORT_FD, f"{event} {args!r}"[:300].encode("utf-8", "replace") + b"\n")
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
        if count >= MAX_FORKS:
            block(event, (count,))
        forks[:8] = struct.pack("q", count + 1)
    elif event in ("os.kill", "os.killpg") and args[0] != os.getpid():
        block(event, args)


cpu = math.ceil(TIMEOUT_S)
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (MEMORY_MB * MB, MEMORY_MB * MB))
resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_MB * MB, FILE_MB * MB))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
sys.addaudithook(guard)
sys.argv = [PROGRAM]
sys.path.insert(0, WORKDIR)  # as `python main.py` would (-I leaves it out)
runpy.run_path(PROGRAM, run_name="__main__")
