"""The whole recipe, as a user runs it: the smoke recipe through the CLI."""

from __future__ import annotations

import json
import math
import subprocess

from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import SMOKE, phiforge

STAGES = ("corpus", "synth", "tokenizer", "pretrain", "midtrain", "sft", "eval", "report")


def test_run_dir_layout(smoke_run):
    for stage in STAGES:
        manifest = json.loads((smoke_run / stage / "manifest.json").read_text())
        assert manifest["status"] == "done" and manifest["config_hash"] and manifest["wall_time_s"] >= 0
        assert set(manifest) >= {"inputs", "outputs", "metrics"}
        assert (smoke_run / stage / "metrics.jsonl").is_file()
    for stage in ("pretrain", "midtrain", "sft"):
        rows = [json.loads(line) for line in (smoke_run / stage / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["step"] == len(rows) and all(math.isfinite(r["loss"]) for r in rows)
    report = (smoke_run / "report.md").read_text()
    for stage in ("pretrain", "midtrain", "sft"):
        png = smoke_run / "report" / "plots" / f"loss_{stage}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and f"loss_{stage}.png" in report
    assert "| untrained |" in report and "| sft |" in report


def test_final_model_loads_and_chats_with_plain_transformers(smoke_run):
    final = smoke_run / "final"
    assert (final / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    assert type(model).__name__ == "Phi3ForCausalLM"
    assert model.config.pad_token_id < model.config.vocab_size
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    reply = tok.decode(out[0, ids["input_ids"].shape[1]:])
    assert reply.strip()  # it answers something, and the chat stops at <|im_end|> or the budget
    assert tok.decode(ids["input_ids"][0]).endswith("<|im_start|>assistant<|im_sep|>")


def test_model_learns(smoke_run):
    pre = json.loads((smoke_run / "pretrain" / "manifest.json").read_text())["metrics"]
    assert pre["val_loss"] < pre["unigram_val_loss"] - 0.5, pre  # well below the unigram baseline
    results = json.loads((smoke_run / "eval" / "results.json").read_text())
    ppl = results["pretrain"]["perplexity"]
    assert ppl["loss"] < ppl["unigram_loss"], ppl
    assert ppl["loss"] < results["untrained"]["perplexity"]["loss"] - 1.0
    untrained, sft = results["untrained"]["problems"], results["sft"]["problems"]
    # On held-out problems the fine-tuned model is far closer to the verified worked solutions ...
    assert sft["solution_loss"] < untrained["solution_loss"] - 2.0, (untrained, sft)
    # ... and never answers fewer of them right (the untrained model answers none).
    assert sft["accuracy_chat"] >= untrained["accuracy_chat"]


def test_status_and_rerun_skips_finished_stages(smoke_run):
    status = phiforge("status", smoke_run).stdout
    for stage in STAGES:
        assert any(stage in line and "done" in line for line in status.splitlines()), status
    before = (smoke_run / "final" / "model.safetensors").stat().st_mtime_ns
    rerun = phiforge("run", SMOKE, "--run-dir", smoke_run)
    assert rerun.stderr.count("done, skipped") == len(STAGES)
    assert (smoke_run / "final" / "model.safetensors").stat().st_mtime_ns == before


def test_the_installed_wheel_runs_from_outside_the_checkout(installed, smoke_run):
    where = installed.venv / "bin" / "python"
    origin = subprocess.run([str(where), "-c", "import phiforge; print(phiforge.__file__)"], capture_output=True,
                            text=True, check=True, cwd=installed.home, env={"PATH": "/usr/bin:/bin"}).stdout
    assert origin.startswith(str(installed.venv)), origin  # the wheel's copy, not the checkout's
    # the smoke run above came from it: every file it reads at run time shipped inside the wheel
    assert (smoke_run / "report.md").is_file() and (smoke_run / "synth" / "manifest.json").is_file()
    listed = installed("recipes", "list").stdout
    assert all(name in listed for name in ("tiny", "smoke", "smollm2-posttrain", "phi4"))
    shown = installed("recipes", "show", "tiny").stdout
    (installed.home / "my.yaml").write_text(shown)
    assert "name: tiny" in shown and installed("mixture", "plan", "my.yaml", "--json").returncode == 0
    assert "arithmetic" in installed("synth", "types").stdout
    missing = installed("run", "nosuch", check=False)
    assert missing.returncode == 2 and "no built-in recipe has that name" in missing.stderr and "Traceback" not in missing.stderr
