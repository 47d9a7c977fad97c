"""PTS sampling budget: adaptive sampling against the fixed 50-per-prefix baseline, on the same frozen traces.

Planted models (tests/planted.py) of several shapes each give solution traces (one correct, one incorrect,
sampled once and frozen). Each mode searches the same traces from an empty cache; reported per shape:
completions sampled by the search and by pair verification, and pivots found, scored against reference
labels from the fixed search at --reference-samples per prefix (which here also equal the planted truth).

    python benchmarks/pts_budget.py [--reference-samples 400]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from planted import PlantedLM, planted_tokenizer  # noqa: E402

from phiforge.posttrain.pts.config import PTSConfig  # noqa: E402
from phiforge.posttrain.pts.sampler import HFSampler  # noqa: E402
from phiforge.posttrain.pts.search import Search  # noqa: E402

PROBLEM = {"prompt": "Q", "answer": "7", "verifier": "numeric"}
# (pivot position, solution length, p(answer 7) in the model; sampling at temperature 0.6 sharpens it)
SHAPES = [(4, 12, 0.5), (10, 40, 0.6), (30, 40, 0.4), (20, 64, 0.5), (50, 64, 0.6)]


def frozen_traces(model, tok, cfg: PTSConfig, seed: int) -> list[tuple[int, ...]]:
    """One correct and one incorrect finished solution, sampled once."""
    search = Search(HFSampler(model, tok), tok, PROBLEM, cfg, lambda text: False, seed)
    outs = search.complete(search.rollouts([()] * 16))
    by_answer = {}
    for out, _ in outs:
        by_answer.setdefault(tok.convert_tokens_to_ids("7") in out, tuple(out))
    return [by_answer[True], by_answer[False]]


def run(model, tok, traces, cfg: PTSConfig, seed: int) -> tuple[set, int, int]:
    """Pivots found ((trace, position)), completions sampled by the search, and by pair verification."""
    from phiforge.synth.verify import verify

    search = Search(HFSampler(model, tok), tok, PROBLEM, cfg, lambda text: verify(PROBLEM, text).ok, seed)
    found = {(t, i) for t, trace in enumerate(traces) for i in search.complete(search.pivots(trace))}
    searched = search.samples
    for t, i in sorted(found):
        search.complete(search.pair(traces[t], i))
    return found, searched, search.samples - searched


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference-samples", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = planted_tokenizer()
    totals = {"adaptive": [0, 0], "fixed": [0, 0]}
    hits = {"adaptive": [0, 0, 0], "fixed": [0, 0, 0]}  # true positives, found, reference
    print(f"{'pivot/len/p':>12} {'ref pivots':>10} | {'fixed: search+pairs':>20} {'pivots':>7} | "
          f"{'adaptive: search+pairs':>23} {'pivots':>7} | ratio")
    for pivot, length, p in SHAPES:
        model = PlantedLM(tok, pivot=pivot, length=length, p_right=p)
        base = PTSConfig(max_new_tokens=length + 4)
        traces = frozen_traces(model, tok, base, args.seed)
        reference, _, _ = run(model, tok, traces, PTSConfig(mode="fixed", samples=args.reference_samples,
                                                            max_new_tokens=length + 4), args.seed + 1)
        line = f"{pivot:>4}/{length}/{p:<4} {len(reference):>10} |"
        spent = {}
        for mode in ("fixed", "adaptive"):
            found, searched, paired = run(model, tok, traces, PTSConfig(mode=mode, max_new_tokens=length + 4),
                                          args.seed + 2)
            spent[mode] = searched + paired
            totals[mode][0] += searched
            totals[mode][1] += paired
            hits[mode][0] += len(found & reference)
            hits[mode][1] += len(found)
            hits[mode][2] += len(reference)
            width = 20 if mode == "fixed" else 23
            line += f" {f'{searched:,}+{paired:,}':>{width}} {len(found & reference)}/{len(found):<5} |"
        print(f"{line} {spent['fixed'] / spent['adaptive']:.2f}x")
    for mode in ("fixed", "adaptive"):
        tp, found, ref = hits[mode]
        print(f"{mode:>8}: {sum(totals[mode]):,} completions ({totals[mode][0]:,} search + {totals[mode][1]:,} "
              f"pair checks); precision {tp / max(1, found):.2f}, recall {tp / max(1, ref):.2f}")
    print(f"fixed / adaptive completions: {sum(totals['fixed']) / sum(totals['adaptive']):.2f}x "
          f"(search alone {totals['fixed'][0] / totals['adaptive'][0]:.2f}x)")


if __name__ == "__main__":
    main()
