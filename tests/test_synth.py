"""The synthetic data engine: dataset types, workflows with a scripted teacher, provenance, resume, errors."""

from __future__ import annotations

import json
import re

import pytest

from phiforge.errors import UserError
from phiforge.files import read_jsonl
from phiforge.generation.base import Sampling
from phiforge.generation.fake import FakeBackend
from phiforge.synth.dataset import builtin_types, load_dataset_type
from phiforge.synth.engine import generate_dataset, read_records
from phiforge.synth.generators import GENERATORS

from conftest import phiforge

SEEDS = [
    {"id": f"docs:{i}", "source": "docs", "kind": "text", "text": f"Passage {i}. " + "Water boils at one hundred degrees. " * 8}
    for i in range(6)
] + [
    {"id": f"code:{i}", "source": "src", "kind": "code", "text": f"def f{i}(x):\n    \"\"\"Double x.\"\"\"\n    return 2 * x + {i}\n" * 3}
    for i in range(4)
]


def last_user(messages) -> str:
    return messages[-1]["content"]


def run_type(tmp_path, name, reply, count=4, shard_size=64):
    backend = FakeBackend(reply, model="scripted-teacher")
    out = tmp_path / name
    stats = generate_dataset(load_dataset_type(name), count, out, backend, Sampling(seed=3), 1, SEEDS, shard_size)
    return stats, list(read_records(out)), backend


def test_at_least_ten_builtin_types_load_and_cover_every_workflow():
    types = [load_dataset_type(n) for n in builtin_types()]
    assert len(types) >= 10
    kinds = {s.kind for t in types for s in t.steps}
    assert {"generate", "parse", "dialogue", "revise", "reverse", "plurality", "verify"} <= kinds
    assert {t.generator.kind for t in types if t.generator} == set(GENERATORS)


def test_rewrite_records_provenance(tmp_path):
    stats, records, _ = run_type(tmp_path, "qa_from_passage", lambda m, s, i: "Question: What boils?\nAnswer: Water.")
    assert stats.kept == 4 and len(records) == 4
    r = records[0]
    assert r["messages"][1]["content"] == "Water." and "What boils?" in r["messages"][0]["content"]
    prov = r["provenance"]
    assert prov["seed"]["id"].startswith("docs:") and prov["seed"]["source"] == "docs"
    assert prov["teacher"] == "scripted-teacher"
    step = prov["steps"][0]
    assert step["kind"] == "generate" and step["sampling"]["max_tokens"] == 160 and step["sampling"]["seed"] == 3
    assert prov["created"] and len({r["id"] for r in records}) == 4


def test_the_teachers_max_tokens_caps_a_steps_own_length(tmp_path):
    backend = FakeBackend(lambda m, s, i: "Question: What boils?\nAnswer: Water.", model="scripted-teacher")
    generate_dataset(load_dataset_type("qa_from_passage"), 2, tmp_path / "qa", backend, Sampling(seed=3, max_tokens=64),
                     1, SEEDS, 64)
    steps = [r["provenance"]["steps"][0] for r in read_records(tmp_path / "qa")]
    assert steps and all(s["sampling"]["max_tokens"] == 64 for s in steps)  # the type asks for 160


def test_unparseable_replies_are_dropped_and_counted(tmp_path):
    stats, records, _ = run_type(tmp_path, "qa_from_passage", lambda m, s, i: "I cannot do that.")
    assert records == [] and stats.dropped == {"step 1 parse": 4}


def test_dialogue_alternates_roles_each_seeing_its_own_system_prompt(tmp_path):
    seen = []

    def reply(messages, sampling, i):
        seen.append(messages[0]["content"].split(".")[0])
        return f"turn{len(messages) - 1}"

    _, records, _ = run_type(tmp_path, "tutoring_dialogue", reply, count=1)
    assert seen == ["You are a curious student", "You are a patient teacher"] * 2
    turns = records[0]["provenance"]["steps"][0]["turns"]
    assert [t["role"] for t in turns[1:]] == ["student", "teacher", "student", "teacher"]
    assert records[0]["text"].count("Student:") == 2


def test_self_revision_keeps_the_history(tmp_path):
    def reply(messages, sampling, i):
        text = last_user(messages)
        if text.startswith("Critique"):
            return "Too long."
        if text.startswith("Rewrite"):
            return "Water boils at 100 C."
        return "A long rambling draft."

    _, records, _ = run_type(tmp_path, "critic_revision", reply, count=2)
    rounds = records[0]["provenance"]["steps"][1]["rounds"]
    assert rounds == [{"draft": "A long rambling draft.", "critique": "Too long.", "revision": "Water boils at 100 C."}]
    assert records[0]["messages"][1]["content"] == "Water boils at 100 C."


def test_instruction_reversal_keeps_only_consistent_pairs(tmp_path):
    def reply(messages, sampling, i):
        text = last_user(messages)
        if text.startswith("Write the instruction"):
            code = text.split("\n\n", 1)[1]
            return "Write a function. " + ("KEEP" if "+ 0" in code or "+ 1" in code else "DROP") + "\n" + code
        # Regenerate: echo the code back for KEEP, garbage for DROP.
        return text.split("\n", 1)[1].rsplit("\n", 1)[0] if "KEEP" in text else "print('hi')"

    stats, records, _ = run_type(tmp_path, "code_instruction_reversal", reply, count=4)
    assert stats.kept == 2 and stats.dropped == {"step 0 reverse": 2}
    assert all(r["provenance"]["steps"][0]["similarity"] >= 0.3 for r in records)


def test_plurality_keeps_questions_inside_the_agreement_band(tmp_path):
    # Per question (by its operands) the teacher agrees with itself always, never, or 3 times in 5.
    def reply(messages, sampling, i):
        text = last_user(messages)
        if text.startswith("Turn this"):
            return "Story: " + text.rsplit("\n\n", 1)[1]
        q = int(re.findall(r"\d+", text)[0]) % 3
        if q == 0:
            return "42"
        if q == 1:
            return str(100 + sampling.seed * 10 + i)  # every sample differs
        return "7" if i < 3 else str(i)

    stats, records, _ = run_type(tmp_path, "word_problem_plurality", reply, count=12)
    agreements = [r["fields"]["majority_agreement"] for r in records]
    assert records and all(a == 0.6 for a in agreements)
    assert stats.dropped.get("step 1 plurality", 0) >= 1 and stats.kept + sum(stats.dropped.values()) == 12


def test_programmatic_types_verify_their_answers(tmp_path):
    for name in ("arithmetic", "algebra", "unit_conversion"):
        stats, records, backend = run_type(tmp_path, name, lambda m, s, i: pytest.fail("no teacher needed"), count=40)
        assert stats.kept == 40 and backend.calls == 0
        assert all(r["provenance"]["verifier"]["ok"] for r in records)


def test_verified_code_records_the_sandboxs_isolation(tmp_path):
    from phiforge.synth.sandbox import isolation_level

    stats, records, _ = run_type(tmp_path, "code_exercise", lambda m, s, i: pytest.fail("no teacher needed"), count=4)
    assert stats.kept == 4
    assert {r["provenance"]["verifier"]["isolation"] for r in records} == {isolation_level()}


def test_a_tampered_answer_fails_verification(tmp_path):
    dtype = load_dataset_type("arithmetic")
    from phiforge.synth.workflow import Workflow

    samples = [dict(g) for g in GENERATORS["arithmetic"](3, 0)]
    samples[1]["answer"] = str(int(samples[1]["answer"]) + 1)
    Workflow(dtype, None, Sampling()).run(samples)
    assert ["_dropped" in s for s in samples] == [False, True, False]


def test_resume_loses_nothing_and_generates_nothing_twice(tmp_path):
    calls = {"n": 0}

    def flaky(messages, sampling, i):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # the run is killed while shard 3 is in flight
        return "Question: Q?\nAnswer: A."

    out = tmp_path / "qa"
    dtype = load_dataset_type("qa_from_passage")
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(dtype, 6, out, FakeBackend(flaky), Sampling(), 1, SEEDS, shard_size=2)
    assert sorted(p.name for p in out.glob("shard_*.jsonl")) == ["shard_00000.jsonl", "shard_00001.jsonl"]
    backend = FakeBackend(lambda m, s, i: "Question: Q?\nAnswer: A.")
    stats = generate_dataset(dtype, 6, out, backend, Sampling(), 1, SEEDS, shard_size=2)
    assert backend.calls == 2 and stats.kept == 6  # only the unfinished shard was generated again
    ids = [r["id"] for r in read_records(out)]
    assert len(ids) == len(set(ids)) == 6


def test_template_errors_name_the_dataset_type_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\ndescription: d\nseeds: {kinds: [text]}\n"
        "steps:\n  - {kind: generate, prompt: 'About {topic}', output: x}\noutput: {text: '{x}'}\n"
    )
    with pytest.raises(UserError, match=r"dataset type 'bad', step 0 prompt: template uses field 'topic'"):
        generate_dataset(load_dataset_type(bad), 1, tmp_path / "o", FakeBackend(lambda m, s, i: ""), Sampling(), 0, SEEDS)
    bad.write_text(bad.read_text().replace("About {topic}", "About {seed"))
    with pytest.raises(UserError, match="broken template"):
        generate_dataset(load_dataset_type(bad), 1, tmp_path / "o", FakeBackend(lambda m, s, i: ""), Sampling(), 0, SEEDS)
    bad.write_text("name: bad\ndescription: d\nseeds: {kinds: [text]}\nsteps: []\noutput: {text: x}\n")
    with pytest.raises(UserError, match="needs at least one step"):
        load_dataset_type(bad)
    with pytest.raises(UserError, match="unknown dataset type 'nope'"):
        load_dataset_type("nope")


CUSTOM_TYPE = """\
name: capitals
description: A user's own dataset type, added without Python.
generator: {kind: unit_conversion}
steps:
  - {kind: verify, verifier: numeric, completion: steps, problem: {answer: "{answer}"}}
output:
  messages:
    - {role: user, content: "Quick: {question}"}
    - {role: assistant, content: "{answer}"}
"""


def test_cli_runs_a_user_defined_type_and_inspects_lineage(tmp_path):
    (tmp_path / "mytype.yaml").write_text(CUSTOM_TYPE)
    # A benchmark that leaked one of the samples the arithmetic type will make (the stage seeds it with seed + 1).
    leaked = next(iter(GENERATORS["arithmetic"](1, 1235)))
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": f"{leaked['question']} {leaked['steps']}"}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: r\ncorpus:\n  sources: [{{name: math, kind: synthetic_math, max_docs: 50}}]\n  decontaminate: [{bench}]\n"
        "synth:\n  datasets:\n    - {type: mytype.yaml, count: 10}\n    - {type: arithmetic, count: 20}\n"
        "pretrain: {mixture: {math: 0.5, arithmetic: 0.5}, steps: 1}\n"
    )
    run_dir = tmp_path / "run"
    phiforge("corpus", recipe, "--run-dir", run_dir)
    phiforge("synth", recipe, "--run-dir", run_dir)
    manifest = json.loads((run_dir / "synth" / "manifest.json").read_text())
    assert manifest["metrics"]["datasets"]["mytype"]["kept"] == 10
    assert manifest["metrics"]["datasets"]["arithmetic"]["contaminated_removed"] == 1
    assert manifest["metrics"]["decontamination"]["items_hit"] == {"bench": ["0"], "problems_heldout": []}
    sft = list(read_jsonl(run_dir / "synth" / "sft.jsonl"))
    assert len(sft) == 29 and any(c["messages"][0]["content"].startswith("Quick: Convert") for c in sft)
    assert not any(c["messages"][0]["content"] == leaked["question"] for c in sft)
    shown = phiforge("synth", "inspect", run_dir / "synth" / "datasets" / "arithmetic" / "shard_00000.jsonl", "-i", "2")
    assert "arithmetic-0000002" in shown.stdout and "verified by numeric: passed" in shown.stdout
    assert "generator:arithmetic" in shown.stdout
    listed = phiforge("synth", "types")
    assert "word_problem_plurality" in listed.stdout
    missing = phiforge("synth", "inspect", run_dir / "nope.jsonl", check=False)
    assert missing.returncode == 2 and missing.stderr.startswith("error:")
