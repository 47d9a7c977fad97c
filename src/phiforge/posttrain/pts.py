"""Pivotal Token Search (PTS): the tokens of a model's own solutions where p(success) jumps, as DPO pairs.

p(success | Q, prefix) is the fraction of sampled completions of `prefix` that the oracle (synth/verify.py)
accepts. The search is the report's SUBDIVIDE: a segment of the solution whose two ends differ by at least
p_gap in p(success) is split in two, recursively, until single tokens remain; those are the pivots. Here it
runs one tree level at a time so every comparison of a level samples in one batch, and (adaptive mode) each
comparison samples in rounds until a confidence bound on the difference decides it against p_gap.
Estimates are cached per prefix (token ids), and every sampled completion is counted. Several problems are
searched at once (`concurrent`): each search is a generator that yields the rows it needs sampled, and one
batch serves them all, since a forward pass costs about as much for 16 rows as for 256 on a CPU.

A pivot becomes a pair with the opposite side drawn from the model's own next-token distribution at the
same prefix: for a token that raises p(success) it is the chosen side and an alternative that lowers it the
rejected one, and the reverse. Both sides are measured at the full budget before a pair is kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from phiforge.errors import UserError
from phiforge.files import read_jsonl, write_json, write_jsonl, write_with
from phiforge.synth.verify import verify
from phiforge.tokenizer import chat_prompt_ids, stop_ids
from phiforge.progress import bar_label

log = logging.getLogger("phiforge")

Prefix = tuple[int, ...]  # solution token ids after the chat prompt


@dataclass(frozen=True)
class PTSConfig:
    p_gap: float = 0.2  # a jump in p(success) at least this big makes a token pivotal
    mode: Literal["adaptive", "fixed"] = "adaptive"
    samples: int = 50  # fixed: completions per prefix; adaptive: the most per prefix
    round_size: int = 10  # adaptive: completions added per open prefix per round
    z: float = 2.5  # adaptive: Wilson bound width; above 1.96 because every round looks again
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    max_new_tokens: int = 256
    min_p: float = 0.2  # questions are searched only when min_p <= p(success | Q) <= max_p
    max_p: float = 0.8
    alternatives: int = 4  # most likely other next tokens tried for the opposite side of a pair
    min_margin: float = 0.2  # a pair is kept only if p(chosen) - p(rejected) >= this, both freshly measured
    # Pairs with an end-of-reply token on either side ("<|im_end|>" over "\n" after a right answer). Single-token
    # DPO on them taught SmolLM2-135M to end every reply early (docs/posttrain.md), so a recipe can leave them out.
    end_pairs: bool = True
    batch_size: int = 256  # sequences per forward pass
    concurrent: int = 8  # problems searched at once, their samples sharing each batch
    seed: int = 0

    def __post_init__(self) -> None:
        if (not 0 < self.p_gap <= 1 or self.samples < 1 or self.round_size < 1 or self.temperature <= 0
                or self.concurrent < 1):
            raise UserError("pts: need 0 < p_gap <= 1, samples >= 1, round_size >= 1, temperature > 0 "
                            "and concurrent >= 1")


# --- sampling ---------------------------------------------------------------------------------------------


def head(logits: torch.Tensor, cfg: PTSConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens the sampler can draw, most likely first, and their probabilities after temperature, top-k and
    top-p (nucleus): (..., k) each. Drawing among the top k instead of the whole vocabulary is what keeps a
    sampling step cheap next to the forward pass (a full-vocabulary sort and multinomial cost as much as it)."""
    k = min(cfg.top_k or logits.shape[-1], logits.shape[-1])
    top, ids = torch.topk(logits.float(), k)  # sorted, most likely first
    probs = torch.softmax(top / cfg.temperature, dim=-1)
    if cfg.top_p < 1:
        probs = probs.masked_fill(probs.cumsum(-1) - probs > cfg.top_p, 0.0)  # the smallest head reaching top_p
        probs = probs / probs.sum(-1, keepdim=True)
    return probs, ids


def _kv_cache(res) -> tuple[str, object | None]:
    """The KV cache a forward pass returned, and the keyword that hands it back (transformers >= 5.2x calls it
    `cache`, earlier versions `past_key_values`); None for a model without one."""
    name = "cache" if getattr(res, "cache", None) is not None else "past_key_values"
    return name, getattr(res, name, None)


class _RoomyLayer(DynamicLayer):
    """A KV-cache layer with room for `room` more positions: a decoding step writes its keys and values in place.
    transformers' DynamicLayer concatenates instead, copying the whole cache at every step and layer; with hundreds
    of rows that copy cost PTS's sampler a quarter of its time on CPU."""

    def __init__(self, layer: DynamicLayer, room: int):
        super().__init__()
        rows, heads, length, _ = layer.keys.shape
        self.length = length
        self.k_buf = layer.keys.new_empty(rows, heads, length + room, layer.keys.shape[-1])
        self.v_buf = layer.values.new_empty(rows, heads, length + room, layer.values.shape[-1])
        self.k_buf[:, :, :length], self.v_buf[:, :, :length] = layer.keys, layer.values
        self.device, self.is_initialized = layer.keys.device, True
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self.k_buf[:, :, : self.length], self.v_buf[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        self.k_buf[:, :, self.length : self.length + n] = key_states
        self.v_buf[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
        self._views()


def _make_room(cache, room: int) -> None:
    """Give every full-attention layer of a DynamicCache room for `room` more positions (others stay as they are)."""
    layers = getattr(cache, "layers", [])
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            layers[i] = _RoomyLayer(layer, room)


@torch.no_grad()
def sample(model: torch.nn.Module, prefixes: Sequence[list[int]], cfg: PTSConfig, eos: set[int], pad: int,
           uniforms: torch.Tensor) -> list[list[int]]:
    """One sampled continuation (new tokens, EOS included) per prefix, in batches of cfg.batch_size.

    Row i draws its token at step t by inverting the filtered distribution's CDF at uniforms[i, t]
    ((prefixes, max_new_tokens), in [0, 1)): what a row draws depends on its own numbers only, not on which
    other rows share its batch, so a search gives the same samples alone or beside other searches.

    PTS samples each prefix many times: a batch reads every distinct prefix once and shares its KV cache
    among the rows that continue it, and rows leave the batch at EOS, so each step costs only the open rows.
    Works with any module taking HF causal-LM arguments and returning `.logits`: it uses the KV cache the
    model returns, or feeds the whole sequence again when there is none.
    """
    out: list[list[int]] = []
    device = next(model.parameters()).device
    eos_t = torch.tensor(sorted(eos), device=device)
    for start in range(0, len(prefixes), cfg.batch_size):
        chunk = [list(p) for p in prefixes[start : start + cfg.batch_size]]
        chunk_uniforms = uniforms[start : start + cfg.batch_size].to(device)
        drawn: list[list[int]] = [[] for _ in chunk]
        # Rows whose prefix is already a finished solution draw nothing.
        rows = [i for i, p in enumerate(chunk) if not (p and p[-1] in eos)]
        distinct = list(dict.fromkeys(tuple(chunk[i]) for i in rows))
        if rows:
            width = max(len(p) for p in distinct)
            ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in distinct], device=device)  # left padding
            mask = (torch.arange(width, device=device) >= torch.tensor([width - len(p) for p in distinct],
                                                                        device=device)[:, None]).long()
            res = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                        use_cache=True)
            copy = torch.tensor([distinct.index(tuple(chunk[i])) for i in rows], device=device)
            ids, mask, logits = ids[copy], mask[copy], res.logits[copy, -1]
            name, cache = _kv_cache(res)
            if cache is not None:
                cache.batch_select_indices(copy)
                _make_room(cache, cfg.max_new_tokens)
            new = torch.full((len(rows), 0), pad, device=device, dtype=torch.long)
            open_ = torch.tensor(rows, device=device)  # chunk index of each row still in the batch
            for step in range(cfg.max_new_tokens):
                probs, ids_k = head(logits, cfg)
                u = chunk_uniforms[open_, step, None].to(probs.dtype)
                # The first token whose cumulative probability exceeds u; never one top-p zeroed out.
                pick = torch.minimum(torch.searchsorted(probs.cumsum(-1), u, right=True),
                                     (probs > 0).sum(-1, keepdim=True) - 1)
                nxt = ids_k.gather(-1, pick).squeeze(-1)
                for i, t in zip(open_.tolist(), nxt.tolist()):
                    drawn[i].append(t)
                new = torch.cat([new, nxt[:, None]], dim=1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                going = ~torch.isin(nxt, eos_t)
                if not bool(going.all()):
                    keep = going.nonzero().squeeze(1)
                    open_, nxt, ids, new, mask = open_[keep], nxt[keep], ids[keep], new[keep], mask[keep]
                    if cache is not None:
                        cache.batch_select_indices(keep)
                if not open_.numel() or step == cfg.max_new_tokens - 1:
                    break
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                if cache is None:
                    res = model(input_ids=torch.cat([ids, new], dim=1), attention_mask=mask, position_ids=positions)
                else:
                    res = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions[:, -1:],
                                use_cache=True, **{name: cache})
                    name, cache = _kv_cache(res)
                logits = res.logits[:, -1]
        out += drawn
    return out


# --- estimates ----------------------------------------------------------------------------------------------


@dataclass
class Estimate:
    """Successes among n sampled completions of one prefix; exact for a finished solution (ends in EOS)."""

    successes: int = 0
    n: int = 0
    exact: bool = False

    @property
    def p(self) -> float:
        return self.successes / self.n if self.n else float("nan")

    def bounds(self, z: float) -> tuple[float, float]:
        """Wilson score interval: sound near 0 and 1, where most prefixes of a solution sit."""
        if self.exact:
            return self.p, self.p
        n, p = self.n, self.p
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)


def gap_bounds(a: Estimate, b: Estimate, z: float) -> tuple[float, float]:
    """Bounds on |p_a - p_b| from Newcombe's hybrid score interval for a difference of proportions."""
    (la, ua), (lb, ub) = a.bounds(z), b.bounds(z)
    d = a.p - b.p
    lo = d - math.hypot(a.p - la, ub - b.p)
    hi = d + math.hypot(ua - a.p, b.p - lb)
    if lo >= 0:
        return lo, hi
    if hi <= 0:
        return -hi, -lo
    return 0.0, max(-lo, hi)


def split_point(cum_logp: list[float], start: int, end: int) -> int:
    """Where the segment's cumulative log-probability is halved (ties: nearest the middle); see docs/design.md."""
    half = (cum_logp[start] + cum_logp[end]) / 2
    return min(range(start + 1, end), key=lambda k: (abs(cum_logp[k] - half), abs(2 * k - start - end)))


# --- the search ---------------------------------------------------------------------------------------------


@dataclass
class ProblemResult:
    """What PTS found for one problem; `samples` counts every completion it sampled."""

    index: int
    status: Literal["searched", "skipped", "no_trace"]
    p_success: float
    samples: int
    pivots: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)


def eos_and_pad(tok: PreTrainedTokenizerBase) -> tuple[set[int], int]:
    """The ids that end a reply, and the id that pads a batch (an end id when the tokenizer has no pad)."""
    eos = set(stop_ids(tok))
    return eos, tok.pad_token_id if tok.pad_token_id is not None else min(eos)


@dataclass
class Request:
    """Rows a search needs one sampled completion each of, with the uniforms `sample` draws them by."""

    rows: list[list[int]]
    uniforms: torch.Tensor


T = TypeVar("T")
# A search step: it yields Requests, is sent back the completions (new token ids per row), and returns a T.
Steps = Generator[Request, list[list[int]], T]


class Search:
    """PTS for one problem: cached p(success) estimates over prefixes of the model's own solutions.

    The methods that sample are generators (Steps): a driver (`search_problems`, or `complete` for one search
    alone) samples what they yield and sends the completions back."""

    def __init__(self, model: torch.nn.Module, tok: PreTrainedTokenizerBase, problem: dict, cfg: PTSConfig,
                 check: Callable[[str], bool], seed: int):
        self.model, self.tok, self.cfg, self.check = model, tok, cfg, check
        self.prompt = chat_prompt_ids(tok, problem["prompt"])
        self.eos, self.pad = eos_and_pad(tok)
        self.generator = torch.Generator().manual_seed(seed)
        self.cache: dict[Prefix, Estimate] = {}
        self.samples = 0

    def complete(self, steps: Steps[T]) -> T:
        """Run `steps` alone, sampling each request as it comes; its return value."""
        return next(drive(self.model, self.cfg, self.eos, self.pad, iter([(0, steps)]), 1))[1]

    def rollouts(self, prefixes: list[Prefix]) -> Steps[list[tuple[Prefix, bool]]]:
        """One completion per entry (whole solution ids, oracle verdict); the estimates take them in."""
        uniforms = torch.rand(len(prefixes), self.cfg.max_new_tokens, generator=self.generator)
        outs = yield Request([self.prompt + list(p) for p in prefixes], uniforms)
        self.samples += len(outs)
        done = []
        for p, new in zip(prefixes, outs):
            solution = p + tuple(new)
            ok = self.check(self.text(solution))
            est = self.cache.setdefault(p, Estimate())
            est.n += 1
            est.successes += ok
            done.append((solution, ok))
        return done

    def text(self, solution: Prefix) -> str:
        return self.tok.decode(list(solution), skip_special_tokens=True)

    def estimate(self, prefixes: list[Prefix], target: int) -> Steps[None]:
        """Top every prefix's estimate up to `target` completions, all in one batch."""
        todo: list[Prefix] = []
        for p in dict.fromkeys(prefixes):
            est = self.cache.setdefault(p, Estimate())
            if p and p[-1] in self.eos:  # a finished solution: its verdict is p(success), no sampling
                if not est.exact:
                    est.successes, est.n, est.exact = int(self.check(self.text(p))), 1, True
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
        cum = cumulative_logprobs(self.model, self.prompt, solution)
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
        device = next(self.model.parameters()).device
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([self.prompt + list(prefix)], device=device)).logits[0, -1]
        probs, ids = head(logits, self.cfg)
        others = [t for t, q in zip(ids.tolist(), probs.tolist())
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
        solutions = yield from self.rollouts([()] * cfg.samples)
        p = self.cache[()].p
        if not cfg.min_p <= p <= cfg.max_p:
            return ProblemResult(index, "skipped", p, self.samples)
        traces = {}
        for solution, ok in solutions:
            if solution and solution[-1] in self.eos:
                traces.setdefault("correct" if ok else "incorrect", solution)
        if not traces:
            return ProblemResult(index, "no_trace", p, self.samples)
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


@torch.no_grad()
def cumulative_logprobs(model: torch.nn.Module, prompt: list[int], solution: Prefix) -> list[float]:
    """cum[k] = log p(solution[:k] | prompt) under the model's own (unfiltered) distribution."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt + list(solution)], device=device)
    logp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float(), dim=-1)
    token_logp = logp.gather(-1, torch.tensor(solution, device=device)[:, None]).squeeze(-1)
    return [0.0, *token_logp.cumsum(0).tolist()]


def drive(model: torch.nn.Module, cfg: PTSConfig, eos: set[int], pad: int, steps: Iterator[tuple[int, Steps[T]]],
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
        uniforms = torch.cat([request.uniforms for _, request in running.values()])
        outs = sample(model, rows, cfg, eos, pad, uniforms)
        at = 0
        for key, (gen, request) in list(running.items()):
            mine, at = outs[at : at + len(request.rows)], at + len(request.rows)
            try:
                running[key] = (gen, gen.send(mine))
            except StopIteration as done:
                del running[key]
                yield key, done.value
        yield from start()


def search_problems(model: torch.nn.Module, tok: PreTrainedTokenizerBase, problems: Iterable[tuple[int, dict]],
                    cfg: PTSConfig, check: Callable[[str], bool] | None = None) -> Iterator[ProblemResult]:
    """PTS on (index, problem)s, cfg.concurrent at a time, each result as its search ends (not in order).

    A search's samples depend only on its seed (cfg.seed and the problem's index): the same alone, beside
    other searches, or after a resume. `check` replaces the problems' verifiers (tests)."""

    def searches() -> Iterator[tuple[int, Steps[ProblemResult]]]:
        for index, problem in problems:
            verdict = check or (lambda text, problem=problem: verify(problem, text).ok)
            search = Search(model, tok, problem, cfg, verdict, seed=cfg.seed * 1_000_003 + index)
            yield index, search.problem(index)

    eos, pad = eos_and_pad(tok)
    for _, result in drive(model, cfg, eos, pad, searches(), cfg.concurrent):
        yield result


def search_problem(model: torch.nn.Module, tok: PreTrainedTokenizerBase, problem: dict, cfg: PTSConfig,
                   index: int = 0, check: Callable[[str], bool] | None = None) -> ProblemResult:
    """PTS on one problem (Search.problem, alone)."""
    return next(search_problems(model, tok, [(index, problem)], cfg, check))


# --- the command ---------------------------------------------------------------------------------------------


def read_problems(path: Path) -> list[dict]:
    from phiforge.synth.verify import VERIFIERS

    problems = []
    for i, row in enumerate(read_jsonl(path), 1):
        prompt, answer, verifier = row.get("prompt"), row.get("answer"), row.get("verifier", "numeric")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{path}: row {i}: 'prompt' must be a non-empty string")
        if not isinstance(verifier, str) or verifier not in VERIFIERS:
            raise UserError(f"{path}: row {i}: unknown verifier {verifier!r:.60}; use one of {', '.join(sorted(VERIFIERS))}")
        # bool is an int to Python, but `true` is no answer a verifier can compare with
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
            raise UserError(f"{path}: row {i}: 'answer' must be a non-empty string or a number, got {answer!r:.60}")
        verify(row, "")  # what the verifier itself needs (a code problem's tests) fails here, before any sampling
        problems.append(row)
    if not problems:
        raise UserError(f"{path}: no problems")
    return problems


def problem_key(index: int, problem: dict) -> str:
    blob = json.dumps(problem, sort_keys=True).encode()
    return f"{index:06d}-{hashlib.sha256(blob).hexdigest()[:10]}"


def run_pts(model_dir: Path, problems_path: Path, out: Path, cfg: PTSConfig) -> dict:
    """PTS over a problems file into a pairs file; finished problems are kept in OUT.parts/ and skipped on rerun."""
    from phiforge.model import load_model
    from phiforge.tokenizer import load_tokenizer
    from phiforge.train.loop import pick_device

    problems = read_problems(problems_path)
    parts = out.parent / f"{out.name}.parts"
    # What decides the results; batch_size and concurrent only say how many rows and problems share a batch.
    decisive = {k: v for k, v in asdict(cfg).items() if k not in ("batch_size", "concurrent")}
    settings = {"model": str(model_dir.resolve()), "config": decisive}
    if (parts / "settings.json").is_file():
        if json.loads((parts / "settings.json").read_text()) != json.loads(json.dumps(settings)):
            raise UserError(f"{parts}: holds results of other settings or another model; "
                            f"delete it or choose another --out")
    model = load_model(model_dir).to(pick_device()).eval()
    tok = load_tokenizer(model_dir)
    write_json(parts / "settings.json", settings)  # only once the model loads: a bad --model leaves nothing
    columns = (TextColumn(f"[bold]{bar_label('pts')}[/]"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[pairs]} pairs, {task.fields[samples]:,} samples"), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("pts", total=len(problems), pairs=0, samples=0)
        done: dict[int, ProblemResult] = {}
        for i, problem in enumerate(problems):
            path = parts / f"{problem_key(i, problem)}.json"
            if path.is_file():
                done[i] = ProblemResult(**json.loads(path.read_text()))
        bar.update(task, completed=len(done), pairs=sum(len(r.pairs) for r in done.values()),
                   samples=sum(r.samples for r in done.values()))
        for result in search_problems(model, tok, [(i, p) for i, p in enumerate(problems) if i not in done], cfg):
            write_json(parts / f"{problem_key(result.index, problems[result.index])}.json", asdict(result))
            log.info("pts: problem %d: p(success) %.2f, %s, %d pivots, %d pairs, %d samples", result.index,
                     result.p_success, result.status, len(result.pivots), len(result.pairs), result.samples)
            done[result.index] = result
            bar.update(task, advance=1, pairs=sum(len(r.pairs) for r in done.values()),
                       samples=sum(r.samples for r in done.values()))
        results = [done[i] for i in range(len(problems))]
    pairs = [pair for r in results for pair in r.pairs]
    write_jsonl(out, pairs)
    summary = {
        "problems": len(results),
        "searched": sum(r.status == "searched" for r in results),
        "pivots": sum(len(r.pivots) for r in results),
        "pairs": len(pairs),
        "samples": sum(r.samples for r in results),
    }
    write_json(out.parent / f"{out.stem}.summary.json", summary)
    plot_pivot_positions(results, out.parent / f"{out.stem}.pivots.png")
    return summary


def plot_pivot_positions(results: list[ProblemResult], path: Path) -> None:
    """Histogram of where pivots fall along their solutions (position / solution length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for kind in ("correct", "incorrect"):
        where = [pv["position"] / pv["length"] for r in results for pv in r.pivots if pv["trace"] == kind]
        ax.hist(where, bins=20, range=(0, 1), alpha=0.6, label=f"{kind} solutions ({len(where)})")
    ax.set_xlabel("relative position of the pivotal token in the solution")
    ax.set_ylabel("pivots")
    ax.set_title("Where pivotal tokens fall")
    ax.legend()
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
