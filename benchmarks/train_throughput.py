"""Pretraining throughput: phiforge's loop against HF Trainer, same model, data and machine, one run.

After one uncounted warmup round of each, rounds alternate the two (ours, Trainer, ours, Trainer, ...);
each round trains a fresh copy of the same initial model for --steps steps, and the per-step time is the
median after --skip warmup steps. The
ratio is taken per round (paired) and its median printed, with MFU against this machine's measured
bf16 matmul peak. FLOPs per token: 6 x non-embedding parameters + attention.

    python benchmarks/train_throughput.py [--preset tiny] [--rounds 3] [--steps 12]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def matmul_peak(dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Best FLOP/s of square matmuls on this machine (the ceiling MFU is measured against)."""
    best = 0.0
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def make_model(preset: str, vocab: int, seq_len: int, seed: int):
    from phiforge.model import build_model, load_config

    config = load_config(preset)
    config.vocab_size = vocab
    config.max_position_embeddings = config.original_max_position_embeddings = seq_len
    return build_model(config, seed)


def ours(model, rows: np.ndarray, steps: int, batch: int, precision: str, compile_: bool) -> list[float]:
    from phiforge.config import TrainConfig
    from phiforge.data.shards import Packed
    from phiforge.rundir import read_metrics
    from phiforge.train.loop import train
    from phiforge.train.loss import NextTokenLoss
    from phiforge.train.optim import LRSchedule

    cfg = TrainConfig(steps=steps, batch_size=batch, lr=1e-3, precision=precision, compile=compile_,
                      checkpoint_every=10**6, log_every=10**6)
    with tempfile.TemporaryDirectory() as tmp:
        objective = NextTokenLoss(Packed([rows]), None, batch, 0, compile_)
        train(model, cfg, LRSchedule(cfg.lr, cfg), objective, Path(tmp), label="phiforge")
        return [batch * (rows.shape[1] - 1) / r["tokens_per_s"] for r in read_metrics(Path(tmp) / "metrics.jsonl")]


def hf_trainer(model, rows: np.ndarray, steps: int, batch: int, bf16: bool) -> list[float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    # The same tokens as ours: inputs are a row's first seq_len tokens; the model shifts labels itself.
    dataset = [{"input_ids": torch.from_numpy(r[:-1].copy()), "labels": torch.from_numpy(r[:-1].copy())} for r in rows]
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-3,
            weight_decay=0.1, adam_beta2=0.95, max_grad_norm=1.0, lr_scheduler_type="linear", bf16=bf16,
            use_cpu=True, optim="adamw_torch_fused", logging_strategy="no", save_strategy="no", report_to=[],
            dataloader_num_workers=0, disable_tqdm=True, seed=0,
        )
        Trainer(model=model, args=args, train_dataset=dataset, callbacks=[timer]).train()
    return timer.times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--skip", type=int, default=4, help="warmup steps left out of each round's median")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile our model (recipe switch `compile: true`)")
    a = ap.parse_args()

    from transformers.utils import logging as hf_logging

    from phiforge.model import model_info, train_flops_per_token
    from phiforge.train.loop import bf16_supported

    hf_logging.set_verbosity_error()
    bf16 = bf16_supported(torch.device("cpu"))
    rng = np.random.default_rng(0)
    rows = rng.integers(5, a.vocab, size=(a.batch * a.steps, a.seq_len + 1))
    init = make_model(a.preset, a.vocab, a.seq_len, seed=0)
    info = model_info(init.config)
    flops_tok = train_flops_per_token(init.config, info.non_embedding_parameters, a.seq_len)
    tokens_step = a.batch * a.seq_len

    def fresh():
        m = make_model(a.preset, a.vocab, a.seq_len, seed=0)
        m.load_state_dict(init.state_dict())
        return m

    # One uncounted round of each first: compiled kernels, allocator pools and caches warm for both sides.
    ours(fresh(), rows, a.skip + 2, a.batch, "auto", a.compile)
    hf_trainer(fresh(), rows, a.skip + 2, a.batch, bf16)
    ratios, ours_tps, hf_tps = [], [], []
    for r in range(a.rounds):
        t_ours = statistics.median(ours(fresh(), rows, a.steps, a.batch, "auto", a.compile)[a.skip:])
        t_hf = statistics.median(hf_trainer(fresh(), rows, a.steps, a.batch, bf16)[a.skip:])
        ratios.append(t_hf / t_ours)
        ours_tps.append(tokens_step / t_ours)
        hf_tps.append(tokens_step / t_hf)
        print(f"round {r + 1}: phiforge {ours_tps[-1]:,.0f} tok/s  HF Trainer {hf_tps[-1]:,.0f} tok/s  "
              f"ratio {ratios[-1]:.2f}x", flush=True)

    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
    best = statistics.median(ours_tps)
    print(f"\nmodel {a.preset}: {info.parameters:,} parameters ({info.non_embedding_parameters:,} non-embedding), "
          f"seq {a.seq_len}, batch {a.batch}, {torch.get_num_threads()} threads, bf16 {'on' if bf16 else 'off'}, "
          f"compile {'on' if a.compile else 'off'}")
    print(f"phiforge / HF Trainer throughput: median {statistics.median(ratios):.2f}x "
          f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"matmul peak {'bf16' if bf16 else 'fp32'}: {peak / 1e9:,.0f} GFLOP/s; "
          f"phiforge {best * flops_tok / 1e9:,.1f} GFLOP/s = MFU {best * flops_tok / peak:.1%}; "
          f"HF Trainer MFU {statistics.median(hf_tps) * flops_tok / peak:.1%}")


if __name__ == "__main__":
    main()
