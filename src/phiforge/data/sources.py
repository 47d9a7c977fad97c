"""Corpus sources: organic text and code found on this machine, generated data, or the user's jsonl.

A source yields plain-text documents. The embedded default needs no download: Python's own
source and documentation, and the README text that installed packages carry in their metadata.
The corpus and synth stages decontaminate each source and split it into `train/NAME.jsonl` and
`heldout/NAME.jsonl` (`SourceSplitter`); later stages read a source from there (`source_docs`).
"""

from __future__ import annotations

import importlib.metadata
import random
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from phiforge.data import passkey, synthetic_math
from phiforge.errors import UserError
from phiforge.files import read_jsonl, write_jsonl
from phiforge.recipe import Recipe, SourceConfig
from phiforge.stage import StageContext

if TYPE_CHECKING:
    from phiforge.data.decontam import BenchmarkIndex

T = TypeVar("T")


def _python_source() -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts or "tests" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            yield text


def _python_docs() -> Iterator[str]:
    # pydoc_data ships the text of the Python language reference and library topics.
    from pydoc_data.topics import topics

    for name in sorted(topics):
        if topics[name].strip():
            yield topics[name]


def _package_readmes() -> Iterator[str]:
    seen: set[str] = set()
    dists = sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower())
    for dist in dists:
        name = dist.metadata["Name"]
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if len(body.strip()) > 200:
            yield f"# {name}\n\n{dist.metadata.get('Summary') or ''}\n\n{body.strip()}"


def _synthetic_math(seed: int, n: int) -> Iterator[str]:
    problems = synthetic_math.generate(n * 4, seed, heldout=False)
    for i in range(0, len(problems), 4):
        yield "\n\n".join(p.as_document() for p in problems[i : i + 4])


def _jsonl(cfg: SourceConfig) -> Iterator[str]:
    assert cfg.path is not None
    for i, row in enumerate(read_jsonl(cfg.path), 1):
        text = row.get(cfg.field)
        if not isinstance(text, str):
            raise UserError(f"{cfg.path}: row {i} has no string field '{cfg.field}' (set field: in source '{cfg.name}')")
        yield text


def iter_documents(cfg: SourceConfig, seed: int) -> Iterator[str]:
    """The source's documents, capped at max_docs and max_chars."""
    if cfg.kind == "python_source":
        docs = _python_source()
    elif cfg.kind == "python_docs":
        docs = _python_docs()
    elif cfg.kind == "package_readmes":
        docs = _package_readmes()
    elif cfg.kind == "synthetic_math":
        docs = _synthetic_math(seed, cfg.max_docs)
    elif cfg.kind == "passkey":
        docs = iter(passkey.passkey_documents(cfg.max_docs, seed))
    else:
        docs = _jsonl(cfg)
    chars = 0
    for count, doc in enumerate(docs):
        if count >= cfg.max_docs or chars >= cfg.max_chars:
            return
        doc = doc[: cfg.max_chars - chars]
        chars += len(doc)
        yield doc


def split_heldout(docs: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train / held-out split; at least one held-out document when fraction > 0."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_held = min(len(docs) - 1, max(1, round(len(docs) * fraction))) if fraction > 0 and len(docs) > 1 else 0
    held = sorted(order[:n_held])
    held_set = set(held)
    return [d for i, d in enumerate(docs) if i not in held_set], [docs[i] for i in held]


class SourceSplitter:
    """Decontaminates a stage's sources and splits each into OUT/train/NAME.jsonl and OUT/heldout/NAME.jsonl (the
    corpus and synth stages), keeping which benchmark items the dropped texts hit over all of them."""

    def __init__(self, out: Path, index: BenchmarkIndex | None = None) -> None:
        self.out, self.index = out, index
        self.items_hit: dict[str, set[str]] = {}

    def decontaminate(self, items: list[T], text: Callable[[T], str] = str) -> list[T]:
        """The items whose text shares nothing with the index's benchmarks (all of them without an index)."""
        if self.index is None:
            return items
        from phiforge.data.decontam import drop_contaminated

        _, hits = drop_contaminated(self.index, [text(item) for item in items])
        for bench, item in (pair for h in hits for pair in h.items):
            self.items_hit.setdefault(bench, set()).add(item)
        removed = {h.doc for h in hits}
        return [item for i, item in enumerate(items) if i not in removed]

    def write(self, name: str, docs: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
        """The train / held-out split of one source's documents, written; returned as (train, held)."""
        train, held = split_heldout(docs, fraction, seed)
        write_jsonl(self.out / "train" / f"{name}.jsonl", ({"text": d, "source": name} for d in train))
        write_jsonl(self.out / "heldout" / f"{name}.jsonl", ({"text": d, "source": name} for d in held))
        return train, held

    def items_hit_by_benchmark(self) -> dict[str, list[str]]:
        assert self.index is not None
        return {b.name: sorted(self.items_hit.get(b.name, ())) for b in self.index.benchmarks}


def source_stage(recipe: Recipe, name: str) -> str:
    """Which stage holds a data source: the synth stage for a synthetic dataset, else the corpus stage."""
    return "synth" if recipe.synth and name in recipe.synth.dataset_names() else "corpus"


def source_docs(ctx: StageContext, name: str, split: str = "train") -> Iterator[str]:
    """Documents of one data source from its finished stage (split: its `train` or `heldout` output), one at a time."""
    path = ctx.input(source_stage(ctx.recipe, name), split) / f"{name}.jsonl"
    return (row["text"] for row in read_jsonl(path))
