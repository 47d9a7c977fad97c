"""Teacher requests per second: sequential vs concurrent, and a cold run vs the same run served by the cache.

Against phiforge's local fake OpenAI-compatible server with a fixed per-request latency (a stand-in for a
model that takes --latency-ms to answer), one run, same requests for every side:
  cold sequential   concurrency 1 through the cache (what a plain loop over requests costs)
  cold concurrent   concurrency --concurrency, no cache
  openai SDK        the peer: AsyncOpenAI with a semaphore of --concurrency, no cache (if `openai` is installed)
  cold cached       concurrency --concurrency through an empty cache (the cost of storing each completion)
  warm cache        the same run again: every request a cache hit (median of --warm-rounds)

    python benchmarks/generation_cache.py [--requests 200] [--latency-ms 50] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

from phiforge.generation.base import Backend, Sampling
from phiforge.generation.cache import CachedBackend
from phiforge.generation.fake_server import FakeOpenAIServer
from phiforge.generation.openai import OpenAIBackend


def requests_per_s(backend: Backend, conversations: list, sampling: Sampling) -> float:
    t0 = time.perf_counter()
    out = backend.chat(conversations, sampling)
    seconds = time.perf_counter() - t0
    assert len(out) == len(conversations)
    return len(conversations) / seconds


def openai_sdk_requests_per_s(url: str, conversations: list, sampling: Sampling, concurrency: int) -> float:
    """What a user would write with the official client: AsyncOpenAI, gather, a semaphore."""
    import openai

    async def run() -> list[str | None]:
        client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=5)
        limit = asyncio.Semaphore(concurrency)

        async def one(messages: list) -> str | None:
            async with limit:
                r = await client.chat.completions.create(
                    model="teacher",
                    messages=messages,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_tokens,
                    seed=sampling.seed,
                )
                return r.choices[0].message.content

        async with client:
            return await asyncio.gather(*(one(c) for c in conversations))

    t0 = time.perf_counter()
    out = asyncio.run(run())
    seconds = time.perf_counter() - t0
    assert len(out) == len(conversations)
    return len(conversations) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds of the concurrent sides")
    parser.add_argument("--warm-rounds", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("phiforge").setLevel(logging.WARNING)

    conversations = [[{"role": "user", "content": f"Write problem {i} about primes."}] for i in range(args.requests)]
    sampling = Sampling(max_tokens=512)
    try:
        import openai  # noqa: F401
    except ImportError:
        print("openai is not installed (pip install -e '.[bench]'): the SDK side is left out")
        with_sdk = False
    else:
        with_sdk = True
    rounds: dict[str, list[float]] = {"ours": [], "cached": [], "sdk": []}
    with FakeOpenAIServer(latency_s=args.latency_ms / 1000) as server, tempfile.TemporaryDirectory() as tmp:

        def teacher(concurrency: int) -> OpenAIBackend:
            return OpenAIBackend(server.url, "teacher", concurrency=concurrency)

        sequential = requests_per_s(CachedBackend(teacher(1), Path(tmp) / "seq.sqlite"), conversations, sampling)
        for r in range(args.rounds):  # alternate the sides so machine noise hits them alike
            rounds["ours"].append(requests_per_s(teacher(args.concurrency), conversations, sampling))
            if with_sdk:
                rounds["sdk"].append(openai_sdk_requests_per_s(server.url, conversations, sampling, args.concurrency))
            cache = Path(tmp) / f"cache{r}.sqlite"
            rounds["cached"].append(requests_per_s(CachedBackend(teacher(args.concurrency), cache), conversations, sampling))
        served = len(server.requests)
        warm = statistics.median(
            requests_per_s(CachedBackend(teacher(args.concurrency), cache), conversations, sampling)
            for _ in range(args.warm_rounds)
        )
        assert len(server.requests) == served, "a warm run reached the server"

    ours, cold = statistics.median(rounds["ours"]), statistics.median(rounds["cached"])
    c = args.concurrency
    print(f"{args.requests} requests, {args.latency_ms:g} ms per request at the server; medians of {args.rounds} rounds")
    print(f"cold sequential  phiforge, concurrency 1, cached   {sequential:10,.1f} req/s")
    print(f"cold concurrent  phiforge, concurrency {c}, no cache {ours:10,.1f} req/s")
    if with_sdk:
        print(f"cold concurrent  openai SDK, concurrency {c}        {statistics.median(rounds['sdk']):10,.1f} req/s")
    print(f"cold concurrent  phiforge, concurrency {c}, cached   {cold:10,.1f} req/s")
    print(f"warm cache       phiforge (median of {args.warm_rounds})        {warm:10,.1f} req/s")
    print(f"concurrency {c} / 1 (cached, cold): {cold / sequential:.2f}x")
    if with_sdk:
        paired = [a / b for a, b in zip(rounds["ours"], rounds["sdk"])]
        print(f"phiforge / openai SDK (no cache): {statistics.median(paired):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in paired)})")
    print(f"cached / uncached, cold: {cold / ours:.2f}x (the cost of storing each completion)")
    print(f"warm cache / cold concurrent: {warm / cold:,.0f}x")


if __name__ == "__main__":
    main()
