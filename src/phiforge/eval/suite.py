"""Eval suites: a YAML list of tasks with their settings, run on one model by `phiforge eval MODEL_DIR --suite` and
on every stage checkpoint by the eval stage (`eval.suite`).

A run writes OUT/results.json (every task's scores with n and a 95% interval, its settings, the contamination
check of its eval set against the training data), OUT/results.jsonl (one row per item with its verdict and
reason) and OUT/results.md (the table). Built-in suites ship in eval/suites/.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import yaml
from pydantic import ValidationError

from phiforge.errors import UserError
from phiforge.eval import judged_tasks, suite_tasks  # noqa: F401  (registers the tasks)
from phiforge.eval.scoring import SUITE_TASKS, Item, Model, SuiteTask
from phiforge.config import RECIPE_DIR
from phiforge.files import write_json, write_jsonl, write_text

log = logging.getLogger("phiforge")

BUILTIN_DIR = Path(__file__).with_name("suites")


def builtin_suites() -> dict[str, str]:
    """name -> its first comment line (what the suite is for)."""
    out = {}
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        first = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")), "#")
        out[path.stem] = first.lstrip("# ")
    return out


def suite_path(spec: str | Path) -> Path:
    path = Path(spec)
    if path.is_file():
        return path
    if (BUILTIN_DIR / f"{spec}.yaml").is_file():
        return BUILTIN_DIR / f"{spec}.yaml"
    raise UserError(f"suite '{spec}': not a file and not a built-in suite ({', '.join(builtin_suites())})")


LM_EVAL = "lm-eval:"


def load_suite(spec: str | Path, include_path: Path | None = None) -> list[SuiteTask]:
    """The tasks of a suite file or built-in suite, validated; a bad item is named by its file, index and line.
    `lm-eval:TASK[,TASK...]` is a one-task suite of lm-eval tasks, found in `include_path` or lm-eval's own."""
    if str(spec).startswith(LM_EVAL):
        names = [n.strip() for n in str(spec).removeprefix(LM_EVAL).split(",") if n.strip()]
        if not names:
            raise UserError(f"--suite {spec}: name the lm-eval tasks, e.g. {LM_EVAL}arc_easy,hellaswag")
        return [SUITE_TASKS["lm_eval"](task="lm_eval", tasks=names, include_path=include_path)]
    if include_path is not None:
        raise UserError(f"--include-path goes with --suite {LM_EVAL}TASK[,TASK...]")
    path = suite_path(spec)
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, list) or not data:
        raise UserError(f"{path}: a suite is a non-empty YAML list of tasks, e.g. `- task: math`")
    tasks: list[SuiteTask] = []
    for i, (entry, entry_node) in enumerate(zip(data, node.value), 1):
        where = f"{path}: task {i} (line {entry_node.start_mark.line + 1})"
        if not isinstance(entry, dict) or entry.get("task") not in SUITE_TASKS:
            got = entry.get("task") if isinstance(entry, dict) else entry
            raise UserError(f"{where}: needs `task:` one of {', '.join(sorted(SUITE_TASKS))}, got {got!r}")
        try:
            tasks.append(SUITE_TASKS[entry["task"]].model_validate(entry, context={RECIPE_DIR: path.parent.resolve()}))
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise UserError(f"{where}: {loc + ': ' if loc else ''}{err['msg'].removeprefix('Value error, ')}") from None
    labels = [t.label for t in tasks]
    if dupes := sorted({x for x in labels if labels.count(x) > 1}):
        raise UserError(f"{path}: two tasks are named {dupes[0]!r}; give each a `name:`")
    return tasks


def open_model(model_dir: Path, batch_size: int = 16, cache_dir: Path | None = None, engine: str = "hf") -> Model:
    """An HF causal LM directory as a suite Model: the in-process HF backend (engine 'hf') or vLLM's offline engine
    ('vllm'), behind a request cache in cache_dir keyed by the directory, its weights' size and time, its chat
    template and the engine (a retrained model is a fresh entry). A tokenizer without a chat template (a base
    model) is prompted with plain text."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not an HF model directory (no config.json)")
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise UserError(f"{model_dir}: has no tokenizer (tokenizer.json or tokenizer_config.json); save the "
                        "tokenizer beside the model (tokenizer.save_pretrained(DIR))")
    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in model_dir.iterdir()
                     if p.suffix == ".safetensors" or p.name.startswith("pytorch_model"))
    if not weights:
        raise UserError(f"{model_dir}: has no weights (*.safetensors or pytorch_model*.bin); save them with "
                        "model.save_pretrained(DIR)")
    from transformers import AutoConfig, AutoTokenizer

    from phiforge.generation.hf import HFBackend

    config = _loaded(model_dir, "config.json", "save the model with model.save_pretrained(DIR)", AutoConfig)
    tok = _loaded(model_dir, "the tokenizer", "save it with tokenizer.save_pretrained(DIR)", AutoTokenizer)
    if tok.chat_template is None:
        log.warning("%s: the tokenizer has no chat template: the suite prompts it with plain text", model_dir)
    if engine == "vllm":
        from phiforge.generation.vllm import VLLMBackend

        backend = VLLMBackend(str(model_dir), plain_text_ok=True, user="eval engine 'vllm'")
    else:
        backend = HFBackend(str(model_dir), batch_size=batch_size, plain_text_ok=True)
    # hf's key is as it was before there was a choice, so older caches still answer
    key = repr((weights, tok.chat_template) + ((engine,) if engine != "hf" else ())).encode()
    backend.model = f"{model_dir.resolve()}#{hashlib.sha256(key).hexdigest()[:12]}"
    if cache_dir is not None:
        from phiforge.generation.cache import CachedBackend

        backend = CachedBackend(backend, cache_dir / "requests.sqlite")
    return Model(model_dir.name, backend, lambda text: len(tok.encode(text, add_special_tokens=False)),
                 getattr(config, "max_position_embeddings", None), batch_size, model_dir,
                 "chat template" if tok.chat_template is not None else "plain text (no chat template)")


def _loaded(model_dir: Path, what: str, fix: str, auto):
    """auto.from_pretrained(model_dir), or a one-line error naming what does not load."""
    try:
        return auto.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError) as e:  # transformers' ways of saying a file is missing or unreadable
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(f"{model_dir}: {what} does not load ({why}); {fix}") from None


def contamination(items: list[Item], training: list[str] | None, name: str) -> dict:
    """How many of a task's items share an informative word 13-gram (7-gram for short ones) with the training
    documents: data/decontam.py's index, with the eval set as the benchmark."""
    if training is None:
        return {"checked": False, "why": "no training data given"}
    from phiforge.data.decontam import Benchmark, BenchmarkIndex, batches

    texts = [i.overlap_text for i in items]
    index = BenchmarkIndex([Benchmark(name, [{"text": t} for t in texts], [i.id for i in items])])
    hit: set[str] = set()
    for batch in batches(({"text": t} for t in training), "text"):
        hit |= {item for h in index.match([r["text"] for r in batch]) for _, item in h.items}
    return {"checked": True, "items": len(items), "items_in_training": len(hit),
            "share": len(hit) / len(items) if items else 0.0, "training_documents": len(training),
            "rule": "an informative word 13-gram (7-gram for short fields) or a copy shared with a training document",
            "examples": sorted(hit)[:5]}


def run_suite(model: Model, tasks: list[SuiteTask], out: Path, training: list[str] | None = None,
              checked: dict[str, dict] | None = None) -> dict:
    """Every task on the model; results.json, results.jsonl and results.md in out. `checked` carries contamination
    results between models scored on the same eval sets (keyed by the eval set's hash)."""
    checked = {} if checked is None else checked
    results: dict = {"model": str(model.path or model.name), "prompting": model.prompting, "tasks": {}}
    rows: list[dict] = []
    for task in tasks:
        t0 = time.perf_counter()
        items = task.items(model)
        key = hashlib.sha256("\0".join(i.overlap_text for i in items).encode()).hexdigest()
        if key not in checked:  # before scoring: the overlap does not depend on the model's answers
            checked[key] = contamination(items, training, task.label)
        scored = task.score(model, items)
        results["tasks"][task.label] = {
            "task": task.task, "scores": scored.scores, "notes": scored.notes, "contamination": checked[key],
            "failed_items": sum(not r["correct"] for r in scored.rows), "wall_s": round(time.perf_counter() - t0, 2),
            "settings": task.model_dump(mode="json"),
        } | ({"raw": scored.raw} if scored.raw is not None else {})
        rows += [{"task": task.label, **r} for r in scored.rows]
        log.info("eval %s %s: %s (%.1fs)", model.name, task.label, " ".join(
            f"{k}={s['value']:.3f}" for k, s in scored.scores.items() if isinstance(s["value"], float)),
            time.perf_counter() - t0)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    write_jsonl(out / "results.jsonl", rows)
    write_text(out / "results.md", f"`{results['model']}`, prompted with: {model.prompting}\n\n"
               + "\n".join(score_table(results)) + "\n")
    return results


def _cell(score: dict) -> str:
    low, high = score["ci95"]
    return f"{score['value']:.3f} [{low:.2f}, {high:.2f}]"


def score_table(results: dict) -> list[str]:
    """One model's scores: a row per task and score, with its 95% interval, n and the contamination check."""
    lines = ["| task | score | value [95% CI] | n | items in training |", "|---|---|---|---|---|"]
    for label, res in results["tasks"].items():
        c = res["contamination"]
        overlap = f"{c['items_in_training']}/{c['items']}" if c["checked"] else "not checked"
        for name, score in res["scores"].items():
            lines.append(f"| {label} | {name} | {_cell(score)} | {score['n']} | {overlap} |")
        for name, note in res["notes"].items():
            lines.append(f"| {label} | {name} | {note} | | |")
    return lines


def checkpoint_table(by_model: dict[str, dict]) -> list[str]:
    """Several models' headline scores (the eval stage's checkpoints): a row per model, a column per task score."""
    columns: list[tuple[str, str]] = []
    for res in by_model.values():
        for label, task in res["tasks"].items():
            head = SUITE_TASKS[task["task"]].headline or tuple(task["scores"])
            columns += [(label, s) for s in head if s in task["scores"] and (label, s) not in columns]
    lines = ["| model | " + " | ".join(f"{t} {s}" for t, s in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, res in by_model.items():
        cells = []
        for label, s in columns:
            score = res["tasks"].get(label, {}).get("scores", {}).get(s)
            cells.append(f"{_cell(score)} n={score['n']}" if score else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def training_texts(files: list[Path], field: str = "text") -> list[str]:
    """The documents of jsonl or parquet files, for the contamination check."""
    from phiforge.files import read_rows

    texts = []
    for path in files:
        for line, r in enumerate(read_rows(path), 1):
            if not isinstance(r, dict) or not isinstance(r.get(field), str):
                raise UserError(f"{path}: row {line} has no {field!r} text field")
            texts.append(r[field])
    return texts
