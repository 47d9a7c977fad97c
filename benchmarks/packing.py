"""Packed vs padded SFT rows: training throughput on the same conversations, one run, rounds alternating.

packed: the SFT stage's rows (data/layouts.py: Examples, seq_len tokens, several conversations a row, per-example
position ids so they do not attend to each other); padded: one conversation a row, padded to the longest of its
micro-batch (what DPO's rows are today). Both train on the same conversations in the same order for --steps
forward/backward passes of --examples conversations each (packed: the rows holding them); the figure is
conversations (and labelled tokens) a second, median per round, and the ratio per round.

    python benchmarks/packing.py --run-dir runs/smoke [--preset nano] [--rounds 3] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from phiforge.data.batches import shifted
    from phiforge.data.chat import encode_chat
    from phiforge.data.layouts import IGNORE, pack_examples
    from phiforge.files import read_jsonl
    from phiforge.model import build_model, config_for_tokenizer, load_config
    from phiforge.tokenizer import load_tokenizer
    from phiforge.train.loss import token_loss_sum

    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", type=Path, required=True, help="a run with synth/sft.jsonl and tokenizer/")
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--examples", type=int, default=48, help="conversations a step")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()

    tok = load_tokenizer(args.run_dir / "tokenizer" / "tokenizer")
    encoded = [encode_chat(tok, r["messages"]) for r in read_jsonl(args.run_dir / "synth" / "sft.jsonl")]
    config = config_for_tokenizer(load_config(args.preset), tok, args.seq_len + 1)
    pad = tok.pad_token_id

    def padded(chunk):
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in chunk])
        labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in chunk])
        return ids[:, :-1], labels[:, 1:], None

    def packed(chunk):
        data = pack_examples(chunk, args.seq_len, pad)
        return shifted(data, np.arange(len(data)))

    chunks = [encoded[i * args.examples:(i + 1) * args.examples] for i in range(args.steps)]
    batches = {name: [make(c) for c in chunks] for name, make in (("padded", padded), ("packed", packed))}
    labelled = sum(int((y != IGNORE).sum()) for _, y, _ in batches["packed"])
    for name, bs in batches.items():
        print(f"{name}: {sum(x.numel() for x, _, _ in bs)} tokens computed in {sum(len(x) for x, _, _ in bs)} rows "
              f"for {labelled} labelled tokens")

    def step_time(bs) -> float:
        model = build_model(config, seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        for x, y, pos in bs:
            loss, n = token_loss_sum(model, x, y, pos)
            (loss / n).backward()
            opt.step()
            opt.zero_grad()
        return time.perf_counter() - t0

    for bs in batches.values():
        step_time(bs[:2])  # warm-up
    ratios, speed = [], {n: [] for n in batches}
    for _ in range(args.rounds):
        t = {n: step_time(bs) for n, bs in batches.items()}
        for n in t:
            speed[n].append(len(encoded[: args.steps * args.examples]) / t[n])
        ratios.append(t["padded"] / t["packed"])
    for n, s in speed.items():
        print(f"{n}: {statistics.median(s):.0f} conversations/s, {statistics.median(s) * labelled / (args.steps * args.examples):.0f} labelled tokens/s")
    print(f"packed / padded throughput: {statistics.median(ratios):.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)}); "
          f"threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
