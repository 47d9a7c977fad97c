"""Which quality labeller carries signal with the embedded teacher? AUC on a reference set of known quality.

The reference set is built from text on this machine, like the tiny recipe's corpus: high = Python reference
topics (pydoc_data) and the explanatory prose of package READMEs; low = license texts, changelogs, README badge
and link blocks, generated metadata (dist-info RECORD / METADATA headers) and word-shuffled reference topics.
Every labeller sees the first --chars characters, as `label_max_chars` does in a run. AUC: the chance that a high
document scores above a low one (ties count half); agreement: accuracy of the best single cut.

    python benchmarks/quality_labels.py [--chars 400] [--only NAME,...] [--dump reference.jsonl]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import random
import re
import time
from pathlib import Path

from datatrove.data import Document

from phiforge.data.curation.classifier import SCORES, SHOTS, HeuristicLabeler, TeacherLabeler, rating_conversation
from phiforge.data.sources import _package_readmes, _python_docs
from phiforge.generation.base import Sampling, expected_score
from phiforge.generation.hf import HFBackend

# Where a README's explanatory prose starts (hand-picked: the first paragraph that explains what the package does).
README_PROSE = {
    "babel": "Babel is a Python library", "certifi": "Certifi provides", "datatrove": "DataTrove is a library",
    "dill": "``dill`` extends", "Jinja2": "Jinja is a fast", "lxml": "lxml is a Pythonic", "PyYAML": "YAML is a data",
    "regex": "This regex implementation", "Pygments": "Pygments is a syntax", "networkx": "NetworkX is a Python",
    "iniconfig": "iniconfig is a small", "pluggy": "This is the core framework", "orjson": "orjson is a fast",
}
README_HEADS = ["cycler", "humanize", "psutil", "termcolor", "joblib", "scikit-learn", "mpmath", "requests", "sympy",
                "filelock"]  # their first characters are badge and link blocks
CHANGELOGS = {"charset-normalizer": "# Changelog", "dateparser": "History\n=======", "fonttools": "Changelog\n~~~",
              "httpcore2": "# Changelog", "jusText": "Changelog for jusText", "mpmath": "Release history",
              "pydantic": "## v2.14.4"}


def reference_set(seed: int = 0) -> list[tuple[str, str, int]]:
    """(kind, text, 1 high / 0 low) rows."""
    rng = random.Random(seed)
    topics = list(_python_docs())
    rng.shuffle(topics)
    readmes = {d.split("\n", 1)[0][2:]: d for d in _package_readmes()}
    rows = [("docs", t, 1) for t in topics[:30]]
    rows += [("readme_prose", readmes[name][readmes[name].index(start):], 1) for name, start in README_PROSE.items()
             if name in readmes and start in readmes[name]]
    for t in topics[30:42]:  # the same words, shuffled: fluent vocabulary, no meaning
        words = t.split()
        rng.shuffle(words)
        rows.append(("shuffled", " ".join(words), 0))
    licenses = sorted(p for d in importlib.metadata.distributions() for p in (d.files or [])
                      if re.search(r"licen[cs]e", p.name, re.I) and p.suffix in ("", ".txt", ".md", ".rst"))
    texts = {p.read_text(errors="replace").strip() for p in (p.locate() for p in licenses) if Path(p).is_file()}
    rows += [("license", t, 0) for t in sorted(t for t in texts if len(t) > 300)[:12]]
    rows += [("changelog", readmes[n][readmes[n].index(s):], 0) for n, s in CHANGELOGS.items() if s in readmes.get(n, "")]
    rows += [("badges", readmes[n].split("\n\n", 2)[2], 0) for n in README_HEADS if n in readmes]
    dists = sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"].lower())[::9]
    rows += [("generated", d.read_text("RECORD") or "", 0) for d in dists[:5]]
    rows += [("generated", "\n".join(f"{k}: {v}" for k, v in d.metadata.items())[:3000], 0) for d in dists[5:10]]
    return rows


def auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def best_cut_accuracy(scores: list[float], labels: list[int]) -> float:
    return max(sum((s >= cut) == bool(y) for s, y in zip(scores, labels)) for cut in set(scores)) / len(scores)


QUESTION = "Is this text educational, useful for learning? Answer yes or no."
# Candidate worked examples: the whole scale, none taken from the reference set's kinds of text.
MORE_SHOTS = (SHOTS[0], SHOTS[1],
              ("Paris is the capital of France. It has many museums. The weather there is mild in spring.", "2"),
              ("To reverse a list in Python, call its reverse() method: it changes the list in place. reversed(x) instead "
               "returns an iterator and leaves x as it was, which is what you want when the original order is still "
               "needed.", "4"),
              SHOTS[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chars", type=int, default=400)
    ap.add_argument("--only", default="")
    ap.add_argument("--dump", type=Path)
    args = ap.parse_args()
    rows = reference_set()
    docs = [t[: args.chars] for _, t, _ in rows]
    labels = [y for _, _, y in rows]
    if args.dump:
        args.dump.write_text("".join(json.dumps({"kind": k, "label": y, "text": t}) + "\n" for (k, _, y), t in zip(rows, docs)))
    print(f"reference set: {sum(labels)} high, {len(labels) - sum(labels)} low; "
          + ", ".join(f"{k} {sum(r[0] == k for r in rows)}" for k in dict.fromkeys(r[0] for r in rows)), flush=True)
    teacher = HFBackend("smollm2", batch_size=8)
    documents = [Document(text=d, id=str(i)) for i, d in enumerate(docs)]

    def shipped(method: str) -> list[float | None]:  # the labeller a run uses (RUBRIC and SHOTS)
        return TeacherLabeler(teacher, method, Sampling(temperature=0.0, max_tokens=8), max_chars=args.chars).score(documents)

    def digits(shots: tuple) -> list[float | None]:
        return [expected_score(p) for p in teacher.choice_probs([rating_conversation(d, shots) for d in docs], SCORES)]

    def yes(question_first: bool) -> list[float]:
        convs = [[{"role": "user", "content": f"{QUESTION}\n\n{d}" if question_first else f"{d}\n\n{QUESTION}"}] for d in docs]
        return [p["yes"] / (p["yes"] + p["no"]) for p in teacher.choice_probs(convs, ["yes", "no"])]

    labellers = {
        "heuristic": lambda: HeuristicLabeler().score(documents),
        "generate": lambda: shipped("generate"),
        "probs": lambda: shipped("probs"),
        "probs_zero_shot": lambda: digits(()),
        "probs_more_shots": lambda: digits(MORE_SHOTS),
        "yes_no_after": lambda: yes(False),
        "yes_no_before": lambda: yes(True),
    }
    kinds = list(dict.fromkeys(r[0] for r in rows))
    for name, run in labellers.items():
        if args.only and name not in args.only.split(","):
            continue
        t0 = time.perf_counter()
        raw = run()
        seconds = time.perf_counter() - t0
        scores = [-1.0 if s is None else float(s) for s in raw]
        by_kind = "  ".join(f"{k} {sum(s for s, r in zip(scores, rows) if r[0] == k) / sum(r[0] == k for r in rows):.2f}"
                            for k in kinds)
        print(f"{name:17s} AUC {auc(scores, labels):.3f}  best-cut accuracy {best_cut_accuracy(scores, labels):.3f}  "
              f"{seconds:5.1f} s  unparseable {sum(s is None for s in raw)}  mean by kind: {by_kind}", flush=True)


if __name__ == "__main__":
    main()
