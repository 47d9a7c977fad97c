"""Greedy chat accuracy of a model on each generator family's training split: which family suits a PTS + DPO
demonstration (one the model solves sometimes, 20-70%, with enough held-out problems for a paired test).

    python benchmarks/posttrain_families.py --model smollm2 --problems 30 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from phiforge.data import synthetic_math
from phiforge.posttrain.compare import greedy_replies
from phiforge.stats import accuracy
from phiforge.posttrain.stages import generated_problems
from phiforge.recipe import PTSStageConfig
from phiforge.synth.verify import verify


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2", help="`smollm2` or an HF model directory")
    ap.add_argument("--problems", type=int, default=30)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--families", nargs="+", default=list(synthetic_math.BY_NAME), choices=list(synthetic_math.BY_NAME))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "smollm2":
        from phiforge.generation.hf import smollm2_dir

        model = smollm2_dir()
    else:
        model = Path(args.model)
    for family in args.families:
        cfg = PTSStageConfig(families=[family])
        train = generated_problems(cfg, args.problems, 0, heldout=False)
        heldout = generated_problems(cfg, 10_000, 0, heldout=True)
        t0 = time.process_time()
        replies = greedy_replies(model, train, args.max_new_tokens, 32)
        acc = accuracy([verify(p, r).ok for p, r in zip(train, replies)])
        print(f"{family:10s} {acc['correct']:3d}/{acc['n']} = {acc['accuracy']:.2f} (95% CI {acc['ci95'][0]:.2f}-"
              f"{acc['ci95'][1]:.2f}); held-out problems available: {len(heldout)}; cpu {time.process_time() - t0:.0f}s",
              flush=True)


if __name__ == "__main__":
    main()
