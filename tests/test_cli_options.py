"""Command-line options generated from a settings model (cli_options.py): a field is one edit, and it shows in the
recipe schema and in the tool's --help; a bad value names the option (CLI) or the key (recipe)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
import typer
import yaml
from pydantic import Field
from typer.main import get_command
from typer.testing import CliRunner

from conftest import SMOKE, phiforge
from test_bad_input import run_main
from phiforge import cli
from phiforge.cli_options import model_options, validated
from phiforge.config import PositiveInt, Section
from phiforge.errors import UserError
from phiforge.posttrain.dpo_config import DPOConfig
from phiforge.posttrain.hallucination_config import HallucinationConfig, HallucinationQuestions
from phiforge.posttrain.judge_config import JudgeConfig
from phiforge.posttrain.pts.config import PTSConfig
from phiforge.recipe import Recipe, load_recipe


class Knobs(Section):
    rate: float = Field(0.5, gt=0, description="How fast.")
    count: PositiveInt = Field(3, description="How many.")
    flag: bool = Field(True, description="Whether at all.")
    mode: Literal["a", "b"] = Field("a", description="Which way.")
    path: Path | None = Field(None, description="Where from.")
    pair: tuple[float, float] = Field((0.1, 0.2), description="Two numbers.")


def tool(model: type[Section]) -> typer.Typer:
    """A one-command app whose options are `model`'s: it prints the settings and which options were given."""
    app = typer.Typer()

    @app.command()
    @model_options(model)
    def run(name: str = "x", *, given: dict) -> None:
        print(json.dumps({"name": name, "given": sorted(given), "settings": validated(model, given).model_dump(mode="json")}))

    @app.command()
    def other() -> None:  # (a second command, so typer keeps `run` as a subcommand)
        pass

    return app


def invoke(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, ["run", *args])


def test_every_field_becomes_an_option_with_its_type_default_and_help():
    params = {p.name: p for p in get_command(tool(Knobs)).commands["run"].params}
    assert params["rate"].opts == ["--rate"] and params["rate"].help == "How fast." and params["rate"].default == 0.5
    assert params["flag"].opts == ["--flag"] and params["flag"].secondary_opts == ["--no-flag"]
    assert params["mode"].metavar == "a|b" and params["pair"].nargs == 2
    result = invoke(tool(Knobs))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"name": "x", "given": [], "settings": Knobs().model_dump(mode="json")}
    result = invoke(tool(Knobs), "--rate", "2", "--no-flag", "--mode", "b", "--path", "in.txt", "--pair", "1", "2",
                    "--name", "y")
    assert json.loads(result.output) == {
        "name": "y", "given": ["flag", "mode", "pair", "path", "rate"],
        "settings": {"rate": 2.0, "count": 3, "flag": False, "mode": "b", "path": "in.txt", "pair": [1.0, 2.0]}}


def test_a_field_added_to_the_model_is_all_it_takes():
    class MoreKnobs(Knobs):
        depth: PositiveInt = Field(7, description="How deep.")

    class Holder(Section):  # a recipe holding the model as a section
        knobs: MoreKnobs | None = None

    params = {p.name: p for p in get_command(tool(MoreKnobs)).commands["run"].params}
    assert params["depth"].opts == ["--depth"] and params["depth"].help == "How deep."
    assert "--depth" in invoke(tool(MoreKnobs), "--help").output
    assert json.loads(invoke(tool(MoreKnobs), "--depth", "9").output)["settings"]["depth"] == 9
    assert "depth" in Holder.model_json_schema()["$defs"]["MoreKnobs"]["properties"]
    assert Holder.model_validate({"knobs": {"depth": 2}}).knobs.depth == 2


def test_a_field_without_a_description_is_refused_when_the_command_is_built():
    class Bare(Section):
        size: int = 1

    with pytest.raises(TypeError, match="Bare.size has no description"):
        tool(Bare)


@pytest.mark.parametrize(("args", "message"), [
    (["--rate", "0"], "--rate: Input should be greater than 0"),
    (["--count", "-1"], "--count: Input should be greater than 0"),
    (["--mode", "c"], "--mode 'c': use a or b"),
])
def test_a_bad_value_names_its_option(args, message):
    result = invoke(tool(Knobs), *args)
    assert isinstance(result.exception, UserError) and str(result.exception) == message


# --- the methods' real models: recipe sections and tool options from one declaration ------------------------------

METHODS = [  # (command, its settings models, the recipe section they are part of)
    ("pts", [PTSConfig], "pts"),
    ("dpo", [DPOConfig], "dpo"),
    ("judge-pairs", [JudgeConfig], "judge_dpo"),
    ("hallucination", [HallucinationQuestions, HallucinationConfig], "hallucination"),
]


@pytest.mark.parametrize(("command", "models", "section"), METHODS)
def test_each_method_setting_is_a_recipe_key_and_an_option_with_its_help(command, models, section):
    params = {p.name: p for p in get_command(cli.app).commands[command].params}
    section_fields = Recipe.model_fields[section].annotation.__args__[0].model_fields
    for model in models:
        for name, field in model.model_fields.items():
            assert name in section_fields, f"{section}.{name}"
            if name == "init_from":  # dpo: --model is the model
                continue
            assert params[name].opts[0] == "--" + name.replace("_", "-") and params[name].help == field.description


def test_pts_help_lists_every_setting(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich would wrap long help lines
    # (a help text wrapped inside its column reads whole again once the table's borders and padding go)
    shown = " ".join(phiforge("pts", "--help").stdout.replace("\u2502", " ").split())
    for name, field in PTSConfig.model_fields.items():
        assert "--" + name.replace("_", "-") in shown and " ".join(field.description.split()) in shown


@pytest.mark.parametrize(("args", "message"), [
    (["pts", "--model", "m", "--problems", "p.jsonl", "--out", "o.jsonl", "--p-gap", "0"], "--p-gap: Input should be greater than 0"),
    (["pts", "--model", "m", "--problems", "p.jsonl", "--out", "o.jsonl", "--min-p", "0.9"], "min_p (0.9) exceeds max_p (0.8)"),
    (["pts", "--model", "m", "--problems", "p.jsonl", "--out", "o.jsonl", "--mode", "lazy"], "--mode 'lazy': use adaptive or fixed"),
    (["pts", "--problems", "p.jsonl"], "pts needs --model, --out (or a RECIPE"),
    (["dpo", "--model", "m", "--pairs", "p.jsonl", "--out", "o", "--label-smoothing", "0.5"], "--label-smoothing: Input should be less than 0.5"),
    (["judge-pairs", "--model", "m", "--prompts", "p.jsonl", "--out", "o.jsonl", "--samples", "1"], "--samples: Input should be greater than or equal to 2"),
    (["hallucination", "--model", "m", "--out", "o", "--known-share", "0"], "--known-share: Input should be greater than 0"),
    (["hallucination", "--model", "m", "--out", "o", "--facts", "0"], "--facts: Input should be greater than 0"),
])
def test_a_bad_option_is_one_error_line_naming_it(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(args, capsys, monkeypatch)
    assert code == 2 and err.strip().startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # rejected before anything was read or written


@pytest.mark.parametrize(("section", "message"), [
    ({"pts": {"p_gap": 1.5}}, "'pts.p_gap': Input should be less than or equal to 1"),
    ({"pts": {"mode": "lazy"}}, "'pts.mode'"),
    ({"dpo": {"steps": 5, "pairs": "x.jsonl", "label_smoothing": 0.5}}, "'dpo.label_smoothing'"),
    ({"judge_dpo": {"steps": 2, "samples": 1}}, "'judge_dpo.samples': Input should be greater than or equal to 2"),
    ({"hallucination": {"steps": 2, "known_share": 1.5}}, "'hallucination.known_share'"),
    ({"hallucination": {"steps": 2, "facts": 0}}, "'hallucination.facts'"),
])
def test_a_bad_recipe_setting_names_its_key(section, message, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load(SMOKE.read_text()) | section))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(path)


def test_path_fields_resolve_against_the_recipe_file_in_every_section(tmp_path, monkeypatch):
    here, elsewhere = tmp_path / "recipes", tmp_path / "cwd"
    (here / "models" / "extra").mkdir(parents=True)
    (here / "qa.jsonl").write_text("")
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = here / "r.yaml"
    data = yaml.safe_load(SMOKE.read_text())
    data["eval"] = {"models": ["models/extra", str(tmp_path / "abs")], "qa": "qa.jsonl"}
    data["hallucination"] = {"steps": 2, "qa": "qa.jsonl", "heldout_qa": "missing.jsonl"}
    path.write_text(yaml.safe_dump(data))
    recipe = load_recipe(path)
    assert recipe.eval.models == [here.resolve() / "models" / "extra", tmp_path / "abs"]  # an absolute one stays
    assert recipe.eval.qa == recipe.hallucination.qa == here.resolve() / "qa.jsonl"
    assert recipe.hallucination.heldout_qa == Path("missing.jsonl")  # nothing there: as given, from the working directory
