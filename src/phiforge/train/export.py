"""Stage outputs shared by the training stages: cached packed data and exported HF model directories."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from phiforge import distributed
from phiforge.data.packing import INDEX, Documents, Packed, remove_build_files, write_documents
from phiforge.files import write_with
from phiforge.tokenizer import ENDOFTEXT, IM_END


def cached_packed(directory: Path, build: Callable[[Path], None]) -> Packed:
    """The packed shards in `directory`, memory-mapped; `build(directory)` writes them (resumably) the first time.

    Under torchrun rank 0 packs while the other ranks wait, then every rank maps the same shards."""
    if distributed.is_main():
        if not (directory / INDEX).is_file():
            build(directory)
        remove_build_files(directory)  # left behind by a pack killed just after writing its index
    distributed.wait_for_main(f"the packed data in {directory}")
    return Packed.load(directory)


def tokenize(tok: PreTrainedTokenizerBase, docs: list[str]) -> list[list[int]]:
    return tok(docs, add_special_tokens=False)["input_ids"] if docs else []


def tokenized(directory: Path, tok: PreTrainedTokenizerBase, texts: Iterable[str], batch: int = 1024) -> Documents:
    """Texts tokenised batch by batch into flat files in `directory` (kept from a killed pack, reused)."""
    texts = iter(texts)
    batches = iter(lambda: list(islice(texts, batch)), [])
    return write_documents(directory, ((tokenize(tok, b), None) for b in batches))


def export_model(model: PreTrainedModel, tok: PreTrainedTokenizerBase, path: Path) -> None:
    """An HF directory (safetensors weights, config, tokenizer with chat template) written whole, by rank 0
    (the rank that holds the trained weights after a multi-process run)."""
    if not distributed.is_main():
        return
    eos = [tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(ENDOFTEXT)]
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=eos, pad_token_id=model.config.pad_token_id
    )

    def write(tmp: Path) -> None:
        model.to(torch.float32).save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    write_with(path, write)


def unigram_loss(train: Packed, val: Packed, vocab_size: int) -> float:
    """Cross-entropy of the held-out tokens under add-one-smoothed training unigram frequencies.

    The floor any model that learned something beyond token frequencies must beat. Counted shard by shard.
    """
    counts = np.ones(vocab_size, dtype=np.float64)
    for shard in train.tokens:
        counts += np.bincount(shard[:, 1:].ravel(), minlength=vocab_size)[:vocab_size]
    logp = np.log(counts / counts.sum())
    return float(-np.concatenate([logp[shard[:, 1:].ravel()] for shard in val.tokens]).mean())
