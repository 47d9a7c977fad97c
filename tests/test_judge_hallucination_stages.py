"""DPO round 2 (judge_dpo) and hallucination mitigation as recipe stages: a planted policy, a scripted judge in
place of the recipe's teacher, the run, its rerun, the report, the no-pairs path and bad settings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from conftest import SMOKE, phiforge
from planted import train_planted_hf
from phiforge.errors import UserError
from phiforge.generation.fake import FakeBackend
from phiforge.recipe import load_recipe


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("planted") / "model"
    train_planted_hf(path)  # answers any chat prompt with `x y 7` or `x y 3`, at even odds
    return path


def judge_reply(messages, sampling, i) -> str:
    """Grades answers holding 7 high and the others low."""
    response = messages[-1]["content"].split("[Response]\n")[1].split("\n\nWrite")[0]
    return "Good.\nAccuracy: 9\nStyle: 8\nDetail: 8" if "7" in response else "Accuracy: 2\nStyle: 3\nDetail: 2"


@pytest.fixture
def scripted_teacher(monkeypatch):
    """The recipe's teacher (the default judge) becomes a scripted backend; returns the models asked for."""
    asked: list[str] = []

    def load_backend(cfg, cache_dir=None):
        asked.append(cfg.model)
        return FakeBackend(judge_reply if asked[-1] != "mute" else lambda m, s, i: "A fine answer.", "scripted-judge")

    monkeypatch.setattr("phiforge.generation.load_backend", load_backend)
    return asked


def recipe(tmp_path: Path, model: Path, **changes) -> Path:
    """Post-training only: judge_dpo on the planted model, then hallucination on what it leaves; jsonl inputs."""
    prompts, qa = tmp_path / "prompts.jsonl", tmp_path / "qa.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Q", "Q Q", "x Q", "Q x")))
    qa.write_text("".join(json.dumps({"question": q, "answer": "7"}) + "\n" for q in ("Q", "Q Q", "x Q")))
    data = {
        "name": "rounds", "seed": 3,
        "judge_dpo": {"init_from": str(model), "prompts": str(prompts), "samples": 6, "max_tokens": 8, "steps": 4,
                      "batch_size": 2, "lr": 3e-3, "checkpoint_every": 2, "log_every": 2},
        "hallucination": {"qa": str(qa), "heldout_qa": str(qa), "bogus": 4, "heldout_bogus": 3, "samples": 2,
                          "max_tokens": 8, "steps": 4, "batch_size": 2, "lr": 3e-3, "checkpoint_every": 2, "log_every": 2,
                          "sft_steps": 2, "sft_seq_len": 48},
    }
    for section, values in changes.items():
        data[section] |= values
    path = tmp_path / "rounds.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(path: Path, run_dir: Path) -> None:
    from phiforge.pipeline import run_all

    run_all(load_recipe(path), run_dir)


def manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "manifest.json").read_text())["metrics"]


def test_stages_run_report_and_rerun_skips(planted, tmp_path, scripted_teacher, caplog):
    run_dir, path = tmp_path / "run", recipe(tmp_path, planted)
    run(path, run_dir)
    assert scripted_teacher == ["smollm2"]  # the judge is the recipe's teacher: the default, SmolLM2

    judge = manifest(run_dir, "judge_dpo")
    pairs = [json.loads(line) for line in (run_dir / "judge_dpo" / "pairs.jsonl").read_text().splitlines()]
    assert judge["init_from"] == str(planted) and judge["judging"]["pairs"] == len(pairs) >= 1
    assert judge["judging"]["prompts"] == 4 and judge["judging"]["responses"] == 24 and judge["judging"]["unparseable"] == 0
    assert judge["judging"]["score"]["max"] > judge["judging"]["score"]["min"]
    for p in pairs:
        assert "7" in p["chosen"][0]["content"] and "3" in p["rejected"][0]["content"]
        assert p["judge"]["model"] == "scripted-judge"
    assert judge["steps"] == 4 and judge["margin_after"] > judge["margin_before"]
    assert (run_dir / "judge_dpo" / "pairs.summary.json").is_file() and (run_dir / "judge_dpo" / "model").is_dir()

    hal = manifest(run_dir, "hallucination")
    assert hal["init_from"] == str(run_dir / "judge_dpo" / "model")  # the model round 2 left
    assert hal["data"]["questions"] == 3 and hal["data"]["bogus_questions"] == 4
    assert hal["data"]["pairs"]["refusal_over_bogus_answer"] == 4  # the planted model answers everything
    rates = json.loads((run_dir / "hallucination" / "rates.json").read_text())
    assert set(rates) == {"before", "after", "paired"} and rates == hal["rates"]
    grades = [json.loads(line) for line in (run_dir / "hallucination" / "heldout_grades.jsonl").open()]
    assert len(grades) == 6 and sum(g["bogus"] for g in grades) == 3
    for when in ("before", "after"):  # the rates are those of the per-question grades
        facts = [g[f"{when}_grade"] for g in grades if not g["bogus"]]
        assert rates[when]["incorrect"] == pytest.approx(facts.count("incorrect") / 3)
    not_wrong = [[g[f"{w}_grade"] != "incorrect" for g in grades] for w in ("before", "after")]
    assert rates["paired"]["not_wrong"]["improved"] == sum(a and not b for b, a in zip(*not_wrong))
    assert rates["paired"]["not_wrong"]["regressed"] == sum(b and not a for b, a in zip(*not_wrong))
    for r in (rates["before"], rates["after"]):
        assert r["n"] == 3 and r["n_bogus"] == 3
        assert r["correct"] + r["incorrect"] + r["not_attempted"] == pytest.approx(1.0)
    assert rates["before"]["bogus_refusal"] == 0.0 and hal["margin_after"] > hal["margin_before"]
    assert hal["sft"]["init_from"] == hal["init_from"] and hal["sft"]["conversations"] >= 1  # SFT on its data, then DPO
    assert (run_dir / "hallucination" / "sft" / "model").is_dir()
    bogus_train = {json.loads(line)["question"] for line in (run_dir / "hallucination" / "data" / "grades.jsonl").open()}
    from phiforge.eval.simpleqa import bogus_questions
    assert not bogus_train & {q.question for q in bogus_questions(3, 3)}  # rates are measured on other bogus questions

    report = (run_dir / "report.md").read_text()
    assert "DPO round 2: judge-guided pairs" in report and "scripted-judge graded every answer" in report
    assert "Hallucination mitigation" in report and "| before |" in report and "| after |" in report
    assert "Paired on the same questions" in report
    assert "SFT on" in report
    assert "is the hallucination model" in report
    final = (run_dir / "final" / "model.safetensors").read_bytes()
    assert final == (run_dir / "hallucination" / "model" / "model.safetensors").read_bytes()

    before = (run_dir / "hallucination" / "model" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="phiforge"):
        run(path, run_dir)
    assert "judge_dpo: done, skipped" in caplog.text and "hallucination: done, skipped" in caplog.text
    assert (run_dir / "hallucination" / "model" / "model.safetensors").stat().st_mtime_ns == before

    status = phiforge("status", run_dir).stdout
    assert "judge_dpo" in status and "hallucination" in status


def test_a_judge_without_readable_scores_leaves_no_pairs_and_the_model_unchanged(planted, tmp_path, scripted_teacher,
                                                                                 caplog):
    run_dir = tmp_path / "run"
    path = recipe(tmp_path, planted, judge_dpo={"judge": "teacher"})
    data = yaml.safe_load(path.read_text()) | {"teacher": {"model": "mute"}}
    path.write_text(yaml.safe_dump(data))
    with caplog.at_level(logging.WARNING, logger="phiforge"):
        run(path, run_dir)
    assert "kept no pair" in caplog.text and "24 of 24 answers without readable scores" in caplog.text
    judge = manifest(run_dir, "judge_dpo")
    assert judge["skipped"] == "no pairs" and judge["judging"]["score"] is None
    assert not (run_dir / "judge_dpo" / "model").exists()
    assert manifest(run_dir, "hallucination")["init_from"] == str(planted)  # the model judge_dpo was given
    assert "DPO round 2 skipped: no pairs" in (run_dir / "report.md").read_text()


def test_changing_dpo_or_the_teacher_invalidates_the_later_stages(planted, tmp_path):
    from phiforge.pipeline import config_hash, stages_of

    path = recipe(tmp_path, planted)
    base = load_recipe(path)
    data = yaml.safe_load(path.read_text())

    def hashes(**top) -> dict[str, str]:
        path.write_text(yaml.safe_dump(data | top))
        r = load_recipe(path)
        return {s.name: config_hash(r, s) for s in stages_of(r)}

    assert [s.name for s in stages_of(base)] == ["judge_dpo", "hallucination", "report"]
    first = hashes()
    moved = hashes(judge_dpo=data["judge_dpo"] | {"min_gap": 3})
    assert all(first[n] != moved[n] for n in first)
    teacher = hashes(teacher={"model": "other"})
    assert all(first[n] != teacher[n] for n in first)


def test_prompts_default_to_user_turns_of_the_sft_conversations(planted, tmp_path):
    from phiforge.posttrain.stages import sft_prompts
    from phiforge.pipeline import context

    convs = tmp_path / "sft.jsonl"
    rows = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"},
             {"role": "assistant", "content": "x y 7"}, {"role": "user", "content": "again"},
             {"role": "assistant", "content": "7"}],
            [{"role": "user", "content": "Q x"}, {"role": "assistant", "content": "7"}],
            [{"role": "user", "content": "Q x"}, {"role": "assistant", "content": "3"}]]  # same prompt: once
    convs.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "sft": {"init_from": str(planted), "data": str(convs), "steps": 1},
                                    "judge_dpo": {"steps": 1}}))
    ctx = context(load_recipe(path), tmp_path / "run", "judge_dpo")
    got = sft_prompts(ctx, 10, 0)
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, [rows[0][:2], rows[1][:1]]))
    assert len(sft_prompts(ctx, 1, 0)) == 1


def write_smoke(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(yaml.safe_load(SMOKE.read_text()) | sections))
    return path


@pytest.mark.parametrize(("sections", "message"), [
    ({"judge_dpo": {"steps": 2, "judge": "no/such/dir"}}, "judge 'no/such/dir' is not a model"),
    ({"hallucination": {"steps": 2, "grader": "nope"}}, "grader 'nope' is not a model"),
    ({"judge_dpo": {"steps": 2, "samples": 1}}, "judge_dpo.samples"),
    ({"judge_dpo": {"steps": 2, "sample": 4}}, "unknown key 'judge_dpo.sample'"),
    ({"hallucination": {"steps": 2, "known_share": 0}}, "hallucination.known_share"),
])
def test_bad_settings_are_rejected_at_load(tmp_path, sections, message):
    with pytest.raises(UserError, match=message):
        load_recipe(write_smoke(tmp_path / "r.yaml", **sections))


def test_post_training_only_recipes_need_a_model_and_prompts(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "hallucination": {"steps": 2}}))
    with pytest.raises(UserError, match="hallucination needs a model"):
        load_recipe(path)
    path.write_text(yaml.safe_dump({"name": "p", "judge_dpo": {"steps": 2, "init_from": "smollm2"}}))
    with pytest.raises(UserError, match="judge_dpo needs prompts"):
        load_recipe(path)


def test_a_judge_that_is_not_a_model_is_a_one_line_error(tmp_path):
    proc = phiforge("run", write_smoke(tmp_path / "r.yaml", judge_dpo={"steps": 2, "judge": str(tmp_path)}),
                    "--run-dir", tmp_path / "run", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1 and "is not a model" in errors[0]
    assert not (tmp_path / "run").exists()  # rejected before any stage ran


def test_eval_scores_the_new_stages_models(tmp_path):
    from phiforge.eval.stage import models_to_evaluate
    from phiforge.pipeline import context

    run_dir = tmp_path / "run"
    for name in ("sft", "judge_dpo", "hallucination"):
        (run_dir / name / "model").mkdir(parents=True)
        (run_dir / name / "manifest.json").write_text("{}")
    ctx = context(load_recipe(SMOKE), run_dir, "eval")
    assert list(models_to_evaluate(ctx)) == ["sft", "judge_dpo", "hallucination"]
