"""Post-training as recipe stages: pts and dpo after sft, the held-out comparison's statistics, recipe checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from conftest import SMOKE, phiforge
from phiforge.errors import UserError
from phiforge.posttrain.compare import accuracy, mcnemar_exact, wilson
from phiforge.posttrain.pts import PTSConfig
from phiforge.recipe import PTSSection, load_recipe

UPSTREAM = ("corpus", "synth", "tokenizer", "pretrain", "midtrain", "sft")
# Small enough for seconds on the smoke model, wide enough (any p(success) is searched) to find pairs.
PTS = {"problems": 6, "families": ["add", "successor"], "heldout_problems": 24, "samples": 12, "round_size": 6,
       "max_new_tokens": 16, "min_p": 0.0, "max_p": 1.0, "p_gap": 0.3, "alternatives": 2, "batch_size": 64}
DPO = {"steps": 6, "batch_size": 4, "lr": 1.0e-4, "checkpoint_every": 3, "log_every": 2}


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


def test_pts_section_mirrors_pts_config():
    section = PTSSection()
    for f in dataclasses.fields(PTSConfig):
        assert getattr(section, f.name) == f.default, f.name


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


def test_pts_and_dpo_stages_run_after_sft(smoke_run, copy_stages, tmp_path):
    run_dir = tmp_path / "run"
    copy_stages(smoke_run, run_dir, *UPSTREAM)
    recipe = write_recipe(tmp_path / "posttrain.yaml", pts=PTS, dpo=DPO)
    phiforge("run", recipe, "--run-dir", run_dir)

    pts = json.loads((run_dir / "pts" / "manifest.json").read_text())["metrics"]
    assert pts["model"] == str(run_dir / "sft" / "model") and pts["problems"] == 6
    assert pts["pairs"] > 0 and (run_dir / "pts" / "pairs.pivots.png").is_file()
    heldout = [json.loads(line) for line in (run_dir / "pts" / "heldout.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (run_dir / "pts" / "problems.jsonl").read_text().splitlines()]
    assert len(heldout) == 24 and not {p["key"] for p in heldout} & {p["key"] for p in train}

    dpo = json.loads((run_dir / "dpo" / "manifest.json").read_text())["metrics"]
    assert dpo["steps"] == 6 and dpo["margin_after"] > dpo["margin_before"]  # training moved the pairs' margins
    assert dpo["heldout"]["before"]["n"] == 24 and 0 <= dpo["heldout"]["mcnemar"]["p_value"] <= 1
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert {"sft", "dpo"} <= set(results) and "problems" in results["dpo"]
    report = (run_dir / "report.md").read_text()
    assert "Pivotal Token Search" in report and "McNemar exact test" in report and "is the dpo model" in report
    final = json.loads((run_dir / "final" / "config.json").read_text())
    assert final == json.loads((run_dir / "dpo" / "model" / "config.json").read_text())

    before = (run_dir / "dpo" / "model" / "model.safetensors").stat().st_mtime_ns
    rerun = phiforge("run", recipe, "--run-dir", run_dir)
    assert "pts: done, skipped" in rerun.stderr and "dpo: done, skipped" in rerun.stderr
    assert (run_dir / "dpo" / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_dpo_without_pairs_skips_training_and_says_so(smoke_run, copy_stages, tmp_path):
    run_dir = tmp_path / "run"
    copy_stages(smoke_run, run_dir, *UPSTREAM)
    empty = tmp_path / "pairs.jsonl"
    empty.write_text("")
    recipe = write_recipe(tmp_path / "nopairs.yaml", dpo={**DPO, "pairs": str(empty)})
    proc = phiforge("run", recipe, "--run-dir", run_dir)
    assert "holds no pairs" in proc.stderr and "skipping training" in proc.stderr
    assert json.loads((run_dir / "dpo" / "manifest.json").read_text())["metrics"]["skipped"] == "no pairs"
    assert not (run_dir / "dpo" / "model").exists()
    assert "dpo" not in json.loads((run_dir / "eval" / "results.json").read_text())
    assert "DPO skipped" in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "final" / "config.json").read_text()) == json.loads(
        (run_dir / "sft" / "model" / "config.json").read_text())
