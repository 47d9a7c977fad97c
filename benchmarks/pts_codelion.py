"""`phiforge pts` against codelion/pts (the open PTS tool), head to head: same model, problems and oracle.

Both sides search --problems `groups` word problems from phiforge's generator (data/synthetic_math.py), written
once to OUT/problems/problems.jsonl ({prompt, answer, verifier: numeric}), on SmolLM2-135M-Instruct (the
embedded GGUF's HF directory, loaded in fp32 by both), with the same oracle: phiforge's `numeric` verifier
(the last number of the solution text equals the answer).
- codelion: its own CLI, `pts run`, from its venv (--codelion-venv; pip install -e of its source), with its
  defaults (50 samples per prefix, temperature 0.6, top-p 0.95, top-k 20, prob threshold 0.2, 10 traces per
  problem, p(success | Q) in [0.2, 0.8]), but --max-new-tokens on both sides and SmolLM2's own system prompt
  as --system-prompt, so both render the same chat prompt (without one it samples on the bare question text).
  The dataset is the local folder (--query-key prompt --answer-key answer). A sitecustomize.py on its
  PYTHONPATH (written to OUT/shim/) swaps its oracle (chosen by dataset name; it would read the prompt's
  numbers too) for phiforge's verifier, and counts the sequences every `generate()` call returns: traces (one
  per call) and estimate completions (num_return_sequences). It runs offline (HF_HUB_OFFLINE=1).
- phiforge: `Search` on the hf sampler through the pts stage's driver, PTSConfig defaults (adaptive, at most
  --num-samples per prefix, one correct and one incorrect trace, pairs built), completions counted by Search.

Per side: completions sampled, wall time (model load included), traces, distinct pivots; with
--verify-samples M, each pivot's p(before) and p(after) measured again from M fresh completions each
(phiforge's sampler, new seeds): a pivot survives if the fresh jump has the same sign and is >= 0.2 (a
precision estimate); with --recall-traces K, phiforge's pivot search also runs on every trace codelion searched
(its completions against codelion's on the same traces), and every position of codelion's first K searched traces
is labelled from M fresh completions, the candidate jumps (>= 0.1) confirmed from --confirm-samples more (see
reference_pivots()): both sides' recall and precision against the same reference labels. Each side's search is
kept in OUT (codelion/, phiforge/result.json, phiforge/on_codelion_traces.json; -no-reuse.json with
--pts-no-reuse, -seedN.json for the other seeds of --pts-seeds): --reuse takes it from there, to label more
traces without searching again. The reference labels are kept too (labels.json, by trace and labelling settings) and taken from there whenever present: another
phiforge setting is compared on the same traces without labelling them again.

    python benchmarks/pts_codelion.py [--problems 10] [--num-samples 50] [--max-new-tokens 256] \\
        [--max-generations 10] [--verify-samples 50] [--confirm-samples 64] [--recall-traces 1] [--reuse] \\
        [--threads 2] [--out runs/pts_codelion]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from vllm_rollouts import cpu_capability, load

ROOT = Path(__file__).resolve().parents[1]
SHIM = r'''"""Only for benchmarks/pts_codelion.py: phiforge's oracle in codelion/pts, and a count of its completions."""
import atexit, json, os, re, sys
if os.environ.get("PTS_BENCH_COUNTS"):
    sys.path.insert(0, os.environ["PTS_BENCH_PHIFORGE_SRC"])  # phiforge.synth.verify needs only the stdlib
    import torch
    torch.set_num_threads(int(os.environ["PTS_BENCH_THREADS"]))
    from transformers.generation.utils import GenerationMixin
    from phiforge.synth.verify import verify
    import pts.cli
    from pts.oracle import Oracle

    counts = {"generate_calls": 0, "traces": 0, "estimate_completions": 0, "trace_ids": []}
    original = GenerationMixin.generate

    def generate(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        counts["generate_calls"] += 1
        counts["estimate_completions" if "num_return_sequences" in kwargs else "traces"] += out.sequences.shape[0]
        if "num_return_sequences" not in kwargs:  # a trace it searches: prompt and sampled ids
            counts["trace_ids"].append(out.sequences[0].tolist())
        return out

    class Numeric(Oracle):
        def __init__(self, examples):
            self.answers = {e["query"]: e["answer"] for e in examples}

        def check_success(self, query, response):
            # response = prompt (or prefix) text + completion: judge the assistant's part only, as phiforge does
            solution = re.sub(r"<\|[a-z_]+\|>", "", response.rsplit("<|im_start|>assistant\n", 1)[-1])
            return verify({"answer": self.answers[query], "verifier": "numeric"}, solution).ok

    GenerationMixin.generate = generate
    pts.cli.create_oracle_from_dataset = lambda examples, debug_mode=False: Numeric(examples)
    atexit.register(lambda: open(os.environ["PTS_BENCH_COUNTS"], "w").write(json.dumps(counts)))
'''


def write_problems(out: Path, n: int, seed: int) -> list[dict]:
    from phiforge.data.synthetic_math import BY_NAME, generate

    rows = [{"prompt": p.question, "answer": p.answer, "verifier": "numeric"}
            for p in generate(n, seed, heldout=True, families=(BY_NAME["groups"],))]
    (out / "problems").mkdir(parents=True, exist_ok=True)
    (out / "problems" / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def fp32_dir(model_dir: Path, out: Path) -> Path:
    """The model's files linked, its config saying float32: codelion's from_pretrained would keep bf16."""
    target = out / "model-fp32"
    target.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.is_file() and f.name != "config.json" and not (target / f.name).exists():
            (target / f.name).symlink_to(f)
    config = json.loads((model_dir / "config.json").read_text())
    config["dtype"] = config["torch_dtype"] = "float32"
    (target / "config.json").write_text(json.dumps(config, indent=1))
    return target


def run_codelion(args, model_dir: Path, system_prompt: str, n: int) -> dict:
    work = (args.out / "codelion").resolve()
    pivots_path, counts_path = work / "pivotal_tokens.jsonl", work / "counts.json"
    if args.reuse and (work / "seconds.txt").is_file():
        print(f"codelion: its run's files in {work} (--reuse)", flush=True)
        return codelion_result(work, float((work / "seconds.txt").read_text()), (work / "stderr.txt").read_text())
    work.mkdir(parents=True, exist_ok=True)
    shim = args.out.resolve() / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SHIM)
    for p in (pivots_path, counts_path, work / "pts.log", work / "seconds.txt"):
        p.unlink(missing_ok=True)
    cmd = [str(args.codelion_venv / "bin" / "pts"), "run", "--model", str(fp32_dir(model_dir, args.out.resolve())),
           "--dataset", str((args.out / "problems").resolve()), "--query-key", "prompt", "--answer-key", "answer",
           "--output-path", str(pivots_path), "--device", "cpu", "--system-prompt", system_prompt,
           "--max-new-tokens", str(args.max_new_tokens), "--num-samples", str(args.num_samples),
           "--max-generations", str(args.max_generations), "--min-prob", str(args.min_p),
           "--max-prob", str(args.max_p), "--max-examples", str(n)]
    env = os.environ | {"PYTHONPATH": str(shim), "PTS_BENCH_COUNTS": str(counts_path),
                        "PTS_BENCH_PHIFORGE_SRC": str(ROOT / "src"), "PTS_BENCH_THREADS": str(args.threads),
                        "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                        "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(work / "hf-home"), "TQDM_DISABLE": "1"}
    print("codelion:", " ".join(cmd[:2]), "...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    (work / "stderr.txt").write_text(proc.stderr)
    if proc.returncode != 0 or not counts_path.is_file():
        sys.exit(f"codelion's pts run failed (exit {proc.returncode}); see {work / 'stderr.txt'}:\n"
                 + proc.stderr[-3000:])
    (work / "seconds.txt").write_text(f"{seconds:.1f}")
    return codelion_result(work, seconds, proc.stderr)


def codelion_result(work: Path, seconds: float, stderr: str) -> dict:
    pivots_path, counts_path = work / "pivotal_tokens.jsonl", work / "counts.json"
    counts = json.loads(counts_path.read_text())
    records = [json.loads(line) for line in pivots_path.read_text().splitlines()] if pivots_path.is_file() else []
    # traces may share a prefix: count a (problem, context, token) once
    distinct = {(r["dataset_item_id"], r["pivot_context"], r["pivot_token_id"]): r for r in records}
    logged = re.findall(r"(?:Initial success probability: |Query success probability \()([\d.]+)", stderr)
    return {"seconds": seconds, "completions": counts["traces"] + counts["estimate_completions"], **counts,
            "pivots": list(distinct.values()), "records": len(records), "p_success": [float(p) for p in logged]}


def run_phiforge(args, problems: list[dict], sampler, tok, load_seconds: float) -> dict:
    from phiforge.posttrain.pts.config import PTSConfig
    from phiforge.posttrain.pts.search import Search, drive
    from phiforge.synth.verify import verify

    saved = args.out / "phiforge" / f"result{args.suffix}.json"
    if args.reuse and saved.is_file():
        print(f"phiforge: its run's results in {saved} (--reuse)", flush=True)
        return json.loads(saved.read_text())

    class Recorded(Search):
        """Search that keeps each searched trace's pivots and the completions its pairs cost."""

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.found, self.searched, self.pair_samples = [], [], 0

        def pivots(self, solution):
            self.searched.append(tuple(solution))
            found = yield from super().pivots(solution)
            self.found += [(solution, i) for i in found]
            return found

        def pair(self, solution, i):
            before = self.samples
            out = yield from super().pair(solution, i)
            self.pair_samples += self.samples - before
            return out

    t0 = time.perf_counter()
    cfg = PTSConfig(samples=args.num_samples, max_new_tokens=args.max_new_tokens, min_p=args.min_p, max_p=args.max_p,
                    reuse=not args.pts_no_reuse)
    searches = {i: Recorded(sampler, tok, p, cfg, lambda text, p=p: verify(p, text).ok,
                            seed=cfg.seed * 1_000_003 + i)
                for i, p in enumerate(problems)}
    results = dict(drive(sampler, cfg, iter([(i, s.problem(i)) for i, s in searches.items()]), cfg.concurrent))
    seconds = time.perf_counter() - t0 + load_seconds
    pivots = []
    for i, s in searches.items():
        for solution, k in s.found:
            delta = s.cache[solution[: k + 1]].p - s.cache[solution[:k]].p
            pivots.append({"problem": i, "prefix": solution[:k], "token": solution[k], "delta": delta})
    result = {"seconds": seconds, "completions": sum(s.samples for s in searches.values()),
              "pair_completions": sum(s.pair_samples for s in searches.values()),
              "traces": sum(len({sol for sol, _ in s.found}) for s in searches.values()),
              "searched": [(i, sol) for i, s in searches.items() for sol in s.searched],
              "statuses": [r.status for _, r in sorted(results.items())],
              "p_success": [round(r.p_success, 2) for _, r in sorted(results.items())],
              "pairs": sum(len(r.pairs) for r in results.values()), "pivots": pivots}
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(result))
    return result


def fresh_p(sampler, tok, problem: dict, i: int, prefixes: list[tuple], m: int, cfg, seed: int) -> dict:
    """p(success) after each prefix of problem i's solution, from m fresh completions each (phiforge's sampler)."""
    from phiforge.posttrain.pts.search import Search
    from phiforge.synth.verify import verify

    fixed = cfg.model_copy(update={"mode": "fixed", "samples": m, "reuse": False})  # independent estimates
    s = Search(sampler, tok, problem, fixed, lambda t: verify(problem, t).ok, seed=seed * 1_000_003 + i)
    s.complete(s.estimate(prefixes, m))
    return {x: s.cache[x].p for x in prefixes}


def reverify(side: dict, problems: list[dict], m: int, cfg, seed: int, sampler, tok) -> tuple[int, int]:
    """(pivots whose jump M fresh completions per prefix confirm, pivots checked)."""
    by_problem: dict[int, list[dict]] = {}
    for p in side["pivots"]:
        by_problem.setdefault(p["problem"], []).append(p)
    kept = checked = 0
    for i, pivots in by_problem.items():
        prefixes = [x for p in pivots for x in (tuple(p["prefix"]), tuple(p["prefix"]) + (p["token"],))]
        est = fresh_p(sampler, tok, problems[i], i, prefixes, m, cfg, seed)
        for p in pivots:
            fresh = est[tuple(p["prefix"]) + (p["token"],)] - est[tuple(p["prefix"])]
            checked += 1
            kept += abs(fresh) >= cfg.p_gap and (fresh > 0) == (p["delta"] > 0)
    return kept, checked


def search_traces(sampler, tok, problems: list[dict], traces: list[tuple[int, tuple]], cfg) -> dict:
    """phiforge's pivot search (Search.pivots, the stage's settings) on given (problem, trace) pairs: one Search,
    one cache, per problem, as codelion keeps one cache per query. Its pivots and the completions they cost."""
    from phiforge.posttrain.pts.search import Search, drive
    from phiforge.synth.verify import verify

    by_problem: dict[int, list[tuple]] = {}
    for i, trace in traces:
        by_problem.setdefault(i, []).append(trace)
    searches = {i: Search(sampler, tok, problems[i], cfg, lambda text, p=problems[i]: verify(p, text).ok,
                          seed=cfg.seed * 1_000_003 + i) for i in by_problem}

    def steps(i: int):
        s, found = searches[i], []
        # p(success | Q) first, as the pts stage estimates it (with room to count for the traces' prefixes; these
        # traces are codelion's, independent of these completions), not counted: codelion's count leaves its
        # own estimate of it out (it caches it for the subdivision, as the pts stage does)
        yield from s.rollouts([()] * cfg.samples, room=cfg.max_new_tokens)
        s.samples = 0
        for trace in by_problem[i]:
            for k in (yield from s.pivots(trace)):
                found.append({"problem": i, "prefix": trace[:k], "token": trace[k],
                              "delta": s.cache[trace[: k + 1]].p - s.cache[trace[:k]].p})
        return found

    t0 = time.perf_counter()
    found = [p for _, ps in drive(sampler, cfg, iter([(i, steps(i)) for i in by_problem]), cfg.concurrent) for p in ps]
    return {"pivots": found, "completions": sum(s.samples for s in searches.values()),
            "seconds": time.perf_counter() - t0}


def reference_pivots(sampler, tok, problem: dict, i: int, trace: tuple, m: int, confirm: int, cfg,
                     seed: int) -> tuple[set[int], int]:
    """Reference labels on one trace, in two stages because one estimate per position is too noisy (at m=32 two
    independent estimates of the same p differ by >= 0.2 about one time in nine, so every trace of 60 positions
    would hold several false pivots): p(success) after every prefix of the trace from m fresh completions each;
    positions whose jump is >= p_gap / 2 are candidates, and both their prefixes get `confirm` more completions;
    a reference pivot is a candidate whose jump over all m + confirm completions is >= p_gap.
    (reference pivot positions, candidates)."""
    prefixes = [tuple(trace[:j]) for j in range(len(trace) + 1)]
    est = fresh_p(sampler, tok, problem, i, prefixes, m, cfg, seed)
    p = [est[x] for x in prefixes]
    candidates = [j for j in range(len(trace)) if abs(p[j + 1] - p[j]) >= cfg.p_gap / 2]
    again = sorted({j for c in candidates for j in (c, c + 1)})
    if again and confirm:
        more = fresh_p(sampler, tok, problem, i, [prefixes[j] for j in again], confirm, cfg, seed + 1)
        for j in again:
            p[j] = (p[j] * m + more[prefixes[j]] * confirm) / (m + confirm)
    return {j for j in candidates if abs(p[j + 1] - p[j]) >= cfg.p_gap}, len(candidates)


def found_on(pivots: list[dict], i: int, trace: tuple) -> set[int]:
    """Positions in problem i's trace of the pivots that lie on it."""
    return {len(x["prefix"]) for x in pivots
            if x["problem"] == i and tuple(x["prefix"]) + (x["token"],) == tuple(trace[: len(x["prefix"]) + 1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=10)
    ap.add_argument("--num-samples", type=int, default=50, help="codelion: per prefix; phiforge: at most")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--max-generations", type=int, default=10, help="codelion's traces per problem")
    ap.add_argument("--min-p", type=float, default=0.2, help="search a problem only if p(success | Q) >= this")
    ap.add_argument("--max-p", type=float, default=0.8)
    ap.add_argument("--verify-samples", type=int, default=50, help="fresh completions per prefix; 0: no check")
    ap.add_argument("--recall-traces", type=int, default=1,
                    help="codelion's searched traces, searched by phiforge too, labelled at every position for recall")
    ap.add_argument("--confirm-samples", type=int, default=64,
                    help="more completions per prefix around each candidate reference pivot (see reference_pivots())")
    ap.add_argument("--reuse", action="store_true",
                    help="take a side's search from OUT's files of an earlier run when there (to label more traces)")
    ap.add_argument("--pts-no-reuse", action="store_true",
                    help="phiforge with pts.reuse off (a completion counts for its own prefix only)")
    ap.add_argument("--pts-seeds", type=int, default=1,
                    help="phiforge searches codelion's traces with seeds 0..N-1 (recall and completions: the mean)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=("codelion", "phiforge", "traces"),
                    help="run one side (for a smoke test); traces: only phiforge's search of codelion's traces")
    ap.add_argument("--codelion-venv", type=Path, default=Path("/work/codelion-venv"))
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "pts_codelion")
    args = ap.parse_args()
    args.suffix = "-no-reuse" if args.pts_no_reuse else ""  # phiforge's saved searches, one per setting
    torch.set_num_threads(args.threads)

    from phiforge.generation.hf import smollm2_dir
    from phiforge.model import load_model
    from phiforge.posttrain.pts.sampler import HFSampler
    from phiforge.tokenizer import chat_prompt_ids, load_tokenizer

    print(cpu_capability(), "|", load(), flush=True)
    model_dir = smollm2_dir()
    problems = write_problems(args.out, args.problems, args.seed)
    t0 = time.perf_counter()  # the model load counts in phiforge's wall time, as it does in codelion's
    tok = load_tokenizer(model_dir)
    sampler = HFSampler(load_model(model_dir).eval(), tok)
    load_seconds = time.perf_counter() - t0
    phi = run_phiforge(args, problems, sampler, tok, load_seconds) if args.only in (None, "phiforge") else None
    # SmolLM2's template adds this system turn when there is none: give it to codelion so the prompts match
    rendered = tok.decode(chat_prompt_ids(tok, "Q"))
    system_prompt = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", rendered, re.S).group(1)
    theirs = run_codelion(args, model_dir, system_prompt, len(problems)) if args.only != "phiforge" else None
    print(f"\n{len(problems)} problems, {args.num_samples} samples per prefix, {args.max_new_tokens} new tokens, "
          f"{args.threads} threads | {load()}")
    if theirs:
        prompts = [chat_prompt_ids(tok, problem["prompt"]) for problem in problems]
        unmatched = 0  # codelion's pivots as (problem, solution prefix ids, token) under the same chat prompt
        for r in theirs["pivots"]:
            i = int(r["dataset_item_id"])
            prompt = prompts[i]
            ids = tok.encode(r["pivot_context"], add_special_tokens=False)
            if ids[: len(prompt)] != prompt:
                unmatched += 1
                continue
            r.update(problem=i, prefix=ids[len(prompt):], token=r["pivot_token_id"], delta=r["prob_delta"])
        theirs["pivots"] = [r for r in theirs["pivots"] if "prefix" in r]
        theirs["searched"] = []  # (problem, sampled ids) of every trace it subdivided (it skips those under 5)
        for ids in theirs["trace_ids"]:
            for i, prompt in enumerate(prompts):
                if ids[: len(prompt)] == prompt and len(ids) - len(prompt) >= 5:
                    theirs["searched"].append((i, tuple(ids[len(prompt):])))
        print(f"codelion: {theirs['seconds']:7.1f} s, {theirs['completions']:,} completions ({theirs['traces']} traces"
              f" + {theirs['estimate_completions']:,} for estimates, {theirs['generate_calls']:,} generate calls), "
              f"{len(theirs['pivots'])} distinct pivots ({theirs['records']} records, {unmatched} not "
              f"re-tokenizable), p(success | Q) {theirs['p_success']}")
    if phi:
        print(f"phiforge: {phi['seconds']:7.1f} s, {phi['completions']:,} completions ({phi['pair_completions']:,} of "
              f"them for pairs), {phi['traces']} traces with pivots, {len(phi['pivots'])} pivots, {phi['pairs']} "
              f"pairs, p(success | Q) {phi['p_success']} {phi['statuses']}")
    from phiforge.posttrain.pts.config import PTSConfig

    cfg = PTSConfig(max_new_tokens=args.max_new_tokens)
    for name, side in (("codelion", theirs), ("phiforge", phi)):
        if side and args.verify_samples:
            t0 = time.perf_counter()
            kept, checked = reverify(side, problems, args.verify_samples, cfg, args.seed + 7, sampler, tok)
            print(f"re-verified at {args.verify_samples} fresh samples per prefix: {name}: {kept}/{checked} pivots "
                  f"survive ({time.perf_counter() - t0:.0f} s) | {load()}")
    if theirs and args.recall_traces:
        traces = theirs["searched"][: args.recall_traces]
        t0 = time.perf_counter()
        labels = reference_labels(args, traces, problems, sampler, tok, cfg)
        print(f"reference labels on {len(traces)} trace(s), every position at {args.verify_samples} samples, "
              f"candidates at {args.confirm_samples} more ({time.perf_counter() - t0:.0f} s) | {load()}", flush=True)
        sides = {"codelion": [theirs["pivots"]]}  # name -> pivots found, one list per search seed
        if args.only != "codelion":
            # Recall on the same traces for both sides: phiforge searches every trace codelion searched, once per
            # seed (its completions vary by up to 2x with the seed on a few traces: one run is no figure)
            spent = theirs["estimate_completions"] - args.num_samples * len(theirs["p_success"])
            searches = []
            for seed in range(args.pts_seeds):
                saved = args.out / "phiforge" / f"on_codelion_traces{args.suffix}{f'-seed{seed}' if seed else ''}.json"
                if args.reuse and saved.is_file():
                    ours = json.loads(saved.read_text())
                else:
                    search_cfg = PTSConfig(samples=args.num_samples, max_new_tokens=args.max_new_tokens, seed=seed,
                                           min_p=args.min_p, max_p=args.max_p, reuse=not args.pts_no_reuse)
                    ours = search_traces(sampler, tok, problems, theirs["searched"], search_cfg)
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    saved.write_text(json.dumps(ours))
                searches.append(ours)
                print(f"  phiforge, seed {seed}: {ours['completions']:,} completions ({ours['seconds']:.0f} s), "
                      f"{len(ours['pivots'])} pivots | {load()}", flush=True)
            sides["phiforge"] = [ours["pivots"] for ours in searches]
            mean = sum(ours["completions"] for ours in searches) / len(searches)
            print(f"codelion's {len(theirs['searched'])} searched traces, searched by phiforge too: codelion spent "
                  f"{spent:,} completions on them (its estimates less those of p(success | Q)), phiforge "
                  f"{mean:,.0f} on average over {len(searches)} seed(s) "
                  f"({min(o['completions'] for o in searches):,} to {max(o['completions'] for o in searches):,}, "
                  f"{sum(o['seconds'] for o in searches) / len(searches):.0f} s): {spent / max(1, mean):.2f}x fewer")
        hits, found_n, ref_n = dict.fromkeys(sides, 0), dict.fromkeys(sides, 0), 0
        for t, ((i, trace), (ref, candidates)) in enumerate(zip(traces, labels)):
            ref_n += len(ref)
            line = []
            for name, runs in sides.items():
                found = [found_on(pivots, i, trace) for pivots in runs]
                hits[name] += sum(len(set(ref) & f) for f in found) / len(runs)
                found_n[name] += sum(len(f) for f in found) / len(runs)
                line.append(f"{name} {' '.join(str(sorted(f)) for f in found)}")
            print(f"  trace {t} (problem {i}): {len(trace)} positions, {candidates} candidates, reference pivots "
                  f"{ref}; found: {', '.join(line)}", flush=True)
        print("; ".join(f"{name}: recall {hits[name]:.3g}/{ref_n}, precision {hits[name]:.3g}/{found_n[name]:.3g}"
                        for name in hits) + " (phiforge's: the mean over its seeds)")


def reference_labels(args, traces: list[tuple[int, tuple]], problems: list[dict], sampler, tok,
                     cfg) -> list[tuple[list[int], int]]:
    """(reference pivot positions, candidates) of each trace (reference_pivots()), kept in OUT/labels.json by
    trace and labelling settings: they cost most of a run, and a search compared again needs the same ones."""
    path = args.out / "labels.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    labels = []
    for t, (i, trace) in enumerate(traces):
        seed = args.seed + 11 + 2 * t
        key = json.dumps([i, list(trace), args.verify_samples, args.confirm_samples, seed])
        if key not in saved:
            ref, candidates = reference_pivots(sampler, tok, problems[i], i, trace, args.verify_samples,
                                               args.confirm_samples, cfg, seed)
            saved[key] = [sorted(ref), candidates]
            path.with_suffix(".tmp").write_text(json.dumps(saved))
            path.with_suffix(".tmp").replace(path)
        labels.append(tuple(saved[key]))
    return labels


if __name__ == "__main__":
    main()
