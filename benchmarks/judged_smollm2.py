"""The embedded SmolLM2 in the judged and safety tasks (eval/judged.py, eval/safety.py), on data whose right answers
are known: judge_probs.py's six right/wrong answer pairs as a pairwise comparison in both orders and as judged items
(notes: the right answer), and SmolLM2 itself answering the built-in safety pairs (string-match classifier).

    python benchmarks/judged_smollm2.py
"""

from __future__ import annotations

import argparse
import json

import torch

from judge_probs import PAIRS
from phiforge.eval.judged import ComparisonConfig, JudgedItem, JudgedItemsConfig, compare_answers, score_answers
from phiforge.eval.safety import SafetyConfig, safety_scores
from phiforge.generation.hf import HFBackend


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("judge", nargs="?", default="smollm2", help="smollm2 or an HF model directory")
    ap.add_argument("--safety-tokens", type=int, default=32, help="tokens per reply to the safety prompts")
    # One thread: on cores other jobs keep busy, torch's two spin-waiting threads ran 7x slower (docs/benchmarks.md).
    torch.set_num_threads(1)
    args = ap.parse_args()
    judge = HFBackend(args.judge, batch_size=16)
    questions, right, wrong = (list(column) for column in zip(*PAIRS))
    for method in ("probs", "generate"):
        cfg = ComparisonConfig(method=method, judge_max_tokens=96)
        compared = compare_answers(questions, right, wrong, judge, cfg)
        print(f"comparison ({method}), right answers as the candidate:",
              json.dumps({k: compared[k] for k in ("win_rate", "ci95", "n", "unparseable", "ties",
                                                   "position_consistency", "first_position_wins")}))
    items = [JudgedItem(question=q, notes=f"A right answer agrees with: {r}") for q, r in zip(questions, right)]
    for method in ("probs", "generate"):
        cfg = JudgedItemsConfig(method=method, judge_max_tokens=96)
        scores = {"right": score_answers(items, right, judge, cfg), "wrong": score_answers(items, wrong, judge, cfg)}
        print(f"items ({method}):", json.dumps({name: {k: s[k] for k in ("mean_score", "ci95", "n", "unparseable")}
                                                for name, s in scores.items()}))
    safety = safety_scores(judge, SafetyConfig(max_tokens=args.safety_tokens))
    print("safety of the judge model itself (rules):",
          json.dumps({k: safety[k] for k in ("refusal", "over_refusal", "empty")}))


if __name__ == "__main__":
    main()
