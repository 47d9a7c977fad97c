"""DPO step throughput: phiforge's DPO trainer against TRL's DPOTrainer, same pairs, model and machine, one run.

Both train the `tiny` preset (with a BPE trained here on the pairs' words) on the same full-response pairs
in the Phi-4 chat format, batch --batch, bf16 autocast where the CPU has it, fused AdamW, reference
log-probs precomputed before the first step on both sides (not timed). Rounds alternate the two after one
uncounted warmup round each; the per-step time is the median after --skip steps, and pairs/s and the
ratio are printed per round and as a median.

    pip install -e '.[bench]'
    python benchmarks/dpo_throughput.py [--rounds 2] [--steps 12] [--pairs 64] [--batch 8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

WORDS = ("the sum of two numbers is found by adding them so we add the tens and then the ones carefully "
         "first write each number then line up digits answer is therefore result check again").split()


def make_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [{"prompt": [{"role": "user", "content": f"What is {rng.randint(10, 99)} + {rng.randint(10, 99)}? "
                                                    + text(30)}],
             "chosen": [{"role": "assistant", "content": text(rng.randint(40, 80))}],
             "rejected": [{"role": "assistant", "content": text(rng.randint(40, 80))}]} for _ in range(n)]


def make_model_and_tokenizer(pairs: list[dict]):
    from phiforge.model import build_model, config_for_tokenizer, load_config
    from phiforge.tokenizer import train_tokenizer

    texts = [m["content"] for p in pairs for side in ("prompt", "chosen", "rejected") for m in p[side]]
    tok = train_tokenizer(texts * 4, vocab_size=1024)
    return build_model(config_for_tokenizer(load_config("tiny"), tok, 512), seed=0), tok


def ours(model, tok, rows: list[dict], steps: int, batch: int) -> list[float]:
    import json

    from phiforge.posttrain.dpo import DPOLoss, all_logps, read_pairs
    from phiforge.posttrain.dpo_config import DPOConfig
    from phiforge.rundir import read_metrics
    from phiforge.train.loop import train
    from phiforge.train.optim import LRSchedule

    cfg = DPOConfig(steps=steps, batch_size=batch, lr=1e-5, checkpoint_every=10**6, log_every=10**6)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        pairs = read_pairs(path, tok, cfg.max_length)
        ref = all_logps(model, pairs, tok.pad_token_id, cfg)
        train(model, cfg, LRSchedule(cfg.lr, cfg), DPOLoss(pairs, ref, cfg, tok.pad_token_id, seed=0), Path(tmp),
              "phiforge dpo")
        rows_ = read_metrics(Path(tmp) / "metrics.jsonl")
    previous = [0] + [r["tokens"] for r in rows_[:-1]]
    return [(r["tokens"] - p) / r["tokens_per_s"] for r, p in zip(rows_, previous)]


def trl_dpo(model, tok, rows: list[dict], steps: int, batch: int, bf16: bool) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-5,
                         beta=0.1, precompute_ref_log_probs=True, max_length=512, bf16=bf16,
                         optim="adamw_torch_fused", logging_strategy="no", save_strategy="no", report_to=[],
                         lr_scheduler_type="constant", weight_decay=0.0, dataloader_num_workers=0,
                         use_cpu=not torch.cuda.is_available())
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             callbacks=[StepTimer()])
        trainer.train()
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    from phiforge.train.loop import bf16_supported, pick_device

    rows = make_pairs(args.pairs, seed=0)
    model, tok = make_model_and_tokenizer(rows)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    bf16 = bf16_supported(pick_device())

    def fresh():
        model.load_state_dict(init)
        return model

    def pairs_per_s(step_times: list[float]) -> float:
        return args.batch / statistics.median(step_times[args.skip:])

    ours(fresh(), tok, rows, args.skip + 2, args.batch)  # warmup, uncounted
    trl_dpo(fresh(), tok, rows, args.skip + 2, args.batch, bf16)
    ratios = []
    for r in range(1, args.rounds + 1):
        a = pairs_per_s(ours(fresh(), tok, rows, args.steps, args.batch))
        b = pairs_per_s(trl_dpo(fresh(), tok, rows, args.steps, args.batch, bf16))
        ratios.append(a / b)
        print(f"round {r}: phiforge {a:.2f} pairs/s  TRL DPOTrainer {b:.2f} pairs/s  ratio {a / b:.2f}x")
    print(f"phiforge / TRL DPO step throughput: median {statistics.median(ratios):.2f}x "
          f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}); bf16 autocast: {bf16}")


if __name__ == "__main__":
    main()
