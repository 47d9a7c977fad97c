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

from phiforge.data.curation.classifier import HeuristicLabeler, TeacherLabeler
from phiforge.data.sources import _package_readmes, _python_docs
from phiforge.generation import Sampling
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


DIGIT_RUBRIC = """You rate documents for training a language model that should learn to reason.
Judge each document on educational value and reasoning depth together, on this scale:
0 - no educational value: spam, ads, navigation menus, boilerplate, gibberish.
1 - a little information but mostly noise, promotion or chatter.
2 - some facts, but superficial, disorganised or without explanation.
3 - clear, informative text that explains something, like a decent encyclopedia or news article.
4 - teaches well: explanations with reasons, worked examples, step-by-step arguments.
5 - outstanding teaching material: rigorous reasoning, proofs, derivations or problems with careful solutions.
Answer with the score alone: one digit from 0 to 5."""
SHOTS = (("BUY NOW! Best prices on watches. Click here. Free shipping. Subscribe to our newsletter.", "0"),
         ("Our company was founded in 1998 and has offices in three cities. Contact us about our services.", "1"),
         ("The sum of two even numbers 2a and 2b is 2a + 2b = 2(a + b), twice an integer, so it is even. "
          "Likewise (2a + 1) + (2b + 1) = 2(a + b + 1): the sum of two odd numbers is even too.", "5"))
QUESTION = "Is this text educational, useful for learning? Answer yes or no."


def digit_conversation(doc: str, shots: bool) -> list[dict]:
    turns = [m for d, s in SHOTS for m in ({"role": "user", "content": f"Document:\n{d}"},
                                           {"role": "assistant", "content": s})] if shots else []
    return [{"role": "system", "content": DIGIT_RUBRIC}, *turns, {"role": "user", "content": f"Document:\n{doc}"}]


def expected(p: dict[str, float]) -> float:
    return sum(int(c) * v for c, v in p.items()) / max(sum(p.values()), 1e-12)


def p_yes(p: dict[str, float]) -> float:
    return p["yes"] / max(p["yes"] + p["no"], 1e-12)


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
    digits = [str(i) for i in range(6)]
    labellers = {
        "heuristic": lambda: HeuristicLabeler().score([Document(text=d, id=str(i)) for i, d in enumerate(docs)]),
        "generate": lambda: TeacherLabeler(teacher, Sampling(temperature=0.0, max_tokens=8), max_chars=args.chars)
        .score([Document(text=d, id=str(i)) for i, d in enumerate(docs)]),
        "digits_shots": lambda: [expected(p) for p in teacher.choice_probs([digit_conversation(d, True) for d in docs], digits)],
        "digits_zero_shot": lambda: [expected(p) for p in teacher.choice_probs([digit_conversation(d, False) for d in docs], digits)],
        "yes_no_after": lambda: [p_yes(p) for p in teacher.choice_probs(
            [[{"role": "user", "content": f"{d}\n\n{QUESTION}"}] for d in docs], ["yes", "no"])],
        "yes_no_before": lambda: [p_yes(p) for p in teacher.choice_probs(
            [[{"role": "user", "content": f"{QUESTION}\n\n{d}"}] for d in docs], ["yes", "no"])],
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
