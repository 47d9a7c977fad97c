"""lm-eval-harness through phiforge's model class: local tasks built from generated problems score exactly what
lm-eval's own `hf` model scores on the same checkpoint, and a task without local data is one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from phiforge.data.synthetic_math import ARITHMETIC, generate
from phiforge.errors import UserError
from phiforge.eval.lm_eval_harness import autocast_dtype, offline, run_lm_eval
from phiforge.model import build_model, config_for_tokenizer, load_config
from phiforge.train.export import export_model
from phiforge.train.loop import pick_device

TASKS = ["arith_choice", "arith_answer"]
PROBLEMS = 16


def task_yaml(name: str, data: Path, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
            f"doc_to_text: \"Question: {{{{question}}}}\\nAnswer:\"\n{body}")


@pytest.fixture(scope="module")
def include_path(tmp_path_factory) -> Path:
    """Two lm-eval tasks over held-out generated arithmetic: four-way multiple choice (acc, acc_norm) and the
    answer's log-likelihood (acc: the answer is the greedy continuation). No perplexity: its bootstrapped stderr
    costs seconds, and the per-sample log-likelihoods compared below decide it."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    rows = []
    for p in generate(PROBLEMS, seed=3, heldout=True, families=ARITHMETIC):
        a = int(p.answer)
        choices = [str(a), str(a + 1), str(a - 1), str(a + 10)]
        random.Random(p.key).shuffle(choices)
        rows.append({"question": p.question, "choices": choices, "label": choices.index(p.answer), "answer": p.answer})
    data = root / "arith.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mean = "    aggregation: mean\n    higher_is_better: true\n"
    (root / "arith_choice.yaml").write_text(task_yaml("arith_choice", data, (
        "output_type: multiple_choice\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n"
        f"metric_list:\n  - metric: acc\n{mean}  - metric: acc_norm\n{mean}")))
    (root / "arith_answer.yaml").write_text(task_yaml("arith_answer", data, (
        "output_type: loglikelihood\ndoc_to_target: \" {{answer}}\"\n"
        f"metric_list:\n  - metric: acc\n{mean}")))
    return root


@pytest.fixture(scope="module")
def phiforge_checkpoint(tmp_path_factory, tok) -> Path:
    """A nano Phi-3 on phiforge's tokenizer, written by phiforge's exporter as a stage's model/ is."""
    path = tmp_path_factory.mktemp("nano") / "model"
    export_model(build_model(config_for_tokenizer(load_config("nano"), tok, 128), seed=0), tok, path)
    return path


def lm_eval_hf(model_dir: Path, include_path: Path, precision: str) -> dict:
    """lm-eval's own `hf` model on the directory, loaded by lm-eval, at the precision phiforge's class runs."""
    device = pick_device()
    with offline():
        hf = HFLM(pretrained=str(model_dir), device=str(device), dtype="float32", batch_size=8,
                  mixed_precision_dtype=autocast_dtype(precision, device))
        return simple_evaluate(model=hf, tasks=TASKS, log_samples=True,
                               task_manager=TaskManager(include_path=str(include_path), include_defaults=False))


def assert_same_scores(ours: dict, theirs: dict) -> None:
    for task in TASKS:
        assert ours["n-samples"][task]["effective"] == PROBLEMS
        mine, ref = ours["results"][task], theirs["results"][task]
        for metric in ("acc,none", "acc_norm,none"):
            if metric in ref:
                assert mine[metric] == pytest.approx(ref[metric], abs=1e-6), (task, metric)
        loglik = [r[0] for s in ours["samples"][task] for r in s["filtered_resps"]]  # per doc and choice
        assert loglik == pytest.approx([r[0] for s in theirs["samples"][task] for r in s["filtered_resps"]], abs=1e-6)
        assert len(set(loglik)) > 1  # the model tells texts apart, so equal lists say something


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_phiforge_checkpoint_scores_equal_lm_evals_hf_model(phiforge_checkpoint, include_path, precision):
    ours = run_lm_eval(phiforge_checkpoint, TASKS, include_path, precision=precision, log_samples=True)
    assert ours["config"]["model_args"] == {"pretrained": str(phiforge_checkpoint), "precision": precision}
    json.dumps(ours)  # JSON-ready, for results.json
    assert_same_scores(ours, lm_eval_hf(phiforge_checkpoint, include_path, precision))


def test_any_hf_causal_lm_scores_equal_lm_evals_hf_model(tmp_path, tok, include_path):
    """A Llama saved by transformers alone, its tokenizer without a pad token or chat template (phiforge's loader
    fills both in), at phiforge's default precision."""
    model_dir = tmp_path / "llama"
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    plain = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<|endoftext|>")
    plain.save_pretrained(model_dir)
    ours = run_lm_eval(model_dir, TASKS, include_path, log_samples=True)
    assert_same_scores(ours, lm_eval_hf(model_dir, include_path, "auto"))


def test_a_task_that_needs_a_download_or_does_not_exist_is_one_line(phiforge_checkpoint, include_path, tmp_path):
    hub = tmp_path / "tasks"
    hub.mkdir()
    (hub / "hub_task.yaml").write_text("task: hub_task\ndataset_path: someorg/somedata\ntest_split: test\n"
                                       "output_type: loglikelihood\ndoc_to_text: q\ndoc_to_target: a\n")
    (hub / "lost_file.yaml").write_text(task_yaml("lost_file", tmp_path / "gone.jsonl",
                                                  "output_type: loglikelihood\ndoc_to_target: a\n"))
    with pytest.raises(UserError, match=r"'hub_task' needs data that is not on disk .*someorg/somedata.*dataset_path: json"):
        run_lm_eval(phiforge_checkpoint, ["hub_task"], hub)
    with pytest.raises(UserError, match=r"'lost_file' needs data that is not on disk .*gone\.jsonl"):
        run_lm_eval(phiforge_checkpoint, ["lost_file"], hub)
    with pytest.raises(UserError, match=r"unknown lm-eval task 'no_such_task': not in .* nor among lm-eval's built-in"):
        run_lm_eval(phiforge_checkpoint, [TASKS[0], "no_such_task"], include_path)


def test_phiforge_eval_runs_lm_eval_tasks_as_a_suite_and_keeps_lm_evals_dict(phiforge_checkpoint, include_path,
                                                                               tmp_path):
    from conftest import phiforge

    out = tmp_path / "out"
    phiforge("eval", phiforge_checkpoint, "--suite", f"lm-eval:{','.join(TASKS)}", "--include-path", include_path,
             "--out", out)
    task = json.loads((out / "results.json").read_text())["tasks"]["lm_eval"]
    theirs = lm_eval_hf(phiforge_checkpoint, include_path, "auto")
    for name in TASKS:
        score = task["scores"][f"{name}/acc"]
        assert score["n"] == PROBLEMS and score["value"] == pytest.approx(theirs["results"][name]["acc,none"], abs=1e-6)
        assert score["ci95"][0] <= score["value"] <= score["ci95"][1]
        assert task["raw"]["results"][name]["acc,none"] == score["value"]  # lm-eval's own dict, kept
    bad = phiforge("eval", phiforge_checkpoint, "--suite", "tiny", "--include-path", include_path, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "error: --include-path goes with --suite lm-eval:TASK[,TASK...]")
