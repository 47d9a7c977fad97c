"""The data mixture: each source's share of the tokens, the documents drawn to fill it, and the plan before training.

`plan_mixture` gives each source its quota; `mix_documents` (the packer's draw) fills the quotas from document
lengths alone, so `phiforge mixture plan` (`plan`) and what training draws agree. Unique tokens come from the
recipe (`{share, unique_tokens}`) or, for sources without them, are counted like the packer counts them: the
run's corpus (or synth) output, tokenised with the run's tokenizer, each document's tokens plus its separator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phiforge.data.documents import DocRefs, tokenize
from phiforge.data.sources import source_stage
from phiforge.files import read_jsonl
from phiforge.recipe import Recipe
from phiforge.rundir import StageDir

log = logging.getLogger("phiforge")


@dataclass
class SourceDraw:
    """How much of one source goes into a mixture: the report's Table 5 (planned, or drawn at pack time)."""

    share: float
    tokens: int
    unique_tokens: int

    @property
    def epochs(self) -> float:
        return self.tokens / max(1, self.unique_tokens)


def plan_mixture(shares: dict[str, float], unique_tokens: dict[str, int], total_tokens: int) -> dict[str, SourceDraw]:
    """Each source's quota of `total_tokens` by normalised share, and the epochs that makes over its unique tokens.

    `phiforge mixture plan` prints this; `mix_documents` draws documents to fill these quotas.
    """
    norm = sum(shares.values())
    return {
        name: SourceDraw(share / norm, int(total_tokens * share / norm), unique_tokens[name])
        for name, share in shares.items()
    }


def mixture_table(draws: dict[str, SourceDraw]) -> dict[str, dict]:
    return {n: vars(d) | {"epochs": round(d.epochs, 2)} for n, d in draws.items()}


def over_epoch_limit(draws: dict[str, SourceDraw], max_epochs: float) -> list[str]:
    """One warning per source repeated more than max_epochs times."""
    return [
        f"source '{name}' would be repeated {d.epochs:.1f} times (over max_epochs {max_epochs:g}): "
        "add unique data or lower its share"
        for name, d in draws.items()
        if d.epochs > max_epochs
    ]


def mix_documents(
    pools: dict[str, DocRefs], shares: dict[str, float], total_tokens: int, seed: int
) -> tuple[DocRefs, dict[str, SourceDraw]]:
    """Draw documents from each pool until it holds its share of `total_tokens`.

    A small pool repeats (more epochs), a large one is subsampled; the draw order within a pool
    is a seeded permutation per epoch, and the final document order is shuffled across pools.
    A document counts its tokens plus the separator after it. Only lengths are read, never tokens. Sources are
    drawn in name order: the order a recipe lists them in changes neither the draw nor its config hash.
    """
    rng = np.random.default_rng(seed)
    pools = {name: pools[name][pools[name].length > 0] for name in shares}
    plan = plan_mixture(shares, {n: int((p.length + 1).sum()) for n, p in pools.items()}, total_tokens)
    drawn: list[DocRefs] = []
    stats: dict[str, SourceDraw] = {}
    for name in sorted(plan):
        planned, pool, taken = plan[name], pools[name], 0
        while len(pool) and taken < planned.tokens:
            order = rng.permutation(len(pool))
            reached = taken + np.cumsum(pool.length[order] + 1)
            stop = min(len(order), int(np.searchsorted(reached, planned.tokens)) + 1)  # through the doc that fills it
            drawn.append(pool[order[:stop]])
            taken = int(reached[stop - 1])
        stats[name] = SourceDraw(planned.share, taken, planned.unique_tokens)
    mixed = DocRefs.concat(drawn) if drawn else DocRefs.whole(0, np.zeros(0, np.int64))
    return mixed[rng.permutation(len(mixed))], {name: stats[name] for name in shares}


# --- the pretraining mixture planned before training (`phiforge mixture plan`) ---


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
    from phiforge.tokenizer import load_tokenizer

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
