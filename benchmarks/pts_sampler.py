"""PTS's sampler against transformers' generate(), the peer a user would pick: same model, prefixes and settings.

PTS samples many completions of a few prefixes (the rows of one search step). Both sides draw --rows
completions of --prefixes distinct prefixes of a SmolLM2-135M-Instruct reply to a `groups` word problem,
--tokens new tokens at temperature 0.6, top-p 0.95, top-k 20, in one batch:
- ours: `posttrain.pts.sampler.sample` (each distinct prefix read once and its KV cache shared, rows leave at EOS,
  draws among the top-k only, a KV cache with room for the new tokens);
- peer: `model.generate(do_sample=True, ...)` on the left-padded prefixes, each repeated rows/prefixes times.
Rounds alternate the two; completions per second and the ratio are printed per round and as a median.

    python benchmarks/pts_sampler.py [--rounds 3] [--rows 256] [--prefixes 2] [--tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--prefixes", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from phiforge.generation.hf import smollm2_dir
    from phiforge.model import load_model
    from phiforge.posttrain.pts.config import PTSConfig
    from phiforge.posttrain.pts.sampler import sample
    from phiforge.tokenizer import chat_prompt_ids, load_tokenizer, stop_ids

    directory = smollm2_dir()
    model, tok = load_model(directory).eval(), load_tokenizer(directory)
    prompt = chat_prompt_ids(tok, "Tom has 7 bags with 8 marbles in each bag. How many marbles does Tom have?")
    reply = tok.encode("Tom has 7 bags with 8 marbles in each bag, so he has 7 x 8 = 56 marbles.")
    distinct = [prompt + reply[: 2 * i] for i in range(args.prefixes)]
    rows = [distinct[i % args.prefixes] for i in range(args.rows)]
    cfg = PTSConfig(max_new_tokens=args.tokens, batch_size=args.rows)  # temperature 0.6, top-p 0.95, top-k 20
    eos, pad = set(stop_ids(tok)), tok.pad_token_id

    def ours(seed: int) -> int:
        uniforms = torch.rand(len(rows), args.tokens, generator=torch.Generator().manual_seed(seed))
        return sum(map(len, sample(model, rows, cfg, eos, pad, uniforms)))

    def peer(seed: int) -> int:
        torch.manual_seed(seed)
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=(ids != pad).long(), do_sample=True,
                                 temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                 max_new_tokens=args.tokens, eos_token_id=sorted(eos), pad_token_id=pad)
        return int((out[:, width:] != pad).sum())

    ratios = []
    for r in range(args.rounds):
        rates = {}
        for name, fn in (("phiforge", ours), ("generate", peer)):
            start = time.perf_counter()
            tokens = fn(r)
            rates[name] = args.rows / (time.perf_counter() - start)
            print(f"round {r}: {name:8s} {rates[name]:6.2f} completions/s ({tokens / args.rows:.1f} tokens each)",
                  flush=True)
        ratios.append(rates["phiforge"] / rates["generate"])
        print(f"round {r}: ratio {ratios[-1]:.2f}x", flush=True)
    print(f"median ratio phiforge / generate: {statistics.median(ratios):.2f}x "
          f"({args.rows} rows, {args.prefixes} prefixes, {args.tokens} tokens, {args.threads} threads)")


if __name__ == "__main__":
    main()
