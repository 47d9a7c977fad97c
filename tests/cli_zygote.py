"""The CLI with its imports already done: forks one child per command, so a test pays ~6 s of imports once.

Each command still runs in a process of its own, as a user's would: `phiforge.cli.main()` with the command's argv,
working directory, environment, stdout and stderr files and exit status; only the imports (torch, transformers,
datatrove and phiforge's modules, none of which starts a thread or computes at import) are shared. The parent
never runs a command, so no child inherits an OpenMP pool, a process group or a lock. Tests that need the real
start (the installed wheel, torchrun, Slurm, kill and resume) run `phiforge` as a fresh process instead.

Protocol: one JSON request per line on stdin ({"args", "cwd", "env", "stdout", "stderr"}), one JSON reply per line
on stdout ({"returncode"}) when that command has ended.
"""

from __future__ import annotations

import atexit
import json
import os
import sys


def preload() -> None:
    import phiforge.cli  # noqa: F401
    import phiforge.stages  # noqa: F401  every stage module and what it imports
    from transformers.models.phi3 import modeling_phi3  # noqa: F401  the model class checkpoints load as


def run_child(request: dict) -> int:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    sys.argv = ["phiforge", *request["args"]]
    from phiforge.cli import main

    try:
        main()
        code = 0
    except SystemExit as e:  # what the interpreter would make of it at exit
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # a real exit runs them; os._exit below would not
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve() -> None:
    preload()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = run_child(request)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
