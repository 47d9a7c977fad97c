"""Hostile and bad input, for every entry point: each case must meet the project's rule.

The rule: exit code 2, stderr's last line starts with `error:` (one short line), no traceback, nothing
half-written. A table of cases runs the real CLI entry point (`phiforge.cli.main`) in-process; property tests
(hypothesis) mutate every recipe field and every data format and check that what comes back is either accepted
input that is valid or a UserError of one short line, never another exception. A few cases run as a subprocess,
as a user would. The last test counts the cases and asserts that every one met the rule.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SMOKE, phiforge
from phiforge.cli import main
from phiforge.errors import UserError
from phiforge.recipe import Recipe, load_recipe, preflight

RESULTS: dict[str, bool] = {}  # case id -> met the rule; the summary test reads it
MAX_LINE = 300  # "one short line": the 1.3 KB recipe dump of issue 15 is what this keeps out


def _meets_rule(code: int, stderr: str, fragments: tuple[str, ...]) -> str | None:
    """None when (code, stderr) meets the rule, else what is wrong."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if code != 2:
        return f"exit code {code}"
    if "Traceback" in stderr:
        return "a traceback"
    if not lines or not lines[-1].startswith("error: "):
        return "last line is not an error: line"
    if len(lines[-1]) > MAX_LINE:
        return f"error line of {len(lines[-1])} characters"
    missing = [f for f in fragments if f not in lines[-1]]
    return f"error line lacks {missing}" if missing else None


def run_main(args, capsys, monkeypatch) -> tuple[int, str]:
    """The CLI's entry point in-process: exit code and stderr."""
    monkeypatch.setattr(sys, "argv", ["phiforge", *map(str, args)])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


def check(case_id: str, code: int, stderr: str, *fragments: str) -> None:
    problem = _meets_rule(code, stderr, fragments)
    RESULTS[case_id] = problem is None
    assert problem is None, f"{case_id}: {problem}\n{stderr[-3000:]}"


# --- the table ----------------------------------------------------------------------------------------------


def _smoke() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def _parent(data: dict, path: str):
    """The container holding the last key of a dotted path (numbers index lists) and that key."""
    *parents, key = path.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    return node, key


def _set(path: str, value) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        node, key = _parent(data, path)
        node[key] = value

    return mutate


def _rename(path: str, new: str) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        node, key = _parent(data, path)
        node[new] = node.pop(key)

    return mutate


ALIAS_BOMB = "name: x\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9))


@dataclass
class RecipeCase:
    id: str
    mutate: Callable[[dict], None] | None = None  # a change to recipes/smoke.yaml
    raw: bytes | None = None  # or the recipe file's bytes
    fragments: tuple[str, ...] = ()
    files: dict[str, str] | None = None  # extra files beside the recipe, relative path -> text


BERT = json.dumps({"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 128})
RECIPE_CASES = [
    RecipeCase("not-utf8", raw="name: caf\xe9\n".encode("latin-1"), fragments=("not UTF-8",)),
    RecipeCase("alias-bomb", raw=ALIAS_BOMB.encode(), fragments=("aliases",)),
    RecipeCase("recursive-alias", raw=b"name: x\na: &a [*a]\n", fragments=("aliases",)),
    RecipeCase("deep-nesting", raw=b"[" * 5000 + b"]" * 5000, fragments=("nested",)),
    RecipeCase("empty-file", raw=b"", fragments=("mapping",)),
    RecipeCase("a-list", raw=b"- 1\n- 2\n", fragments=("mapping",)),
    RecipeCase("invalid-yaml", raw=b"name: x\ncorpus: [unclosed\n", fragments=("invalid YAML",)),
    RecipeCase("misspelt-steps", _rename("pretrain.steps", "stepz"), fragments=("pretrain.stepz", "'steps'")),
    RecipeCase("misspelt-section", _rename("tokenizer", "tokeniser"), fragments=("tokeniser", "'tokenizer'")),
    RecipeCase("misspelt-source-key", _rename("corpus.sources.0.name", "nme"), fragments=("corpus.sources.0.nme",)),
    RecipeCase("unknown-mixture-source", _set("pretrain.mixture.webb", 0.1), fragments=("webb", "known")),
    RecipeCase("steps-a-string", _set("pretrain.steps", "many"), fragments=("pretrain.steps",)),
    RecipeCase("steps-a-list", _set("pretrain.steps", [1, 2]), fragments=("pretrain.steps",)),
    RecipeCase("negative-lr", _set("sft.lr", -1e-3), fragments=("sft.lr",)),
    RecipeCase("nan-lr", _set("sft.lr", math.nan), fragments=("sft.lr",)),
    RecipeCase("huge-string", _set("name", {"x" * 10_000: 1}), fragments=("name",)),
    RecipeCase("sources-not-a-list", _set("corpus.sources", "docs"), fragments=("corpus.sources",)),
    RecipeCase("seq-len-a-billion", _set("pretrain.seq_len", 1_000_000_000), fragments=("GiB", "pretrain.seq_len")),
    RecipeCase("sft-batch-huge", _set("sft.batch_size", 10**8), fragments=("GiB", "sft.batch_size")),
    RecipeCase("midtrain-context-huge", _set("midtrain.context_multiplier", 10**8),
               fragments=("GiB", "midtrain.context_multiplier")),
    RecipeCase("preset-bert", _set("model.preset", "bert.json"), fragments=("bert", "Phi-3"), files={"bert.json": BERT}),
    RecipeCase("preset-garbage-dir", _set("model.preset", "junk"), fragments=("junk",),
               files={"junk/config.json": "garbage{"}),
    RecipeCase("preset-empty-config", _set("model.preset", "empty.json"), fragments=("model_type",),
               files={"empty.json": "{}"}),
    RecipeCase("sft-init-from-not-a-model", _set("sft.init_from", "plain_dir"), fragments=("sft.init_from", "config.json"),
               files={"plain_dir/README": ""}),
    RecipeCase("preset-unknown-name", _set("model.preset", "phi-5"), fragments=("phi-5",)),
    RecipeCase("preset-shapes-do-not-fit", _set("model.preset", "odd.json"), fragments=("odd.json",),
               files={"odd.json": json.dumps({"model_type": "phi3", "hidden_size": 64, "num_attention_heads": 0})}),
]


def _write_case(case: RecipeCase, tmp_path: Path) -> Path:
    for rel, text in (case.files or {}).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    recipe = tmp_path / "recipe.yaml"
    if case.raw is not None:
        recipe.write_bytes(case.raw)
    else:
        data = _smoke()
        case.mutate(data)
        recipe.write_text(yaml.safe_dump(data))
    return recipe


@pytest.mark.parametrize("case", RECIPE_CASES, ids=lambda c: c.id)
def test_bad_recipe(case, tmp_path, capsys, monkeypatch):
    recipe = _write_case(case, tmp_path)
    code, err = run_main(["run", recipe, "--run-dir", tmp_path / "run"], capsys, monkeypatch)
    check(f"recipe:{case.id}", code, err, *case.fragments)
    assert not (tmp_path / "run").exists(), "nothing may be written for a recipe that is refused"


def _small_corpus_recipe(tmp_path: Path, source_text: str) -> Path:
    (tmp_path / "mine.jsonl").write_text(source_text)
    recipe = {"name": "small", "corpus": {"sources": [{"name": "mine", "kind": "jsonl", "path": "mine.jsonl"}],
                                          "sft_conversations": 1, "eval_problems": 1},
              "model": {"preset": "nano"}, "tokenizer": {"vocab_size": 512},
              "pretrain": {"mixture": {"mine": 1.0}, "steps": 1, "batch_size": 1, "seq_len": 16}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize(("case_id", "text", "fragments"), [
    ("no-documents", "", ("mine", "no documents", "pretrain.mixture")),
    ("blank-documents", '{"text": ""}\n{"text": "   "}\n', ("mine", "no documents")),
    ("missing-field", '{"content": "hello"}\n', ("mine.jsonl", "row 1", "field")),
    ("not-json", '{"text": "ok"}\n{oops\n', ("mine.jsonl:2",)),
    ("not-an-object", '"just a string"\n', ("mine.jsonl:1",)),
])
def test_bad_corpus_source(case_id, text, fragments, tmp_path, capsys, monkeypatch):
    code, err = run_main(["corpus", _small_corpus_recipe(tmp_path, text), "--run-dir", tmp_path / "run"],
                         capsys, monkeypatch)
    check(f"corpus:{case_id}", code, err, *fragments)
    assert not (tmp_path / "run" / "corpus").exists(), "a refused corpus stage leaves no partial stage"


MODEL_INFO_CASES = {
    "bert-config": ("bert.json", BERT, ("bert",)),
    "empty-config": ("empty.json", "{}", ("model_type",)),
    "a-list-config": ("list.json", "[1, 2]", ("model_type",)),
    "not-json": ("bad.json", "{nope", ("not valid JSON",)),
    "garbage-dir": ("junk/config.json", "garbage{", ("junk",)),
    "dir-without-config": ("empty_dir/README", "", ("no config.json",)),
}


@pytest.mark.parametrize("case_id", MODEL_INFO_CASES)
def test_bad_model_info(case_id, tmp_path, capsys, monkeypatch):
    rel, text, fragments = MODEL_INFO_CASES[case_id]
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(text)
    target = tmp_path / rel if rel.endswith(".json") and "/" not in rel else (tmp_path / rel).parent
    code, err = run_main(["model", "info", target], capsys, monkeypatch)
    check(f"model-info:{case_id}", code, err, *fragments)


PTS_ROWS = {
    "verifier-a-list": ({"prompt": "Q", "answer": "7", "verifier": ["numeric"]}, ("verifier",)),
    "verifier-unknown": ({"prompt": "Q", "answer": "7", "verifier": "telepathy"}, ("telepathy",)),
    "answer-null": ({"prompt": "Q", "answer": None}, ("answer",)),
    "answer-a-dict": ({"prompt": "Q", "answer": {"a": 1}}, ("answer",)),
    "answer-a-list": ({"prompt": "Q", "answer": [7]}, ("answer",)),
    "answer-a-bool": ({"prompt": "Q", "answer": True}, ("answer",)),
    "answer-empty": ({"prompt": "Q", "answer": " "}, ("answer",)),
    "prompt-a-number": ({"prompt": 3, "answer": "7"}, ("prompt",)),
    "prompt-empty": ({"prompt": "", "answer": "7"}, ("prompt",)),
}


@pytest.mark.parametrize("case_id", PTS_ROWS)
def test_bad_pts_problems(case_id, tmp_path, capsys, monkeypatch):
    row, fragments = PTS_ROWS[case_id]
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"prompt": "Q", "answer": "7"}) + "\n" + json.dumps(row) + "\n")
    out = tmp_path / "pairs.jsonl"
    code, err = run_main(["pts", "--model", tmp_path / "no-model", "--problems", problems, "--out", out],
                         capsys, monkeypatch)
    check(f"pts:{case_id}", code, err, "row 2", *fragments)
    assert list(tmp_path.iterdir()) == [problems], "nothing may be written"


def test_pts_bad_model_leaves_nothing(tmp_path, capsys, monkeypatch):
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"prompt": "Q", "answer": "7"}) + "\n")
    (tmp_path / "not-a-model").mkdir()
    code, err = run_main(["pts", "--model", tmp_path / "not-a-model", "--problems", problems,
                          "--out", tmp_path / "pairs.jsonl"], capsys, monkeypatch)
    check("pts:bad-model", code, err, "not-a-model")
    assert not (tmp_path / "pairs.jsonl.parts").exists()


@pytest.fixture(scope="module")
def planted_model(tmp_path_factory):
    from planted import train_planted_hf

    path = tmp_path_factory.mktemp("planted") / "model"
    train_planted_hf(path, steps=1)
    return path


DPO_ROWS = {
    "chosen-equals-rejected": ({"prompt": "Q", "chosen": "x 7", "rejected": "x 7"}, ("chosen equals rejected",)),
    "token-chosen-equals-rejected": ({"prompt_token_ids": [5, 6], "chosen_token_id": 9, "rejected_token_id": 9},
                                     ("equals",)),
    "booleans-as-ids": ({"prompt_token_ids": [True, False], "chosen_token_id": True, "rejected_token_id": False},
                        ("integer",)),
    "negative-ids": ({"prompt_token_ids": [-1, 5], "chosen_token_id": 9, "rejected_token_id": 10}, ("token ids",)),
    "ids-beyond-vocab": ({"prompt_token_ids": [5], "chosen_token_id": 10**9, "rejected_token_id": 10},
                         ("token ids",)),
    "empty-chosen": ({"prompt": "Q", "chosen": "", "rejected": "x 3"}, ("text",)),
    "empty-prompt": ({"prompt": " ", "chosen": "x 7", "rejected": "x 3"}, ("text",)),
    "chosen-a-number": ({"prompt": "Q", "chosen": 7, "rejected": "x 3"}, ("chosen",)),
}


@pytest.mark.parametrize("case_id", DPO_ROWS)
def test_bad_dpo_pairs(case_id, planted_model, tmp_path, capsys, monkeypatch):
    row, fragments = DPO_ROWS[case_id]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps(row) + "\n")
    code, err = run_main(["dpo", "--model", planted_model, "--pairs", pairs, "--out", tmp_path / "out"],
                         capsys, monkeypatch)
    check(f"dpo:{case_id}", code, err, "row 1", *fragments)
    assert not (tmp_path / "out").exists(), "nothing may be written"


# --- property tests: every recipe field, every data format ------------------------------------------------

PROPERTY = settings(max_examples=50, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _leaf_paths(node, prefix=()) -> list[tuple]:
    """Every key path of the smoke recipe, sections and values."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in [(*prefix, k), *_leaf_paths(v, (*prefix, k))]]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in [(*prefix, i), *_leaf_paths(v, (*prefix, i))]]
    return []


SMOKE_DATA = _smoke()
SMOKE_PATHS = _leaf_paths(SMOKE_DATA)
HOSTILE_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), st.just("x" * 5000),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=8), st.integers(), max_size=2),
)


def _mutated(data: dict, path: tuple, kind: str, value) -> dict:
    data = copy.deepcopy(data)
    node = data
    for p in path[:-1]:
        node = node[p]
    key = path[-1]
    if kind == "replace":
        node[key] = value
    elif kind == "delete" and isinstance(node, dict):
        del node[key]
    elif kind == "unknown-key" and isinstance(node, dict):
        node[f"{key}_typo"] = value
    return data


def _outcome(tmp_path: Path, text: bytes) -> Recipe | None:
    """Load and preflight a recipe file: a Recipe, or None after a UserError of one short line."""
    path = tmp_path / "recipe.yaml"
    path.write_bytes(text)
    try:
        recipe = load_recipe(path)
        preflight(recipe, ["pretrain", "midtrain", "sft"])
        return recipe
    except UserError as e:
        message = str(e)
        assert "\n" not in message and len(message) < MAX_LINE, message
        return None


@PROPERTY
@given(path=st.sampled_from(SMOKE_PATHS), kind=st.sampled_from(["replace", "delete", "unknown-key"]),
       value=HOSTILE_VALUES)
def test_property_every_recipe_field(tmp_path, path, kind, value):
    data = _mutated(SMOKE_DATA, path, kind, value)
    recipe = _outcome(tmp_path, yaml.safe_dump(data, allow_unicode=True).encode())
    if kind == "unknown-key" and isinstance(path[-1], str):
        assert recipe is None, "an unknown key is always an error"
    RESULTS.setdefault("property:recipe-fields", True)


@PROPERTY
@given(garbage=st.binary(min_size=1, max_size=200), at=st.integers(min_value=0, max_value=2000))
def test_property_recipe_bytes(tmp_path, garbage, at):
    """Arbitrary bytes spliced into a valid recipe (non-UTF-8, control characters, broken YAML)."""
    text = SMOKE.read_bytes()
    _outcome(tmp_path, text[:at] + garbage + text[at:])
    RESULTS.setdefault("property:recipe-bytes", True)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**20), max_value=10**20) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _rows(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """jsonl text: rows whose known fields hold hostile values, plus junk lines now and then."""
    row = st.fixed_dictionaries({}, optional={k: v | JSON_VALUES for k, v in fields.items()})
    line = row.map(json.dumps) | st.sampled_from(["{broken", "[1, 2]", '"text"', "null", ""])
    return st.lists(line, max_size=4).map(lambda lines: "".join(ln + "\n" for ln in lines))


def _user_error_or(read: Callable[[Path], object], path: Path, text: str):
    path.write_text(text)
    try:
        return read(path)
    except UserError as e:
        assert "\n" not in str(e) and len(str(e)) < MAX_LINE, str(e)
        return None


@PROPERTY
@given(text=_rows({"prompt": st.just("Q"), "answer": st.just("7"),
                   "verifier": st.sampled_from(["numeric", "exact", "math"])}))
def test_property_pts_problems(tmp_path, text):
    from phiforge.posttrain.pts.runner import read_problems
    from phiforge.synth.verify import VERIFIERS

    problems = _user_error_or(read_problems, tmp_path / "p.jsonl", text)
    for p in problems or []:
        assert isinstance(p["prompt"], str) and p["prompt"].strip()
        assert isinstance(p["answer"], (str, int, float)) and not isinstance(p["answer"], bool)
        assert p.get("verifier", "numeric") in VERIFIERS
    RESULTS.setdefault("property:pts-problems", True)


@PROPERTY
@given(text=_rows({"prompt": st.just("Q"), "chosen": st.just("x 7"), "rejected": st.just("x 3"),
                   "prompt_token_ids": st.just([5, 6]), "chosen_token_id": st.integers(-2, 20),
                   "rejected_token_id": st.integers(-2, 20)}))
def test_property_dpo_pairs(tmp_path, text):
    from planted import planted_tokenizer

    from phiforge.posttrain.dpo import read_pairs

    tok = planted_tokenizer()
    pairs = _user_error_or(lambda p: read_pairs(p, tok, 64), tmp_path / "pairs.jsonl", text)
    for pair in pairs or []:
        assert pair.prompt and pair.chosen and pair.rejected and pair.chosen != pair.rejected
        assert all(0 <= t < len(tok) for t in pair.prompt + pair.chosen + pair.rejected)
    RESULTS.setdefault("property:dpo-pairs", True)


MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "robot"]),
                                 "content": st.text(max_size=8) | JSON_VALUES})


@PROPERTY
@given(text=_rows({"messages": st.lists(MESSAGE, max_size=3)}))
def test_property_sft_conversations(tmp_path, text):
    from phiforge.posttrain.sft import ROLES, read_conversations

    conversations = _user_error_or(read_conversations, tmp_path / "sft.jsonl", text)
    for messages in conversations or []:
        assert all(m["role"] in ROLES and isinstance(m["content"], str) for m in messages)
        assert any(m["role"] == "assistant" for m in messages)
    RESULTS.setdefault("property:sft-conversations", True)


@PROPERTY
@given(text=_rows({"question": st.just("Who?"), "answer": st.just("Ada"), "aliases": st.just(["A"]),
                   "verifier": st.sampled_from(["numeric", "exact", "alias"])}))
def test_property_qa_files(tmp_path, text):
    from phiforge.eval.simpleqa import read_qa

    for q in _user_error_or(read_qa, tmp_path / "qa.jsonl", text) or []:
        assert q.question.strip() and q.answer.strip()
    RESULTS.setdefault("property:qa-files", True)


@PROPERTY
@given(text=_rows({"text": st.text(max_size=20)}))
def test_property_jsonl_corpus_source(tmp_path, text):
    from phiforge.data.sources import iter_documents
    from phiforge.recipe import SourceConfig

    source = SourceConfig(name="mine", kind="jsonl", path=tmp_path / "mine.jsonl")
    docs = _user_error_or(lambda _: list(iter_documents(source, 0)), tmp_path / "mine.jsonl", text)
    assert all(isinstance(d, str) for d in docs or [])
    RESULTS.setdefault("property:jsonl-corpus-source", True)


# --- as a user would: a representative few in a subprocess -------------------------------------------------


@pytest.mark.parametrize("case_id", ["alias-bomb"])
def test_subprocess(case_id, tmp_path):
    case = next(c for c in RECIPE_CASES if c.id == case_id)
    recipe = _write_case(case, tmp_path)
    proc = phiforge("run", recipe, "--run-dir", tmp_path / "run", check=False)
    check(f"subprocess:{case_id}", proc.returncode, proc.stderr, *case.fragments)
    assert not (tmp_path / "run").exists()


def test_internal_error_keeps_its_traceback(capsys, monkeypatch):
    """The last-resort guard does not hide a bug: an unexpected exception keeps its traceback and says so."""
    import phiforge.cli as cli

    def broken(*_):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "_load", broken)
    code, err = run_main(["run", SMOKE], capsys, monkeypatch)
    assert code == 1 and "Traceback" in err and "KeyError" in err
    assert err.strip().splitlines()[-1].startswith("error: internal error")


def test_summary_every_case_met_the_rule():
    """Runs last (pytest keeps file order): how many bad-input cases ran here, and that every one met the rule."""
    if len(RESULTS) < 10:
        pytest.skip("run with the whole file to count its cases")
    failed = sorted(k for k, ok in RESULTS.items() if not ok)
    print(f"\nbad input: {len(RESULTS)} cases, {len(RESULTS) - len(failed)} met the rule")
    assert not failed, failed
