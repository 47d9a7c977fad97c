"""Post-training as recipe stages: pts and dpo after sft, the held-out comparison's statistics, recipe checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import SMOKE, phiforge
from planted import train_planted_hf
from phiforge.errors import UserError
from phiforge.stats import accuracy, mcnemar_exact, wilson
from phiforge.recipe import load_recipe



def write_recipe(path: Path, **sections) -> Path:
    data = yaml.safe_load(SMOKE.read_text()) | sections
    path.write_text(yaml.safe_dump(data))
    return path


def test_wilson_and_mcnemar_on_hand_computed_numbers():
    # Wilson 95% for 7/10: centre (0.7 + z²/20) / (1 + z²/10), half-width z sqrt(0.021 + z²/400) / (1 + z²/10)
    low, high = wilson(7, 10)
    assert low == pytest.approx(0.3968, abs=1e-4) and high == pytest.approx(0.8922, abs=1e-4)
    assert wilson(0, 20)[0] == 0.0 and wilson(0, 20)[1] == pytest.approx(0.1611, abs=1e-4)
    # 9 improved, 1 regressed: p = 2 * P(X <= 1 | Binomial(10, 1/2)) = 2 * 11/1024
    before = [False] * 9 + [True] + [True] * 5 + [False] * 5
    after = [True] * 9 + [False] + [True] * 5 + [False] * 5
    assert mcnemar_exact(before, after) == {"improved": 9, "regressed": 1, "p_value": pytest.approx(22 / 1024)}
    assert mcnemar_exact(before, before)["p_value"] == 1.0  # no discordant problem: no evidence of change
    assert accuracy(after)["correct"] == 14 and accuracy(after)["accuracy"] == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"dpo": {"steps": 5}}, "dpo needs pairs"),
        ({"pts": {"p_gap": 0}}, "pts.p_gap"),
        ({"pts": {"families": ["division"]}}, "pts.families"),
        ({"pts": {"min_p": 0.9, "max_p": 0.1}}, "min_p (0.9) exceeds max_p"),
        ({"pts": {"sample": 5}}, "unknown key 'pts.sample'"),
        ({"dpo": {"steps": 5, "pairs": "x.jsonl", "beta": -1}}, "dpo.beta"),
    ],
)
def test_recipe_rejects_bad_posttrain_sections(tmp_path, sections, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(write_recipe(tmp_path / "r.yaml", **sections))


def test_posttrain_only_recipe_needs_a_model(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "pts": {"problems": 4}, "dpo": {"steps": 2}}))
    with pytest.raises(UserError, match="pts needs a model"):
        load_recipe(path)
    path.write_text(yaml.safe_dump({"name": "p", "pts": {"init_from": "smollm2"}, "dpo": {"steps": 2}}))
    from phiforge.pipeline import stages_of

    assert [s.name for s in stages_of(load_recipe(path))] == ["pts", "dpo", "report"]


@pytest.fixture(scope="module")
def planted_model(tmp_path_factory) -> Path:
    """A 1-layer HF model that answers Q with `x y 7|3` at even odds: one pivot (the answer) per solution."""
    path = tmp_path_factory.mktemp("planted") / "model"
    train_planted_hf(path)
    return path


def posttrain_recipe(tmp_path: Path, model: Path, **dpo) -> Path:
    """A post-training-only recipe: pts and dpo on the planted model, problems from jsonl files."""
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"prompt": "Q", "answer": "7", "verifier": "numeric"}) + "\n")
    path = tmp_path / "posttrain.yaml"
    path.write_text(yaml.safe_dump({
        "name": "posttrain", "seed": 3,
        "pts": {"init_from": str(model), "data": str(problems), "heldout_data": str(problems), "samples": 20,
                "round_size": 10, "max_new_tokens": 8, "batch_size": 64},
        "dpo": {"steps": 6, "batch_size": 2, "lr": 3e-3, "checkpoint_every": 3, "log_every": 2, **dpo},
    }))
    return path


def test_pts_and_dpo_stages_run_resume_and_report(planted_model, tmp_path):
    run_dir, recipe = tmp_path / "run", posttrain_recipe(tmp_path, planted_model)
    phiforge("run", recipe, "--run-dir", run_dir)

    pts = json.loads((run_dir / "pts" / "manifest.json").read_text())["metrics"]
    assert pts["init_from"] == str(planted_model) and pts["searched"] == 1 and pts["pairs"] >= 1
    assert (run_dir / "pts" / "pairs.pivots.png").is_file()
    dpo = json.loads((run_dir / "dpo" / "manifest.json").read_text())["metrics"]
    assert dpo["steps"] == 6 and dpo["margin_after"] > dpo["margin_before"]  # 7 over 3 became likelier
    assert dpo["heldout"]["before"]["n"] == 1 and set(dpo["heldout"]["mcnemar"]) == {"improved", "regressed", "p_value"}
    report = (run_dir / "report.md").read_text()
    assert "Pivotal Token Search" in report and "McNemar exact test" in report and "is the dpo model" in report
    assert "pending" not in report  # no corpus: no tokenizer or eval stage to wait for
    assert (run_dir / "final" / "model.safetensors").read_bytes() == (run_dir / "dpo" / "model" / "model.safetensors").read_bytes()

    before = (run_dir / "dpo" / "model" / "model.safetensors").stat().st_mtime_ns
    rerun = phiforge("run", recipe, "--run-dir", run_dir)
    assert "pts: done, skipped" in rerun.stderr and "dpo: done, skipped" in rerun.stderr
    assert (run_dir / "dpo" / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_dpo_without_pairs_skips_training_and_says_so(planted_model, tmp_path):
    empty = tmp_path / "pairs.jsonl"
    empty.write_text("")
    run_dir, recipe = tmp_path / "run", posttrain_recipe(tmp_path, planted_model, pairs=str(empty))
    proc = phiforge("run", recipe, "--run-dir", run_dir)
    assert "holds no pairs" in proc.stderr and "skipping training" in proc.stderr
    assert json.loads((run_dir / "dpo" / "manifest.json").read_text())["metrics"]["skipped"] == "no pairs"
    assert not (run_dir / "dpo" / "model").exists() and not (run_dir / "final").exists()
    assert "DPO skipped" in (run_dir / "report.md").read_text()


def test_eval_scores_a_trained_dpo_stage_and_not_a_skipped_one(tmp_path):
    from phiforge.eval.stage import models_to_evaluate
    from phiforge.recipe import load_recipe
    from phiforge.pipeline import context

    run_dir = tmp_path / "run"
    for name in ("sft", "dpo"):
        (run_dir / name).mkdir(parents=True)
        (run_dir / name / "manifest.json").write_text("{}")
    (run_dir / "sft" / "model").mkdir()
    ctx = context(load_recipe(SMOKE), run_dir, "eval")
    assert list(models_to_evaluate(ctx)) == ["sft"]  # a dpo stage that skipped (no pairs) left no model
    (run_dir / "dpo" / "model").mkdir()
    assert list(models_to_evaluate(ctx)) == ["sft", "dpo"]


def test_pts_and_dpo_commands_run_the_recipes_stages_with_options_overriding_it(planted_model, tmp_path):
    run_dir, recipe = tmp_path / "run", posttrain_recipe(tmp_path, planted_model)
    phiforge("pts", recipe, "--run-dir", run_dir, "--samples", "10", "--round-size", "5")
    settings = json.loads((run_dir / "pts" / "pairs.jsonl.parts" / "settings.json").read_text())["config"]
    assert settings["samples"] == 10 and settings["round_size"] == 5 and settings["max_new_tokens"] == 8
    pairs = json.loads((run_dir / "pts" / "manifest.json").read_text())["metrics"]["pairs"]
    assert pairs >= 1
    # --epochs replaces the section's steps: one pass over the pairs at batch size 2
    phiforge("dpo", recipe, "--run-dir", run_dir, "--epochs", "1")
    assert json.loads((run_dir / "dpo" / "manifest.json").read_text())["metrics"]["steps"] == max(1, round(pairs / 2))
    status = phiforge("status", run_dir).stdout
    assert "pts" in status and "dpo" in status and status.count("done") == 2
    proc = phiforge("pts", recipe, "--run-dir", run_dir, "--p-gap", "0", check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --p-gap: Input should be greater than 0"
    proc = phiforge("pts", recipe, "--run-dir", run_dir, "--model", planted_model, check=False)
    assert proc.returncode == 2 and "--model: not with a RECIPE" in proc.stderr
    proc = phiforge("hallucination", recipe, "--run-dir", run_dir, "--samples", "2", check=False)
    assert proc.returncode == 2 and "has no 'hallucination' section" in proc.stderr
