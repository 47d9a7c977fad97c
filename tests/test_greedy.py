"""Greedy decoding (generation/greedy.py) on a tiny trained HF model, and the pad id it batches with."""

from __future__ import annotations

import pytest

from phiforge.generation.greedy import chat_replies, cut, greedy
from phiforge.tokenizer import IM_END, chat_prompt_ids, pad_id, stop_ids

from planted import planted_tokenizer, train_planted_hf


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return train_planted_hf(tmp_path_factory.mktemp("planted"))  # answers the chat prompt `Q` with `x y 7|3`


def test_a_short_prompt_batched_with_a_long_one_is_answered_as_alone(planted):
    model, tok = planted
    model.eval()
    short, long = chat_prompt_ids(tok, "Q"), chat_prompt_ids(tok, "Q x y x y Q")
    alone = greedy(model, tok, [short], 6, stop_ids(tok), batch_size=1)
    batched = greedy(model, tok, [long, short, short], 6, stop_ids(tok), batch_size=3)  # left padding, masked
    assert alone[0].split()[:2] == ["x", "y"] and IM_END in alone[0]
    assert batched[1].split()[:2] == batched[2].split()[:2] == ["x", "y"]  # the answer digit itself is a coin toss
    replies = chat_replies(model, tok, ["Q", "Q x y x y Q"], 6, batch_size=2)
    assert replies[0].split()[:2] == ["x", "y"] and not any(IM_END in r or "<|im_start|>" in r for r in replies)


def test_pad_id_is_the_pad_token_else_the_first_stop_id():
    tok = planted_tokenizer()
    assert pad_id(tok) == tok.pad_token_id != stop_ids(tok)[0]
    tok.pad_token = None
    assert pad_id(tok) == stop_ids(tok)[0] == tok.convert_tokens_to_ids(IM_END)


def test_cut_stops_at_each_marker_in_turn():
    assert cut("a b<|im_end|>c<|im_start|>d", "<|im_end|>", "<|im_start|>") == "a b"
    assert cut("x\n\nProblem: y", "\n\n", "Problem:") == "x"
