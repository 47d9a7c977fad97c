"""Pretraining and midtraining stages: build their data mix, then run the shared training loop."""

from __future__ import annotations

import json
import logging

from phiforge.data.corpus import source_docs
from phiforge.data.packing import mix_documents, over_epoch_limit, pack_stream
from phiforge.errors import UserError
from phiforge.files import write_json
from phiforge.model import build_model, config_for_tokenizer, extend_context, load_config, load_model
from phiforge.rundir import StageResult
from phiforge.stage import StageContext
from phiforge.tokenizer import document_separator_id, load_tokenizer
from phiforge.train.export import cached_packed, export_model, tokenize, unigram_loss
from phiforge.train.loop import train
from phiforge.train.loss import NextTokenLoss

log = logging.getLogger("phiforge")


def _tokenized_sources(ctx: StageContext, tok, names: list[str], split: str) -> dict[str, list[list[int]]]:
    return {name: tokenize(tok, source_docs(ctx, name, split)) for name in names}


def _heldout(ctx: StageContext, tok, names: list[str], seq_len: int):
    docs = [d for ds in _tokenized_sources(ctx, tok, names, "heldout").values() for d in ds]
    return pack_stream(docs, seq_len, document_separator_id(tok))


def run_pretrain(ctx: StageContext) -> StageResult:
    cfg, seed = ctx.recipe.pretrain, ctx.recipe.seed
    tok = load_tokenizer(ctx.upstream("tokenizer") / "tokenizer")
    eos = document_separator_id(tok)
    names = list(cfg.shares)
    rows_needed = cfg.steps * cfg.grad_accum * cfg.batch_size

    def build_train():
        docs, draws = mix_documents(_tokenized_sources(ctx, tok, names, "train"), cfg.shares, cfg.token_budget, seed)
        for warning in over_epoch_limit(draws, cfg.max_epochs):
            log.warning("pretrain mixture: %s", warning)
        write_json(ctx.out / "data" / "mixture.json", {n: vars(d) | {"epochs": round(d.epochs, 2)} for n, d in draws.items()})
        return pack_stream(docs, cfg.seq_len, eos, min_rows=rows_needed)

    data = cached_packed(ctx.out / "data" / "train", build_train)
    val = cached_packed(ctx.out / "data" / "val", lambda: _heldout(ctx, tok, names, cfg.seq_len))

    if cfg.init_from is not None:
        model = load_model(cfg.init_from)
    else:
        model = build_model(config_for_tokenizer(load_config(ctx.recipe.model.preset), tok, cfg.seq_len), seed)
    if model.config.vocab_size < len(tok):
        raise UserError(f"model vocab ({model.config.vocab_size}) is smaller than the tokenizer ({len(tok)})")
    n_params = sum(p.numel() for p in model.parameters())
    log.info("pretrain: %s parameters, %d rows of %d tokens", f"{n_params:,}", len(data.tokens), cfg.seq_len)

    objective = NextTokenLoss(data, val, cfg.batch_size, seed, cfg.compile)
    result = train(model, cfg, cfg.lr, objective, ctx.out, "pretrain")
    export_model(model, tok, ctx.out / "model")
    return StageResult(
        outputs={"model": "model/", "data": "data/", "metrics": "metrics.jsonl"},
        metrics={
            "parameters": n_params,
            **result.metrics(),
            "unigram_val_loss": unigram_loss(data, val, model.config.vocab_size),
            "mixture": json.loads((ctx.out / "data" / "mixture.json").read_text()),
        },
    )


def run_midtrain(ctx: StageContext) -> StageResult:
    """Longer context, higher RoPE base, lr / 10; long documents mixed with recall data, as in the report."""
    recipe = ctx.recipe
    cfg, pre, seed = recipe.midtrain, recipe.pretrain, recipe.seed
    assert cfg is not None
    tok = load_tokenizer(ctx.upstream("tokenizer") / "tokenizer")
    eos = document_separator_id(tok)
    source = cfg.init_from or ctx.upstream("pretrain") / "model"
    base_config = load_config(str(source))
    context = base_config.max_position_embeddings * cfg.context_multiplier
    model = load_model(source, extend_context(base_config, context, cfg.rope_theta))
    lr = cfg.lr if cfg.lr is not None else pre.lr * cfg.lr_scale
    names = recipe.data_sources()
    recall_names = list(pre.shares)
    long_min = cfg.long_min_tokens or context // 2
    rows_needed = cfg.steps * cfg.grad_accum * cfg.batch_size

    def build_train():
        by_source = _tokenized_sources(ctx, tok, names, "train")
        long_docs = [d[: context + 1] for ds in by_source.values() for d in ds if len(d) >= long_min]
        recall = [d for n in recall_names for d in by_source[n]]
        if not long_docs:
            raise UserError(
                f"midtrain: no corpus document has {long_min} tokens or more; lower midtrain.long_min_tokens "
                "or add long documents to the corpus"
            )
        docs, draws = mix_documents(
            {"long": long_docs, "recall": recall},
            {"long": cfg.long_share, "recall": 1 - cfg.long_share},
            rows_needed * (context + 1),
            seed + 1,
        )
        write_json(ctx.out / "data" / "mixture.json", {n: vars(d) | {"epochs": round(d.epochs, 2)} for n, d in draws.items()})
        return pack_stream(docs, context, eos, min_rows=rows_needed)

    data = cached_packed(ctx.out / "data" / "train", build_train)
    val = cached_packed(ctx.out / "data" / "val", lambda: _heldout(ctx, tok, names, context))
    log.info("midtrain: context %d, rope base %g, lr %.2e, %d rows", context, cfg.rope_theta, lr, len(data.tokens))
    objective = NextTokenLoss(data, val, cfg.batch_size, seed + 1, cfg.compile)
    result = train(model, cfg, lr, objective, ctx.out, "midtrain")
    export_model(model, tok, ctx.out / "model")
    return StageResult(
        outputs={"model": "model/", "data": "data/", "metrics": "metrics.jsonl"},
        metrics={
            "context": context,
            "rope_theta": cfg.rope_theta,
            "lr": lr,
            **result.metrics(),
            "mixture": json.loads((ctx.out / "data" / "mixture.json").read_text()),
        },
    )
