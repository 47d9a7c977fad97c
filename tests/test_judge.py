"""Judge-guided DPO pairs: a planted policy samples, a scripted judge grades by content, the pairs train with DPO."""

from __future__ import annotations

import json
import math

import pytest

from phiforge.generation.cache import CachedBackend
from phiforge.generation.fake import FakeBackend
from phiforge.generation.hf import HFBackend
from phiforge.posttrain.dpo import run_dpo
from phiforge.posttrain.dpo_config import DPOConfig
from phiforge.posttrain.judge import parse_scores, run_judge_pairs
from phiforge.posttrain.judge_config import JudgeConfig

from conftest import phiforge
from planted import train_planted_hf


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("planted") / "model"
    train_planted_hf(path)  # answers any prompt with `x y 7` or `x y 3`, at even odds
    return path


@pytest.mark.parametrize("answer, scores", [
    ("Fine.\nAccuracy: 8\nStyle: 7\nDetail: 6", (8, 7, 6)),
    ("**Accuracy**: 8/10\n**Style:** 7\n**Detail**: 6.5", (8, 7, 6.5)),
    ('{"accuracy": 2, "style": 3, "detail": 4}', (2, 3, 4)),
    ("Accuracy: 1 at first... Accuracy: 9\nStyle: 9\nDetail: 9", (9, 9, 9)),  # the last mention counts
    ("Accuracy: 8\nStyle: 7", None),  # a dimension missing
    ("Accuracy: 18\nStyle: 7\nDetail: 6", None),  # out of range
    ("A lovely answer.", None),
])
def test_parse_scores(answer, scores):
    parsed = parse_scores(answer)
    assert (None if parsed is None else tuple(parsed.values())) == scores


def scripted_judge(seen):
    """Grades `7` high and `3` low; answers the prompt `Q Q Q` with no scores at all."""
    def reply(messages, sampling, i):
        text = messages[-1]["content"]
        response = text.split("[Response]\n")[1].split("\n\nWrite")[0]
        conversation = text.split("[Conversation]\n")[1].split("\n\n[Response]")[0]
        seen.append((conversation, response))
        if "Q Q Q" in conversation:
            return "What a nice response."
        return "Right.\nAccuracy: 9\nStyle: 8\nDetail: 8" if "7" in response else "Accuracy: 2\nStyle: 3\nDetail: 2"
    return reply


def test_pairs_are_best_vs_worst_with_provenance_and_train_with_dpo(planted, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "Q"}, {"prompt": "Q Q"}, {"prompt": "Q Q Q"}, {"prompt": [{"role": "user", "content": "Q x"}]},
            {"prompt": "x Q"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    policy = CachedBackend(HFBackend(str(planted)), tmp_path / "cache.sqlite")
    seen: list = []
    judge = CachedBackend(FakeBackend(scripted_judge(seen)), tmp_path / "cache.sqlite")
    cfg = JudgeConfig(samples=6, min_gap=2, max_tokens=8, batch_prompts=2)
    stats = run_judge_pairs(policy, judge, prompts, tmp_path / "pairs.jsonl", cfg)

    # Expected from what the judge saw: a pair for every graded prompt whose responses hold both answers.
    by_prompt: dict[str, set] = {}
    for conversation, response in seen:
        by_prompt.setdefault(conversation, set()).add("7" in response)
    expected = sorted(c.removeprefix("user: ") for c, kinds in by_prompt.items() if kinds == {True, False}
                      and "Q Q Q" not in c)
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert expected and sorted(p["prompt"][-1]["content"] for p in pairs) == expected
    assert stats["unparseable"] == 6 and stats["responses"] == 30 and stats["pairs"] == len(pairs)
    for p in pairs:
        assert "7" in p["chosen"][0]["content"] and "3" in p["rejected"][0]["content"]
        record = p["judge"]
        assert record["gap"] == pytest.approx(25 / 3 - 7 / 3, abs=1e-3) and record["gap"] >= cfg.min_gap
        assert record["model"] == "fake" and len(record["responses"]) == 6
        for r in record["responses"]:
            assert r["response"] in r["judge_prompt"] and "Accuracy:" in r["judge_answer"]
            assert r["score"] == pytest.approx(sum(r["scores"].values()) / 3, abs=1e-4)

    # A rerun with a wider gap rule asks nobody again (request cache) and keeps no pair.
    again = FakeBackend(scripted_judge([]))
    stats = run_judge_pairs(CachedBackend(HFBackend(str(planted)), tmp_path / "cache.sqlite"),
                            CachedBackend(again, tmp_path / "cache.sqlite"), prompts, tmp_path / "none.jsonl",
                            JudgeConfig(samples=6, min_gap=6.5, max_tokens=8, batch_prompts=2))
    assert again.calls == 0 and stats["pairs"] == 0 and (tmp_path / "none.jsonl").read_text() == ""

    summary = run_dpo(planted, tmp_path / "pairs.jsonl", tmp_path / "dpo", DPOConfig(steps=3, lr=1e-3, batch_size=2))
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])
    assert summary["margin_after"] > summary["margin_before"]


def test_probs_judge_scores_by_digit_probabilities_per_dimension(planted, tmp_path):
    """`method: probs`: the judge answers nothing; each dimension's expected digit (0-5, doubled) is the score."""
    def probs(messages, choices):
        asked = messages[-1]["content"]
        response = asked.split("[Response]\n")[1].rsplit("\n\n", 1)[0]
        assert asked.endswith("(0-5):") and messages[0]["role"] == "system" and len(messages) == 6  # rubric, 2 shots
        if "Q Q Q" in asked:
            return {}  # no probability on any digit: unreadable
        return {"5": 0.6, "4": 0.2} if "7" in response else {"1": 0.3, "0": 0.1}

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ("Q", "Q Q", "Q Q Q", "x Q")))
    judge = FakeBackend(lambda *a: pytest.fail("a probs judge is never asked to write"), probs=probs)
    stats = run_judge_pairs(HFBackend(str(planted)), judge, prompts, tmp_path / "pairs.jsonl",
                            JudgeConfig(method="probs", samples=6, min_gap=2, max_tokens=8))
    assert judge.calls == 4 * 6 * 3 and stats["unparseable"] == 6  # one distribution per response and dimension
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert pairs and stats["pairs"] == len(pairs)
    for p in pairs:
        assert "7" in p["chosen"][0]["content"] and "3" in p["rejected"][0]["content"]
        # 2 * (5 * 0.6 + 4 * 0.2) / 0.8 = 9.5 against 2 * (1 * 0.3) / 0.4 = 1.5, in every dimension
        assert p["judge"]["chosen_score"] == pytest.approx(9.5) and p["judge"]["rejected_score"] == pytest.approx(1.5)
        assert set(p["judge"]["responses"][0]["judge_answer"]) == {"accuracy", "style", "detail"}
    summary = json.loads((tmp_path / "pairs.summary.json").read_text())
    assert summary["config"]["method"] == "probs" and set(summary["rubric"]) == {"accuracy", "style", "detail"}


def test_cli_reports_unparseable_judge_answers_and_bad_prompts(planted, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Q"}) + "\n")
    # The planted model as its own judge answers `x y 7`: no scores, so no pairs, every answer counted.
    proc = phiforge("judge-pairs", "--model", planted, "--prompts", prompts, "--out", tmp_path / "pairs.jsonl",
                    "--judge", planted, "--samples", "3", "--max-tokens", "8")
    assert "0 pairs from 1 prompts (3 responses, 3 unparseable judge answers)" in proc.stdout
    assert (tmp_path / "pairs.jsonl").read_text() == ""
    # Its vocabulary has no digits 0-5 to read probabilities of: a one-line error, not a grade of nothing.
    proc = phiforge("judge-pairs", "--model", planted, "--prompts", prompts, "--out", tmp_path / "probs.jsonl",
                    "--judge", planted, "--method", "probs", "--samples", "3", "--max-tokens", "8", check=False)
    assert proc.returncode == 2 and "no token of the vocabulary stands for the choices" in proc.stderr
    assert not (tmp_path / "probs.jsonl").exists()
    proc = phiforge("judge-pairs", "--model", planted, "--prompts", prompts, "--out", tmp_path / "p1.jsonl",
                    "--method", "scores", check=False)
    assert proc.returncode == 2 and "--method 'scores': use generate or probs" in proc.stderr
    prompts.write_text(json.dumps({"question": "Q"}) + "\n")
    proc = phiforge("judge-pairs", "--model", planted, "--prompts", prompts, "--out", tmp_path / "p2.jsonl",
                    check=False)
    assert proc.returncode == 2 and "row 1: 'prompt' must be a string" in proc.stderr
