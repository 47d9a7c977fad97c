"""The run directory: one sub-directory per stage, each with a manifest once it is done.

A stage is `done` when its manifest.json exists, `partial` when its directory exists without one
(it was stopped; training stages resume from their last checkpoint), and `pending` otherwise.
A stage records the hash of its config and of its inputs when it starts; a rerun with a
different config refuses to mix the two rather than silently reusing stale results.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from phiforge import __version__
from phiforge.errors import UserError
from phiforge.files import write_json, write_text

Status = Literal["done", "partial", "pending"]

# stages that leave STAGE/model, in run order (a post-training stage without pairs leaves none)
TRAINING_STAGES = ("pretrain", "midtrain", "sft", "dpo", "judge_dpo", "hallucination")


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
                f"stage '{self.name}' has not finished in {self.run_dir} "
                f"(run `phiforge {self.name} RECIPE --run-dir {self.run_dir}` or `phiforge run`)"
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
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def write_manifest(
    stage: StageDir, config_hash: str, inputs: dict[str, str], result: StageResult, wall_time_s: float
) -> None:
    write_json(
        stage.manifest_path,
        {
            "stage": stage.name,
            "status": "done",
            "config_hash": config_hash,
            "inputs": inputs,
            "outputs": result.outputs,
            "metrics": result.metrics,
            "wall_time_s": round(wall_time_s, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "phiforge_version": __version__,
        },
    )


def append_metrics(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
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
