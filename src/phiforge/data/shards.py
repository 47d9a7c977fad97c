"""Packed training rows on disk: shards written resumably, read back memory-mapped.

A packed dataset is a directory of shards, each a (rows, seq_len + 1) uint32 token array
(`shard_00000.npy`, ...) plus, for SFT, an int32 label array of the same shape (`labels_00000.npy`)
where -100 marks positions that carry no loss, and the int32 position ids of each example (`positions_00000.npy`:
they restart at 0 where an example starts, so the model attends within examples only). `index.json`, written last, lists the shards and says
the pack is complete. Shards are memory-mapped when read, so training never holds the dataset in RAM.

Packing is resumable: any shard is a pure function of the layout (data/layouts.py) and its row range, so a
killed pack keeps its finished shards and builds only the missing ones, with the same bytes an uninterrupted
pack writes.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from phiforge import distributed
from phiforge.errors import UserError
from phiforge.files import remove_stale_temporaries, write_json, write_with

INDEX = "index.json"  # written last: its presence means every shard is on disk
PLAN = "plan.json"  # what a pack in progress is building, so a resumed one can check it builds the same

log = logging.getLogger("phiforge")


@dataclass
class Packed:
    """Rows of seq_len + 1 tokens in one or more shards, addressed by global row number across shards."""

    tokens: list[np.ndarray]  # shards of (rows, seq_len + 1) token ids; memory-mapped when loaded from disk
    labels: list[np.ndarray] | None = None  # same shapes; None means labels == tokens
    positions: list[np.ndarray] | None = None  # same shapes, per-example position ids; None: documents run on

    def __post_init__(self) -> None:
        self.starts = np.cumsum([0, *map(len, self.tokens)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def seq_len(self) -> int:
        return self.tokens[0].shape[1] - 1

    def rows(self, idx: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Rows `idx` as int64 (tokens, labels); labels are the tokens themselves where there are none."""
        idx = np.asarray(list(idx) if not isinstance(idx, np.ndarray) else idx, dtype=np.int64)
        tokens = self._gather(self.tokens, idx)
        return tokens, tokens if self.labels is None else self._gather(self.labels, idx)

    def position_rows(self, idx: Iterable[int]) -> np.ndarray | None:
        """The position ids of rows `idx` (int64), or None where rows are a running stream."""
        idx = np.asarray(list(idx) if not isinstance(idx, np.ndarray) else idx, dtype=np.int64)
        return None if self.positions is None else self._gather(self.positions, idx)

    def _gather(self, shards: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty((len(idx), self.seq_len + 1), dtype=np.int64)
        for s in np.unique(shard):
            pick = shard == s
            out[pick] = shards[s][idx[pick] - self.starts[s]]
        return out

    @classmethod
    def load(cls, directory: Path) -> "Packed":
        """The shards of a finished pack, memory-mapped."""
        index = read_index(directory)
        tokens = [np.load(directory / s["tokens"], mmap_mode="r") for s in index["shards"]]
        labels = [np.load(directory / s["labels"], mmap_mode="r") for s in index["shards"]] if index["labels"] else None
        # a stream's index has no positions (nor has an SFT pack from before they were written)
        positions = ([np.load(directory / s["positions"], mmap_mode="r") for s in index["shards"]]
                     if index.get("positions") else None)
        return cls(tokens, labels, positions)


def read_index(directory: Path) -> dict:
    path = directory / INDEX
    if not path.is_file():
        raise UserError(f"{directory}: no packed data ({INDEX} missing); rerun the stage to build it")
    return json.loads(path.read_text())


class Layout(Protocol):
    """Which tokens each row holds (data/layouts.py: Stream, Examples)."""

    seq_len: int
    n_rows: int
    labelled: bool  # rows come with labels (SFT)

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]: ...

    def positions(self, start: int, stop: int) -> np.ndarray | None: ...

    def fingerprint(self) -> str: ...


def write_shards(directory: Path, layout: Layout, shard_tokens: int, meta: dict) -> None:
    """Write the layout's rows as shards of about `shard_tokens` tokens, then `index.json`.

    Each shard is written atomically, so a killed pack leaves whole shards; a rerun with the same plan
    skips them (a different plan starts afresh). `documents/` (the tokenised sources) goes once the index is there.
    """
    width = layout.seq_len + 1
    shard_rows = max(1, shard_tokens // width)
    plan = meta | {"seq_len": layout.seq_len, "rows": layout.n_rows, "shard_rows": shard_rows,
                   "layout": type(layout).__name__.lower(), "fingerprint": layout.fingerprint()}
    if layout.labelled:  # examples come with their position ids (a pack begun without them starts afresh)
        plan["positions"] = True
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)  # a killed shard write's
    old_plan = json.loads((directory / PLAN).read_text()) if (directory / PLAN).is_file() else None
    if old_plan != plan:
        if old_plan is not None:
            log.warning("%s: the pack there was planned differently; building it afresh", directory)
        for old in [*directory.glob("shard_*.npy"), *directory.glob("labels_*.npy"), *directory.glob("positions_*.npy")]:
            old.unlink()
        write_json(directory / PLAN, plan)
    shards = []
    for k, start in enumerate(range(0, max(1, layout.n_rows), shard_rows)):  # an empty pack still has one shard
        stop = min(layout.n_rows, start + shard_rows)
        names = {"tokens": f"shard_{k:05d}.npy"}
        if layout.labelled:
            names |= {"labels": f"labels_{k:05d}.npy", "positions": f"positions_{k:05d}.npy"}
        shards.append(names | {"rows": stop - start})
        if (directory / names["tokens"]).is_file():  # written last of the pair: the shard is whole
            continue
        tokens, labels = layout.rows(start, stop)
        if labels is not None:
            positions = layout.positions(start, stop)
            write_with(directory / names["labels"], lambda tmp: _save(tmp, labels))
            write_with(directory / names["positions"], lambda tmp: _save(tmp, positions))
        write_with(directory / names["tokens"], lambda tmp: _save(tmp, tokens))
    write_json(directory / INDEX, plan | {"dtype": "uint32", "labels": layout.labelled, "shards": shards})
    remove_build_files(directory)


def remove_build_files(directory: Path) -> None:
    """Drop what only a pack in progress needs (its plan, the tokenised sources); idempotent once the index is there."""
    (directory / PLAN).unlink(missing_ok=True)
    shutil.rmtree(directory / "documents", ignore_errors=True)


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def cached_packed(directory: Path, build: Callable[[Path], None]) -> Packed:
    """The packed shards in `directory`, memory-mapped; `build(directory)` writes them (resumably) the first time.

    Under torchrun rank 0 packs while the other ranks wait, then every rank maps the same shards."""
    if distributed.is_main():
        if not (directory / INDEX).is_file():
            build(directory)
        remove_build_files(directory)  # left behind by a pack killed just after writing its index
    distributed.wait_for_main(f"the packed data in {directory}")
    return Packed.load(directory)
