"""The phiforge command line: `phiforge run RECIPE`, one command per stage, status and model info."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from phiforge.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The Phi-4 training recipe, stage by stage.")
model_app = typer.Typer(no_args_is_help=True, help="Model presets and architecture facts.")
app.add_typer(model_app, name="model")
console = Console()

RunDirOpt = Annotated[Optional[Path], typer.Option("--run-dir", help="Run directory (default: runs/<recipe name>).")]


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, markup=False)],
        force=True,
    )
    for noisy in ("transformers", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars for tiny local models are noise
    hf_logging.set_verbosity_error()


def _load(recipe_path: Path, run_dir: Optional[Path]):
    from phiforge.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    return recipe, (run_dir or Path("runs") / recipe.name)


@app.command()
def run(recipe: Path, run_dir: RunDirOpt = None) -> None:
    """Run every stage of RECIPE in order; finished stages are skipped, a partial one resumes."""
    from phiforge.pipeline import run_all

    _setup_logging()
    rec, rd = _load(recipe, run_dir)
    run_all(rec, rd)
    console.print(f"[green]done[/]: {rd / 'report.md'} and the model in {rd / 'final'}")


def _stage_command(name: str):
    def command(recipe: Path, run_dir: RunDirOpt = None) -> None:
        from phiforge.pipeline import run_stage, stages_of

        _setup_logging()
        rec, rd = _load(recipe, run_dir)
        stage = next((s for s in stages_of(rec) if s.name == name), None)
        if stage is None:
            raise UserError(f"{recipe}: has no '{name}' section, so there is no {name} stage to run")
        run_stage(rec, rd, stage)

    command.__doc__ = STAGE_HELP[name]
    return command


STAGE_HELP = {
    "corpus": "Gather RECIPE's corpus sources, split held-out text, generate SFT and eval sets.",
    "tokenizer": "Train the byte-level BPE (or adopt tokenizer.path) from the corpus.",
    "pretrain": "Pretrain from RECIPE's 'pretrain' section (needs corpus and tokenizer).",
    "midtrain": "Midtrain: longer context, higher RoPE base, lr / 10 (needs pretrain or midtrain.init_from).",
    "sft": "Supervised fine-tuning in ChatML (needs a model: the previous stage or sft.init_from).",
    "eval": "Evaluate the untrained model, every finished stage and eval.models.",
    "report": "Write report.md, plots and final/ from the run's finished stages.",
}

for _name in STAGE_HELP:
    app.command(name=_name)(_stage_command(_name))


@app.command()
def pts(
    model: Annotated[Path, typer.Option("--model", help="HF causal LM directory (with its tokenizer).")],
    problems: Annotated[Path, typer.Option("--problems", help="jsonl of {prompt, answer, verifier}.")],
    out: Annotated[Path, typer.Option("--out", help="Pairs jsonl; OUT.parts/ keeps finished problems.")],
    mode: Annotated[str, typer.Option(help="adaptive: sample until a bound decides; fixed: --samples each.")] = "adaptive",
    samples: Annotated[int, typer.Option(help="Completions per prefix (fixed) or at most (adaptive).")] = 50,
    p_gap: Annotated[float, typer.Option(help="Jump in p(success) that makes a token pivotal.")] = 0.2,
    temperature: float = 0.6,
    top_p: float = 0.95,
    top_k: int = 20,
    max_new_tokens: int = 256,
    seed: int = 0,
) -> None:
    """Pivotal Token Search: single-token DPO pairs where p(success) jumps along the model's own solutions."""
    from phiforge.posttrain.pts import PTSConfig, run_pts

    _setup_logging()
    if mode not in ("adaptive", "fixed"):
        raise UserError(f"--mode must be adaptive or fixed, got {mode!r}")
    cfg = PTSConfig(p_gap=p_gap, mode=mode, samples=samples, temperature=temperature, top_p=top_p, top_k=top_k,
                    max_new_tokens=max_new_tokens, seed=seed)
    summary = run_pts(model, problems, out, cfg)
    console.print(f"[green]done[/]: {summary['pairs']} pairs from {summary['searched']}/{summary['problems']} "
                  f"problems, {summary['samples']:,} sampled completions -> {out}")


@app.command()
def dpo(
    model: Annotated[Path, typer.Option("--model", help="HF causal LM directory (with its tokenizer).")],
    pairs: Annotated[Path, typer.Option("--pairs", help="jsonl of PTS token pairs or {prompt, chosen, rejected}.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory; OUT/model is the trained HF model.")],
    beta: Annotated[float, typer.Option(help="Strength of the pull towards the reference model.")] = 0.1,
    lr: float = 5e-7,
    steps: int = 100,
    batch_size: int = 8,
    label_smoothing: Annotated[float, typer.Option(help="Conservative DPO: assumed rate of flipped labels.")] = 0.0,
    seed: int = 0,
) -> None:
    """Direct Preference Optimization of MODEL on PAIRS, on the shared training loop."""
    from pydantic import ValidationError

    from phiforge.posttrain.dpo import DPOConfig, run_dpo

    _setup_logging()
    try:
        cfg = DPOConfig(steps=steps, lr=lr, beta=beta, batch_size=batch_size, label_smoothing=label_smoothing)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    s = run_dpo(model, pairs, out, cfg, seed)
    console.print(f"[green]done[/]: {s['pairs']} pairs, {s['steps']} steps; log p(chosen) - log p(rejected) "
                  f"{s['margin_before']:+.3f} -> {s['margin_after']:+.3f}; model in {out / 'model'}")


@app.command()
def status(run_dir: Path) -> None:
    """Show each stage of RUN_DIR as done, partial or pending."""
    from phiforge.pipeline import STAGE_NAMES
    from phiforge.rundir import StageDir, read_metrics
    from phiforge.train.checkpoint import Checkpointer

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    table = Table(title=str(run_dir))
    for col in ("stage", "status", "detail"):
        table.add_column(col)
    colors = {"done": "green", "partial": "yellow", "pending": "dim"}
    for name in STAGE_NAMES:
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
    from phiforge.model import load_config
    from phiforge.model import model_info as info_of

    info = info_of(load_config(preset))
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


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
    # torch.compile's kernels persist in the user's cache, not a shared /tmp, so reruns start fast.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "phiforge" / "inductor"))
    try:
        app()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
