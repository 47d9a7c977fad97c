"""Tokenizer stage: train a byte-level BPE on the corpus, or adopt a given tokenizer (e.g. Phi-4's)."""

from __future__ import annotations

from collections.abc import Iterator

from phiforge.data.sources import source_docs
from phiforge.errors import UserError
from phiforge.files import write_with
from phiforge.rundir import StageResult
from phiforge.stage import Stage, StageContext
from phiforge.tokenizer import load_tokenizer, missing_chatml, train_tokenizer


def _training_texts(ctx: StageContext, budget: int) -> Iterator[str]:
    """Round-robin over sources so each one shapes the vocabulary, up to `budget` characters."""
    names = ctx.recipe.data_sources()
    per_source = budget // max(1, len(names))
    for name in names:
        used = 0
        for doc in source_docs(ctx, name):
            if used >= per_source:
                break
            yield doc[: per_source - used]
            used += len(doc)


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.recipe.tokenizer
    if cfg.path is not None:
        tok = load_tokenizer(cfg.path)
        missing = missing_chatml(tok)
        if missing:  # a model trained from scratch here learns the Phi-4 chat format
            raise UserError(f"{cfg.path}: tokenizer lacks the Phi-4 special tokens {missing}")
    else:
        tok = train_tokenizer(_training_texts(ctx, cfg.max_training_chars), cfg.vocab_size)
    write_with(ctx.out / "tokenizer", tok.save_pretrained)
    sample = "def add(a, b):\n    return a + b\n\nThe answer is 42."
    return StageResult(
        metrics={"vocab_size": len(tok), "sample_tokens": len(tok(sample)["input_ids"]), "sample_chars": len(sample)},
    )


STAGE = Stage("tokenizer", "Train the byte-level BPE (or adopt tokenizer.path) from the corpus.", run, "tokenizer",
              outputs={"tokenizer": "tokenizer/"}, needs=lambda recipe: recipe.corpus is not None)
