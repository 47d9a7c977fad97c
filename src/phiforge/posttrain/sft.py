"""SFT stage: ChatML conversations, loss on the assistant's tokens only."""

from __future__ import annotations

import logging
import random
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from phiforge import progress
from phiforge.data.chat import encode_chat
from phiforge.data.documents import write_documents
from phiforge.data.layouts import Examples
from phiforge.data.shards import cached_packed, write_shards
from phiforge.errors import UserError
from phiforge.files import read_jsonl
from phiforge.model import load_model
from phiforge.recipe import SFTConfig
from phiforge.rundir import StageResult
from phiforge.stage import TRAINING_OUTPUTS, Stage, StageContext
from phiforge.tokenizer import add_chatml, load_tokenizer
from phiforge.train.export import export_model
from phiforge.train.loop import train
from phiforge.train.loss import NextTokenLoss
from phiforge.train.optim import LRSchedule

log = logging.getLogger("phiforge")

ROLES = {"system", "user", "assistant"}


def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    conversations = []
    for i, row in enumerate(read_jsonl(path), 1):
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{path}: row {i} needs a non-empty 'messages' list")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise UserError(f"{path}: row {i}: each message needs a role in {sorted(ROLES)} and a string content")
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{path}: row {i} has no assistant message to learn from")
        conversations.append(messages)
    if not conversations:
        raise UserError(f"{path}: no conversations")
    return conversations


def data_path(ctx: StageContext) -> Path:
    """sft.data, else the synthetic data engine's conversations when the recipe has one, else the corpus stage's."""
    cfg = ctx.recipe.sft
    assert cfg is not None
    return Path(cfg.data) if cfg.data is not None else ctx.input("synth" if ctx.recipe.synth else "corpus", "sft")


def train_sft(model: PreTrainedModel, tok: PreTrainedTokenizerBase, conversations: list[list[dict[str, str]]],
              out: Path, cfg: SFTConfig, seed: int) -> dict:
    """SFT of `model` on `conversations` (Phi-4 chat format, loss on the answers) into OUT/model; OUT keeps the
    packed shards, checkpoints and metrics.jsonl, so a killed run resumes."""
    added = add_chatml(tok, model)
    if added:
        log.info("sft: added %s to the model's vocabulary for the Phi-4 chat format", " ".join(added))
    conversations = list(conversations)
    random.Random(seed).shuffle(conversations)
    n_val = max(1, len(conversations) // 20)

    def pack(convs: list[list[dict[str, str]]], directory: Path) -> None:
        encoded = (encode_chat(tok, c) for c in convs)
        docs = write_documents(directory / "documents" / "sft", (([ids], [labels]) for ids, labels in encoded))
        write_shards(directory, Examples(docs, cfg.seq_len, tok.pad_token_id), cfg.shard_tokens, {"seed": seed})

    data = cached_packed(out / "data" / "train", lambda d: pack(conversations[n_val:], d))
    val = cached_packed(out / "data" / "val", lambda d: pack(conversations[:n_val], d))
    log.info("sft: %d conversations in %d rows of %d tokens", len(conversations) - n_val, len(data), cfg.seq_len)
    result = train(model, cfg, LRSchedule(cfg.lr, cfg), NextTokenLoss(data, val, cfg.batch_size, seed + 2, cfg.compile),
                   out, "sft")
    export_model(model, tok, out / "model")
    return {"conversations": len(conversations) - n_val, "added_tokens": added, **result.metrics()}


def run(ctx: StageContext) -> StageResult:
    recipe = ctx.recipe
    cfg = recipe.sft
    assert cfg is not None
    source = ctx.start_model(cfg.init_from)
    model = load_model(source)
    # A model directory that carries its tokenizer (any HF causal LM) brings it; else the run's.
    tok = load_tokenizer(source if (source / "tokenizer_config.json").is_file() else ctx.input("tokenizer", "tokenizer"))
    metrics = train_sft(model, tok, read_conversations(data_path(ctx)), ctx.out, cfg, recipe.seed)
    return StageResult(metrics={"init_from": str(source), **metrics})


STAGE = Stage("sft", "Supervised fine-tuning in ChatML (needs a model: the previous stage or sft.init_from).", run, "sft",
              outputs=TRAINING_OUTPUTS, trains=True, passes_model=True, all_ranks=True,
              estimate=lambda recipe: progress.FIXED_S + progress.training_s(recipe.sft))
