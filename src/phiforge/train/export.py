"""A trained model as a Hugging Face directory: what every training stage leaves in OUT/model."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from phiforge import distributed
from phiforge.files import write_with
from phiforge.tokenizer import ENDOFTEXT, IM_END


def export_model(model: PreTrainedModel, tok: PreTrainedTokenizerBase, path: Path) -> None:
    """An HF directory (safetensors weights, config, tokenizer with chat template) written whole, by rank 0
    (the rank that holds the trained weights after a multi-process run); every rank returns once it is there, so
    a rank may load it next (hallucination's SFT model, which its DPO starts from)."""
    if distributed.is_main():
        write_model(model, tok, path)
    distributed.wait_for_main(f"the model in {path}")


def write_model(model: PreTrainedModel, tok: PreTrainedTokenizerBase, path: Path) -> None:
    eos = [tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(ENDOFTEXT)]
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=eos, pad_token_id=model.config.pad_token_id
    )

    def write(tmp: Path) -> None:
        model.to(torch.float32).save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    write_with(path, write)
