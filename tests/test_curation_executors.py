"""The curation pipeline on datatrove's Ray executor (a local `ray.init()`) and Slurm executor (the one-node
Slurm of tests/slurm_cluster.py) keeps the same documents and writes the same stats as the local executor."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest

from phiforge.data.curation import curate
from phiforge.recipe import load_curation
from slurm_cluster import PARTITION
from test_curation import FRENCH, english, read_curated, write_config


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny input with what the stages act on: an exact duplicate (in the other file, so the other task), a second
    language, a document too short."""
    root = tmp_path_factory.mktemp("executors")
    rng = random.Random(5)
    docs = [{"id": f"doc-{i}", "text": english(rng)} for i in range(6)]
    docs += [{"id": "dup", "text": docs[0]["text"]}, {"id": "fr", "text": FRENCH * 3}, {"id": "short", "text": "Too short."}]
    (root / "in").mkdir()
    for name, part in (("a", docs[:4]), ("b", docs[4:])):  # one file a task
        (root / "in" / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in part))
    return root


def run(source, executor: str, **settings):
    config = load_curation(write_config(source / f"{executor}.yaml", {
        "inputs": [{"name": "a", "kind": "jsonl", "path": "in"}],
        "filters": {"keep_languages": ["en", "fr"]},
        "dedup": {"exact": True, "minhash": False},
        "classifier": {"enabled": False},
        "tasks": 2, "workers": 2, "executor": executor, **settings,
    }))
    out = source / f"out-{executor}"
    return out, curate(config, out)


def outcome(out):
    """Kept documents and stats, with this output directory's own path taken out of them."""
    text = json.dumps({"docs": read_curated(out), "stats": json.loads((out / "stats.json").read_text())}, sort_keys=True)
    return json.loads(text.replace(str(out), "OUT"))


@pytest.fixture(scope="module")
def local(source):
    out, stats = run(source, "local")
    assert stats["output"] == {"en": 6, "fr": 1}  # the duplicate and the short document are gone
    return outcome(out)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20)
    yield
    ray.shutdown()


def test_ray_executor_gives_the_local_output(source, local, ray_cluster):
    out, stats = run(source, "ray")
    assert stats is not None
    assert outcome(out) == local


def test_slurm_executor_gives_the_local_output(source, local, slurm, monkeypatch):
    # as from `.venv/bin/phiforge curate` with the venv not activated: its bin is not on PATH
    here = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != here))
    out, stats = run(source, "slurm", slurm_partition=PARTITION, slurm_time="00:10:00")
    assert stats is None  # submitted: the jobs finish later
    slurm.wait_all(timeout=600, job_logs=out / "work" / "logs")
    assert (out / "stats.json").is_file(), slurm.logs(out / "work" / "logs")
    assert outcome(out) == local
