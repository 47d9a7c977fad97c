"""Each stage runs alone from its recipe section, with the user's own data, tokenizer or model."""

from __future__ import annotations

import json

import yaml

from conftest import SMOKE, phiforge


def test_sft_alone_on_own_model_and_conversations(smoke_run, tmp_path):
    convs = tmp_path / "mine.jsonl"
    rows = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"Say {w}."},
                          {"role": "assistant", "content": w}]} for w in ("yes", "no", "maybe", "ok") * 10]
    convs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = yaml.safe_load(SMOKE.read_text())
    data["sft"].update(init_from=str(smoke_run / "pretrain" / "model"), data=str(convs), steps=4, checkpoint_every=2)
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    phiforge("sft", recipe, "--run-dir", run_dir)  # no corpus, tokenizer or pretrain stage in this run dir
    manifest = json.loads((run_dir / "sft" / "manifest.json").read_text())
    assert manifest["metrics"]["init_from"] == str(smoke_run / "pretrain" / "model")
    assert manifest["metrics"]["conversations"] == len(rows) - len(rows) // 20
    assert (run_dir / "sft" / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in run_dir.iterdir()) == [".phiforge.lock", "sft"]  # the lock that held the run dir


def test_eval_scores_extra_models_and_tokenizer_from_path(smoke_run, tmp_path, copy_stages):
    data = yaml.safe_load(SMOKE.read_text())
    data["eval"].update(models=[str(smoke_run / "sft" / "model")], tasks=["perplexity", "chat_format"])
    data["tokenizer"]["path"] = str(smoke_run / "tokenizer" / "tokenizer")  # adopt an existing tokenizer
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    copy_stages(smoke_run, run_dir, "corpus", "synth")
    phiforge("tokenizer", recipe, "--run-dir", run_dir)
    adopted = json.loads((run_dir / "tokenizer" / "tokenizer" / "tokenizer.json").read_text())
    original = json.loads((smoke_run / "tokenizer" / "tokenizer" / "tokenizer.json").read_text())
    assert adopted["model"]["vocab"] == original["model"]["vocab"]
    phiforge("eval", recipe, "--run-dir", run_dir)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert list(results) == ["model"]  # the extra model, named after its directory; no stages ran here
    assert results["model"]["chat_format"]["well_formed"] >= 0.5
    assert results["model"]["perplexity"]["n"] > 1000


def test_sft_teaches_a_foreign_model_the_phi4_chat_format(tmp_path):
    """Post-training accepts any HF causal LM: here a Llama whose tokenizer has no ChatML tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(["Say yes. Say no. yes no maybe"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")
    foreign = tmp_path / "foreign"
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         bos_token_id=0, eos_token_id=0, pad_token_id=None)
    LlamaForCausalLM(config).save_pretrained(foreign)
    tok.save_pretrained(foreign)

    convs = tmp_path / "chats.jsonl"
    convs.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "Say yes."},
                                                      {"role": "assistant", "content": "yes"}]}) + "\n"
                             for _ in range(40)))
    data = yaml.safe_load(SMOKE.read_text())
    data["sft"].update(init_from=str(foreign), data=str(convs), steps=3, checkpoint_every=3)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    phiforge("sft", recipe, "--run-dir", tmp_path / "run")

    out = tmp_path / "run" / "sft" / "model"
    manifest = json.loads((tmp_path / "run" / "sft" / "manifest.json").read_text())
    assert manifest["metrics"]["added_tokens"] == ["<|endoftext|>", "<|im_start|>", "<|im_sep|>", "<|im_end|>"]
    tuned_tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.get_input_embeddings().num_embeddings >= len(tuned_tok) > len(tok)
    rendered = tuned_tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>"
    assert len(tuned_tok.encode("<|im_sep|>", add_special_tokens=False)) == 1
