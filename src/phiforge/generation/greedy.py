"""Greedy decoding of a local model (an HF causal LM and its tokenizer) on token-id prompts and chat turns.

The one decoding path of every measurement that compares models on the same prompts: the eval tasks, dpo's
before/after on held-out problems and the hallucination stage's held-out SimpleQA grades.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from phiforge.tokenizer import IM_START, chat_prompt_ids, pad_id, stop_ids


@torch.no_grad()
def greedy(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[list[int]], max_new_tokens: int,
           stops: list[int], batch_size: int) -> list[str]:
    """Greedy continuations of token-id prompts, batched with left padding, decoded with their special tokens."""
    pad = pad_id(tok)
    outs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        gen = model.generate(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=pad,
        )
        outs += tok.batch_decode(gen[:, width:], skip_special_tokens=False)
    return outs


def chat_replies(model: PreTrainedModel, tok: PreTrainedTokenizerBase, questions: list[str], max_new_tokens: int,
                 batch_size: int) -> list[str]:
    """Greedy replies to single user turns in the model's chat format, cut where the reply ends (a stop token, or
    the model opening a new turn)."""
    stops = stop_ids(tok)
    replies = greedy(model, tok, [chat_prompt_ids(tok, q) for q in questions], max_new_tokens, stops, batch_size)
    return [cut(r, *tok.convert_ids_to_tokens(stops), IM_START) for r in replies]


def cut(text: str, *markers: str) -> str:
    """`text` up to the first of each marker in turn."""
    for m in markers:
        text = text.split(m)[0]
    return text
