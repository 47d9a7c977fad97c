"""Row layouts: which tokens each training row of seq_len + 1 holds, as a pure function of the row range.

`Stream` lays documents end to end (pretraining, midtraining), `Examples` packs whole examples with padding and
labels (SFT), and position ids that restart at 0 with each example: given position ids and no attention mask,
transformers' models see each restart as a new sequence and mask attention block-diagonally, so packed examples
never attend to one another. data/shards.py writes a layout's rows to disk; `pack_stream` / `pack_examples` build
them in memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from phiforge.data.documents import DocRefs, Documents
from phiforge.data.shards import Packed

IGNORE = -100  # the label of a position that carries no loss (PyTorch's cross-entropy ignore_index)


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
    labelled: ClassVar[bool] = False

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

    def positions(self, start: int, stop: int) -> None:
        return None  # documents run on across a row, as in pretraining generally

    def fingerprint(self) -> str:
        return _digest(self.refs.source, self.refs.doc, self.refs.length, *(d.offsets for d in self.sources))


@dataclass
class Examples:
    """Whole examples packed in order into rows of seq_len + 1, padded; loss only where labelled (SFT).

    An example longer than a row is cut at seq_len + 1 tokens; padding carries no loss. Each example's positions
    count from 0, and so do the padding's (a sequence of its own that nothing attends to).
    """

    docs: Documents
    seq_len: int
    pad_id: int
    labelled: ClassVar[bool] = True

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

    def positions(self, start: int, stop: int) -> np.ndarray:
        width = self.seq_len + 1
        out = np.zeros((stop - start, width), dtype=np.int32)
        for i in range(int(np.searchsorted(self.row_of, start)), int(np.searchsorted(self.row_of, stop))):
            row, col = int(self.row_of[i]) - start, int(self.col_of[i])
            # this example, then the rest of the row as padding (until the row's next example overwrites it)
            out[row, col:] = np.concatenate([np.arange(self.length[i]), np.arange(width - col - self.length[i])])
        return out

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
    return Packed([tokens], [labels], [layout.positions(0, layout.n_rows)])
