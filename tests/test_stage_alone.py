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
    assert sorted(p.name for p in run_dir.iterdir()) == ["sft"]


def test_eval_scores_extra_models_and_tokenizer_from_path(smoke_run, tmp_path, copy_stages):
    data = yaml.safe_load(SMOKE.read_text())
    data["eval"].update(models=[str(smoke_run / "sft" / "model")], tasks=["perplexity", "chat_format"])
    data["tokenizer"]["path"] = str(smoke_run / "tokenizer" / "tokenizer")  # adopt an existing tokenizer
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    copy_stages(smoke_run, run_dir, "corpus")
    phiforge("tokenizer", recipe, "--run-dir", run_dir)
    adopted = json.loads((run_dir / "tokenizer" / "tokenizer" / "tokenizer.json").read_text())
    original = json.loads((smoke_run / "tokenizer" / "tokenizer" / "tokenizer.json").read_text())
    assert adopted["model"]["vocab"] == original["model"]["vocab"]
    phiforge("eval", recipe, "--run-dir", run_dir)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert list(results) == ["model"]  # the extra model, named after its directory; no stages ran here
    assert results["model"]["chat_format"]["well_formed"] >= 0.5
    assert results["model"]["perplexity"]["n"] > 1000
