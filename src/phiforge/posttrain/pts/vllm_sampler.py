"""PTS's samplers on vLLM: its offline engine in this process (`pts.sampler: vllm`) and its OpenAI-compatible
server (`pts.sampler: server`). Both make the same requests: every run of equal rows is one request of n samples,
and the prefixes PTS samples again and again are read once and then served from vLLM's prefix cache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from phiforge.errors import UserError
from phiforge.generation.openai import OpenAIBackend
from phiforge.generation.vllm import TOP_LOGPROBS, offline_engine
from phiforge.posttrain.pts.config import PTSConfig
from phiforge.posttrain.pts.sampler import eos_and_pad, head


def top_logprobs(tok: PreTrainedTokenizerBase, cfg: PTSConfig) -> int:
    """How many of the next token's log-probs to ask for: as many as top-k draws among (20 with no top-k: the
    alternatives PTS tries are among the few most likely anyway)."""
    return min(cfg.top_k or TOP_LOGPROBS, len(tok))


def seed_runs(rows: Sequence[list[int]], seeds: Sequence[int], budgets: Sequence[int], eos: set[int]):
    """The requests for these rows: vLLM gives the k-th of n samples seed + k, so a run of equal rows with
    equal budgets and consecutive seeds is one request. (runs as (row, first seed, n, budget), those that
    sample: a finished solution, or a row without budget, draws nothing)."""
    runs: list[tuple[list[int], int, int, int]] = []
    for row, seed, budget in zip(rows, seeds, budgets):
        if runs and runs[-1][0] == row and runs[-1][1] + runs[-1][2] == seed and runs[-1][3] == budget:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1, budget)
        else:
            runs.append((list(row), seed, 1, budget))
    return runs, [r for r in runs if not draws_nothing(r, eos)]


def draws_nothing(run, eos: set[int]) -> bool:
    row, _, _, budget = run
    return bool(row and row[-1] in eos) or budget <= 0


def spread(runs, eos: set[int], sampled) -> list[list[int]]:
    """One continuation per row again: each sampling run's n from `sampled` (in order), none for a finished row."""
    sampled = iter(sampled)
    out: list[list[int]] = []
    for run in runs:
        out += [[] for _ in range(run[2])] if draws_nothing(run, eos) else next(sampled)
    return out


def heads(cfg: PTSConfig, logprobs: dict[int, float]) -> list[tuple[int, float]]:
    """next_tokens' answer from the next token's top log-probs (token id -> log-prob)."""
    tokens = list(logprobs)
    # log-probs differ from logits by a constant, which temperature, top-k and top-p do not see
    probs, order = head(torch.tensor([logprobs[t] for t in tokens]), cfg)
    return [(tokens[j], q) for j, q in zip(order.tolist(), probs.tolist())]


class VLLMSampler:
    def __init__(self, llm, tok: PreTrainedTokenizerBase, cfg: PTSConfig):
        """On `llm`, a vllm.LLM allowing at least top_logprobs(tok, cfg) log-probs per token."""
        self.llm = llm
        self.eos, _ = eos_and_pad(tok)
        self.top = top_logprobs(tok, cfg)

    @classmethod
    def load(cls, model_dir: Path, tok: PreTrainedTokenizerBase, cfg: PTSConfig) -> "VLLMSampler":
        if not (Path(model_dir) / "config.json").is_file():
            raise UserError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
        # (on CPU chunked prefill is off, as engine_settings says: a seeded request must be prefilled whole)
        llm = offline_engine(str(model_dir), "pts.sampler 'vllm'", enable_prefix_caching=True,
                             max_logprobs=max(top_logprobs(tok, cfg), TOP_LOGPROBS), disable_log_stats=False)
        return cls(llm, tok, cfg)

    def params(self, **settings):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY, **settings)

    def generate(self, prompts: list[list[int]], params: list) -> list:
        return self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)

    def complete(self, rows: Sequence[list[int]], seeds: Sequence[int], budgets: Sequence[int],
                 cfg: PTSConfig) -> list[list[int]]:
        runs, todo = seed_runs(rows, seeds, budgets, self.eos)
        outputs = self.generate(
            [row for row, _, _, _ in todo],
            [self.params(n=n, seed=seed, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or -1,
                         max_tokens=budget, stop_token_ids=sorted(self.eos)) for _, seed, n, budget in todo])
        return spread(runs, self.eos, ([list(c.token_ids) for c in sorted(o.outputs, key=lambda c: c.index)]
                                       for o in outputs))

    def token_logprobs(self, prompt: list[int], solution: Sequence[int]) -> list[float]:
        (output,) = self.generate([prompt + list(solution)], [self.params(max_tokens=1, prompt_logprobs=0)])
        ids = prompt + list(solution)
        return [output.prompt_logprobs[k][ids[k]].logprob for k in range(len(prompt), len(ids))]

    def next_tokens(self, ids: list[int], cfg: PTSConfig) -> list[tuple[int, float]]:
        (output,) = self.generate([ids], [self.params(max_tokens=1, temperature=0.0, logprobs=self.top)])
        top = output.outputs[0].logprobs[0]  # token id -> Logprob, the unfiltered distribution's
        return heads(cfg, {t: lp.logprob for t, lp in top.items()})

    def prefix_cache_hit_rate(self) -> float | None:
        """Prompt tokens served from vLLM's prefix cache over all prompt tokens looked up, so far."""
        counters = {m.name: m.value for m in self.llm.get_metrics() if hasattr(m, "value")}
        queries = counters.get("vllm:prefix_cache_queries")
        return counters.get("vllm:prefix_cache_hits", 0) / queries if queries else None


class VLLMServerSampler:
    """VLLMSampler's requests as POSTs to a vLLM server's /v1/completions, with token-id prompts and vLLM's
    extensions to the API (token ids back, prompt log-probs), retried as the openai teacher backend retries.
    The server must serve the model searched: the tokenizer here makes the token ids it reads."""

    IN_FLIGHT = 64  # requests at once: the server batches what is in flight, up to its own limits

    def __init__(self, base_url: str, served_model: str | None, tok: PreTrainedTokenizerBase, cfg: PTSConfig):
        self.eos, _ = eos_and_pad(tok)
        self.top = top_logprobs(tok, cfg)
        # a generation on a busy CPU server can take minutes; a dead one is retried, then named
        self.api = OpenAIBackend(base_url, served_model or "", concurrency=self.IN_FLIGHT, timeout_s=600)
        self.url = self.api.endpoint + "/completions"
        self.api.model = served_model or self.only_model()

    def only_model(self) -> str:
        """The name of the one model the server serves (GET /models)."""
        import httpx2 as httpx

        models = self.api.endpoint + "/models"
        try:
            r = httpx.get(models, headers=self.api.headers(), auth=self.api.auth, timeout=30)
            names = [m["id"] for m in r.json()["data"]]
        except httpx.TransportError as e:
            raise UserError(f"{models}: no answer ({type(e).__name__}); start the server (phiforge serve MODEL) "
                            "or check base_url") from None
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{models}: HTTP {r.status_code}, not a model list; check base_url (it usually ends "
                            "in /v1)") from None
        if len(names) != 1:
            raise UserError(f"{models}: serves {len(names)} models ({', '.join(names)}); choose one with served_model")
        return names[0]

    def post(self, bodies: list[dict], read) -> list:
        bodies = [{"model": self.api.model, **b} for b in bodies]
        return self.api.run(bodies, lambda answer: self.read(answer, read), url=self.url, show_progress=False)

    def read(self, answer: dict, read):
        """read(answer), or one line saying the server is not vLLM's (another server lacks its extensions)."""
        try:
            return read(answer)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise UserError(f"{self.url}: the answer lacks vLLM's token ids or log-probs; pts.sampler 'server' needs "
                            "a vLLM server (phiforge serve) for the model searched") from None

    def complete(self, rows: Sequence[list[int]], seeds: Sequence[int], budgets: Sequence[int],
                 cfg: PTSConfig) -> list[list[int]]:
        runs, todo = seed_runs(rows, seeds, budgets, self.eos)
        bodies = [{"prompt": row, "n": n, "seed": seed, "temperature": cfg.temperature, "top_p": cfg.top_p,
                   "top_k": cfg.top_k or -1, "max_tokens": budget, "stop_token_ids": sorted(self.eos),
                   "return_token_ids": True} for row, seed, n, budget in todo]

        def token_ids(answer: dict) -> list[list[int]]:
            return [[int(t) for t in c["token_ids"]] for c in sorted(answer["choices"], key=lambda c: c["index"])]

        return spread(runs, self.eos, self.post(bodies, token_ids))

    def token_logprobs(self, prompt: list[int], solution: Sequence[int]) -> list[float]:
        ids = prompt + list(solution)

        def logprobs(answer: dict) -> list[float]:
            given = answer["choices"][0]["prompt_logprobs"]  # per position: {token id: {logprob, ...}}
            return [float(given[k][str(ids[k])]["logprob"]) for k in range(len(prompt), len(ids))]

        return self.post([{"prompt": ids, "max_tokens": 1, "prompt_logprobs": 0}], logprobs)[0]

    def next_tokens(self, ids: list[int], cfg: PTSConfig) -> list[tuple[int, float]]:
        def top(answer: dict) -> dict[int, float]:
            first = answer["choices"][0]["logprobs"]["top_logprobs"][0]  # {"token_id:N": log-prob}
            return {int(t.removeprefix("token_id:")): float(lp) for t, lp in first.items()}

        body = {"prompt": ids, "max_tokens": 1, "temperature": 0.0, "logprobs": self.top,
                "return_tokens_as_token_ids": True}
        return heads(cfg, self.post([body], top)[0])
