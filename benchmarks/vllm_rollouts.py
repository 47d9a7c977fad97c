"""Rollouts (sampled completions) per second: vLLM's offline engine (`backend: vllm`) against the hf backend.

Same model (SmolLM2-135M-Instruct from the embedded GGUF), same rows in one process: --prompts word-problem
chats, --samples completions each (sample i at seed + i), --tokens new tokens at most, temperature 0.6, top-p
0.95, top-k 20 (PTS's sampling). Rounds alternate the two engines; after a warmup call each. Prints the CPU's
vector capability and the load average beside each round (the machine may be shared).

    python benchmarks/vllm_rollouts.py [--prompts 32] [--samples 4] [--tokens 64] [--rounds 2] [--hf-batch 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from phiforge.generation.base import Backend, Sampling


def cpu_capability() -> str:
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    best = next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags), "no AVX2")
    return f"{os.cpu_count()} cores, {best}"


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def rollouts_per_s(backend: Backend, conversations: list, sampling: Sampling, n: int) -> tuple[float, float]:
    """(rollouts/s, mean characters per rollout)."""
    t0 = time.perf_counter()
    out = backend.chat(conversations, sampling, n)
    seconds = time.perf_counter() - t0
    texts = [t for row in out for t in row]
    return len(texts) / seconds, sum(map(len, texts)) / len(texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hf-batch", type=int, default=16)
    args = ap.parse_args()

    from phiforge.generation.hf import HFBackend
    from phiforge.generation.vllm import VLLMBackend

    conversations = [[{"role": "user", "content": f"Tom has {i + 3} apples and buys {2 * i + 5} more. "
                                                  "How many apples does he have? Think step by step."}]
                     for i in range(args.prompts)]
    sampling = Sampling(temperature=0.6, top_p=0.95, top_k=20, max_tokens=args.tokens)
    print(cpu_capability(), "|", load())
    t0 = time.perf_counter()
    engines = {"vllm": VLLMBackend("smollm2"), "hf": HFBackend("smollm2", batch_size=args.hf_batch)}
    print(f"both loaded in {time.perf_counter() - t0:.0f} s")
    for engine in engines.values():  # warmup: first-call allocations and kernel selection
        engine.chat(conversations[:2], sampling)
    ratios = []
    for r in range(args.rounds):
        rates = {}
        for name, engine in engines.items():
            seed = 1000 * r  # each round draws new rollouts, the same for both engines
            rate, chars = rollouts_per_s(engine, conversations, Sampling(**(sampling.as_dict() | {"seed": seed})),
                                         args.samples)
            rates[name] = rate
            print(f"round {r}: {name:4s} {rate:6.2f} rollouts/s ({chars:.0f} chars each) | {load()}")
        ratios.append(rates["vllm"] / rates["hf"])
    print(f"median ratio vllm / hf: {statistics.median(ratios):.2f}x ({args.prompts} prompts x {args.samples} "
          f"samples, {args.tokens} tokens, rounds: {', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    main()
