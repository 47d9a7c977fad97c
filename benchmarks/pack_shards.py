"""Packing a synthetic corpus: the old whole-array path against shards on disk, peak RSS and build time, one run.

Each path runs in a fresh child process (its peak RSS is the kernel's high-water mark for that process,
read with os.wait4), on the same synthetic corpus: three sources of documents whose "tokenizer" is a
seeded generator, so tokenisation costs the same on both sides and the difference is the packing.
A third child only imports what the others import: its peak is the baseline both sides start from.

- old: the path before shards (commit 0db1cb4, copied below): every source tokenised into Python lists,
  mixed, concatenated into one int64 stream, saved as one tokens.npy, loaded whole as int64 for training.
- shards: phiforge's path: sources tokenised batch by batch to flat files, the mixture drawn from
  lengths, rows written shard by shard, training reading memory-mapped shards.

Both then serve --batches micro-batches with batch_at, as training would.

    python benchmarks/pack_shards.py [--tokens 20e6] [--seq-len 1024] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SOURCES = {"web": (0.5, 600), "code": (0.3, 300), "math": (0.2, 80)}  # share, mean document length in tokens


class FakeTokenizer:
    """Document i of a source becomes a seeded run of token ids: the same ids on both paths, at little cost."""

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
        ids = []
        for text in texts:
            name, i = text.split(":")
            rng = np.random.default_rng([list(SOURCES).index(name), int(i)])
            ids.append(rng.integers(5, 32000, int(rng.geometric(1 / SOURCES[name][1]))).tolist())
        return {"input_ids": ids}


def texts(name: str, total_tokens: float) -> list[str]:
    docs = int(total_tokens * SOURCES[name][0] / SOURCES[name][1])
    return [f"{name}:{i}" for i in range(docs)]


# --- the old path, as it was in src/phiforge/data/packing.py and train/stages.py at commit 0db1cb4 ---


def old_mix(docs_by_source: dict[str, list[list[int]]], shares: dict[str, float], total: int, seed: int):
    from phiforge.data.mixture import plan_mixture

    rng = np.random.default_rng(seed)
    docs_by_source = {name: [d for d in docs_by_source[name] if d] for name in shares}
    plan = plan_mixture(shares, {n: sum(len(d) + 1 for d in docs) for n, docs in docs_by_source.items()}, total)
    drawn: list[list[int]] = []
    for name, planned in plan.items():
        docs, taken = docs_by_source[name], 0
        while docs and taken < planned.tokens:
            for i in rng.permutation(len(docs)):
                drawn.append(docs[i])
                taken += len(docs[i]) + 1
                if taken >= planned.tokens:
                    break
    order = rng.permutation(len(drawn))
    return [drawn[i] for i in order]


def old_path(out: Path, total: int, seq_len: int) -> "object":
    from phiforge.data.documents import tokenize
    from phiforge.data.shards import Packed

    tok = FakeTokenizer()
    by_source = {n: tokenize(tok, texts(n, total)) for n in SOURCES}
    docs = old_mix(by_source, {n: s for n, (s, _) in SOURCES.items()}, total, seed=0)
    stream = np.fromiter((t for d in docs for t in (*d, 0)), dtype=np.int64)
    rows = len(stream) // (seq_len + 1)
    np.save(out / "tokens.npy", stream[: rows * (seq_len + 1)].reshape(rows, seq_len + 1).astype(np.uint32))
    del by_source, docs, stream
    return Packed([np.load(out / "tokens.npy").astype(np.int64)])


def shard_path(out: Path, total: int, seq_len: int) -> "object":
    from phiforge.data.documents import DocRefs, tokenized
    from phiforge.data.layouts import Stream
    from phiforge.data.mixture import mix_documents
    from phiforge.data.shards import Packed, write_shards

    tok = FakeTokenizer()
    sources = [tokenized(out / "documents" / n, tok, texts(n, total)) for n in SOURCES]
    pools = {n: DocRefs.whole(i, s.lengths) for i, (n, s) in enumerate(zip(SOURCES, sources))}
    refs, _ = mix_documents(pools, {n: s for n, (s, _) in SOURCES.items()}, total, seed=0)
    write_shards(out, Stream(sources, refs, seq_len, eos_id=0), 2**22, {})
    return Packed.load(out)


def child(path: str, total: int, seq_len: int, batches: int) -> None:
    import phiforge.data.mixture  # noqa: F401  (both paths import it), before the clock starts
    from phiforge.data.batches import batch_at

    if path == "baseline":
        print(json.dumps({}))
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        t0 = time.perf_counter()
        data = (old_path if path == "old" else shard_path)(Path(tmp), total, seq_len)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        for step in range(batches):
            batch_at(data, step, 16, seed=0)
        # At the end, how much of what is resident is the process's own memory and how much mapped file pages
        # (the page cache, which the kernel reclaims under pressure): the peak counts both.
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        print(json.dumps({"build_s": built, "batches_s": time.perf_counter() - t0, "rows": len(data),
                          "anon_mib": int(status["RssAnon"].split()[0]) / 1024,
                          "file_mib": int(status["RssFile"].split()[0]) / 1024}))


def measure(path: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", path, "--tokens", str(args.tokens), "--seq-len", str(args.seq_len),
           "--batches", str(args.batches)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"{path} child failed ({status})")
    return json.loads(out) | {"peak_mib": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=float, default=20e6)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        return child(args.child, int(args.tokens), args.seq_len, args.batches)
    print(f"{args.tokens / 1e6:g}M tokens, seq_len {args.seq_len}, {args.batches} batches of 16 rows")
    for r in range(1, args.rounds + 1):
        base = measure("baseline", args)["peak_mib"]
        old, new = measure("old", args), measure("shards", args)
        print(f"round {r}: baseline {base:.0f} MiB | old: peak {old['peak_mib']:.0f} MiB, build {old['build_s']:.1f} s, "
              f"batches {old['batches_s']:.2f} s | shards: peak {new['peak_mib']:.0f} MiB, build {new['build_s']:.1f} s, "
              f"batches {new['batches_s']:.2f} s, {new['rows']} rows ({old['rows']} old)")
        print(f"  resident at the end: old {old['anon_mib']:.0f} MiB own + {old['file_mib']:.0f} MiB mapped files, "
              f"shards {new['anon_mib']:.0f} MiB own + {new['file_mib']:.0f} MiB mapped files")
        print(f"  peak above baseline: old {old['peak_mib'] - base:.0f} MiB, shards {new['peak_mib'] - base:.0f} MiB, "
              f"ratio {(old['peak_mib'] - base) / max(1.0, new['peak_mib'] - base):.1f}x; "
              f"build time shards / old {new['build_s'] / old['build_s']:.2f}x")


if __name__ == "__main__":
    main()
