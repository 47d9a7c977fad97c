"""A real one-node Slurm for the tests: munged, slurmctld and slurmd on localhost, all state in a temp dir.

Debian's slurm-wlm and munge provide the daemons (`.ci/run` installs them). The configuration is the least
a cluster needs: no cgroups (linuxproc process tracking, no task plugin), no accounting, this machine's
CPUs and memory as one node in one partition, and a scheduler pass every second so chained jobs start
without the default minute's wait.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

DAEMONS = ("munged", "slurmctld", "slurmd")
PARTITION = "debug"
INSTALL = "apt-get install slurm-wlm munge"


def missing_daemons() -> list[str]:
    # the daemons live in /usr/sbin, which a non-root PATH may lack
    return [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).is_file()]


def _daemon(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Slurm:
    root: Path
    env: dict[str, str]  # SLURM_CONF pointing at this cluster

    def command(self, *args: str) -> str:
        proc = subprocess.run(args, capture_output=True, text=True, env=self.env, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def job_state(self, job: str) -> str:
        """COMPLETED, FAILED, RUNNING, PENDING... (finished jobs stay known for MinJobAge seconds)."""
        out = self.command("scontrol", "show", "job", "-o", job)
        return next(f.split("=", 1)[1] for f in out.split() if f.startswith("JobState="))

    def wait_all(self, timeout: float, job_logs: Path | None = None) -> None:
        """Until the queue is empty; a job left pending on a failed dependency is an error with the logs (the
        daemons', and the jobs' `*.out` files under job_logs)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            queue = self.command("squeue", "-h", "-o", "%i %T %r").split("\n")
            queue = [line for line in queue if line.strip()]
            if not queue:
                return
            if any("DependencyNeverSatisfied" in line for line in queue):
                raise AssertionError(f"a Slurm job failed, so its dependents never start: {queue}\n{self.logs(job_logs)}")
            time.sleep(1)
        raise AssertionError(f"Slurm jobs still queued after {timeout:.0f} s: {queue}\n{self.logs(job_logs)}")

    def logs(self, job_logs: Path | None = None) -> str:
        files = sorted(self.root.glob("*.log")) + (sorted(job_logs.rglob("*.out")) if job_logs else [])
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in files)


def _config(root: Path, munge_socket: Path) -> str:
    # `slurmd -C`: this machine's node line (name, CPUs, sockets, cores, threads, RealMemory) as slurmd sees it
    node = subprocess.run([_daemon("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    host = node.split()[0].split("=", 1)[1]
    return f"""\
ClusterName=phiforge-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
MpiDefault=none
ReturnToService=2
KillWait=5
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        proc.terminate()
    for proc in reversed(procs):
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running(root: Path) -> Iterator[Slurm]:
    """Start munged, slurmctld and slurmd in the foreground (so they are our children), wait for an idle node."""
    for d in ("state", "spool"):
        (root / d).mkdir(parents=True)
    munge_socket = root / "munge.socket"
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = root / "slurm.conf"
    conf.write_text(_config(root, munge_socket))
    env = dict(os.environ, SLURM_CONF=str(conf))
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [_daemon("munged"), "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
             f"--log-file={root / 'munged.log'}", f"--pid-file={root / 'munged.pid'}",
             f"--seed-file={root / 'munged.seed'}"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        for name in ("slurmctld", "slurmd"):
            procs.append(subprocess.Popen([_daemon(name), "-D", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.STDOUT))
        cluster = Slurm(root, env)
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline:
            if any(p.poll() is not None for p in procs):
                raise AssertionError(f"a Slurm daemon exited at start:\n{cluster.logs()}")
            state = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, env=env).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the Slurm node is not idle after 60 s (state {state!r}):\n{cluster.logs()}")
        yield cluster
    finally:
        _stop(procs)
