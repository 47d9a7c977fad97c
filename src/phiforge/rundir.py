"""The run directory: one sub-directory per stage, each with a manifest once it is done.

A stage is `done` when its manifest.json exists, `partial` when its directory exists without one
(it was stopped; training stages resume from their last checkpoint), and `pending` otherwise.
A stage records the hash of its config and of its inputs when it starts; a rerun with a
different config refuses to mix the two rather than silently reusing stale results.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from phiforge import __version__
from phiforge.errors import UserError
from phiforge.files import ensure_dir, full_disk_is_user_error, write_json, write_text

Status = Literal["done", "partial", "pending"]
FINAL_DIR = "final"  # in the run directory: a copy of the last model the run trained, written after its last stage


@dataclass
class StageDir:
    run_dir: Path
    name: str

    @property
    def path(self) -> Path:
        return self.run_dir / self.name

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def status(self) -> Status:
        if self.manifest_path.is_file():
            return "done"
        return "partial" if self.path.is_dir() else "pending"

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            raise UserError(
                f"stage '{self.name}' has not finished in {self.run_dir} (run `phiforge {self.name} RECIPE "
                f"--run-dir {self.run_dir}` or `phiforge run RECIPE --run-dir {self.run_dir}`)"
            )
        return json.loads(self.manifest_path.read_text())

    def begin(self, config_hash: str) -> None:
        """Claim the directory for this config; a partial run of another config is an error."""
        self.path.mkdir(parents=True, exist_ok=True)
        started = self.path / "started.json"
        if started.is_file():
            previous = json.loads(started.read_text())["config_hash"]
            if previous != config_hash:
                raise UserError(
                    f"{self.path} holds a partial run of a different config; "
                    f"delete that directory or choose another --run-dir"
                )
        else:
            write_json(started, {"config_hash": config_hash, "started": time.time()})


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)


def write_manifest(stage: StageDir, config_hash: str, inputs: dict[str, str], outputs: dict[str, str],
                   result: StageResult, wall_time_s: float) -> None:
    write_json(
        stage.manifest_path,
        {
            "stage": stage.name,
            "status": "done",
            "config_hash": config_hash,
            "inputs": inputs,
            "outputs": outputs,
            "metrics": result.metrics,
            "wall_time_s": round(wall_time_s, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "phiforge_version": __version__,
        },
    )


LOCK_FILE = ".phiforge.lock"  # in the run directory: held by the one process running stages there, holds its pid
_held: dict[Path, tuple[int, int]] = {}  # run directories this process holds: lock file descriptor, nesting depth


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process while stages run; another process gets a one-line error naming the holder.

    flock(2), so the kernel releases it when the holder dies: a killed run leaves no stale lock. Re-entrant
    within a process (`run` holds it around each stage's own hold).
    """
    key = Path(run_dir).resolve()
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            _held[key] = (fd, _held[key][1] - 1)
        return
    ensure_dir(key)
    fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"{run_dir} is in use by another phiforge process (pid {holder}); wait for it to "
                            "finish or stop it, or choose another --run-dir") from None
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)
        os.ftruncate(fd, len(pid))
        _held[key] = (fd, 1)
        try:
            yield
        finally:
            del _held[key]
    finally:
        os.close(fd)  # releases the lock


def _release_in_forked_child() -> None:
    # A forked child shares the lock's open file; closing its copy keeps an orphaned child (a worker that
    # outlives a killed run) from holding the run directory.
    for fd, _ in _held.values():
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_release_in_forked_child)


def append_metrics(path: Path, row: dict[str, Any]) -> None:
    with full_disk_is_user_error(path), open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill: everything after it is rewritten on resume
    return rows


def truncate_metrics(path: Path, after_step: int) -> None:
    """On resume, drop log rows past the checkpoint so the log matches the restored state."""
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= after_step]
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
