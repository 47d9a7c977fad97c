"""PTS's sampler on vLLM's offline engine (`pts.sampler: vllm`): every run of equal rows is one request of n
samples, and the prefixes PTS samples again and again are read once and then served from vLLM's prefix cache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from phiforge.errors import UserError
from phiforge.generation.vllm import TOP_LOGPROBS, offline_engine
from phiforge.posttrain.pts.config import PTSConfig
from phiforge.posttrain.pts.sampler import eos_and_pad, head


class VLLMSampler:
    def __init__(self, model_dir: Path, tok: PreTrainedTokenizerBase, cfg: PTSConfig):
        if not (Path(model_dir) / "config.json").is_file():
            raise UserError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
        self.eos, _ = eos_and_pad(tok)
        # The next token's head comes from vLLM's top log-probs: as many as top-k draws among (20 with no top-k:
        # the alternatives PTS tries are among the few most likely anyway).
        self.top = min(cfg.top_k or TOP_LOGPROBS, len(tok))
        self.llm = offline_engine(
            str(model_dir), "pts.sampler 'vllm'", enable_prefix_caching=True, max_logprobs=max(self.top, TOP_LOGPROBS),
            # A seeded request's draws depend on its seed alone only without chunked prefill: on CPU vLLM cannot
            # rewind a seeded generator after a partial prefill step.
            enable_chunked_prefill=False, disable_log_stats=False)

    def params(self, **settings):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY, **settings)

    def generate(self, prompts: list[list[int]], params: list) -> list:
        return self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)

    def complete(self, rows: Sequence[list[int]], seeds: Sequence[int], cfg: PTSConfig) -> list[list[int]]:
        # vLLM gives the k-th of n samples seed + k: a run of equal rows with consecutive seeds is one request.
        runs: list[tuple[list[int], int, int]] = []  # (row, first seed, n)
        for i, (row, seed) in enumerate(zip(rows, seeds)):
            if runs and runs[-1][0] == row and runs[-1][1] + runs[-1][2] == seed:
                runs[-1] = (row, runs[-1][1], runs[-1][2] + 1)
            else:
                runs.append((list(row), seed, 1))
        todo = [r for r in runs if not (r[0] and r[0][-1] in self.eos)]  # a finished solution draws nothing
        outputs = iter(self.generate(
            [row for row, _, _ in todo],
            [self.params(n=n, seed=seed, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or -1,
                         max_tokens=cfg.max_new_tokens, stop_token_ids=sorted(self.eos)) for _, seed, n in todo]))
        out: list[list[int]] = []
        for row, _, n in runs:
            if row and row[-1] in self.eos:
                out += [[] for _ in range(n)]
            else:
                samples = sorted(next(outputs).outputs, key=lambda c: c.index)
                out += [list(c.token_ids) for c in samples]
        return out

    def token_logprobs(self, prompt: list[int], solution: Sequence[int]) -> list[float]:
        (output,) = self.generate([prompt + list(solution)], [self.params(max_tokens=1, prompt_logprobs=0)])
        ids = prompt + list(solution)
        return [output.prompt_logprobs[k][ids[k]].logprob for k in range(len(prompt), len(ids))]

    def next_tokens(self, ids: list[int], cfg: PTSConfig) -> list[tuple[int, float]]:
        (output,) = self.generate([ids], [self.params(max_tokens=1, temperature=0.0, logprobs=self.top)])
        top = output.outputs[0].logprobs[0]  # token id -> Logprob, the unfiltered distribution's
        tokens = list(top)
        # log-probs differ from logits by a constant, which temperature, top-k and top-p do not see
        probs, order = head(torch.tensor([top[t].logprob for t in tokens]), cfg)
        return [(tokens[j], q) for j, q in zip(order.tolist(), probs.tolist())]

    def prefix_cache_hit_rate(self) -> float | None:
        """Prompt tokens served from vLLM's prefix cache over all prompt tokens looked up, so far."""
        counters = {m.name: m.value for m in self.llm.get_metrics() if hasattr(m, "value")}
        queries = counters.get("vllm:prefix_cache_queries")
        return counters.get("vllm:prefix_cache_hits", 0) / queries if queries else None

