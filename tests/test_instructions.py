"""Instruction following checked by code (eval/instructions.py, the `instructions` eval task)."""

from __future__ import annotations

import random

import pytest
from planted import train_planted_hf

from phiforge.eval.instructions import KINDS, _instruction, instruction_set
from phiforge.eval.tasks import TASKS, EvalInput
from phiforge.model import load_model
from phiforge.recipe import EvalConfig
from phiforge.tokenizer import load_tokenizer

# kind -> (a reply that follows it, one that does not), for the parameters seed 0 draws
REPLIES = {
    "max_words": ("Rivers run fast.", " ".join(["word"] * 31)),
    "min_words": (" ".join(["many"] * 40), "Too short."),
    "bullets": ("* one\n* two\n* three\n* four", "* one\n- two"),
    "json": ('```json\n{"answer": "tea", "steps": 3}\n```', "{answer: tea}"),
    "lowercase": ("all of this is lowercase.", "Not all of it."),
    "uppercase": ("SHOUTING ONLY.", "SHOUTING mostly."),
    "no_commas": ("No commas here.", "One, two."),
}


@pytest.mark.parametrize("kind", sorted(REPLIES))
def test_each_constraint_accepts_what_follows_it_and_rejects_what_does_not(kind):
    inst = _instruction(kind, random.Random(0))
    good, bad = REPLIES[kind]
    if kind == "max_words":  # the drawn limit is at least 10 words and at most 30
        assert "at most" in inst.text
    if kind == "bullets":
        good = "\n".join(f"* item {i}" for i in range(int(inst.text.split()[3])))
    assert inst.check(good) and not inst.check(bad), (inst.text, good, bad)
    assert not inst.check("")  # an empty reply follows nothing


def test_parameterised_constraints_read_their_own_parameters():
    rng = random.Random(3)
    for _ in range(20):
        ending = _instruction("ending", rng)
        phrase = ending.text.split("'")[1]
        assert ending.check(f"Some answer. {phrase}") and not ending.check(f"{phrase} Then more.")
        word = _instruction("include_word", rng)
        w = word.text.split("'")[1]
        assert word.check(f"It has {w.upper()} in it.") and not word.check(f"It has {w}s only.")
        forbidden = _instruction("forbidden_words", rng)
        b = forbidden.text.split("'")[3]
        assert forbidden.check("Rivers run fast.") and not forbidden.check(f"Rivers {b.upper()} hills.")
        sentences = _instruction("sentences", rng)
        n = int(sentences.text.split()[3])
        assert sentences.check(" ".join(["It is so."] * n)) and not sentences.check(" ".join(["It is so."] * (n + 1)))


def test_the_set_is_seeded_and_cycles_through_every_kind():
    items = instruction_set(22, seed=5)
    assert [inst.kind for _, inst in items] == list(KINDS) * 2
    assert [p for p, _ in items] == [p for p, _ in instruction_set(22, seed=5)]
    assert [p for p, _ in items] != [p for p, _ in instruction_set(22, seed=6)]


def test_task_on_a_planted_model_scores_what_its_one_reply_follows(tmp_path):
    train_planted_hf(tmp_path / "model")  # answers every prompt with `x y 7` or `x y 3`
    model, tok = load_model(tmp_path / "model"), load_tokenizer(tmp_path / "model")
    inp = EvalInput(model.eval(), tok, EvalConfig(instruction_prompts=33), [], [], 64, seed=2)
    result = TASKS["instructions"](inp)
    # "x y 7": three lowercase words without commas or forbidden words, one sentence, no bullets, not JSON
    followed = {"max_words", "lowercase", "forbidden_words", "no_commas"}
    expected = sum(inst.kind in followed or (inst.kind == "sentences" and "exactly 1 sentence" in inst.text)
                   for _, inst in instruction_set(33, seed=2))
    assert result["n"] == 33 and result["followed"] == pytest.approx(expected / 33)
    assert result["ci95_low"] < result["followed"] < result["ci95_high"]
