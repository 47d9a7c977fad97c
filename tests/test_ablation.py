"""The ablation recipe in miniature: three mixtures, the same model and token budget, one eval of each base model, a
table and figure whose numbers are the results'; a killed run resumes without retraining a finished variant."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import yaml

from conftest import RECIPES, kill_9_when, phiforge
from phiforge.eval.suite_tasks import text_answer

ABLATION = RECIPES / "ablation-synthetic-vs-web.yaml"


def micro_recipe(tmp_path, **variants) -> tuple:
    """The built-in ablation recipe at seconds-scale sizes (a nano model, a few steps, a 12-problem suite)."""
    data = yaml.safe_load(ABLATION.read_text())
    data["corpus"]["sources"] = [{"name": "python_docs", "kind": "python_docs", "max_docs": 100, "max_chars": 100000},
                                 {"name": "python_source", "kind": "python_source", "max_docs": 20, "max_chars": 100000}]
    data["synth"]["datasets"] = [{"type": "arithmetic", "count": 300}, {"type": "algebra", "count": 100}]
    data["tokenizer"] = {"vocab_size": 512, "max_training_chars": 200000}
    data["model"] = {"preset": "nano"}
    phi4 = {"python_docs": 0.3, "python_source": 0.2, "arithmetic": 0.3, "algebra": 0.2}
    data["pretrain"].update(mixture=phi4, steps=8, warmup_steps=1, batch_size=4, seq_len=64, compile=False,
                            checkpoint_every=2, log_every=2)
    suite = tmp_path / "suite.yaml"
    suite.write_text("- task: math\n  format: text\n  n: 12\n  max_tokens: 16\n")
    data["ablation"].update(suite=str(suite), heldout_tokens=1024, variants=variants or {
        "organic": {"python_docs": 0.3, "python_source": 0.2}, "synthetic": {"arithmetic": 0.3, "algebra": 0.2},
        "phi4": phi4})
    recipe = tmp_path / "ablation.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    return recipe, data


def test_three_variants_trained_and_scored_a_kill_resumes_without_retraining_and_the_table_is_the_results(tmp_path):
    recipe, data = micro_recipe(tmp_path)
    run_dir = tmp_path / "run"
    variants = run_dir / "ablation" / "variants"
    proc = subprocess.Popen([sys.executable, "-m", "phiforge.cli", "run", str(recipe), "--run-dir", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_9_when(proc, (variants / "organic" / "result.json").is_file, "the run ended before it could be killed")
    trained_first = (variants / "organic" / "model" / "model.safetensors").stat().st_mtime_ns

    resumed = phiforge("run", recipe, "--run-dir", run_dir)
    assert "pretraining variant organic" not in resumed.stderr  # finished before the kill: not trained again
    assert "pretraining variant phi4" in resumed.stderr
    assert (variants / "organic" / "model" / "model.safetensors").stat().st_mtime_ns == trained_first
    assert not (run_dir / "pretrain").exists() and not (run_dir / "eval").exists()  # the variants replace them

    results = json.loads((run_dir / "ablation" / "results.json").read_text())
    assert list(results) == ["organic", "synthetic", "phi4"]
    budget = data["pretrain"]["steps"] * data["pretrain"]["batch_size"] * data["pretrain"]["seq_len"]
    assert {r["tokens"] for r in results.values()} == {budget}  # the same token budget
    assert set(results["organic"]["mixture"]) == {"python_docs", "python_source"}
    assert set(results["synthetic"]["mixture"]) == {"arithmetic", "algebra"}
    for name, r in results.items():
        math = r["suite"]["tasks"]["math"]
        assert math["scores"]["greedy"]["n"] == 12 and math["contamination"]["items_in_training"] == 0
        rows = (variants / name / "suite" / "results.jsonl").read_text().splitlines()
        assert len(rows) == 12 and all(not json.loads(x)["correct"] or json.loads(x)["reply"] for x in rows)
        assert set(r["heldout_loss"]) == {"organic", "synthetic"}
    # each model fits best the kind of text it trained on
    assert results["synthetic"]["heldout_loss"]["synthetic"]["value"] < results["organic"]["heldout_loss"]["synthetic"]["value"]
    assert results["organic"]["heldout_loss"]["organic"]["value"] < results["synthetic"]["heldout_loss"]["organic"]["value"]

    table = (run_dir / "ablation" / "table.md").read_text()
    for name, r in results.items():
        line = next(x for x in table.splitlines() if x.startswith(f"| {name} |"))
        cells = [re.findall(r"-?\d+\.\d+", c) for c in line.split("|")[3:-1]]
        expected = [r["suite"]["tasks"]["math"]["scores"]["greedy"], r["heldout_loss"]["organic"],
                    r["heldout_loss"]["synthetic"]]
        for cell, score in zip(cells, expected, strict=True):
            assert [float(v) for v in cell] == [round(score["value"], 3), *(round(v, 3) for v in score["ci95"])]
    assert "0 of 12 questions asked word for word" in table
    assert (run_dir / "ablation" / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    report = (run_dir / "report.md").read_text()
    assert "## Ablation: mixture variants" in report and table.splitlines()[2] in report
    assert "![ablation](ablation/ablation.png)" in report


def test_a_variant_naming_an_unknown_source_is_one_line(tmp_path):
    recipe, _ = micro_recipe(tmp_path, organic={"python_docs": 1.0}, web={"common_crawl": 1.0})
    proc = phiforge("run", recipe, "--run-dir", tmp_path / "run", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "ablation.variants.web names unknown sources ['common_crawl']" in proc.stderr
    assert not (tmp_path / "run" / "corpus").exists()


def test_a_base_models_continuation_answers_with_its_documents_answer_line():
    assert text_answer(" 12 + 30 = 42\nAnswer: 42\n\nProblem: What is 1 + 1?\nSolution: 2\nAnswer: 2") == "42"
    assert text_answer(" 7 - 2 = 5\nProblem: 3 + 3") == "7 - 2 = 5"  # no answer line: the document itself


def test_the_variants_settings_are_pretrains_and_enter_the_ablation_stages_hash(tmp_path):
    from phiforge.pipeline import config_hash
    from phiforge.recipe import load_recipe
    from phiforge.stages import STAGES

    recipe, data = micro_recipe(tmp_path)
    ablation = next(s for s in STAGES if s.name == "ablation")
    data["pretrain"]["steps"] = 9
    longer = tmp_path / "longer.yaml"
    longer.write_text(yaml.safe_dump(data, sort_keys=False))
    assert config_hash(load_recipe(recipe), ablation) != config_hash(load_recipe(longer), ablation)
