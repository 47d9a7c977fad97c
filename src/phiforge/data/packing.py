"""Tokenised training rows: mix sources by token share, pack documents into shards on disk, serve batches.

A packed dataset is a directory of shards, each a (rows, seq_len + 1) uint32 token array
(`shard_00000.npy`, ...) plus, for SFT, an int32 label array of the same shape (`labels_00000.npy`)
where -100 marks positions that carry no loss. `index.json`, written last, lists the shards and says
the pack is complete. Shards are memory-mapped when read, so training never holds the dataset in RAM.

Packing is resumable: documents are tokenised once per source into `documents/` (flat token files),
the mixture is drawn from document lengths alone, and any shard is a pure function of the plan and
its row range, so a killed pack keeps its finished shards and builds only the missing ones, with the
same bytes an uninterrupted pack writes.

Row order comes from the seed and the step alone, so a resumed run sees exactly the batches an
uninterrupted one would, and rank r of a data-parallel world takes every world-th row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from phiforge.errors import UserError
from phiforge.files import remove_stale_temporaries, write_json, write_with

IGNORE = -100
INDEX = "index.json"  # written last: its presence means every shard is on disk
PLAN = "plan.json"  # what a pack in progress is building, so a resumed one can check it builds the same

log = logging.getLogger("phiforge")


@dataclass
class Packed:
    """Rows of seq_len + 1 tokens in one or more shards, addressed by global row number across shards."""

    tokens: list[np.ndarray]  # shards of (rows, seq_len + 1) token ids; memory-mapped when loaded from disk
    labels: list[np.ndarray] | None = None  # same shapes; None means labels == tokens

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
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        tokens = np.empty((len(idx), self.seq_len + 1), dtype=np.int64)
        labels = tokens if self.labels is None else np.empty_like(tokens)
        for s in np.unique(shard):
            pick = shard == s
            local = idx[pick] - self.starts[s]
            tokens[pick] = self.tokens[s][local]
            if self.labels is not None:
                labels[pick] = self.labels[s][local]
        return tokens, labels

    @classmethod
    def load(cls, directory: Path) -> "Packed":
        """The shards of a finished pack, memory-mapped."""
        index = read_index(directory)
        tokens = [np.load(directory / s["tokens"], mmap_mode="r") for s in index["shards"]]
        labels = [np.load(directory / s["labels"], mmap_mode="r") for s in index["shards"]] if index["labels"] else None
        return cls(tokens, labels)


def read_index(directory: Path) -> dict:
    path = directory / INDEX
    if not path.is_file():
        raise UserError(f"{directory}: no packed data ({INDEX} missing); rerun the stage to build it")
    return json.loads(path.read_text())


# --- documents: tokenised text laid end to end ---


@dataclass
class Documents:
    """Tokenised documents end to end: document i is tokens[offsets[i]:offsets[i + 1]] (labels alike, for SFT)."""

    tokens: np.ndarray  # uint32; memory-mapped when loaded
    offsets: np.ndarray  # int64, documents + 1
    labels: np.ndarray | None = None  # int32

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def of(cls, docs: list[list[int]], labels: list[list[int]] | None = None) -> "Documents":
        """In-memory documents (eval, tests)."""
        offsets = np.cumsum([0, *map(len, docs)], dtype=np.int64)
        flat = np.fromiter((t for d in docs for t in d), dtype=np.uint32, count=int(offsets[-1]))
        if labels is None:
            return cls(flat, offsets)
        return cls(flat, offsets, np.fromiter((t for d in labels for t in d), np.int32, int(offsets[-1])))

    @classmethod
    def load(cls, directory: Path) -> "Documents":
        offsets = np.load(directory / "offsets.npy")
        labels = directory / "labels.bin"
        return cls(_map(directory / "tokens.bin", np.uint32), offsets,
                   _map(labels, np.int32) if labels.is_file() else None)


def _map(path: Path, dtype: type) -> np.ndarray:
    return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype=dtype)


def write_documents(directory: Path, batches: Iterable[tuple[list[list[int]], list[list[int]] | None]]) -> Documents:
    """Stream batches of (token lists, label lists or None) to flat files in `directory`, written whole or not at all.

    A directory already there is a finished one (a resumed pack) and is loaded instead.
    """
    if not directory.is_dir():

        def write(tmp: Path) -> None:
            tmp.mkdir()
            offsets = [0]
            with open(tmp / "tokens.bin", "wb") as tokens, open(tmp / "labels.bin", "wb") as labels:
                for docs, doc_labels in batches:
                    start = offsets[-1]
                    offsets += (start + np.cumsum([len(d) for d in docs], dtype=np.int64)).tolist()
                    flat = (t for d in docs for t in d)
                    np.fromiter(flat, dtype=np.uint32, count=offsets[-1] - start).tofile(tokens)
                    if doc_labels is not None:
                        np.fromiter((t for d in doc_labels for t in d), dtype=np.int32).tofile(labels)
            if (tmp / "labels.bin").stat().st_size == 0:
                (tmp / "labels.bin").unlink()
            np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))

        write_with(directory, write)
    return Documents.load(directory)


@dataclass
class DocRefs:
    """Documents by reference: which source, which document in it, and how many of its tokens (a prefix)."""

    source: np.ndarray  # int64
    doc: np.ndarray  # int64
    length: np.ndarray  # int64

    @classmethod
    def whole(cls, source: int, lengths: np.ndarray) -> "DocRefs":
        """Every document of one source, whole."""
        n = len(lengths)
        return cls(np.full(n, source, dtype=np.int64), np.arange(n, dtype=np.int64), np.asarray(lengths, np.int64))

    @classmethod
    def concat(cls, refs: list["DocRefs"]) -> "DocRefs":
        fields = ("source", "doc", "length")
        return cls(*(np.concatenate([getattr(r, f) for r in refs]).astype(np.int64) for f in fields))

    def __getitem__(self, idx: np.ndarray) -> "DocRefs":
        return DocRefs(self.source[idx], self.doc[idx], self.length[idx])

    def __len__(self) -> int:
        return len(self.doc)


# --- the mixture ---


@dataclass
class SourceDraw:
    """How much of one source goes into a mixture: the report's Table 5 (planned, or drawn at pack time)."""

    share: float
    tokens: int
    unique_tokens: int

    @property
    def epochs(self) -> float:
        return self.tokens / max(1, self.unique_tokens)


def plan_mixture(shares: dict[str, float], unique_tokens: dict[str, int], total_tokens: int) -> dict[str, SourceDraw]:
    """Each source's quota of `total_tokens` by normalised share, and the epochs that makes over its unique tokens.

    `phiforge mixture plan` prints this; `mix_documents` draws documents to fill these quotas.
    """
    norm = sum(shares.values())
    return {
        name: SourceDraw(share / norm, int(total_tokens * share / norm), unique_tokens[name])
        for name, share in shares.items()
    }


def mixture_table(draws: dict[str, SourceDraw]) -> dict[str, dict]:
    return {n: vars(d) | {"epochs": round(d.epochs, 2)} for n, d in draws.items()}


def over_epoch_limit(draws: dict[str, SourceDraw], max_epochs: float) -> list[str]:
    """One warning per source repeated more than max_epochs times."""
    return [
        f"source '{name}' would be repeated {d.epochs:.1f} times (over max_epochs {max_epochs:g}): "
        "add unique data or lower its share"
        for name, d in draws.items()
        if d.epochs > max_epochs
    ]


def mix_documents(
    pools: dict[str, DocRefs], shares: dict[str, float], total_tokens: int, seed: int
) -> tuple[DocRefs, dict[str, SourceDraw]]:
    """Draw documents from each pool until it holds its share of `total_tokens`.

    A small pool repeats (more epochs), a large one is subsampled; the draw order within a pool
    is a seeded permutation per epoch, and the final document order is shuffled across pools.
    A document counts its tokens plus the separator after it. Only lengths are read, never tokens.
    """
    rng = np.random.default_rng(seed)
    pools = {name: pools[name][pools[name].length > 0] for name in shares}
    plan = plan_mixture(shares, {n: int((p.length + 1).sum()) for n, p in pools.items()}, total_tokens)
    drawn: list[DocRefs] = []
    stats: dict[str, SourceDraw] = {}
    for name, planned in plan.items():
        pool, taken = pools[name], 0
        while len(pool) and taken < planned.tokens:
            order = rng.permutation(len(pool))
            reached = taken + np.cumsum(pool.length[order] + 1)
            stop = min(len(order), int(np.searchsorted(reached, planned.tokens)) + 1)  # through the doc that fills it
            drawn.append(pool[order[:stop]])
            taken = int(reached[stop - 1])
        stats[name] = SourceDraw(planned.share, taken, planned.unique_tokens)
    mixed = DocRefs.concat(drawn) if drawn else DocRefs.whole(0, np.zeros(0, np.int64))
    return mixed[rng.permutation(len(mixed))], stats


# --- layouts: which tokens each row holds ---


@dataclass
class Stream:
    """Documents end to end with EOS after each, cut into rows of seq_len + 1 tokens (pretraining).

    When that makes fewer than `min_rows` rows, the stream repeats until it makes them.
    """

    sources: list[Documents]
    refs: DocRefs
    seq_len: int
    eos_id: int
    min_rows: int = 1

    def __post_init__(self) -> None:
        self.ends = np.cumsum(self.refs.length + 1)  # where each document's EOS ends, in stream positions
        total, width = int(self.ends[-1]) if len(self.ends) else 0, self.seq_len + 1
        rows = total // width
        if rows < self.min_rows and total:
            rows = -(-self.min_rows * width // total) * total // width
        self.n_rows = rows

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, None]:
        width = self.seq_len + 1
        out = np.empty((stop - start) * width, dtype=np.uint32)
        total, filled = int(self.ends[-1]) if len(self.ends) else 0, 0
        pos = start * width % max(1, total)
        i = int(np.searchsorted(self.ends, pos, side="right"))
        while filled < len(out):
            src, doc, length = int(self.refs.source[i]), int(self.refs.doc[i]), int(self.refs.length[i])
            docs = self.sources[src]
            first = int(docs.offsets[doc])
            piece = np.append(docs.tokens[first : first + length], np.uint32(self.eos_id))
            piece = piece[pos - (int(self.ends[i]) - length - 1) :]
            n = min(len(piece), len(out) - filled)
            out[filled : filled + n] = piece[:n]
            filled += n
            pos, i = (0, 0) if i + 1 == len(self.ends) else (int(self.ends[i]), i + 1)
        return out.reshape(-1, width), None

    def fingerprint(self) -> str:
        return _digest(self.refs.source, self.refs.doc, self.refs.length, *(d.offsets for d in self.sources))


@dataclass
class Examples:
    """Whole examples packed in order into rows of seq_len + 1, padded; loss only where labelled (SFT).

    An example longer than a row is cut at seq_len + 1 tokens; padding carries no loss.
    """

    docs: Documents
    seq_len: int
    pad_id: int

    def __post_init__(self) -> None:
        width = self.seq_len + 1
        self.length = np.minimum(self.docs.lengths, width)
        row_of, col_of = np.empty(len(self.length), np.int64), np.empty(len(self.length), np.int64)
        row, col = 0, 0
        for i, n in enumerate(self.length.tolist()):
            if col + n > width:
                row, col = row + 1, 0
            row_of[i], col_of[i] = row, col
            col += n
        self.row_of, self.col_of = row_of, col_of
        self.n_rows = row + 1 if len(self.length) else 0

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.full((stop - start, self.seq_len + 1), self.pad_id, dtype=np.uint32)
        labels = np.full(tokens.shape, IGNORE, dtype=np.int32)
        assert self.docs.labels is not None
        for i in range(int(np.searchsorted(self.row_of, start)), int(np.searchsorted(self.row_of, stop))):
            first, n = int(self.docs.offsets[i]), int(self.length[i])
            row, col = int(self.row_of[i]) - start, int(self.col_of[i])
            tokens[row, col : col + n] = self.docs.tokens[first : first + n]
            labels[row, col : col + n] = self.docs.labels[first : first + n]
        return tokens, labels

    def fingerprint(self) -> str:
        return _digest(self.docs.offsets)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def pack_stream(docs: list[list[int]], seq_len: int, eos_id: int, min_rows: int = 1) -> Packed:
    """In memory: documents end to end with EOS after each, cut into rows of seq_len + 1 tokens."""
    stream = Stream([Documents.of(docs)], DocRefs.whole(0, np.array(list(map(len, docs)))), seq_len, eos_id, min_rows)
    return Packed([stream.rows(0, stream.n_rows)[0]])


def pack_examples(examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> Packed:
    """In memory: (ids, labels) examples packed into rows without splitting one; padding carries no loss."""
    layout = Examples(Documents.of([e[0] for e in examples], [e[1] for e in examples]), seq_len, pad_id)
    tokens, labels = layout.rows(0, layout.n_rows)
    return Packed([tokens], [labels])


# --- shards on disk ---


def write_shards(directory: Path, layout: Stream | Examples, shard_tokens: int, meta: dict) -> None:
    """Write the layout's rows as shards of about `shard_tokens` tokens, then `index.json`.

    Each shard is written atomically, so a killed pack leaves whole shards; a rerun with the same plan
    skips them (a different plan starts afresh). `documents/` (the tokenised sources) goes once the index is there.
    """
    width = layout.seq_len + 1
    shard_rows = max(1, shard_tokens // width)
    plan = meta | {"seq_len": layout.seq_len, "rows": layout.n_rows, "shard_rows": shard_rows,
                   "layout": type(layout).__name__.lower(), "fingerprint": layout.fingerprint()}
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)  # a killed shard write's
    old_plan = json.loads((directory / PLAN).read_text()) if (directory / PLAN).is_file() else None
    if old_plan != plan:
        if old_plan is not None:
            log.warning("%s: the pack there was planned differently; building it afresh", directory)
        for old in [*directory.glob("shard_*.npy"), *directory.glob("labels_*.npy")]:
            old.unlink()
        write_json(directory / PLAN, plan)
    shards = []
    for k, start in enumerate(range(0, max(1, layout.n_rows), shard_rows)):  # an empty pack still has one shard
        stop = min(layout.n_rows, start + shard_rows)
        names = {"tokens": f"shard_{k:05d}.npy"}
        if isinstance(layout, Examples):
            names["labels"] = f"labels_{k:05d}.npy"
        shards.append(names | {"rows": stop - start})
        if (directory / names["tokens"]).is_file():  # written last of the pair: the shard is whole
            continue
        tokens, labels = layout.rows(start, stop)
        if labels is not None:
            write_with(directory / names["labels"], lambda tmp: _save(tmp, labels))
        write_with(directory / names["tokens"], lambda tmp: _save(tmp, tokens))
    write_json(directory / INDEX, plan | {"dtype": "uint32", "labels": isinstance(layout, Examples), "shards": shards})
    remove_build_files(directory)


def remove_build_files(directory: Path) -> None:
    """Drop what only a pack in progress needs (its plan, the tokenised sources); idempotent once the index is there."""
    (directory / PLAN).unlink(missing_ok=True)
    shutil.rmtree(directory / "documents", ignore_errors=True)


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


# --- batches ---


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def rows_at(n: int, micro_step: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Indices (of n examples) in micro-batch `micro_step` for this rank: a fresh permutation every epoch."""
    start = micro_step * batch_size * world + rank * batch_size
    return [int(_epoch_order(seed, epoch, n)[offset]) for epoch, offset in
            (divmod(pos, n) for pos in range(start, start + batch_size))]


def batch_at(data: Packed, micro_step: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
    """The (inputs, targets) micro-batch number `micro_step` for this rank: a pure function of its arguments."""
    tokens, labels = data.rows(rows_at(len(data), micro_step, batch_size, seed, rank, world))
    return torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(labels[:, 1:].copy())
