"""Unit tests of the pieces every stage relies on."""

from __future__ import annotations

import json

import pytest

from phiforge.data import synthetic_math
from phiforge.model import load_config, model_info
from phiforge.recipe import TrainConfig
from phiforge.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS
from phiforge.train.optim import lr_factor

from conftest import phiforge


def test_chat_template_is_phi4_format(tok):
    rendered = tok.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user<|im_sep|>Hello<|im_end|><|im_start|>assistant<|im_sep|>"
    rendered = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], tokenize=False
    )
    assert rendered == "<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|>"
    assert tok.chat_template == CHAT_TEMPLATE


def test_special_tokens_are_single_tokens(tok):
    for t in SPECIAL_TOKENS:
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == t
    text = "def add(a, b):\n    return a + b"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_phi4_preset_matches_published_model():
    info = model_info(load_config("phi-4"))
    assert info.architecture == "Phi3ForCausalLM"
    assert (info.hidden_size, info.num_layers, info.num_attention_heads, info.num_kv_heads) == (5120, 40, 40, 10)
    assert (info.intermediate_size, info.vocab_size, info.max_position_embeddings) == (17920, 100352, 16384)
    assert info.rope_theta == 250_000 and not info.tied_embeddings
    assert info.parameters == 14_659_507_200  # 14.7B, as published


def test_model_info_cli_json_and_user_config(tmp_path):
    out = json.loads(phiforge("model", "info", "tiny", "--json").stdout)
    assert out["architecture"] == "Phi3ForCausalLM" and out["parameters"] > 1_000_000
    cfg = load_config("tiny").to_dict() | {"num_hidden_layers": 2}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    mine = json.loads(phiforge("model", "info", str(path), "--json").stdout)
    assert mine["num_layers"] == 2 and mine["parameters"] < out["parameters"]


def test_synthetic_math_is_verified_and_heldout_disjoint():
    train = synthetic_math.generate(500, seed=1, heldout=False)
    held = synthetic_math.generate(100, seed=2, heldout=True)
    assert all(synthetic_math.verify(p) for p in train + held)
    assert not {p.key for p in train} & {p.key for p in held}
    assert {p.family for p in train} == {"add", "sub", "mul", "linear", "successor"}
    wrong = synthetic_math.Problem("add:2:2", "add", "What is 2 + 2?", "2 + 2 = 5.", "5")
    assert not synthetic_math.verify(wrong)


def test_groups_word_problems_verify_and_leave_hundreds_held_out():
    groups = (synthetic_math.BY_NAME["groups"],)
    train = synthetic_math.generate(3000, seed=1, heldout=False, families=groups)
    held = synthetic_math.generate(3000, seed=1, heldout=True, families=groups)
    assert len(train) == 3000 and len(held) >= 1000  # the post-training demo compares on hundreds of them
    assert all(synthetic_math.verify(p) for p in train + held)
    assert not {p.key for p in train} & {p.key for p in held}
    assert not {p.question for p in train} & {p.question for p in held}  # a key is one wording
    p = held[0]
    _, who, where, what, a, b = p.key.split(":")
    assert p.answer == str(int(a) * int(b)) and p.question.startswith(synthetic_math.NAMES[int(who)])
    assert not synthetic_math.verify(synthetic_math.Problem(p.key, "groups", p.question, p.steps, str(int(p.answer) + 1)))


def test_lr_schedules():
    lin = TrainConfig(steps=100, warmup_steps=10, schedule="linear")
    assert lr_factor(0, lin) == pytest.approx(0.1) and lr_factor(9, lin) == pytest.approx(1.0)
    assert lr_factor(55, lin) == pytest.approx(0.5) and lr_factor(100, lin) == pytest.approx(0.0)
    cos = TrainConfig(steps=100, warmup_steps=0, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(50, cos) == pytest.approx(0.55) and lr_factor(100, cos) == pytest.approx(0.1)
