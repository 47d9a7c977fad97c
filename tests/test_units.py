"""Unit tests of the pieces every stage relies on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from phiforge.data import synthetic_math
from phiforge.data.packing import DocRefs, IGNORE, batch_at, mix_documents, pack_examples, pack_stream
from phiforge.model import load_config, model_info
from phiforge.posttrain.sft import encode_chat
from phiforge.recipe import TrainConfig
from phiforge.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, train_tokenizer
from phiforge.train.optim import lr_factor

from conftest import phiforge


@pytest.fixture(scope="module")
def tok():
    texts = ["def add(a, b):\n    return a + b\n", "The answer is 42. What is 3 + 4?"] * 50
    return train_tokenizer(texts, 600)


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


def test_sft_labels_cover_assistant_only(tok):
    messages = [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "7"}]
    ids, labels = encode_chat(tok, messages)
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(ids) == rendered
    learned = tok.decode([i for i, label in zip(ids, labels) if label != IGNORE])
    assert learned == "7<|im_end|>"


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


def test_mixture_reproduces_epochs_per_source():
    docs = {"small": DocRefs.whole(0, np.full(10, 9)), "big": DocRefs.whole(1, np.full(1000, 9))}  # 100, 10,000 tokens
    mixed, draws = mix_documents(docs, {"small": 0.5, "big": 0.5}, total_tokens=2000, seed=0)
    assert draws["small"].epochs == pytest.approx(10, rel=0.05)  # a small source repeats
    assert draws["big"].epochs == pytest.approx(0.1, rel=0.05)  # a big one is subsampled
    assert int((mixed.length + 1).sum()) == draws["small"].tokens + draws["big"].tokens
    assert set(mixed.source[:40].tolist()) == {0, 1}  # shuffled across sources


def test_batches_are_deterministic_and_sharded_by_rank():
    data = pack_stream([list(range(i, i + 30)) for i in range(50)], seq_len=8, eos_id=0)
    a = batch_at(data, 3, 4, seed=1)
    b = batch_at(data, 3, 4, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0][:, 1:], a[1][:, :-1])  # targets are inputs shifted by one
    r0, _ = batch_at(data, 0, 4, seed=1, rank=0, world=2)
    r1, _ = batch_at(data, 0, 4, seed=1, rank=1, world=2)
    rows0 = {tuple(r.tolist()) for r in r0}
    rows1 = {tuple(r.tolist()) for r in r1}
    assert not rows0 & rows1  # ranks see different rows


def test_pack_examples_keeps_examples_whole():
    examples = [([1, 2, 3], [IGNORE, 2, 3]), ([4, 5, 6, 7], [IGNORE, IGNORE, 6, 7]), ([8, 9], [8, 9])]
    packed = pack_examples(examples, seq_len=4, pad_id=0)
    assert packed.tokens[0].tolist() == [[1, 2, 3, 0, 0], [4, 5, 6, 7, 0], [8, 9, 0, 0, 0]]
    assert packed.labels[0].tolist() == [[IGNORE, 2, 3, IGNORE, IGNORE], [IGNORE, IGNORE, 6, 7, IGNORE],
                                         [8, 9, IGNORE, IGNORE, IGNORE]]


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


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    from phiforge.model import build_model
    from phiforge.train.loop import train
    from phiforge.train.loss import NextTokenLoss

    config = load_config("nano")
    data = pack_stream([list(range(5, 600))] * 4, seq_len=16, eos_id=0)
    results = []
    for batch, accum in ((8, 1), (4, 2)):
        model = build_model(config, seed=0)
        cfg = TrainConfig(steps=2, batch_size=batch, grad_accum=accum, lr=1e-2, precision="fp32")
        train(model, cfg, cfg.lr, NextTokenLoss(data, None, batch, seed=0), tmp_path / f"b{batch}", label="t")
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    # Adam divides by sqrt(v): float noise in near-zero gradients shows up at 1e-4 in a few of the weights,
    # while every step moves the weights by about lr = 1e-2.
    assert torch.allclose(results[0], results[1], atol=5e-4)
    assert not torch.allclose(results[0], torch.cat([p.flatten() for p in build_model(config, seed=0).parameters()]))


def test_compiled_loop_trains_like_the_eager_one(tmp_path):
    """`compile: true` (the tiny recipe's setting) runs the same maths through torch.compile."""
    from phiforge.model import build_model
    from phiforge.train.loop import train
    from phiforge.train.loss import NextTokenLoss

    data = pack_stream([list(range(5, 900))] * 4, seq_len=32, eos_id=0)
    losses = []
    for compiled in (False, True):
        cfg = TrainConfig(steps=3, batch_size=4, lr=1e-3, precision="fp32", compile=compiled)
        objective = NextTokenLoss(data, None, cfg.batch_size, seed=0, compile=compiled)
        result = train(build_model(load_config("nano"), seed=0), cfg, cfg.lr, objective, tmp_path / str(compiled), "t")
        losses.append(result.final_loss)
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
