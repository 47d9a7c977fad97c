"""The pretraining mixture planned before any training: tokens drawn, unique tokens and epochs per source.

The quotas come from `packing.plan_mixture`, the function the pretrain stage's packer fills, so the plan
and what training draws agree. Unique tokens come from the recipe (`{share, unique_tokens}`) or, for
sources without them, are counted like the packer counts them: the run's corpus stage output, tokenised
with the run's tokenizer, each document's tokens plus its separator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from phiforge.data.packing import SourceDraw, plan_mixture
from phiforge.recipe import Recipe
from phiforge.rundir import StageDir

log = logging.getLogger("phiforge")


@dataclass
class MixturePlan:
    total_tokens: int
    draws: dict[str, SourceDraw]
    measured: list[str]  # sources whose unique tokens were counted in the run directory
    unknown: list[str]  # sources with no unique_tokens in the recipe and nothing to count them from

    def as_dict(self) -> dict:
        return {
            "total_tokens": self.total_tokens,
            "sources": {
                n: vars(d) | {"epochs": None if n in self.unknown else round(d.epochs, 2)} for n, d in self.draws.items()
            },
            "measured": self.measured,
            "unknown": self.unknown,
        }


def _count_unique_tokens(recipe: Recipe, run_dir: Path, names: list[str]) -> dict[str, int]:
    from phiforge.data.corpus import source_stage
    from phiforge.files import read_jsonl
    from phiforge.tokenizer import load_tokenizer
    from phiforge.train.export import tokenize

    tok = load_tokenizer(run_dir / "tokenizer" / "tokenizer")
    counts = {}
    for name in names:
        docs = tokenize(tok, [row["text"] for row in read_jsonl(run_dir / source_stage(recipe, name) / "train" / f"{name}.jsonl")])
        counts[name] = sum(len(d) + 1 for d in docs if d)
    return counts


def plan(recipe: Recipe, run_dir: Path) -> MixturePlan:
    cfg = recipe.pretrain
    given = {n: int(v.unique_tokens) for n, v in cfg.mixture.items() if v.unique_tokens is not None and n in cfg.shares}
    missing = [n for n in cfg.shares if n not in given]
    measured: dict[str, int] = {}
    needed = ("corpus", "tokenizer") + (("synth",) if recipe.synth else ())
    if missing and all(StageDir(run_dir, s).status() == "done" for s in needed):
        log.info("counting unique tokens of %s in %s", ", ".join(missing), run_dir)
        measured = _count_unique_tokens(recipe, run_dir, missing)
    unknown = [n for n in missing if n not in measured]
    unique = {n: given.get(n, measured.get(n, 0)) for n in cfg.shares}
    return MixturePlan(cfg.token_budget, plan_mixture(cfg.shares, unique, cfg.token_budget), list(measured), unknown)
