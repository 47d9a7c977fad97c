"""Chat conversations as training examples: the Phi-4 chat rendering in token ids, with loss on the answers only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from phiforge.data.layouts import IGNORE
from phiforge.tokenizer import IM_END, IM_SEP, IM_START

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def encode_chat(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of the Phi-4 chat rendering and labels that keep only assistant content and <|im_end|>."""
    ids: list[int] = []
    labels: list[int] = []
    for m in messages:
        header = tok.encode(f"{IM_START}{m['role']}{IM_SEP}", add_special_tokens=False)
        body = tok.encode(m["content"], add_special_tokens=False) + [tok.convert_tokens_to_ids(IM_END)]
        ids += header + body
        labels += [IGNORE] * len(header) + (body if m["role"] == "assistant" else [IGNORE] * len(body))
    return ids, labels
