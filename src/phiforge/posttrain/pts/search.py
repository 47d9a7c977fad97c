"""The search: PTS for one problem as a generator of sampling requests, and the driver that serves several
searches' requests in one batch."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from phiforge.posttrain.pts.config import PTSConfig
from phiforge.posttrain.pts.estimates import Estimate, gap_bounds, split_point
from phiforge.posttrain.pts.sampler import Sampler, eos_and_pad
from phiforge.synth.verify import verify
from phiforge.tokenizer import chat_prompt_ids

Prefix = tuple[int, ...]  # solution token ids after the chat prompt


@dataclass
class ProblemResult:
    """What PTS found for one problem; `samples` counts every completion it sampled."""

    index: int
    status: Literal["searched", "skipped", "no_trace"]
    p_success: float
    samples: int
    pivots: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)


@dataclass
class Request:
    """Rows a search needs one sampled completion each of, with the seed each is drawn by and the most new tokens
    it may draw."""

    rows: list[list[int]]
    seeds: list[int]
    budgets: list[int]


T = TypeVar("T")
# A search step: it yields Requests, is sent back the completions (new token ids per row), and returns a T.
Steps = Generator[Request, list[list[int]], T]


class Search:
    """PTS for one problem: cached p(success) estimates over prefixes of the model's own solutions.

    The methods that sample are generators (Steps): a driver (`search_problems`, or `complete` for one search
    alone) samples what they yield and sends the completions back.

    With cfg.reuse, a completion of prefix p that follows a searched solution up to a longer prefix q counts for
    q too: given that it drew q's tokens, the rest is drawn from p(. | q) (the model is a Markov chain over
    prefixes), so it is an exact sample of q's success, as long as it had room for max_new_tokens after q. So a
    completion of p may draw max_new_tokens more tokens than the longest searched solution p begins has after p,
    and each estimate is judged on the first max_new_tokens after its own prefix, as a completion of it would be."""

    def __init__(self, sampler: Sampler, tok: PreTrainedTokenizerBase, problem: dict, cfg: PTSConfig,
                 check: Callable[[str], bool], seed: int):
        self.sampler, self.tok, self.cfg, self.check = sampler, tok, cfg, check
        self.prompt = chat_prompt_ids(tok, problem["prompt"])
        self.eos, _ = eos_and_pad(tok)
        self.generator = torch.Generator().manual_seed(seed)
        self.cache: dict[Prefix, Estimate] = {}
        self.samples = 0
        self.traces: list[Prefix] = []  # the solutions searched (or being searched)
        self.drawn: dict[Prefix, list[tuple[Prefix, int]]] = {}  # p -> (solution, budget) sampled from p, with room
        self.verdicts: dict[Prefix, bool] = {}

    def complete(self, steps: Steps[T]) -> T:
        """Run `steps` alone, sampling each request as it comes; its return value."""
        return next(drive(self.sampler, self.cfg, iter([(0, steps)]), 1))[1]

    def rollouts(self, prefixes: list[Prefix], room: int | None = None) -> Steps[list[tuple[Prefix, bool]]]:
        """One completion per entry (whole solution ids, oracle verdict); the estimates take them in. With
        cfg.reuse each may draw `room` (default: reach()) more tokens than max_new_tokens, to count for longer
        prefixes too."""
        # Consecutive seeds: the vLLM sampler sends a run of equal rows as one request of n samples
        base = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        reach = {p: 0 if not self.cfg.reuse else self.reach(p) if room is None else room
                 for p in dict.fromkeys(prefixes)}
        longest = self.cfg.max_new_tokens
        outs = yield Request([self.prompt + list(p) for p in prefixes], list(range(base, base + len(prefixes))),
                             [longest + reach[p] for p in prefixes])
        self.samples += len(outs)
        done = []
        for p, new in zip(prefixes, outs):
            solution = p + tuple(new)
            mine = solution[: len(p) + longest]
            ok = self.verdict(mine)
            est = self.estimate_of(p)
            est.n += 1
            est.successes += ok
            done.append((mine, ok))
            if reach[p]:
                self.drawn.setdefault(p, []).append((solution, longest + reach[p]))
                for m in range(len(p) + 1, min(len(solution), len(p) + reach[p]) + 1):
                    if solution[:m] in self.cache:
                        self.credit(solution[:m], solution, len(p) + reach[p])
        return done

    def reach(self, p: Prefix) -> int:
        """How many tokens past p a completion of p can count for: to the end of the longest searched solution
        that p begins."""
        return max((len(t) - len(p) for t in self.traces if t[: len(p)] == p), default=0)

    def estimate_of(self, q: Prefix) -> Estimate:
        """q's estimate; at first sight it takes in the completions of shorter prefixes that passed through q."""
        if q not in self.cache:
            self.cache[q] = Estimate()
            for j in range(len(q)):
                for solution, budget in self.drawn.get(q[:j], ()):
                    self.credit(q, solution, j + budget - self.cfg.max_new_tokens)
        return self.cache[q]

    def credit(self, q: Prefix, solution: Prefix, last: int) -> None:
        """Count `solution`, sampled from a shorter prefix with room for max_new_tokens after any prefix up to
        `last` tokens long, for q if it passed through q (an unfinished q only: a finished one is exact)."""
        if len(q) <= last and solution[: len(q)] == q and not (q and q[-1] in self.eos):
            est = self.cache[q]
            est.n += 1
            est.successes += self.verdict(solution[: len(q) + self.cfg.max_new_tokens])

    def verdict(self, solution: Prefix) -> bool:
        """The oracle on a solution, once per distinct solution: completions through many prefixes share one."""
        if solution not in self.verdicts:
            self.verdicts[solution] = self.check(self.text(solution))
        return self.verdicts[solution]

    def text(self, solution: Prefix) -> str:
        return self.tok.decode(list(solution), skip_special_tokens=True)

    def estimate(self, prefixes: list[Prefix], target: int) -> Steps[None]:
        """Top every prefix's estimate up to `target` completions, all in one batch."""
        todo: list[Prefix] = []
        for p in dict.fromkeys(prefixes):
            est = self.estimate_of(p)
            if p and p[-1] in self.eos:  # a finished solution: its verdict is p(success), no sampling
                if not est.exact:
                    est.successes, est.n, est.exact = int(self.verdict(p)), 1, True
            elif est.n < target:
                todo += [p] * (target - est.n)
        if todo:
            yield from self.rollouts(todo)

    def settled(self, a: Prefix, b: Prefix, gap: float) -> bool:
        lo, hi = gap_bounds(self.cache[a], self.cache[b], self.cfg.z)
        at_cap = all(self.cache[p].exact or self.cache[p].n >= self.cfg.samples for p in (a, b))
        return at_cap or lo >= gap or hi < gap

    def jumps(self, comparisons: list[tuple[Prefix, Prefix]], gap: float) -> Steps[list[bool]]:
        """|p(a) - p(b)| >= gap for each (a, b); adaptive mode samples only until a bound decides it."""
        if self.cfg.mode == "fixed":
            yield from self.estimate([p for c in comparisons for p in c], self.cfg.samples)
        else:
            open_, target = list(comparisons), 0
            while open_:
                target = min(self.cfg.samples, target + self.cfg.round_size)
                yield from self.estimate([p for c in open_ for p in c], target)
                open_ = [(a, b) for a, b in open_ if not self.settled(a, b, gap)]
        return [abs(self.cache[a].p - self.cache[b].p) >= gap for a, b in comparisons]

    def pivots(self, solution: Prefix) -> Steps[list[int]]:
        """Positions of pivotal tokens in `solution`: the report's SUBDIVIDE, one tree level per batch."""
        self.traces += [solution] if solution not in self.traces else []
        cum = [0.0, *itertools.accumulate(self.sampler.token_logprobs(self.prompt, solution))]
        found, level = [], [(0, len(solution))]
        while level:
            flags = yield from self.jumps([(solution[:s], solution[:e]) for s, e in level], self.cfg.p_gap)
            below = []
            for (s, e), jump in zip(level, flags):
                if jump and e - s == 1:
                    found.append(s)
                elif jump:
                    k = split_point(cum, s, e)
                    below += [(s, k), (k, e)]
            level = below
        return sorted(found)

    def pair(self, solution: Prefix, i: int) -> Steps[dict | None]:
        """The pair at pivot i, or None when no alternative next token moves p(success) the other way
        with p(chosen) - p(rejected) >= min_margin, both sides measured (adaptively) against that margin."""
        prefix, token = solution[:i], solution[i]
        if not self.cfg.end_pairs and token in self.eos:
            return None
        others = [t for t, q in self.sampler.next_tokens(self.prompt + list(prefix), self.cfg)
                  if q > 0 and t != token and (self.cfg.end_pairs or t not in self.eos)][: self.cfg.alternatives]
        yield from self.jumps([(prefix + (token,), prefix + (t,)) for t in others], self.cfg.min_margin)
        before, after = self.cache[prefix], self.cache[prefix + (token,)]
        raises = after.p > before.p
        p_of = {t: self.cache[prefix + (t,)].p for t in others}
        if raises:
            rejected = min(others, key=p_of.get, default=None)
            chosen = token
        else:
            chosen = max(others, key=p_of.get, default=None)
            rejected = token
        if chosen is None or rejected is None:
            return None
        est_c, est_r = self.cache[prefix + (chosen,)], self.cache[prefix + (rejected,)]
        moved_other_way = est_r.p < before.p if raises else est_c.p > before.p
        if not (est_c.n and est_r.n and moved_other_way) or est_c.p - est_r.p < self.cfg.min_margin:
            return None
        ids = self.prompt + list(prefix)
        return {
            "prompt": self.tok.decode(ids, skip_special_tokens=False),
            "prompt_token_ids": ids,
            "chosen": self.tok.decode([chosen]),
            "rejected": self.tok.decode([rejected]),
            "chosen_token_id": chosen,
            "rejected_token_id": rejected,
            "p_before": round(before.p, 4),
            "p_chosen": round(est_c.p, 4),
            "p_rejected": round(est_r.p, 4),
            "margin": round(est_c.p - est_r.p, 4),
            "samples": before.n + est_c.n + est_r.n,  # completions behind the three probabilities
        }

    def problem(self, index: int) -> Steps[ProblemResult]:
        """PTS on the problem: estimate p(success | Q) from cfg.samples solutions, keep the question when it is
        within [min_p, max_p], then search one correct and one incorrect finished solution of those."""
        cfg = self.cfg
        # room for a whole solution more: the completions count for the prefixes of the solutions searched
        solutions = yield from self.rollouts([()] * cfg.samples, room=cfg.max_new_tokens)
        p = self.cache[()].p
        if not cfg.min_p <= p <= cfg.max_p:
            return ProblemResult(index, "skipped", p, self.samples)
        traces, last = {}, -1
        for k, (solution, ok) in enumerate(solutions):
            if solution and solution[-1] in self.eos and ("correct" if ok else "incorrect") not in traces:
                traces["correct" if ok else "incorrect"], last = solution, k
        if not traces:
            return ProblemResult(index, "no_trace", p, self.samples)
        # The choice of traces depends on the completions up to the last one chosen (those before it are all
        # right or all wrong): only the later ones are unbiased samples for the traces' prefixes.
        self.drawn[()] = self.drawn.get((), [])[last + 1 :]
        result = ProblemResult(index, "searched", p, 0)
        for kind, solution in traces.items():
            for i in (yield from self.pivots(solution)):
                before, after = self.cache[solution[:i]], self.cache[solution[: i + 1]]
                result.pivots.append({"trace": kind, "position": i, "length": len(solution),
                                      "token_id": solution[i], "p_before": before.p, "p_after": after.p})
                pair = yield from self.pair(solution, i)
                if pair is not None:
                    result.pairs.append({**pair, "problem": index})
        result.samples = self.samples
        return result


def drive(sampler: Sampler, cfg: PTSConfig, steps: Iterator[tuple[int, Steps[T]]],
          concurrent: int) -> Iterator[tuple[int, T]]:
    """Run (key, steps) generators, `concurrent` at a time, each (key, return value) as it ends (not in order).

    Every round samples what all running generators asked for in one call."""
    running: dict[int, tuple[Steps[T], Request]] = {}

    def start() -> Iterator[tuple[int, T]]:
        for key, gen in steps:
            try:
                running[key] = (gen, next(gen))
            except StopIteration as done:  # nothing to sample
                yield key, done.value
            if len(running) == concurrent:
                return

    yield from start()
    while running:
        rows = [row for _, request in running.values() for row in request.rows]
        seeds = [seed for _, request in running.values() for seed in request.seeds]
        budgets = [budget for _, request in running.values() for budget in request.budgets]
        outs = sampler.complete(rows, seeds, budgets, cfg)
        at = 0
        for key, (gen, request) in list(running.items()):
            mine, at = outs[at : at + len(request.rows)], at + len(request.rows)
            try:
                running[key] = (gen, gen.send(mine))
            except StopIteration as done:
                del running[key]
                yield key, done.value
        yield from start()


def search_problems(sampler: Sampler, tok: PreTrainedTokenizerBase, problems: Iterable[tuple[int, dict]],
                    cfg: PTSConfig, check: Callable[[str], bool] | None = None) -> Iterator[ProblemResult]:
    """PTS on (index, problem)s, cfg.concurrent at a time, each result as its search ends (not in order).

    A search's samples depend only on its seed (cfg.seed and the problem's index): the same alone, beside
    other searches, or after a resume. `check` replaces the problems' verifiers (tests)."""

    def searches() -> Iterator[tuple[int, Steps[ProblemResult]]]:
        for index, problem in problems:
            verdict = check or (lambda text, problem=problem: verify(problem, text).ok)
            search = Search(sampler, tok, problem, cfg, verdict, seed=cfg.seed * 1_000_003 + index)
            yield index, search.problem(index)

    for _, result in drive(sampler, cfg, searches(), cfg.concurrent):
        yield result


def search_problem(sampler: Sampler, tok: PreTrainedTokenizerBase, problem: dict, cfg: PTSConfig,
                   index: int = 0, check: Callable[[str], bool] | None = None) -> ProblemResult:
    """PTS on one problem (Search.problem, alone)."""
    return next(search_problems(sampler, tok, [(index, problem)], cfg, check))
