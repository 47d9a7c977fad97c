"""Teacher run in-process by vLLM's offline engine (GPU machines; `pip install 'phiforge[vllm]'`)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from phiforge.errors import UserError
from phiforge.generation.base import Messages, Sampling, expand, matches_choice, regroup


class VLLMBackend:
    """`vllm.LLM(model=...).chat`, one SamplingParams per sample so sample i uses seed + i as everywhere else."""

    def __init__(self, model: str, **llm_kwargs: Any) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise UserError("teacher backend 'vllm' needs vllm: pip install 'phiforge[vllm]' (Linux with a GPU)") from None
        from phiforge.generation.hf import SMOLLM2, smollm2_dir

        # the embedded teacher goes by the same name as under the hf backend, so their caches agree
        self.model = "SmolLM2-135M-Instruct" if model == SMOLLM2 else model
        self.llm = LLM(model=str(smollm2_dir()) if model == SMOLLM2 else model, **llm_kwargs)

    def chat(self, conversations: Sequence[Messages], sampling: Sampling, n: int = 1) -> list[list[str]]:
        from vllm import SamplingParams

        requests = expand(conversations, sampling, n)
        params = [
            SamplingParams(
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k if s.top_k > 0 else -1,  # -1: no cut, in every vLLM version
                max_tokens=s.max_tokens,
                seed=s.seed,
            )
            for _, s in requests
        ]
        outputs = self.llm.chat([messages for messages, _ in requests], params, use_tqdm=True)
        return regroup([o.outputs[0].text for o in outputs], n)

    def choice_probs(self, conversations: Sequence[Messages], choices: Sequence[str]) -> list[dict[str, float]]:
        """The first reply token's 20 most likely tokens (one token generated), summed per choice."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=20)
        outputs = self.llm.chat([list(c) for c in conversations], params, use_tqdm=True)
        results = []
        for o in outputs:
            probs = dict.fromkeys(choices, 0.0)
            for lp in o.outputs[0].logprobs[0].values():  # token id -> Logprob(logprob, rank, decoded_token)
                if (c := matches_choice(lp.decoded_token or "", choices)) is not None:
                    probs[c] += math.exp(lp.logprob)
            results.append(probs)
        return results
