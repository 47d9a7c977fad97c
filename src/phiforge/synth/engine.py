"""Generating one dataset type into shards, with provenance, resumable shard by shard.

Samples are processed in shards of `shard_size`. A shard is written atomically once all its
samples went through the workflow, so a killed run loses at most the shard in flight, and the
request cache (generation/cache.py) makes redoing that shard free for requests that had finished.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from phiforge.files import read_jsonl, write_json, write_jsonl
from phiforge.generation.base import Backend, Sampling
from phiforge.synth import dataset as ds
from phiforge.synth.generators import GENERATORS
from phiforge.synth.workflow import Sample, Workflow
from phiforge.progress import bar_label

log = logging.getLogger("phiforge")


@dataclass(frozen=True)
class ShardStats:
    made: int
    kept: int
    dropped: dict[str, int]


def origin_samples(dtype: ds.DatasetType, count: int, seed: int, seeds: list[dict]) -> list[Sample]:
    """The first fields of each sample: from the programmatic generator, or one seed each (cycled)."""
    if dtype.generator is not None:
        return [{**g, "seed_id": g["id"], "seed_source": f"generator:{dtype.generator.kind}"} for g in GENERATORS[dtype.generator.kind](count, seed)]
    fitting = [s for s in seeds if s["kind"] in dtype.seeds.kinds and dtype.seeds.min_chars <= len(s["text"]) <= dtype.seeds.max_chars]
    if not fitting:
        return []
    return [
        {"seed": s["text"], "seed_id": s["id"], "seed_source": s["source"]}
        for s in (fitting[i % len(fitting)] for i in range(min(count, len(fitting))))
    ]


def render_record(dtype: ds.DatasetType, sample: Sample, index: int, backend: Backend | None) -> dict:
    """The stored sample: its text and/or conversation, every field, and its lineage."""
    fields = {k: v for k, v in sample.items() if not k.startswith("_")}
    record: dict = {"id": f"{dtype.name}-{index:07d}", "dataset": dtype.name}
    if dtype.output.text is not None:
        record["text"] = ds.render(dtype.output.text, fields, dtype.name, "output.text")
    if dtype.output.messages is not None:
        record["messages"] = [
            {"role": m.role, "content": ds.render(m.content, fields, dtype.name, f"output.messages[{j}]")}
            for j, m in enumerate(dtype.output.messages)
        ]
    record["fields"] = fields
    record["provenance"] = {
        "dataset": dtype.name,
        "seed": {"id": sample.get("seed_id"), "source": sample.get("seed_source")},
        "teacher": backend.model if backend is not None and any(t.get("teacher") for t in sample.get("_trace", [])) else None,
        "steps": sample.get("_trace", []),
        "verifier": sample.get("_verdict"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return record


def generate_dataset(
    dtype: ds.DatasetType,
    count: int,
    out_dir: Path,
    backend: Backend | None,
    sampling: Sampling,
    seed: int,
    seeds: list[dict],
    shard_size: int = 64,
) -> ShardStats:
    """Write `out_dir/shard_NNNNN.jsonl` (+ `.stats.json`); finished shards are kept, not redone."""
    samples = origin_samples(dtype, count, seed, seeds)
    if not samples:
        log.warning("synth %s: no seeds fit (kinds %s, %d-%d chars); nothing generated", dtype.name,
                    dtype.seeds.kinds if dtype.seeds else "-", dtype.seeds.min_chars if dtype.seeds else 0,
                    dtype.seeds.max_chars if dtype.seeds else 0)
    workflow = Workflow(dtype, backend, sampling)
    shards = [samples[i : i + shard_size] for i in range(0, len(samples), shard_size)]
    with Progress(TextColumn(bar_label(f"synth {dtype.name}")), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("", total=len(samples))
        for k, shard in enumerate(shards):
            stats_path = out_dir / f"shard_{k:05d}.stats.json"
            if not stats_path.is_file():
                workflow.run(shard)
                kept = [render_record(dtype, s, k * shard_size + j, backend) for j, s in enumerate(shard) if "_dropped" not in s]
                dropped: dict[str, int] = {}
                for s in shard:
                    if "_dropped" in s:
                        reason = s["_dropped"].split(":")[0]
                        dropped[reason] = dropped.get(reason, 0) + 1
                write_jsonl(out_dir / f"shard_{k:05d}.jsonl", kept)
                write_json(stats_path, {"made": len(shard), "kept": len(kept), "dropped": dropped})
            bar.advance(task, len(shard))
    return collect_stats(out_dir)


def collect_stats(out_dir: Path) -> ShardStats:
    made, kept, dropped = 0, 0, {}
    for p in sorted(out_dir.glob("shard_*.stats.json")):
        s = json.loads(p.read_text())
        made, kept = made + s["made"], kept + s["kept"]
        for k, v in s["dropped"].items():
            dropped[k] = dropped.get(k, 0) + v
    return ShardStats(made, kept, dropped)


def read_records(out_dir: Path) -> Iterable[dict]:
    for p in sorted(out_dir.glob("shard_*.jsonl")):
        yield from read_jsonl(p)
