"""Curation steps on datatrove documents: language id, heuristic quality filters, provenance marks.

Offline: datatrove's quality filters and MinHash split words with a per-language tokenizer that for English is
spaCy's (`spacy.blank`), and its C4 bad-words filter and fastText language filter download their lists and models
at run time. Here the filters and MinHash get `OfflineWordTokenizer` (a regex, no spaCy), language id is py3langid
(its model ships inside the wheel), and the C4 bad-words filter is left out (its word lists are downloaded).
"""

from __future__ import annotations

import functools

import regex
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.word_tokenizers import WhitespaceTokenizer, strip_strings

from phiforge.errors import UserError
from phiforge.recipe import CurationFilters


class OfflineWordTokenizer(WhitespaceTokenizer):
    """datatrove's regex sentence splitter with regex words: letters/digits runs and single punctuation marks."""

    _word = regex.compile(r"\w+|[^\w\s]", regex.UNICODE)

    def word_tokenize(self, text: str) -> list[str]:
        return strip_strings(self._word.findall(text))


WORDS = OfflineWordTokenizer()


def add_provenance(doc, step: str) -> None:
    doc.metadata["filters_passed"] = [*doc.metadata.get("filters_passed", []), step]


@functools.cache
def language_identifier():
    """py3langid's model, normalised to probabilities; loaded once per process (it takes seconds)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class LanguageTagger(PipelineStep):
    """Sets `language` and `language_score` metadata (py3langid); drops languages not routed to the output."""

    type = "🧹 - PHIFORGE"
    name = "language id (py3langid)"

    def __init__(self, keep: list[str], min_score: float) -> None:
        super().__init__()
        self.keep = set(keep)
        self.min_score = min_score

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        identifier = language_identifier()
        for doc in data:
            with self.track_time():
                lang, score = identifier.classify(doc.text)
            doc.metadata["language"], doc.metadata["language_score"] = lang, round(float(score), 4)
            self.stat_update(f"language/{lang}")
            if (self.keep and lang not in self.keep) or score < self.min_score:
                self.stat_update("dropped/language")
                continue
            yield doc


FILTERS = {
    "gopher_repetition": (GopherRepetitionFilter, {}),
    "gopher_quality": (GopherQualityFilter, {}),
    # FineWeb's setting: keep lines without terminal punctuation (code, headings, lists), apply the other C4 rules.
    "c4_quality": (C4QualityFilter, {"filter_no_terminal_punct": False}),
    "fineweb_quality": (FineWebQualityFilter, {}),
}


def heuristic_filters(cfg: CurationFilters) -> list[tuple[str, BaseFilter]]:
    """datatrove's filters, each splitting words offline: published defaults, or the thresholds the config sets."""
    chosen = []
    for name, (cls, defaults) in FILTERS.items():
        setting = getattr(cfg, name)
        if setting is False:
            continue
        args = defaults | (setting if isinstance(setting, dict) else {})
        try:
            chosen.append((name, cls(**args, language=WORDS)))
        except TypeError as e:
            raise UserError(f"curation.filters.{name}: {e} (the keys are {cls.__name__}'s arguments)") from None
    return chosen


class HeuristicFilters(PipelineStep):
    """Runs each filter on documents of the filtered languages, records the ones passed, counts drops by reason."""

    type = "🧹 - PHIFORGE"
    name = "heuristic quality filters"

    def __init__(self, filters: list[tuple[str, BaseFilter]], languages: list[str]) -> None:
        super().__init__()
        self.filters = filters
        self.languages = set(languages)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            if doc.metadata.get("language") not in self.languages:
                self.stat_update("not_filtered/language")
                yield doc
                continue
            with self.track_time():
                dropped = None
                for name, f in self.filters:
                    result = f.filter(doc)
                    ok, reason = result if isinstance(result, tuple) else (result, "")
                    if not ok:
                        dropped = f"dropped/{name}/{reason}" if reason else f"dropped/{name}"
                        break
                    add_provenance(doc, name)
            if dropped:
                self.stat_update("dropped", dropped)
                continue
            self.stat_update("passed")
            yield doc


class MarkPassed(PipelineStep):
    """Records a step (a dedup filter) in every surviving document's `filters_passed`."""

    type = "🧹 - PHIFORGE"
    name = "provenance"

    def __init__(self, step: str) -> None:
        super().__init__()
        self.step = step

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            add_provenance(doc, self.step)
            self.stat_update("passed")
            yield doc
