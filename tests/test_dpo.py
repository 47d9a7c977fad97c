"""DPO: the loss against its closed form, log-probs of mixed pair batches, and training that moves the margin."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from phiforge.posttrain.dpo import dpo_loss, pair_logps, read_pairs, run_dpo
from phiforge.posttrain.dpo_config import DPOConfig
from phiforge.tokenizer import chat_prompt_ids
from phiforge.tokenizer import load_tokenizer

from conftest import phiforge
from planted import train_planted_hf


@pytest.mark.parametrize(
    "smoothing, loss, grad",
    [
        # margin m = 0.5 * ((-1 - -1.5) - (-2 - -1.5)) = 0.5
        (0.0, 0.474077, 0.188771),  # log(1 + e^-0.5); d/d logp_chosen = -beta * sigmoid(-0.5)
        (0.1, 0.524077, 0.138771),  # 0.9 * 0.474077 + 0.1 * 0.974077; -beta * (0.9 sigmoid(-m) - 0.1 sigmoid(m))
    ],
)
def test_loss_and_gradients_match_the_closed_form(smoothing, loss, grad):
    chosen = torch.tensor([-1.0], requires_grad=True)
    rejected = torch.tensor([-2.0], requires_grad=True)
    losses, chosen_reward, rejected_reward = dpo_loss(chosen, rejected, torch.tensor([-1.5]), torch.tensor([-1.5]),
                                                      beta=0.5, label_smoothing=smoothing)
    losses.sum().backward()
    assert losses.item() == pytest.approx(loss, abs=1e-6)
    assert chosen.grad.item() == pytest.approx(-grad, abs=1e-6)
    assert rejected.grad.item() == pytest.approx(grad, abs=1e-6)
    assert (chosen_reward.item(), rejected_reward.item()) == pytest.approx((0.25, -0.25))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("planted") / "model"
    train_planted_hf(path)
    return path


def write_pairs(path, tok):
    prompt = chat_prompt_ids(tok, "Q") + tok.convert_tokens_to_ids(["x", "y"])
    seven, three = tok.convert_tokens_to_ids(["7", "3"])
    rows = [{"prompt_token_ids": prompt, "chosen_token_id": seven, "rejected_token_id": three},
            {"prompt": "Q", "chosen": "x y 7", "rejected": "x y 3"},
            {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "x y 7"}],
             "rejected": [{"role": "assistant", "content": "x 3"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_pair_logps_of_a_mixed_padded_batch_equal_one_sequence_at_a_time(planted, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(planted).eval()
    tok = load_tokenizer(planted)
    write_pairs(tmp_path / "pairs.jsonl", tok)
    pairs = read_pairs(tmp_path / "pairs.jsonl", tok, max_length=64)
    assert len(pairs[0].chosen) == 1 and len(pairs[1].chosen) == 4  # x y 7 <|im_end|>

    def alone(prompt, response):
        logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + response])).logits[0].float(), -1)
        return sum(logp[len(prompt) - 1 + t, tok_id].item() for t, tok_id in enumerate(response))

    with torch.no_grad():
        chosen, rejected, _ = pair_logps(model, pairs, tok.pad_token_id, torch.device("cpu"))
    for i, pair in enumerate(pairs):
        assert chosen[i].item() == pytest.approx(alone(pair.prompt, pair.chosen), abs=1e-4)
        assert rejected[i].item() == pytest.approx(alone(pair.prompt, pair.rejected), abs=1e-4)


def test_dpo_raises_the_chosen_margin_and_exports_an_hf_model(planted, tmp_path):
    tok = load_tokenizer(planted)
    write_pairs(tmp_path / "pairs.jsonl", tok)
    cfg = DPOConfig(steps=12, lr=3e-3, batch_size=3, beta=0.1)
    summary = run_dpo(planted, tmp_path / "pairs.jsonl", tmp_path / "out", cfg)
    # The planted model is indifferent between 7 and 3; DPO makes it prefer 7 on every pair.
    assert summary["margin_after"] > summary["margin_before"] + 1.0 and summary["preferred_after"] == 1.0
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[0]["reward_margin"]) < 0.01  # the first micro-batch runs at the reference weights
    assert rows[-1]["reward_margin"] > rows[0]["reward_margin"] and rows[-1]["reward_accuracy"] == 1.0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    ids = chat_prompt_ids(tok, "Q") + tok.convert_tokens_to_ids(["x", "y"])
    probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
    assert probs[tok.convert_tokens_to_ids("7")] > 0.6
    # The reference was computed once from the initial model and is what a longer rerun reuses.
    ref = np.load(tmp_path / "out" / "reference_logps.npy")
    run_dpo(planted, tmp_path / "pairs.jsonl", tmp_path / "out", DPOConfig(steps=14, lr=3e-3, batch_size=3))
    assert np.array_equal(np.load(tmp_path / "out" / "reference_logps.npy"), ref)


def test_dpo_cli_trains_and_rejects_bad_pairs(planted, tmp_path):
    tok = load_tokenizer(planted)
    write_pairs(tmp_path / "pairs.jsonl", tok)
    # 3 pairs, 2 per step, 2 passes: 3 steps
    proc = phiforge("dpo", "--model", planted, "--pairs", tmp_path / "pairs.jsonl", "--out", tmp_path / "out",
                    "--epochs", "2", "--lr", "1e-3", "--batch-size", "2")
    assert "3 pairs, 3 steps (2.0 passes)" in proc.stdout and "model in" in proc.stdout
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["steps"] == 3
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model").config.vocab_size == len(tok)
    assert load_tokenizer(tmp_path / "out" / "model").chat_template
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "Q", "chosen": "7"}) + "\n")
    proc = phiforge("dpo", "--model", planted, "--pairs", tmp_path / "bad.jsonl", "--out", tmp_path / "o2", check=False)
    assert proc.returncode == 2 and "row 1 needs prompt, chosen and rejected" in proc.stderr
    proc = phiforge("dpo", "--model", planted, "--pairs", tmp_path / "pairs.jsonl", "--out", tmp_path / "o3",
                    "--beta", "-1", check=False)
    assert proc.returncode == 2 and "--beta" in proc.stderr
    proc = phiforge("dpo", "--model", planted, "--pairs", tmp_path / "pairs.jsonl", "--out", tmp_path / "o4",
                    "--steps", "3", "--epochs", "2", check=False)
    assert proc.returncode == 2 and "either steps or epochs" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("pairs", "steps"), [(13, 8), (20, 12), (1, 1), (400, 250)])
def test_epochs_become_steps_that_follow_the_pair_count(pairs, steps):
    cfg = DPOConfig(epochs=5, batch_size=8, warmup_steps=4)
    assert cfg.for_pairs(pairs).steps == steps
    assert cfg.for_pairs(pairs).warmup_steps == min(4, steps)
    assert DPOConfig(steps=30).for_pairs(pairs).steps == 30  # a fixed length stays as it is
    with pytest.raises(ValueError, match="either steps or epochs"):
        DPOConfig()


# A chat format that is not Phi-4's: turns end with <|endoftext|>, and there is no <|im_sep|> anywhere.
OWN_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }}<|endoftext|>{% endfor %}"
                "{% if add_generation_prompt %}assistant {% endif %}")


def test_text_pairs_keep_the_models_own_chat_format(planted, tmp_path):
    """DPO must not change how a model chats: text pairs are rendered with its own template, which it keeps."""
    import shutil

    own = tmp_path / "own"
    shutil.copytree(planted, own)
    tok = load_tokenizer(own)
    tok.chat_template = OWN_TEMPLATE
    tok.save_pretrained(own)
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "Q", "chosen": "x y 7", "rejected": "x 3"}) + "\n")
    pair = read_pairs(tmp_path / "pairs.jsonl", load_tokenizer(own), max_length=64)[0]
    ids = tok.convert_tokens_to_ids
    assert pair.chosen == ids(["x", "y", "7", "<|endoftext|>"]) and pair.rejected == ids(["x", "3", "<|endoftext|>"])
    assert pair.prompt[-1] == ids("assistant") and ids("<|im_sep|>") not in pair.prompt
    run_dpo(own, tmp_path / "pairs.jsonl", tmp_path / "out", DPOConfig(steps=2, lr=1e-3, batch_size=1))
    trained = load_tokenizer(tmp_path / "out" / "model")
    assert trained.chat_template == OWN_TEMPLATE and len(trained) == len(tok)
