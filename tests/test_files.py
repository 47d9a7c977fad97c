"""Output paths: nothing of the user's is deleted or half-written, and a full disk is one line naming the path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import phiforge
from phiforge.errors import UserError
from phiforge.files import OUTPUT_MARKER, atomic_path, remove_stale_temporaries, write_jsonl, write_text, write_with
from phiforge.generation.base import Sampling
from phiforge.generation.cache import CachedBackend
from phiforge.generation.fake import FakeBackend
from phiforge.train.checkpoint import Checkpointer, TrainState


def test_decontaminate_onto_an_existing_directory_refuses_and_deletes_nothing(tmp_path):
    docs = tmp_path / "in.jsonl"
    docs.write_text(json.dumps({"text": "a plain document about rivers and hills"}) + "\n")
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"prompt": "Return the largest prime factor of the given integer, assuming that the "
                                           "integer is greater than one and is not itself a prime"}) + "\n")
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "thesis.tex").write_text("years of work")
    proc = phiforge("decontaminate", docs, "--against", bench, "--out", mine, "--report", tmp_path / "r.json", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {mine} is a directory that phiforge did not write; it is left as it is: "
        "move it away or choose another output path")
    assert (mine / "sub" / "thesis.tex").read_text() == "years of work"
    assert not (tmp_path / "r.json").exists()


def test_files_are_replaced_and_only_directories_phiforge_wrote(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    write_text(target, "new")  # a file in the way is replaced, as any writer would
    assert target.read_text() == "new"

    model = tmp_path / "model"
    write_with(model, lambda tmp: (tmp.mkdir(), (tmp / "weights").write_text("v1")))
    assert (model / OUTPUT_MARKER).is_file()
    write_with(model, lambda tmp: (tmp.mkdir(), (tmp / "weights").write_text("v2")))  # its own: replaced
    assert (model / "weights").read_text() == "v2"

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes").write_text("keep")
    with pytest.raises(UserError, match="did not write"):
        write_text(theirs, "x")
    with pytest.raises(UserError, match="a file or a link, and phiforge writes a directory"):
        write_with(target, lambda tmp: tmp.mkdir())
    with pytest.raises(UserError, match="a file is in the way"):
        write_text(target / "child.txt", "x")
    assert (theirs / "notes").read_text() == "keep" and target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out.txt", "theirs"]  # no temporaries left


def test_stale_temporaries_go_and_nothing_else(tmp_path):
    with pytest.raises(KeyboardInterrupt):  # a write interrupted inside atomic_path cleans up after itself
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    # SIGKILL gives no such chance: what it leaves is removed on resume, and only that
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    stale = Path(tempfile.mkdtemp(prefix=".step_0000050.", suffix=".tmp", dir=ckpt))
    (stale / "state.pt").write_bytes(b"\0" * 1000)
    deep = Path(tempfile.mkdtemp(prefix=".shard_00001.npy.", suffix=".tmp", dir=tmp_path))
    kept = [tmp_path / ".cache", tmp_path / "notes.tmp", tmp_path / ".notes.tmp"]
    kept[0].mkdir()
    kept[1].mkdir()
    kept[2].write_text("a user's file")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([stale, deep])
    assert all(p.exists() for p in kept) and list(ckpt.iterdir()) == []


# --- a full disk: a 2 MiB tmpfs -----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"a full disk needs a small tmpfs, and mount was refused: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("writer", ["torch", "jsonl", "checkpoint"])
def test_a_full_disk_is_one_line_naming_the_path_and_leaves_the_old_file(small_disk, writer):
    big = torch.zeros(1 << 20)  # 4 MiB
    path = small_disk / ("state.pt" if writer == "torch" else "rows.jsonl" if writer == "jsonl" else "checkpoints")
    with pytest.raises(UserError) as e:
        if writer == "torch":
            write_text(path, "the old state")
            write_with(path, lambda tmp: torch.save(big, tmp))
        elif writer == "jsonl":
            write_text(path, "the old state")
            write_jsonl(path, ({"text": "x" * 1000} for _ in range(4000)))
        else:
            model = torch.nn.Linear(1024, 640)  # 2.5 MiB of weights
            optimizer = torch.optim.AdamW(model.parameters())
            state = TrainState(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), step=3)
            Checkpointer(path, keep=2).save(state)
    target = path / "step_0000003" if writer == "checkpoint" else path
    assert str(e.value) == (f"no space left on device while writing {target}; free some space there and rerun "
                            "the same command (what was finished is kept)")
    if writer == "checkpoint":
        assert list(path.iterdir()) == []  # no partial checkpoint, no temporary
    else:
        assert path.read_text() == "the old state" and [p.name for p in small_disk.iterdir()] == [path.name]


def test_a_full_disk_under_the_request_cache_is_one_line(small_disk):
    cache = CachedBackend(FakeBackend(lambda messages, sampling, i: "y" * 4000), small_disk / "requests.sqlite")
    with pytest.raises(UserError, match=f"^no space left on device while writing {small_disk / 'requests.sqlite'};"):
        cache.chat([[{"role": "user", "content": f"q{i}"}] for i in range(1000)], Sampling())


def test_a_full_disk_outside_the_atomic_writers_is_one_line_too():
    # Simulated (an append to a log, say): the CLI's boundary turns ENOSPC into one line with the file's name.
    code = ("import errno, phiforge.cli as c\n"
            "def full(): raise OSError(errno.ENOSPC, 'No space left on device', '/runs/x/metrics.jsonl')\n"
            "c.app = full\nc.main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: no space left on device while writing /runs/x/metrics.jsonl; free some "
                                   "space there and rerun the same command (what was finished is kept)")


def test_a_damaged_checkpoint_is_skipped_for_the_one_before(tmp_path, caplog):
    def state(step: int) -> TrainState:
        torch.manual_seed(step)
        model = torch.nn.Linear(8, 4)
        optimizer = torch.optim.AdamW(model.parameters())
        return TrainState(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), step=step)

    ckpt = Checkpointer(tmp_path / "checkpoints", keep=2)
    saved = state(10)
    ckpt.save(saved)
    ckpt.save(state(20))
    for shard in (tmp_path / "checkpoints" / "step_0000020").glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:40])  # a disk error or a kill mid-copy cut the data
    restored = state(0)
    assert ckpt.restore_latest(restored) == 10 and restored.step == 10
    assert torch.equal(restored.model.weight, saved.model.weight)
    assert "step_0000020 unreadable" in caplog.text
