"""Packed shards on disk: byte-identical after an interrupted pack resumes, memory-mapped, same rows as in memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import SMOKE, kill_9_when

from phiforge.data import shards
from phiforge.data.batches import batch_at
from phiforge.data.documents import DocRefs, write_documents
from phiforge.data.layouts import IGNORE, Examples, Stream, pack_stream
from phiforge.data.mixture import mix_documents
from phiforge.data.shards import INDEX, Packed, cached_packed, read_index, write_shards
from phiforge.errors import UserError
from phiforge.recipe import load_recipe

SHARD_TOKENS = 1024  # 31 rows of 33 tokens: the pack below has 6 shards


def corpus(seed: int = 0) -> dict[str, list[list[int]]]:
    rng = np.random.default_rng(seed)
    return {name: [rng.integers(1, 1000, int(n)).tolist() for n in rng.integers(0, size, docs)]
            for name, size, docs in (("web", 200, 40), ("code", 60, 120), ("math", 20, 300))}


def pack(directory: Path, seq_len: int = 32) -> None:
    """What the pretrain stage does: tokenised sources on disk, a seeded mixture, a stream cut into shards."""
    docs = corpus()
    sources = [write_documents(directory / "documents" / name, [(d, None)]) for name, d in docs.items()]
    pools = {name: DocRefs.whole(i, s.lengths) for i, (name, s) in enumerate(zip(docs, sources))}
    refs, draws = mix_documents(pools, {"web": 0.5, "code": 0.3, "math": 0.2}, 6000, seed=3)
    write_shards(directory, Stream(sources, refs, seq_len, eos_id=0, min_rows=150), SHARD_TOKENS, {"seed": 3})


def pack_sft(directory: Path) -> None:
    rng = np.random.default_rng(1)
    examples = [rng.integers(1, 1000, int(n)).tolist() for n in rng.integers(1, 50, 200)]
    labels = [[t if i % 3 else IGNORE for i, t in enumerate(e)] for e in examples]
    docs = write_documents(directory / "documents" / "sft", [(examples, labels)])
    write_shards(directory, Examples(docs, 32, pad_id=0), SHARD_TOKENS, {"seed": 1})


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def interrupt_after(monkeypatch, saves: int) -> None:
    """Make the next pack raise after `saves` shard files are written, as a crash mid-way would."""
    real, count = shards._save, [0]

    def save(path: Path, array: np.ndarray) -> None:
        if count[0] == saves:
            raise KeyboardInterrupt
        count[0] += 1
        real(path, array)

    monkeypatch.setattr(shards, "_save", save)


@pytest.mark.parametrize("build", [pack, pack_sft])
def test_interrupted_pack_resumes_to_the_same_bytes(tmp_path, monkeypatch, build):
    build(tmp_path / "whole")
    whole = files(tmp_path / "whole")
    assert len(read_index(tmp_path / "whole")["shards"]) > 3
    assert not (tmp_path / "whole" / "documents").exists()  # tokenised sources go once the shards are complete

    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            build(tmp_path / "cut")
    cut = tmp_path / "cut"
    assert not (cut / INDEX).exists() and (cut / "documents").is_dir()
    kept = {name: data for name, data in files(cut).items() if name.endswith(".npy")}
    assert kept and all(whole[name] == data for name, data in kept.items())  # whole files only
    finished = {n for n in kept if n.startswith("shard_")}
    finished |= {n.replace("shard_", "labels_") for n in finished}

    written = []
    real = shards._save
    monkeypatch.setattr(shards, "_save", lambda path, array: (written.append(path.name), real(path, array)))
    build(cut)
    assert files(cut) == whole
    assert finished and not set(written) & finished  # finished shards were skipped, not rewritten


def test_sigkilled_pack_resumes_to_the_same_bytes(tmp_path):
    pack(tmp_path / "whole")
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from phiforge.data import shards
        import test_shards
        real = shards._save
        def slow(path, array):
            real(path, array)
            time.sleep(0.3)
        shards._save = slow
        test_shards.pack(Path({str(tmp_path / "cut")!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    kill_9_when(proc, (tmp_path / "cut" / "shard_00002.npy").exists, "the pack ended before it could be killed", 120)
    assert not (tmp_path / "cut" / INDEX).exists()
    pack(tmp_path / "cut")
    assert files(tmp_path / "cut") == files(tmp_path / "whole")


def test_shards_are_memory_mapped_and_rows_match_the_in_memory_pack(tmp_path):
    pack(tmp_path)
    data = Packed.load(tmp_path)
    assert len(data.tokens) == 6 and all(isinstance(s, np.memmap) and s.dtype == np.uint32 for s in data.tokens)
    index = read_index(tmp_path)
    assert index["rows"] == len(data) == sum(s["rows"] for s in index["shards"]) and index["seq_len"] == 32

    # The same mixture packed in memory as one array: the shards, end to end, are that array.
    docs = corpus()
    pools = {n: DocRefs.whole(i, np.array([len(d) for d in ds])) for i, (n, ds) in enumerate(docs.items())}
    refs, _ = mix_documents(pools, {"web": 0.5, "code": 0.3, "math": 0.2}, 6000, seed=3)
    flat = [d for ds in docs.values() for d in ds]
    starts = np.cumsum([0, *map(len, docs.values())])
    mixed = [flat[starts[s] + d] for s, d in zip(refs.source.tolist(), refs.doc.tolist())]
    memory = pack_stream(mixed, 32, eos_id=0, min_rows=150)
    assert np.array_equal(np.concatenate(data.tokens), memory.tokens[0])
    boundary = [30, 31, 32, 61, 62, 0, len(data) - 1]  # rows either side of shard edges
    assert np.array_equal(data.rows(boundary)[0], memory.tokens[0][boundary])
    for step in range(12):  # batches draw rows from every shard, in the order the in-memory pack gives
        a, b = batch_at(data, step, 8, seed=5), batch_at(memory, step, 8, seed=5)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_sft_shards_keep_labels(tmp_path):
    pack_sft(tmp_path)
    data = Packed.load(tmp_path)
    assert data.labels is not None and all(isinstance(s, np.memmap) and s.dtype == np.int32 for s in data.labels)
    tokens, labels = data.rows(range(len(data)))
    kept = labels != IGNORE
    assert kept.any() and np.array_equal(tokens[kept], labels[kept])
    # position ids restart at every example: as many restarts as examples, plus a row's trailing padding
    positions = data.position_rows(range(len(data)))
    assert positions.shape == tokens.shape and (positions[:, 0] == 0).all()
    assert 200 <= (positions == 0).sum() <= 200 + len(data)


def test_a_different_plan_starts_afresh(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            pack(tmp_path / "cut", seq_len=32)
    pack(tmp_path / "cut", seq_len=40)  # same sources, other rows: nothing of the old pack may survive
    pack(tmp_path / "whole", seq_len=40)
    assert files(tmp_path / "cut") == files(tmp_path / "whole")


def test_load_without_index_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="index.json missing"):
        Packed.load(tmp_path)


def test_shard_tokens_is_validated(tmp_path):
    data = yaml.safe_load(SMOKE.read_text())
    data["pretrain"]["shard_tokens"] = 10
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="pretrain.shard_tokens"):
        load_recipe(recipe)


def test_cached_packed_builds_once_and_then_maps_the_shards(tmp_path):
    built = []
    first = cached_packed(tmp_path / "data", lambda d: (built.append(d), pack(d)))
    (tmp_path / "data" / "documents").mkdir()  # left by a pack killed just after its index: cleared, not rebuilt
    again = cached_packed(tmp_path / "data", lambda d: (built.append(d), pack(d)))
    assert built == [tmp_path / "data"] and not (tmp_path / "data" / "documents").exists()
    assert len(again) == len(first) and np.array_equal(again.rows([0, 40])[0], first.rows([0, 40])[0])
