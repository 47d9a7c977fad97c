"""lm-evaluation-harness tasks on phiforge or any Hugging Face causal LM directory, with data on disk only.

`PhiforgeLM` (registered for lm-eval as `phiforge`) is lm-eval's own `HFLM` given the model and tokenizer as
phiforge's eval loads them (`load_model`: fp32 weights, SDPA attention; `load_tokenizer`), on phiforge's device
(`pick_device`), with bf16 autocast where the device does bf16 natively (precision `auto`, as the eval stage runs).
Subclassing HFLM rather than `LM` keeps lm-eval's request batching, logits cache and scoring, so the scores equal
its `hf` model's at the same precision (tests/test_lm_eval.py checks it per sample).

Nothing downloads: lm-eval runs with datasets and the hub client in offline mode, so a task whose data is not on
disk (lm-eval's `dataset_path: json` with local `dataset_kwargs.data_files`, or a dataset already in the local
datasets cache) fails at once with one line instead of waiting on the network.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from pathlib import Path
from typing import Literal, get_args
from unittest import mock

import torch

from phiforge.errors import UserError
from phiforge.model import load_model
from phiforge.tokenizer import load_tokenizer
from phiforge.train.loop import bf16_supported, pick_device

try:
    import datasets
    import huggingface_hub.constants
    from lm_eval import evaluator
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable
except ModuleNotFoundError as e:
    raise UserError(f"lm-eval tasks need the eval extra ({e.name} is missing): pip install 'phiforge[eval]'") from None

Precision = Literal["auto", "bf16", "fp32"]

HOW_TO_LOCAL = ("phiforge never downloads: give the task `dataset_path: json` and `dataset_kwargs: {data_files: "
                "{test: /path/to/file.jsonl}}` in a task YAML under --include-path DIR")


def not_loaded_model_advice(record: logging.LogRecord) -> bool:
    """HFLM warns whenever it is handed a loaded model; its advice is about `accelerate launch`, which phiforge
    never uses."""
    return not record.getMessage().startswith(("`pretrained` model kwarg", "Passed an already"))


logging.getLogger(HFLM.__module__).addFilter(not_loaded_model_advice)


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """train/loop.py's `autocast` choice as the dtype HFLM takes: HFLM wraps each forward in its own autocast, and
    its disabled one (dtype None) would switch off an autocast of ours around it."""
    if precision == "fp32" or (precision == "auto" and not bf16_supported(device)):
        return None
    return torch.bfloat16


@register_model("phiforge")
class PhiforgeLM(HFLM):
    """`lm_eval.simple_evaluate(model="phiforge", model_args="pretrained=DIR,precision=fp32")` once this module is
    imported (lm-eval finds model classes by import only)."""

    def __init__(self, pretrained: str, precision: Precision = "auto", batch_size: int | str = 8, **kwargs) -> None:
        if precision not in get_args(Precision):
            raise UserError(f"precision {precision!r}: use one of {', '.join(get_args(Precision))}")
        path = Path(pretrained)
        tokenizer = load_tokenizer(path)
        device = pick_device()
        kwargs.pop("device", None)  # the device is phiforge's choice, as in its eval stage
        super().__init__(pretrained=load_model(path).to(device), tokenizer=tokenizer, batch_size=batch_size,
                         mixed_precision_dtype=autocast_dtype(precision, device), **kwargs)


@contextlib.contextmanager
def offline():
    """Offline mode for datasets and the hub client; both read it from the environment once, at import."""
    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}), \
            mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True), \
            mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True), \
            mock.patch.object(datasets.config, "HF_DATASETS_OFFLINE", True):
        yield


@functools.cache  # indexing lm-eval's ~14,000 built-in tasks takes seconds: once per process
def task_index(include_path: Path | None, builtin: bool) -> TaskManager:
    return TaskManager(include_path=str(include_path) if include_path else None, include_defaults=builtin)


def task_manager(tasks: list[str], include_path: Path | None) -> TaskManager:
    """The tasks' index: `include_path` alone when it has them all, else with lm-eval's built-in tasks too (usable
    here only when their datasets are in the local cache)."""
    if include_path is not None:
        if not include_path.is_dir():
            raise UserError(f"--include-path {include_path}: not a directory of lm-eval task YAML files")
        local = task_index(include_path.resolve(), builtin=False)
        if set(tasks) <= set(local.all_tasks):
            return local
    manager = task_index(include_path.resolve() if include_path else None, builtin=True)
    unknown = [name for name in tasks if name not in manager.all_tasks]
    if unknown:
        where = f"in {include_path} nor " if include_path else ""
        raise UserError(f"unknown lm-eval task {', '.join(map(repr, unknown))}: not {where}among lm-eval's built-in "
                        f"tasks; {HOW_TO_LOCAL}")
    return manager


def check_loads(manager: TaskManager, name: str) -> None:
    """Build the task, which reads its data, so that a task without its data fails before the model loads.
    Everything this runs reads the user's task YAML and data files, so whatever it raises is reported as theirs."""
    try:
        manager.load(name)
    except (ConnectionError, FileNotFoundError) as e:  # offline mode's refusal; a data file that is not there
        raise UserError(f"lm-eval task {name!r} needs data that is not on disk ({str(e).splitlines()[0][:300]}); "
                        f"{HOW_TO_LOCAL}") from None
    except Exception as e:  # noqa: BLE001 (see the docstring)
        raise UserError(f"lm-eval task {name!r} does not load ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:300]})") from None


def run_lm_eval(model_dir: Path, tasks: list[str], include_path: Path | None, limit: int | None = None, *,
                precision: Precision = "auto", batch_size: int = 8, log_samples: bool = False) -> dict:
    """lm-eval's results dict for `tasks` on the model in `model_dir` (a phiforge stage's `model/`, `final/`, or any
    HF causal LM directory with its tokenizer), as lm-eval's CLI writes it: JSON-ready, scores under
    `results[TASK]["METRIC,FILTER"]`, sample counts under `n-samples`, per-sample records under `samples` with
    `log_samples`. `limit`: the first N documents of each task."""
    if not tasks:
        raise UserError("no lm-eval task given: --suite lm-eval:TASK[,TASK...]")
    with offline():
        manager = task_manager(tasks, include_path)
        for name in tasks:
            check_loads(manager, name)
        lm = PhiforgeLM(str(model_dir), precision=precision, batch_size=batch_size)
        results = evaluator.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                            log_samples=log_samples)
    results["config"] |= {"model_args": {"pretrained": str(model_dir), "precision": precision},
                          "device": str(lm.device), "batch_size": batch_size}
    return json.loads(json.dumps(results, default=handle_non_serializable))
