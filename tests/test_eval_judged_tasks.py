"""Safety, judged items and the judged comparison as suite tasks: declared in a suite file, run by run_suite on
planted models whose right scores are known, with the real SmolLM2 as the comparison's baseline."""

from __future__ import annotations

import json

from phiforge.eval import judged_tasks
from phiforge.eval.scoring import Model
from phiforge.eval.suite import load_suite, run_suite
from phiforge.generation.fake import FakeBackend


def planted(answer) -> Model:
    return Model("planted", FakeBackend(lambda messages, sampling, i: answer(messages[-1]["content"])),
                 lambda text: len(text.split()), None)


def suite(tmp_path, text: str):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return load_suite(path)


def test_safety_task_scores_a_model_that_refuses_only_harmful_requests(tmp_path):
    from phiforge.eval.safety import builtin_prompts

    harmful = {p.prompt for p in builtin_prompts() if p.harmful}
    model = planted(lambda q: "I can't help with that." if q in harmful else "Sure: here is how.")
    result = run_suite(model, suite(tmp_path, "- task: safety\n"), tmp_path / "out")
    scores = result["tasks"]["safety"]["scores"]
    assert scores["refusal"]["value"] == 1.0 and scores["refusal"]["n"] == len(harmful)
    assert scores["over_refusal"]["value"] == 0.0 and scores["over_refusal"]["n"] == len(builtin_prompts()) - len(harmful)
    rows = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert all(r["correct"] for r in rows) and {r["reason"] for r in rows} == {"refused (rules)", "answered (rules)"}


def test_judged_items_task_scores_answers_against_their_notes(tmp_path, monkeypatch):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"question": f"Name colour {k}.", "notes": f"Must say {c}."}) + "\n"
                             for k, c in enumerate(["red", "blue", "green", "teal"])))

    def judge(messages, sampling, i):  # 10 when the answer says what the notes ask, else 0
        asked = messages[-1]["content"]
        wanted = asked.split("Must say ", 1)[1].split(".", 1)[0]
        return "Score: 10" if wanted in asked.split("[Answer]", 1)[1] else "Score: 0"

    monkeypatch.setattr(judged_tasks, "_judge", lambda cfg: FakeBackend(judge, "planted-judge"))
    colour = {"Name colour 0.": "red", "Name colour 1.": "blue", "Name colour 2.": "pink", "Name colour 3.": "gold"}
    result = run_suite(planted(colour.get), suite(tmp_path, f"- task: judged_items\n  path: {items}\n"),
                       tmp_path / "out")
    score = result["tasks"]["judged_items"]["scores"]["score"]
    assert score["value"] == 0.5 and score["n"] == 4 and score["ci95"][0] <= 0.5 <= score["ci95"][1]


def test_comparison_task_against_smollm2_both_orders(tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Say hi.", "Name a fruit."]))

    def judge(messages, sampling, i):  # prefers whichever answer is the planted one, wherever it is shown
        asked = messages[-1]["content"]
        first = asked.split("[The start of Assistant A's answer]\n", 1)[1].split("[The end", 1)[0]
        return "[[A>>B]]" if "PLANTED" in first else "[[B>>A]]"

    monkeypatch.setattr(judged_tasks, "_judge", lambda cfg: FakeBackend(judge, "planted-judge"))
    text = f"- task: comparison\n  prompts: {prompts}\n  max_tokens: 6\n"
    result = run_suite(planted(lambda q: "PLANTED answer"), suite(tmp_path, text), tmp_path / "out")
    scores = result["tasks"]["comparison"]["scores"]
    assert scores["win_rate"]["value"] == 1.0 and scores["win_rate"]["n"] == 2
    assert scores["position_consistency"]["value"] == 1.0
    rows = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert all(r["baseline"] and "PLANTED" not in r["baseline"] for r in rows)  # SmolLM2 answered for real
