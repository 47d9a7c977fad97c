"""A stage's sources decontaminated and split into train / held-out files (data/sources.py: SourceSplitter)."""

from __future__ import annotations

import json

from phiforge.data.decontam import Benchmark, BenchmarkIndex
from phiforge.data.sources import SourceSplitter, split_heldout

LEAK = "the quick brown fox jumps over the lazy dog near the riverbank every single morning"


def rows(path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def test_sources_lose_their_contaminated_texts_and_split_as_split_heldout_does(tmp_path):
    index = BenchmarkIndex([Benchmark("bench", [{"q": LEAK}, {"q": "unused item"}], ["b1", "b2"])], informative_only=False)
    splitter = SourceSplitter(tmp_path, index)
    docs = [f"clean document number {i}" for i in range(9)] + [f"prefix {LEAK} suffix"]
    kept = splitter.decontaminate(docs)
    assert kept == docs[:9]
    train, held = splitter.write("web", kept, 0.2, seed=5)
    assert (train, held) == split_heldout(kept, 0.2, 5)
    assert rows(tmp_path / "train" / "web.jsonl") == train and rows(tmp_path / "heldout" / "web.jsonl") == held
    records = [{"text": "fine"}, {"text": "", "messages": [{"role": "user", "content": LEAK}]}]
    text = lambda r: " ".join([r["text"], *(m["content"] for m in r.get("messages", []))])  # noqa: E731
    assert splitter.decontaminate(records, text) == records[:1]
    assert splitter.items_hit_by_benchmark() == {"bench": ["b1"]}  # over both sources, each item once


def test_without_an_index_nothing_is_dropped(tmp_path):
    docs = ["a", "b", "c"]
    assert SourceSplitter(tmp_path).decontaminate(docs) == docs
