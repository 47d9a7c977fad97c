"""Tokenised documents laid end to end in flat files, and documents by reference (which source, which document).

Packing tokenises each source once into `documents/NAME/` (`tokens.bin`, `offsets.npy`, for SFT `labels.bin`), so a
killed pack keeps what it tokenised; the mixture and the row layouts then read only lengths and offsets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from phiforge.files import write_with

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def tokenize(tok: PreTrainedTokenizerBase, docs: list[str]) -> list[list[int]]:
    """Token ids of each text, without the tokenizer's own special tokens (packing adds its separators)."""
    return tok(docs, add_special_tokens=False)["input_ids"] if docs else []


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


def tokenized(directory: Path, tok: PreTrainedTokenizerBase, texts: Iterable[str], batch: int = 1024) -> Documents:
    """Texts tokenised batch by batch into flat files in `directory` (kept from a killed pack, reused)."""
    texts = iter(texts)
    batches = iter(lambda: list(islice(texts, batch)), [])
    return write_documents(directory, ((tokenize(tok, b), None) for b in batches))


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
