"""Curation inside a recipe run: the corpus stage curates its sources and a file, and the rest of the run uses them."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import yaml
from conftest import phiforge
from test_curation import ADJS, NOUNS, english


def write_recipe(tmp_path: Path, curation: dict, **extra) -> Path:
    rng = random.Random(3)
    docs = [english(rng, sentences=6) + (f" The theorem holds because the {rng.choice(NOUNS)} is {rng.choice(ADJS)}."
                                         if i % 2 else "") for i in range(60)]
    docs += docs[:10]  # exact duplicates: dedup removes them
    (tmp_path / "web.jsonl").write_text("".join(json.dumps({"id": f"w{i}", "text": d}) + "\n" for i, d in enumerate(docs)))
    recipe = {
        "name": "curated", "seed": 5,
        "corpus": {"sources": [{"name": "docs", "kind": "python_docs", "max_docs": 60, "max_chars": 200_000},
                               {"name": "code", "kind": "python_source", "max_docs": 30, "max_chars": 200_000}],
                   "sft_conversations": 4, "eval_problems": 8, "decontaminate": ["humaneval"]},
        "curation": curation,
        "tokenizer": {"vocab_size": 512, "max_training_chars": 200_000},
        "model": {"preset": "nano"},
        "pretrain": {"mixture": {"docs": 0.3, "code": 0.3, "web": 0.4}, "seq_len": 64, "batch_size": 4, "steps": 3,
                     "checkpoint_every": 3, "log_every": 1},
        "eval": {"tasks": ["perplexity"], "perplexity_tokens": 512},
    } | extra
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


CURATION = {
    "inputs": [{"name": "docs", "kind": "corpus", "filters": False},
               {"name": "code", "kind": "corpus", "filters": False, "classifier": False},
               {"name": "web", "kind": "jsonl", "path": "web.jsonl"}],
    "filters": {"gopher_quality": {"max_non_alpha_words_ratio": 0.5}, "c4_quality": False, "fineweb_quality": False},
    "classifier": {"labels": "heuristic", "label_sample": 80, "positive_score": 1, "threshold": 0.3},
}


@pytest.fixture(scope="module")
def curated_run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("curated")
    recipe = write_recipe(tmp, CURATION)
    run_dir = tmp / "run"
    for stage in ("corpus", "tokenizer", "pretrain", "report"):
        phiforge(stage, recipe, "--run-dir", run_dir)
    return recipe, run_dir


def test_curated_sources_feed_the_corpus_tokenizer_and_mixture(curated_run):
    _, run_dir = curated_run
    corpus = json.loads((run_dir / "corpus" / "manifest.json").read_text())["metrics"]
    cur = corpus["curation"]
    assert cur["read"]["web"] == 70 and cur["read"]["docs"] > 10 and cur["read"]["code"] > 5  # docs, code: chars cap
    removed = {s["step"]: s["removed"] for s in cur["steps"]}
    assert removed["exact_dedup"] >= 10
    # the classifier scores docs and web, and leaves code (classifier: false) alone
    assert cur["classifier"]["scored"] == cur["kept"]["docs"] + cur["kept"]["web"] + removed.get("quality_classifier", 0)
    for name in ("docs", "code", "web"):  # what the corpus stage split is what curation kept (less contamination)
        s = corpus["sources"][name]
        assert 0 < s["docs"] + s["heldout_docs"] <= cur["kept"][name] and s["kind"].endswith("curated")
    curated = [json.loads(x) for f in (run_dir / "corpus" / "curation" / "curated").rglob("*.jsonl")
               for x in f.read_text().splitlines()]
    assert all(("quality_score" in r["metadata"]) == (r["metadata"]["source"] != "code") for r in curated)
    web = [json.loads(x)["text"] for x in (run_dir / "corpus" / "train" / "web.jsonl").read_text().splitlines()]
    assert len(web) == len(set(web))  # no duplicate survived
    tokenizer = json.loads((run_dir / "tokenizer" / "manifest.json").read_text())
    assert tokenizer["metrics"]["vocab_size"] == 512
    mixture = json.loads((run_dir / "pretrain" / "manifest.json").read_text())["metrics"]["mixture"]
    assert set(mixture) == {"docs", "code", "web"} and all(d["unique_tokens"] > 0 for d in mixture.values())


def test_report_shows_curation_steps_classifier_and_plot(curated_run):
    _, run_dir = curated_run
    report = (run_dir / "report.md").read_text()
    assert "### Curation" in report and "| read (docs, code, web) |" in report and "| exact_dedup |" in report
    assert "held-out labels precision" in report and "Kept per source: docs" in report
    assert (run_dir / "corpus" / "curation" / "quality_scores.png").read_bytes().startswith(b"\x89PNG")
    assert "![quality scores](corpus/curation/quality_scores.png)" in report


def test_rerun_skips_the_curated_corpus(curated_run):
    recipe, run_dir = curated_run
    stats = run_dir / "corpus" / "curation" / "stats.json"
    before = stats.stat().st_mtime_ns
    proc = phiforge("corpus", recipe, "--run-dir", run_dir)
    assert "done, skipped" in proc.stderr and stats.stat().st_mtime_ns == before


def test_changed_curation_is_not_silently_reused(curated_run, tmp_path):
    recipe, run_dir = curated_run
    data = yaml.safe_load(recipe.read_text())
    data["curation"]["classifier"]["threshold"] = 0.9
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data) .replace("web.jsonl", str(recipe.parent / "web.jsonl")))
    proc = phiforge("corpus", other, "--run-dir", run_dir, check=False)
    assert proc.returncode == 2 and "finished with another config" in proc.stderr


def test_teacher_labels_come_from_the_recipe_teacher(tmp_path, monkeypatch):
    from phiforge.data.curation import corpus as curation_corpus
    from phiforge.data.corpus import gather
    from phiforge.generation.fake import FakeBackend
    from phiforge.recipe import load_recipe

    seen = []

    def fake_backend(cfg, cache_dir):
        seen.append(cfg.model)
        return FakeBackend(lambda m, s, i: "unused", cfg.model,
                           probs=lambda m, choices: {"4": 0.9, "0": 0.1} if "because" in m[-1]["content"] else {"0": 1.0})

    monkeypatch.setattr("phiforge.generation.load_backend", fake_backend)
    curation = CURATION | {"classifier": {"label_sample": 40, "label_max_chars": 2000}}
    recipe = load_recipe(write_recipe(tmp_path, curation, teacher={"backend": "hf", "model": "my-teacher"}))
    curated, info = curation_corpus.curate_corpus(recipe, gather(recipe), tmp_path / "out")
    assert seen == ["my-teacher"]
    assert info["classifier"]["labeler"] == "teacher:my-teacher:probs" and info["classifier"]["labelled"] == 40
    assert info["classifier"]["label_quartiles"][-1] == 3.6 and info["classifier"]["label_seconds"] >= 0
    assert set(curated) == {"docs", "code", "web"}


@pytest.mark.parametrize("change, message", [
    ({"inputs": [{"name": "nope", "kind": "corpus"}]}, "curation input 'nope' has kind corpus but names no corpus source"),
    ({"inputs": [{"name": "docs", "kind": "corpus", "path": "web.jsonl"}]}, "kind corpus takes no path"),
    ({"classifier": {"labels": "oracle"}}, "'curation.classifier.labels'"),
])
def test_bad_curation_config_is_a_clear_error(tmp_path, change, message):
    from phiforge.errors import UserError
    from phiforge.recipe import load_recipe

    with pytest.raises(UserError, match=re.escape(message)):
        load_recipe(write_recipe(tmp_path, CURATION | change))


def test_bad_filter_argument_is_a_one_line_error(tmp_path):
    bad = CURATION | {"filters": {"gopher_quality": {"max_alpha": 0.5}}}
    proc = phiforge("corpus", write_recipe(tmp_path, bad), "--run-dir", tmp_path / "run", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1
    assert "curation.filters.gopher_quality" in errors[0] and "max_alpha" in errors[0]


def test_phiforge_curate_takes_a_recipe_with_corpus_inputs(tmp_path):
    recipe = write_recipe(tmp_path, CURATION)
    phiforge("curate", recipe, "--out", tmp_path / "out")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert set(stats["inputs"]) == {"docs", "code", "web"} and stats["classifier"]["labeler"] == "heuristic"
