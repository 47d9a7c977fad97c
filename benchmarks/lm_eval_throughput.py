"""lm-eval throughput: phiforge's model class for lm-eval against lm-eval's own `hf` model, same task and checkpoint.

The task is a local lm-eval multiple-choice task (`dataset_path: json`) over held-out generated arithmetic, four
choices a problem, written to a temporary directory. Both sides score the same lm-eval request list
(`loglikelihood`, what a multiple-choice task asks of a model) at the same batch size; only that call is timed,
not model loading or lm-eval's bookkeeping. Two pairings: each side at its defaults (phiforge: fp32 weights and
bf16 autocast where the CPU does bf16, as its eval stage runs; `hf`: the checkpoint's stored dtype), and both in
fp32. Each side is warmed up first; rounds alternate which side goes first, and the median per-round ratio is printed, so load from other users
of the machine hits both alike. The per-request log-likelihoods of the fp32 pair are compared too.

    python benchmarks/lm_eval_throughput.py [--model DIR] [--problems 64] [--rounds 3] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from phiforge.data.synthetic_math import ARITHMETIC, generate
from phiforge.eval.lm_eval_harness import PhiforgeLM, offline
from phiforge.generation.hf import smollm2_dir


def write_task(root: Path, problems: int) -> None:
    rows = []
    for p in generate(problems, seed=5, heldout=True, families=ARITHMETIC):
        a = int(p.answer)
        choices = [str(a), str(a + 1), str(a - 1), str(a + 10)]
        random.Random(p.key).shuffle(choices)
        rows.append({"question": p.question, "choices": choices, "label": choices.index(p.answer)})
    (root / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "arith_bench.yaml").write_text(
        f"task: arith_bench\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'arith.jsonl'}\n"
        "test_split: test\nnum_fewshot: 0\noutput_type: multiple_choice\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")


def timed(lm, requests) -> tuple[list[float], float]:
    start = time.perf_counter()
    scores = [loglik for loglik, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    return scores, len(requests) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="an HF causal LM directory (default: SmolLM2-135M)")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    model_dir = args.model or smollm2_dir()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp, offline():
        write_task(Path(tmp), args.problems)
        task = TaskManager(include_path=tmp, include_defaults=False).load("arith_bench")["tasks"]["arith_bench"]
        task.build_all_requests()
        requests = task.instances
        pairs = {
            "defaults": (PhiforgeLM(str(model_dir), batch_size=args.batch_size),
                         HFLM(pretrained=str(model_dir), device=device, batch_size=args.batch_size)),
            "fp32": (PhiforgeLM(str(model_dir), precision="fp32", batch_size=args.batch_size),
                     HFLM(pretrained=str(model_dir), device=device, dtype="float32", batch_size=args.batch_size)),
        }
        print(f"{model_dir}: {len(requests)} loglikelihood requests, batch {args.batch_size}, {device}, "
              f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
        for name, (ours, theirs) in pairs.items():
            for lm in (ours, theirs):
                timed(lm, requests[:8])  # warm-up: the first calls set up oneDNN kernels
            ratios = []
            for r in range(args.rounds):
                order = [("phiforge", ours), ("hf", theirs)][:: 1 if r % 2 == 0 else -1]
                measured = {side: timed(lm, requests) for side, lm in order}
                ratios.append(measured["phiforge"][1] / measured["hf"][1])
                print(f"{name} round {r + 1}: phiforge {measured['phiforge'][1]:6.1f} req/s  "
                      f"hf {measured['hf'][1]:6.1f} req/s  ratio {ratios[-1]:.2f}x")
            print(f"{name}: phiforge / hf requests per second: median {statistics.median(ratios):.2f}x "
                  f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
            if name == "fp32":
                diff = max(abs(a - b) for a, b in zip(measured["phiforge"][0], measured["hf"][0]))
                print(f"fp32: largest per-request log-likelihood difference {diff:.2e}")


if __name__ == "__main__":
    main()
