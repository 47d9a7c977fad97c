"""`phiforge pts` and the pts stage's run: PTS over a problems file into a pairs file, resumable per problem."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import PreTrainedTokenizerBase

from phiforge.errors import UserError
from phiforge.files import read_jsonl, write_json, write_jsonl
from phiforge.posttrain.pts.config import PTSConfig
from phiforge.posttrain.pts.plot import plot_pivot_positions
from phiforge.posttrain.pts.sampler import HFSampler, Sampler
from phiforge.posttrain.pts.search import ProblemResult, search_problems
from phiforge.progress import bar_label
from phiforge.synth.verify import verify

log = logging.getLogger("phiforge")


def read_problems(path: Path) -> list[dict]:
    from phiforge.synth.verify import VERIFIERS

    problems = []
    for i, row in enumerate(read_jsonl(path), 1):
        prompt, answer, verifier = row.get("prompt"), row.get("answer"), row.get("verifier", "numeric")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{path}: row {i}: 'prompt' must be a non-empty string")
        if not isinstance(verifier, str) or verifier not in VERIFIERS:
            raise UserError(f"{path}: row {i}: unknown verifier {verifier!r:.60}; use one of {', '.join(sorted(VERIFIERS))}")
        # bool is an int to Python, but `true` is no answer a verifier can compare with
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
            raise UserError(f"{path}: row {i}: 'answer' must be a non-empty string or a number, got {answer!r:.60}")
        verify(row, "")  # what the verifier itself needs (a code problem's tests) fails here, before any sampling
        problems.append(row)
    if not problems:
        raise UserError(f"{path}: no problems")
    return problems


def problem_key(index: int, problem: dict) -> str:
    blob = json.dumps(problem, sort_keys=True).encode()
    return f"{index:06d}-{hashlib.sha256(blob).hexdigest()[:10]}"


def make_sampler(model_dir: Path, tok: PreTrainedTokenizerBase, cfg: PTSConfig) -> Sampler:
    """The sampler `cfg.sampler` names, on the model in model_dir (a server must serve that model)."""
    if cfg.sampler == "hf":
        from phiforge.model import load_model
        from phiforge.train.loop import pick_device

        return HFSampler(load_model(model_dir).to(pick_device()).eval(), tok)
    from phiforge.posttrain.pts.vllm_sampler import VLLMSampler, VLLMServerSampler

    if cfg.sampler == "vllm":
        return VLLMSampler.load(model_dir, tok, cfg)
    return VLLMServerSampler(cfg.base_url, cfg.served_model, tok, cfg)


def run_pts(model_dir: Path, problems_path: Path, out: Path, cfg: PTSConfig) -> dict:
    """PTS over a problems file into a pairs file; finished problems are kept in OUT.parts/ and skipped on rerun."""
    from phiforge.tokenizer import load_tokenizer

    problems = read_problems(problems_path)
    parts = out.parent / f"{out.name}.parts"
    # What decides the results; batch_size and concurrent only say how many rows and problems share a batch,
    # base_url and served_model where the model runs. (cfg may be the pts stage's section: only PTS's count)
    decisive = cfg.model_dump(include=set(PTSConfig.model_fields) - {"batch_size", "concurrent", "base_url",
                                                                      "served_model"})
    settings = {"model": str(model_dir.resolve()), "config": decisive}
    if (parts / "settings.json").is_file():
        if json.loads((parts / "settings.json").read_text()) != json.loads(json.dumps(settings)):
            raise UserError(f"{parts}: holds results of other settings or another model; "
                            f"delete it or choose another --out")
    tok = load_tokenizer(model_dir)
    sampler = make_sampler(model_dir, tok, cfg)
    write_json(parts / "settings.json", settings)  # only once the model loads: a bad --model leaves nothing
    columns = (TextColumn(f"[bold]{bar_label('pts')}[/]"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[pairs]} pairs, {task.fields[samples]:,} samples"), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("pts", total=len(problems), pairs=0, samples=0)
        done: dict[int, ProblemResult] = {}
        for i, problem in enumerate(problems):
            path = parts / f"{problem_key(i, problem)}.json"
            if path.is_file():
                done[i] = ProblemResult(**json.loads(path.read_text()))
        bar.update(task, completed=len(done), pairs=sum(len(r.pairs) for r in done.values()),
                   samples=sum(r.samples for r in done.values()))
        for result in search_problems(sampler, tok, [(i, p) for i, p in enumerate(problems) if i not in done], cfg):
            write_json(parts / f"{problem_key(result.index, problems[result.index])}.json", asdict(result))
            log.info("pts: problem %d: p(success) %.2f, %s, %d pivots, %d pairs, %d samples", result.index,
                     result.p_success, result.status, len(result.pivots), len(result.pairs), result.samples)
            done[result.index] = result
            bar.update(task, advance=1, pairs=sum(len(r.pairs) for r in done.values()),
                       samples=sum(r.samples for r in done.values()))
        results = [done[i] for i in range(len(problems))]
    if cfg.sampler == "vllm" and (rate := sampler.prefix_cache_hit_rate()) is not None:
        log.info("pts: vLLM's prefix cache served %.0f%% of the prompt tokens", 100 * rate)
    pairs = [pair for r in results for pair in r.pairs]
    write_jsonl(out, pairs)
    summary = {
        "problems": len(results),
        "searched": sum(r.status == "searched" for r in results),
        "pivots": sum(len(r.pivots) for r in results),
        "pairs": len(pairs),
        "samples": sum(r.samples for r in results),
    }
    write_json(out.parent / f"{out.stem}.summary.json", summary)
    plot_pivot_positions(results, out.parent / f"{out.stem}.pivots.png")
    return summary
