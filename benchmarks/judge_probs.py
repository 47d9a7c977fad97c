"""Does a judge rank a right answer above a wrong one? Six hand-written pairs, graded both ways a judge can be read.

`probs` (posttrain/judge.py `method: probs`): the expected digit per dimension from the judge's next-token
distribution; `generate`: the score lines it writes (unreadable ones counted). Prints, per pair, each method's
mean scores and accuracy scores and whether the right answer came first.

    python benchmarks/judge_probs.py --judge smollm2
"""

from __future__ import annotations

import argparse

import torch

from phiforge.generation.base import Sampling
from phiforge.generation.hf import HFBackend
from phiforge.posttrain.judge import DIGITS, DIMENSIONS, dimension_messages, judge_messages, parse_scores, probs_grade

PAIRS = [  # question, right answer, wrong answer
    ("What is 7 x 8?", "7 x 8 = 56.", "7 x 8 = 54."),
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    ("Write a Python function that adds two numbers.", "def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b"),
    ("Solve for x: 2x + 3 = 7.", "2x = 7 - 3 = 4, so x = 2.", "x = 5."),
    ("How many days are in a week?", "There are 7 days in a week.", "banana banana the the the"),
    ("Name a color.", "Blue.", "I like to eat soup on Tuesdays and my dog"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--judge", default="smollm2", help="smollm2 or an HF model directory")
    ap.add_argument("--max-tokens", type=int, default=96, help="generate: the judge's answer length")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    judge = HFBackend(args.judge, batch_size=36)
    answers = [(q, a) for q, right, wrong in PAIRS for a in (right, wrong)]
    asks = [dimension_messages([{"role": "user", "content": q}], a, d) for q, a in answers for d in DIMENSIONS]
    probs = iter(judge.choice_probs(asks, DIGITS))
    by_probs = [probs_grade(a, [next(probs) for _ in DIMENSIONS], asks[0]) for _, a in answers]
    written = judge.chat([judge_messages([{"role": "user", "content": q}], a) for q, a in answers],
                         Sampling(temperature=0.0, max_tokens=args.max_tokens), 1)
    by_text = [parse_scores(w[0]) for w in written]
    first = {"probs mean": 0, "probs accuracy": 0, "generate mean": 0}
    for k, (q, _, _) in enumerate(PAIRS):
        right, wrong = by_probs[2 * k], by_probs[2 * k + 1]
        tr, tw = by_text[2 * k], by_text[2 * k + 1]
        first["probs mean"] += right["score"] > wrong["score"]
        first["probs accuracy"] += right["scores"]["accuracy"] > wrong["scores"]["accuracy"]
        readable = tr is not None and tw is not None
        first["generate mean"] += readable and sum(tr.values()) > sum(tw.values())
        print(f"{q[:40]:40s} probs mean {right['score']:.2f} vs {wrong['score']:.2f}, accuracy "
              f"{right['scores']['accuracy']:.2f} vs {wrong['scores']['accuracy']:.2f}; generate "
              f"{'readable' if readable else 'unreadable'}")
    unreadable = sum(t is None for t in by_text)
    print(f"right answer first, of {len(PAIRS)}: " + ", ".join(f"{k} {v}" for k, v in first.items())
          + f"; generate: {unreadable} of {len(by_text)} answers unreadable")


if __name__ == "__main__":
    main()
