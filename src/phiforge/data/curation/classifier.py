"""The LLM-labelled quality classifier (Phi-4 report, organic data): a teacher scores a sample of documents for
educational value and reasoning depth, a hashed n-gram logistic regression learns those labels, and the whole
corpus is filtered by the classifier's probability of "high quality".

Labels come from a teacher `Backend` (the expected score under its next-token distribution over the digits, or the
score it writes), from a precomputed jsonl (`{"id" or "text", "score"}`), or, for runs with
neither, from a crude keyword heuristic (`HeuristicLabeler`) that only exercises the machinery.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import pickle
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from phiforge.data.curation.steps import add_provenance
from phiforge.errors import UserError
from phiforge.files import read_jsonl, write_json, write_jsonl, write_with
from phiforge.generation.base import Backend, Sampling, expected_score
from phiforge.recipe import CurationClassifier
from phiforge.progress import bar_label

log = logging.getLogger("phiforge")

RUBRIC = """You rate documents for training a language model that should learn to reason.
Judge each document on educational value and reasoning depth together, on this scale:
0 - no educational value: spam, ads, navigation menus, boilerplate, gibberish.
1 - a little information but mostly noise, promotion or chatter.
2 - some facts, but superficial, disorganised or without explanation.
3 - clear, informative text that explains something, like a decent encyclopedia or news article.
4 - teaches well: explanations with reasons, worked examples, step-by-step arguments.
5 - outstanding teaching material: rigorous reasoning, proofs, derivations or problems with careful solutions.
Answer with the score alone: one digit from 0 to 5."""

# Worked examples as earlier turns: small teachers (SmolLM2-135M) answer in the format only when shown it.
SHOTS = (
    ("BUY NOW! Best prices on watches. Click here. Free shipping. Subscribe to our newsletter.", "0"),
    ("Our company was founded in 1998 and has offices in three cities. Contact us about our services.", "1"),
    ("The sum of two even numbers 2a and 2b is 2a + 2b = 2(a + b), twice an integer, so it is even. "
     "Likewise (2a + 1) + (2b + 1) = 2(a + b + 1): the sum of two odd numbers is even too.", "5"),
)
SCORES = [str(k) for k in range(6)]  # the answer tokens whose probabilities make a `probs` label


def rating_conversation(document: str, shots: tuple[tuple[str, str], ...] = SHOTS) -> list[dict[str, str]]:
    """The rubric, the worked examples, then the document to rate."""
    turns = [m for doc, score in shots for m in ({"role": "user", "content": f"Document:\n{doc}"},
                                                  {"role": "assistant", "content": score})]
    return [{"role": "system", "content": RUBRIC}, *turns, {"role": "user", "content": f"Document:\n{document}"}]


_SCORE_LINE = re.compile(r"score\s*(?:is|[:=])?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*5)?", re.IGNORECASE)
_BARE_SCORE = re.compile(r"^\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*5)?\s*\**\.?$")


def parse_score(answer: str) -> float | None:
    """The 0-5 score in a teacher's answer (the last "Score: N", or a bare number); None when there is none."""
    matches = _SCORE_LINE.findall(answer)
    value = matches[-1] if matches else (m.group(1) if (m := _BARE_SCORE.match(answer.strip())) else None)
    if value is None or not 0 <= float(value) <= 5:
        return None
    return float(value)


def _hash01(key: str, seed: int) -> float:
    return int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64


class Labeler:
    """Gives 0-5 scores (None: no usable score) to a sample of documents."""

    name = "labeler"

    def __deepcopy__(self, memo: dict) -> "Labeler":
        # datatrove's local executor deep-copies each task's pipeline; a teacher (a loaded model, a client with
        # a connection pool) must stay the one object. Slurm and Ray pickle it instead: use a picklable backend.
        return self

    def candidates(self, docs: Iterable[Document], n: int, seed: int) -> list[Document]:
        """The documents to label: a fixed pseudo-random sample of n (the smallest hashes of their ids)."""
        return [d for _, _, d in heapq.nsmallest(n, ((_hash01(d.id, seed), i, d) for i, d in enumerate(docs)))]

    def score(self, docs: list[Document]) -> list[float | None]:
        raise NotImplementedError


class TeacherLabeler(Labeler):
    """Asks a teacher model (any `Backend`) to rate each document with RUBRIC. `probs`: the expected score under its
    next-token distribution over the digits 0-5 (one forward pass; a continuous label that keeps the teacher's
    uncertainty, which argmax decoding throws away). `generate`: the score in its written answer (a teacher
    behind an endpoint without logprobs)."""

    def __init__(self, backend: Backend, method: Literal["probs", "generate"] = "probs",
                 sampling: Sampling = Sampling(temperature=0.0, max_tokens=128), batch: int = 64, max_chars: int = 4000):
        self.backend = backend
        self.method = method
        self.sampling = sampling
        self.batch = batch
        self.max_chars = max_chars  # the teacher sees the start of long documents
        self.name = f"teacher:{backend.model}:{method}"
        self.answers: list[str | dict[str, float]] = []  # the written answer, or the distribution over the digits

    def score(self, docs: list[Document]) -> list[float | None]:
        from rich.progress import Progress

        self.answers = []
        with Progress(transient=True) as progress:
            task = progress.add_task(bar_label(f"teacher labels ({self.backend.model}, {self.method})"), total=len(docs))
            for i in range(0, len(docs), self.batch):
                chunk = docs[i : i + self.batch]
                convs = [rating_conversation(d.text[: self.max_chars]) for d in chunk]
                if self.method == "probs":
                    self.answers += self.backend.choice_probs(convs, SCORES)
                else:
                    self.answers += [c[0] for c in self.backend.chat(convs, self.sampling, n=1)]
                progress.advance(task, len(chunk))
        return [expected_score(a) if isinstance(a, dict) else parse_score(a) for a in self.answers]


class FileLabels(Labeler):
    """Precomputed labels: jsonl rows with a `score` (0-5) and the document's `id` or its `text`."""

    def __init__(self, path: Path):
        self.name = f"file:{path}"
        self.by_key: dict[str, float] = {}
        for lineno, row in enumerate(read_jsonl(path), 1):
            key = row.get("id", row.get("text"))
            score = row.get("score")
            if not isinstance(key, str) or not isinstance(score, (int, float)) or not 0 <= score <= 5:
                raise UserError(f"{path}: row {lineno} needs an 'id' or 'text' string and a 'score' from 0 to 5")
            self.by_key[key] = float(score)

    def candidates(self, docs: Iterable[Document], n: int, seed: int) -> list[Document]:
        return [d for d in docs if d.id in self.by_key or d.text in self.by_key]

    def score(self, docs: list[Document]) -> list[float | None]:
        return [self.by_key.get(d.id, self.by_key.get(d.text)) for d in docs]


_REASONING = re.compile(
    r"\b(because|therefore|thus|hence|since|proof|prove|theorem|lemma|example|equation|step|solve|explain|"
    r"implies|derive|definition|consider|suppose)\b",
    re.IGNORECASE,
)


class HeuristicLabeler(Labeler):
    """Stand-in for a teacher: the density of reasoning words per 100 words, capped at 5. Crude, but offline."""

    name = "heuristic"

    def score(self, docs: list[Document]) -> list[float | None]:
        return [float(min(5, round(100 * len(_REASONING.findall(d.text)) / max(1, len(d.text.split())))))
                for d in docs]


def label_cut(scores: list[float], cfg: CurationClassifier) -> float:
    """The score at or above which a label is "high quality": `positive_score`, or with `positive_fraction` the
    score of the label at that rank (the top fraction; a teacher's scores need not be calibrated)."""
    if cfg.positive_fraction is None:
        return cfg.positive_score
    ranked = sorted(scores, reverse=True)
    return ranked[max(0, math.ceil(cfg.positive_fraction * len(ranked)) - 1)]


def label_distribution(scores: list[float], cut: float) -> dict:
    """What stats.json records of the labels: quartiles, counts per unit of score, the cut and the positive share."""
    ranked = sorted(scores)
    return {
        "label_cut": round(cut, 4),
        "label_positive_rate": sum(s >= cut for s in scores) / len(scores),
        "label_quartiles": [round(ranked[min(len(ranked) - 1, int(q * len(ranked)))], 4) for q in (0, 0.25, 0.5, 0.75, 1)],
        "label_histogram": [sum(min(int(s), 4) == k for s in scores) for k in range(5)],  # [0, 1), ..., [4, 5]
    }


def train(texts: list[str], scores: list[float], cfg: CurationClassifier, seed: int):
    """Fit the hashed n-gram classifier on the training split; precision/recall on the held-out split."""
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import precision_score, recall_score
    from sklearn.pipeline import make_pipeline

    heldout = [_hash01(t, seed + 1) < cfg.heldout_fraction for t in texts]
    cut = label_cut(scores, cfg)
    y = [s >= cut for s in scores]
    train_x = [t for t, h in zip(texts, heldout) if not h]
    train_y = [v for v, h in zip(y, heldout) if not h]
    if len(set(train_y)) < 2:
        raise UserError(
            f"quality classifier: the {len(train_y)} training labels are all "
            f"{'high' if train_y and train_y[0] else 'low'} (score >= {cut:g} is high); label more documents "
            "(classifier.label_sample) or change classifier.positive_score / positive_fraction"
        )
    model = make_pipeline(
        HashingVectorizer(n_features=cfg.n_features, ngram_range=(1, cfg.max_ngram), alternate_sign=False),
        LogisticRegression(class_weight="balanced", max_iter=1000),
    )
    model.fit(train_x, train_y)
    test_x = [t for t, h in zip(texts, heldout) if h]
    test_y = [v for v, h in zip(y, heldout) if h]
    metrics: dict = {"train_labels": len(train_x), "heldout_labels": len(test_x), "threshold": cfg.threshold,
                     **label_distribution(scores, cut)}
    if test_x:
        pred = [p >= cfg.threshold for p in model.predict_proba(test_x)[:, 1]]
        metrics |= {
            "heldout_positive_rate": sum(test_y) / len(test_y),  # the precision of keeping everything (chance)
            "precision": float(precision_score(test_y, pred, zero_division=0)),
            "recall": float(recall_score(test_y, pred, zero_division=0)) if any(test_y) else None,
            "heldout_kept_rate": sum(pred) / len(pred),
        }
    return model, metrics, heldout


class TrainQualityClassifier(PipelineStep):
    """One task: label a sample of the documents, train the classifier, save model.pkl, labels.jsonl, metrics.json."""

    type = "🧹 - PHIFORGE"
    name = "quality classifier: label and train"

    def __init__(self, labeler: Labeler, cfg: CurationClassifier, out_dir: str, seed: int,
                 unscored: set[str] = frozenset()) -> None:
        super().__init__()
        self.labeler = labeler
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.seed = seed
        self.unscored = unscored  # sources (inputs) the classifier leaves alone

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        scored = (d for d in data if d.metadata.get("source") not in self.unscored)
        docs = self.labeler.candidates(scored, self.cfg.label_sample, self.seed)
        log.info("labelling %d documents with %s", len(docs), self.labeler.name)
        start = time.perf_counter()
        scores = self.labeler.score(docs)
        seconds = time.perf_counter() - start
        answers = getattr(self.labeler, "answers", None) or [None] * len(docs)  # what the teacher said, if any
        labelled = [(d, s, a) for d, s, a in zip(docs, scores, answers) if s is not None]
        unparseable = len(docs) - len(labelled)
        self.stat_update("labels", value=len(labelled))
        self.stat_update("unparseable_labels", value=unparseable)
        if not labelled:
            raise UserError(f"quality classifier: no usable labels from {self.labeler.name} "
                            f"({len(docs)} documents to label, {unparseable} answers without a 0-5 score)")
        if unparseable:
            log.warning("%d of %d teacher answers had no 0-5 score; dropped", unparseable, len(docs))
        model, metrics, heldout = train([d.text for d, _, _ in labelled], [s for _, s, _ in labelled], self.cfg, self.seed)
        metrics |= {"labeler": self.labeler.name, "labelled": len(docs), "unparseable": unparseable,
                    "label_seconds": round(seconds, 1)}
        rows = ({"id": d.id, "score": s, "split": "heldout" if h else "train"} | ({"answer": a} if a is not None else {})
                for (d, s, a), h in zip(labelled, heldout))
        write_jsonl(self.out_dir / "labels.jsonl", rows)
        write_with(self.out_dir / "model.pkl", lambda p: p.write_bytes(pickle.dumps(model)))
        write_json(self.out_dir / "metrics.json", metrics)
        log.info("classifier: precision %s, recall %s on %d held-out labels",
                 metrics.get("precision"), metrics.get("recall"), metrics["heldout_labels"])
        yield from ()


class QualityClassifierFilter(PipelineStep):
    """Scores every document with the trained classifier (`quality_score` metadata), keeps those at the threshold."""

    type = "🧹 - PHIFORGE"
    name = "quality classifier: filter"

    def __init__(self, model_path: str, threshold: float, scores_dir: str, unscored: set[str] = frozenset(),
                 batch: int = 256) -> None:
        super().__init__()
        self.model_path = model_path
        self.threshold = threshold
        self.scores_dir = Path(scores_dir)
        self.unscored = unscored  # sources passed through unscored
        self.batch = batch

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        model = pickle.loads(Path(self.model_path).read_bytes())  # our own artifact from the train stage
        all_scores: list[float] = []

        def flush(batch: list[Document]) -> DocumentsPipeline:
            with self.track_time(unit="batch"):
                probs = model.predict_proba([d.text for d in batch])[:, 1]
            for doc, p in zip(batch, probs):
                doc.metadata["quality_score"] = round(float(p), 4)
                all_scores.append(float(p))
                if p < self.threshold:
                    self.stat_update("dropped")
                    continue
                add_provenance(doc, "quality_classifier")
                self.stat_update("kept")
                yield doc

        batch: list[Document] = []
        for doc in data:
            if doc.metadata.get("source") in self.unscored:
                self.stat_update("unscored")
                yield doc
                continue
            batch.append(doc)
            if len(batch) == self.batch:
                yield from flush(batch)
                batch = []
        if batch:
            yield from flush(batch)
        write_json(self.scores_dir / f"{rank:05d}.json", all_scores)


def plot_scores(scores: list[float], threshold: float, labels: list[float], cut: float, path: Path) -> None:
    """Histograms of the teacher's labels with their high-quality cut, and of the classifier's scores with the
    threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.hist(labels, bins=25, range=(0, 5), color="#55a868")
    left.axvline(cut, color="#c44e52", linestyle="--", label=f"high from {cut:.2f}")
    high = sum(s >= cut for s in labels)
    left.set(xlabel="teacher score (0-5)", ylabel="documents", title=f"labels: {high} of {len(labels)} high")
    left.legend()
    right.hist(scores, bins=40, range=(0, 1), color="#4c72b0")
    right.axvline(threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold:g}")
    kept = sum(s >= threshold for s in scores)
    right.set(xlabel="P(high quality)", ylabel="documents", title=f"quality classifier: {kept} of {len(scores)} kept")
    right.legend()
    fig.tight_layout()
    write_with(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
