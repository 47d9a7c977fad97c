"""Decontamination as a datatrove pipeline step, for corpora that need many workers.

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from phiforge.data.decontam_step import DecontaminationFilter

    LocalPipelineExecutor([
        JsonlReader("web/"),
        DecontaminationFilter(["humaneval", "my_bench.jsonl"], exclusion_writer=JsonlWriter("removed/")),
        JsonlWriter("clean/"),
    ], tasks=64, workers=16).run()

Each worker builds the benchmark index itself on its first batch (benchmarks are small; the step stays a
picklable list of names), then filters batches of documents with the same matcher as `phiforge
decontaminate`. A removed document carries what it matched in its metadata (item, rule, field, coverage),
so an exclusion writer's output is the audit trail.
"""

from __future__ import annotations

from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from phiforge.data.decontam import BenchmarkIndex, load_benchmark


class DecontaminationFilter(BaseFilter):
    name = "phiforge n-gram decontamination"

    def __init__(
        self,
        against: list[str | Path],
        n: int = 13,
        short_n: int = 7,
        exclusion_writer: DiskWriter | None = None,
        batch_size: int = 1000,
    ):
        super().__init__(exclusion_writer, batch_size)
        self.against, self.n, self.short_n = [str(a) for a in against], n, short_n
        self._index: BenchmarkIndex | None = None

    @property
    def index(self) -> BenchmarkIndex:
        if self._index is None:
            self._index = BenchmarkIndex([load_benchmark(a) for a in self.against], self.n, self.short_n)
        return self._index

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        results: list[bool | tuple[bool, str]] = [True] * len(batch)
        for hit in self.index.match([doc.text for doc in batch]):
            doc = batch[hit.doc]
            doc.metadata["contaminated_items"] = [f"{bench}/{item}" for bench, item in hit.items]
            doc.metadata["contaminated_ngram"] = hit.ngram
            doc.metadata["contaminated_matches"] = [m.as_dict() for m in hit.matches]
            for bench in {bench for bench, _ in hit.items}:
                self.stat_update(f"contaminated_{bench}")
            results[hit.doc] = (False, "contaminated")
        return results

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]
