"""DPO settings on a dev set, from one PTS pairs file: pick lr / beta / steps here, not on the held-out set.

The dev problems come from the generators' **training** split, after the ones PTS searched (`--dev-offset`
past the recipe's `pts.problems`), so neither PTS nor the held-out comparison ever sees them. For each
setting it trains DPO from the searched model, prints the pairs' margin and preferred share before and after
(they must rise before accuracy means anything), and the dev accuracy against the untrained model with
McNemar's exact test.

    python benchmarks/dpo_sweep.py --pairs runs/smollm2-posttrain/pts/pairs.jsonl --family groups \\
        --dev 200 --dev-offset 1000 --settings 1e-6:0.1:40 3e-6:0.1:40 1e-5:0.1:40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from phiforge.files import write_json
from phiforge.posttrain.compare import greedy_replies
from phiforge.stats import accuracy, mcnemar_exact
from phiforge.posttrain.dpo import run_dpo
from phiforge.posttrain.stages import generated_problems
from phiforge.posttrain.dpo_config import DPOConfig
from phiforge.recipe import PTSStageConfig
from phiforge.synth.verify import verify


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=Path)
    ap.add_argument("--model", default="smollm2", help="the model PTS searched: `smollm2` or an HF model directory")
    ap.add_argument("--family", default="groups")
    ap.add_argument("--seed", type=int, default=1234, help="the recipe's seed (its training problems)")
    ap.add_argument("--dev", type=int, default=200)
    ap.add_argument("--dev-offset", type=int, default=1000, help="skip this many training problems (PTS's)")
    ap.add_argument("--settings", nargs="*", default=[], help="lr:beta:steps, e.g. 3e-6:0.1:40")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="conservative DPO's assumed rate of flipped labels")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/dpo_sweep"))
    args = ap.parse_args()
    if args.settings and args.pairs is None:
        ap.error("--settings needs --pairs")
    torch.set_num_threads(args.threads)
    if args.model == "smollm2":
        from phiforge.generation.hf import smollm2_dir

        model = smollm2_dir()
    else:
        model = Path(args.model)
    family = PTSStageConfig(families=[args.family])
    dev = generated_problems(family, args.dev_offset + args.dev, args.seed, heldout=False)[args.dev_offset:]
    t0 = time.process_time()
    base_file = args.out / "base.json"  # the untrained model's dev outcomes, reused when settings are added
    key = {"model": str(model), "dev": [p["key"] for p in dev], "max_new_tokens": args.max_new_tokens}
    if base_file.is_file() and json.loads(base_file.read_text())["key"] == key:
        base = json.loads(base_file.read_text())["outcomes"]
    else:
        base = [verify(p, r).ok for p, r in zip(dev, greedy_replies(model, dev, args.max_new_tokens, 64))]
        write_json(base_file, {"key": key, "outcomes": base})
    acc = accuracy(base)
    print(f"base: dev {acc['correct']}/{acc['n']} = {acc['accuracy']:.3f}; cpu {time.process_time() - t0:.0f}s", flush=True)
    for setting in args.settings:
        lr, beta, steps = setting.split(":")
        cfg = DPOConfig(steps=int(steps), lr=float(lr), beta=float(beta), batch_size=args.batch_size,
                        label_smoothing=args.label_smoothing, checkpoint_every=10_000, log_every=10_000)
        t0 = time.process_time()
        out = args.out / setting.replace(":", "_")
        s = run_dpo(model, args.pairs, out, cfg, args.seed)
        after = [verify(p, r).ok for p, r in zip(dev, greedy_replies(out / "model", dev, args.max_new_tokens, 64))]
        acc, m = accuracy(after), mcnemar_exact(base, after)
        print(f"lr {lr} beta {beta} steps {steps} label smoothing {args.label_smoothing}: {s['pairs']} pairs, loss {s['final_loss']:.3f}, margin "
              f"{s['margin_before']:+.2f} -> {s['margin_after']:+.2f}, preferred {s['preferred_before']:.2f} -> "
              f"{s['preferred_after']:.2f}; dev {acc['correct']}/{acc['n']} = {acc['accuracy']:.3f} "
              f"({m['improved']} improved, {m['regressed']} regressed, McNemar p = {m['p_value']:.3g}); "
              f"cpu {time.process_time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
