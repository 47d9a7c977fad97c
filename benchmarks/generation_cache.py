"""Teacher requests per second: sequential vs concurrent, and a cold run vs the same run served by the cache.

Against phiforge's local fake OpenAI-compatible server with a fixed per-request latency (a stand-in for a
model that takes --latency-ms to answer), one run, same requests for every side:
  cold sequential   concurrency 1 through the cache (what a plain loop over requests costs)
  cold concurrent   concurrency --concurrency, no cache
  cold cached       concurrency --concurrency through an empty cache (the cost of storing each completion)
  warm cache        the same run again: every request a cache hit (median of --warm-rounds)

    python benchmarks/generation_cache.py [--requests 200] [--latency-ms 50] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from phiforge.generation import Backend, Sampling
from phiforge.generation.cache import CachedBackend
from phiforge.generation.fake_server import FakeOpenAIServer
from phiforge.generation.openai import OpenAIBackend


def requests_per_s(backend: Backend, conversations: list, sampling: Sampling) -> float:
    t0 = time.perf_counter()
    out = backend.chat(conversations, sampling)
    seconds = time.perf_counter() - t0
    assert len(out) == len(conversations)
    return len(conversations) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warm-rounds", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("phiforge").setLevel(logging.WARNING)

    conversations = [[{"role": "user", "content": f"Write problem {i} about primes."}] for i in range(args.requests)]
    sampling = Sampling(max_tokens=512)
    with FakeOpenAIServer(latency_s=args.latency_ms / 1000) as server, tempfile.TemporaryDirectory() as tmp:

        def teacher(concurrency: int) -> OpenAIBackend:
            return OpenAIBackend(server.url, "teacher", concurrency=concurrency)

        sequential = requests_per_s(CachedBackend(teacher(1), Path(tmp) / "seq.sqlite"), conversations, sampling)
        concurrent = requests_per_s(teacher(args.concurrency), conversations, sampling)
        cache = Path(tmp) / "cache.sqlite"
        cold = requests_per_s(CachedBackend(teacher(args.concurrency), cache), conversations, sampling)
        served = len(server.requests)
        warm = statistics.median(
            requests_per_s(CachedBackend(teacher(args.concurrency), cache), conversations, sampling)
            for _ in range(args.warm_rounds)
        )
        assert len(server.requests) == served, "a warm run reached the server"

    print(f"{args.requests} requests, {args.latency_ms:g} ms per request at the server")
    print(f"cold sequential (concurrency 1, cached):  {sequential:10,.1f} req/s")
    print(f"cold concurrent (concurrency {args.concurrency}, no cache): {concurrent:10,.1f} req/s")
    print(f"cold concurrent (concurrency {args.concurrency}, cached):   {cold:10,.1f} req/s")
    print(f"warm cache (median of {args.warm_rounds}):            {warm:10,.1f} req/s")
    print(f"concurrent / sequential: {cold / sequential:.2f}x")
    print(f"cache write cost: cached / uncached cold concurrent = {cold / concurrent:.2f}x")
    print(f"warm cache / cold concurrent: {warm / cold:,.0f}x")


if __name__ == "__main__":
    main()
