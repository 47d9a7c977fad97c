"""Bad input gets one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import SMOKE, phiforge


def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def _smoke() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def _assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr  # progress logs may precede it
    for f in fragments:
        assert f in errors[0], errors[0]


def test_invalid_yaml(tmp_path):
    proc = phiforge("run", _write(tmp_path, "name: x\ncorpus: [unclosed\n"), "--run-dir", tmp_path / "r", check=False)
    _assert_one_line_error(proc, "invalid YAML", "recipe.yaml")


def test_unknown_key(tmp_path):
    data = _smoke()
    data["pretrain"]["learning_rate"] = 0.1
    proc = phiforge("run", _write(tmp_path, data), "--run-dir", tmp_path / "r", check=False)
    _assert_one_line_error(proc, "unknown key 'pretrain.learning_rate'")
    assert not (tmp_path / "r").exists(), "nothing may be written for an invalid recipe"


def test_wrong_type(tmp_path):
    data = _smoke()
    data["pretrain"]["steps"] = "many"
    proc = phiforge("run", _write(tmp_path, data), check=False)
    _assert_one_line_error(proc, "pretrain.steps")


def test_negative_lr(tmp_path):
    data = _smoke()
    data["sft"]["lr"] = -1e-3
    proc = phiforge("run", _write(tmp_path, data), check=False)
    _assert_one_line_error(proc, "sft.lr", "greater than 0")


def test_missing_recipe(tmp_path):
    proc = phiforge("run", tmp_path / "nope.yaml", check=False)
    _assert_one_line_error(proc, "nope.yaml", "not found")


def test_mixture_names_unknown_source(tmp_path):
    data = _smoke()
    data["pretrain"]["mixture"]["webb"] = 0.1
    proc = phiforge("run", _write(tmp_path, data), check=False)
    _assert_one_line_error(proc, "webb")


def test_model_path_that_is_not_a_model(tmp_path):
    proc = phiforge("model", "info", str(tmp_path), check=False)
    _assert_one_line_error(proc, "not a Hugging Face model directory")


def test_sft_init_from_not_a_model(tmp_path):
    data = _smoke()
    data["sft"]["init_from"] = str(tmp_path)
    proc = phiforge("sft", _write(tmp_path, data), "--run-dir", tmp_path / "r", check=False)
    _assert_one_line_error(proc, str(tmp_path), "not a Hugging Face model directory")
    assert not (tmp_path / "r" / "sft").exists()  # no partial stage left behind


def test_stage_before_its_inputs(tmp_path):
    proc = phiforge("pretrain", SMOKE, "--run-dir", tmp_path / "r", check=False)
    _assert_one_line_error(proc, "has not finished", "phiforge tokenizer RECIPE")


@pytest.mark.parametrize("bad_line", ["{not json", "[1, 2]"])
def test_bad_jsonl_source(tmp_path, bad_line):
    data = _smoke()
    src = tmp_path / "mine.jsonl"
    src.write_text('{"text": "fine"}\n' + bad_line + "\n")
    data["corpus"]["sources"].append({"name": "mine", "kind": "jsonl", "path": str(src)})
    proc = phiforge("corpus", _write(tmp_path, data), "--run-dir", tmp_path / "r", check=False)
    _assert_one_line_error(proc, "mine.jsonl:2")
    assert not (tmp_path / "r" / "corpus" / "manifest.json").exists()
