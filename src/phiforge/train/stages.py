"""Pretraining and midtraining stages: pack their data mix into shards, then run the shared training loop."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from phiforge import progress
from phiforge.data.documents import DocRefs, Documents, tokenized
from phiforge.data.layouts import Stream
from phiforge.data.mixture import mix_documents, mixture_table, over_epoch_limit
from phiforge.data.shards import cached_packed, read_index, write_shards
from phiforge.data.sources import source_docs
from phiforge.errors import UserError
from phiforge.model import build_model, config_for_tokenizer, extend_context, load_config, load_model
from phiforge.rundir import StageResult
from phiforge.stage import TRAINING_OUTPUTS, Stage, StageContext
from phiforge.tokenizer import document_separator_id, load_tokenizer
from phiforge.train.export import export_model
from phiforge.train.loop import train
from phiforge.train.loss import NextTokenLoss, unigram_loss
from phiforge.train.optim import LRSchedule

log = logging.getLogger("phiforge")


def _tokenized_sources(ctx: StageContext, tok, names: list[str], split: str, directory: Path) -> list[Documents]:
    """Each source tokenised into `directory/documents/NAME/`, one source at a time."""
    return [tokenized(directory / "documents" / name, tok, source_docs(ctx, name, split)) for name in names]


def _pack_heldout(ctx: StageContext, tok, names: list[str], seq_len: int, shard_tokens: int, directory: Path) -> None:
    """Every held-out document once, in corpus order."""
    sources = _tokenized_sources(ctx, tok, names, "heldout", directory)
    refs = DocRefs.concat([DocRefs.whole(i, s.lengths) for i, s in enumerate(sources)])
    write_shards(directory, Stream(sources, refs, seq_len, document_separator_id(tok)), shard_tokens, {})


def run_pretrain(ctx: StageContext) -> StageResult:
    cfg, seed = ctx.recipe.pretrain, ctx.recipe.seed
    tok = load_tokenizer(ctx.input("tokenizer", "tokenizer"))
    eos = document_separator_id(tok)
    names = sorted(cfg.shares)  # source ids by name: the mixture's order in the recipe is not hashed
    rows_needed = cfg.steps * cfg.grad_accum * cfg.batch_size

    def build_train(directory: Path) -> None:
        sources = _tokenized_sources(ctx, tok, names, "train", directory)
        pools = {name: DocRefs.whole(i, s.lengths) for i, (name, s) in enumerate(zip(names, sources))}
        refs, draws = mix_documents(pools, cfg.shares, cfg.token_budget, seed)
        for warning in over_epoch_limit(draws, cfg.max_epochs):
            log.warning("pretrain mixture: %s", warning)
        stream = Stream(sources, refs, cfg.seq_len, eos, min_rows=rows_needed)
        write_shards(directory, stream, cfg.shard_tokens, {"seed": seed, "mixture": mixture_table(draws)})

    data = cached_packed(ctx.out / "data" / "train", build_train)
    val = cached_packed(ctx.out / "data" / "val",
                        lambda d: _pack_heldout(ctx, tok, names, cfg.seq_len, cfg.shard_tokens, d))

    if cfg.init_from is not None:
        model = load_model(cfg.init_from)
    else:
        model = build_model(config_for_tokenizer(load_config(ctx.recipe.model.preset), tok, cfg.seq_len), seed)
    if model.config.vocab_size < len(tok):
        raise UserError(f"model vocab ({model.config.vocab_size}) is smaller than the tokenizer ({len(tok)})")
    n_params = sum(p.numel() for p in model.parameters())
    log.info("pretrain: %s parameters, %d rows of %d tokens in %d shards", f"{n_params:,}", len(data), cfg.seq_len,
             len(data.tokens))

    objective = NextTokenLoss(data, val, cfg.batch_size, seed, cfg.compile)
    result = train(model, cfg, LRSchedule(cfg.lr, cfg), objective, ctx.out, "pretrain")
    export_model(model, tok, ctx.out / "model")
    return StageResult(
        metrics={
            "parameters": n_params,
            **result.metrics(),
            "unigram_val_loss": unigram_loss(data, val, model.config.vocab_size),
            "mixture": read_index(ctx.out / "data" / "train")["mixture"],
        },
    )


def run_midtrain(ctx: StageContext) -> StageResult:
    """Longer context, higher RoPE base, lr / 10; long documents mixed with recall data, as in the report."""
    recipe = ctx.recipe
    cfg, pre, seed = recipe.midtrain, recipe.pretrain, recipe.seed
    assert cfg is not None
    tok = load_tokenizer(ctx.input("tokenizer", "tokenizer"))
    eos = document_separator_id(tok)
    source = ctx.start_model(cfg.init_from)
    base_config = load_config(str(source))
    context = base_config.max_position_embeddings * cfg.context_multiplier
    model = load_model(source, extend_context(base_config, context, cfg.rope_theta))
    lr = cfg.lr if cfg.lr is not None else pre.lr * cfg.lr_scale
    names = recipe.data_sources()
    recall_names = list(pre.shares)
    long_min = cfg.long_min_tokens or context // 2
    rows_needed = cfg.steps * cfg.grad_accum * cfg.batch_size

    def build_train(directory: Path) -> None:
        sources = _tokenized_sources(ctx, tok, names, "train", directory)
        every = DocRefs.concat([DocRefs.whole(i, s.lengths) for i, s in enumerate(sources)])
        long_docs = every[every.length >= long_min]
        long_docs.length = long_docs.length.clip(max=context + 1)  # a long document fills at most a row
        recall = every[np.isin(every.source, [names.index(n) for n in recall_names])]
        if not len(long_docs):
            raise UserError(
                f"midtrain: no corpus document has {long_min} tokens or more; lower midtrain.long_min_tokens "
                "or add long documents to the corpus"
            )
        refs, draws = mix_documents(
            {"long": long_docs, "recall": recall},
            {"long": cfg.long_share, "recall": 1 - cfg.long_share},
            rows_needed * (context + 1),
            seed + 1,
        )
        stream = Stream(sources, refs, context, eos, min_rows=rows_needed)
        write_shards(directory, stream, cfg.shard_tokens, {"seed": seed + 1, "mixture": mixture_table(draws)})

    data = cached_packed(ctx.out / "data" / "train", build_train)
    val = cached_packed(ctx.out / "data" / "val",
                        lambda d: _pack_heldout(ctx, tok, names, context, cfg.shard_tokens, d))
    log.info("midtrain: context %d, rope base %g, lr %.2e, %d rows in %d shards", context, cfg.rope_theta, lr,
             len(data), len(data.tokens))
    objective = NextTokenLoss(data, val, cfg.batch_size, seed + 1, cfg.compile)
    result = train(model, cfg, LRSchedule(lr, cfg), objective, ctx.out, "midtrain")
    export_model(model, tok, ctx.out / "model")
    return StageResult(
        metrics={
            "context": context,
            "rope_theta": cfg.rope_theta,
            "lr": lr,
            **result.metrics(),
            "mixture": read_index(ctx.out / "data" / "train")["mixture"],
        },
    )


PRETRAIN = Stage("pretrain", "Pretrain from RECIPE's 'pretrain' section (needs corpus and tokenizer).", run_pretrain,
                 "pretrain", outputs=TRAINING_OUTPUTS, trains=True, passes_model=True, all_ranks=True,
                 # an ablation recipe's pretrain section is the settings its variants train with (the ablation stage)
                 needs=lambda recipe: recipe.ablation is None,
                 estimate=lambda recipe: progress.FIXED_S + progress.training_s(recipe.pretrain))
MIDTRAIN = Stage("midtrain", "Midtrain: longer context, higher RoPE base, lr / 10 (needs pretrain or midtrain.init_from).",
                 run_midtrain, "midtrain", outputs=TRAINING_OUTPUTS, trains=True, passes_model=True, all_ranks=True,
                 estimate=lambda recipe: progress.FIXED_S + progress.training_s(recipe.midtrain))
