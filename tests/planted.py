"""A language model with a planted pivot: a hand-set next-token table behind the HF causal-LM call signature.

Solutions are `length` tokens ending in <|im_end|>: filler words x / y drawn uniformly, except at position
`pivot`, where the answer is 7 (probability p_right) or 3 (or any two `tokens`). With the numeric verifier and answer 7,
p(success | prefix) is p_right before the pivot and 1 or 0 after it: exactly one pivotal token per solution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from phiforge.tokenizer import CHAT_TEMPLATE, IM_END, IM_SEP, PAD, SPECIAL_TOKENS, ENDOFTEXT

WORDS = ["user", "assistant", "system", "Q", "x", "y", "7", "3"]


def planted_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=ENDOFTEXT, eos_token=IM_END, pad_token=PAD,
                                   chat_template=CHAT_TEMPLATE)


@dataclass
class Output:
    logits: torch.Tensor


class PlantedLM(torch.nn.Module):
    def __init__(self, tok: PreTrainedTokenizerFast, pivot: int = 4, length: int = 10, p_right: float = 0.5,
                 tokens: tuple[str, str] = ("7", "3")):
        super().__init__()
        self.sep = tok.convert_tokens_to_ids(IM_SEP)
        ids = tok.convert_tokens_to_ids
        table = torch.full((length, len(tok)), -1e9)
        for j in range(length - 1):
            table[j, ids("x")] = table[j, ids("y")] = math.log(0.5)
        table[pivot] = -1e9
        table[pivot, ids(tokens[0])], table[pivot, ids(tokens[1])] = math.log(p_right), math.log(1 - p_right)
        table[length - 1, ids(IM_END)] = 0.0
        self.table = torch.nn.Parameter(table, requires_grad=False)  # a parameter: samplers find the device
        self.length = length

    def forward(self, input_ids: torch.Tensor, **_) -> Output:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        last_sep = torch.where(input_ids == self.sep, pos, -1).cummax(dim=1).values
        return Output(self.table[(pos - last_sep).clamp(max=self.length - 1)])


def train_planted_hf(out_dir, steps: int = 80, seed: int = 0, hidden_size: int = 32):
    """A real HF causal LM (1-layer Phi-3, 2 heads) trained to answer Q with `x y 7|3 <|im_end|>`, 7 or 3 at
    even odds.

    Saved with the planted tokenizer in `out_dir`; its one pivot is the answer token (position 2). vLLM's CPU
    attention wants heads of 32 dimensions or more: hidden_size 64.
    """
    from phiforge.model import build_model, phi3_config
    from phiforge.tokenizer import chat_prompt_ids

    tok = planted_tokenizer()
    config = phi3_config(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = build_model(config, seed)
    prompt = chat_prompt_ids(tok, "Q")
    rows = [prompt + tok.convert_tokens_to_ids(["x", "y", answer, IM_END]) for answer in ("7", "3")] * 16
    ids = torch.tensor(rows)
    labels = ids.clone()
    labels[:, : len(prompt)] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return model, tok
