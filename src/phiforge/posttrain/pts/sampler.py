"""PTS's samplers: what a search asks of a model (sampled completions, log-probs along a solution, the next
token's head), and the in-process one on an HF causal LM, a batch sharing each distinct prefix's KV cache.
vLLM's is in vllm_sampler; `pts.sampler` chooses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from phiforge.posttrain.pts.config import PTSConfig
from phiforge.tokenizer import pad_id, stop_ids


class Sampler(Protocol):
    def complete(self, rows: Sequence[list[int]], seeds: Sequence[int], budgets: Sequence[int],
                 cfg: PTSConfig) -> list[list[int]]:
        """One sampled continuation (new token ids, EOS included, at most budgets[i] of them) per row, none for a
        row that already ends in EOS. Row i's draws depend on seeds[i] alone, not on the other rows beside it."""

    def token_logprobs(self, prompt: list[int], solution: Sequence[int]) -> list[float]:
        """log p(solution[k] | prompt + solution[:k]) for every k, under the model's unfiltered distribution."""

    def next_tokens(self, ids: list[int], cfg: PTSConfig) -> list[tuple[int, float]]:
        """The tokens the sampler can draw after `ids`, most likely first, with their probabilities after
        temperature, top-k and top-p."""


def eos_and_pad(tok: PreTrainedTokenizerBase) -> tuple[set[int], int]:
    """The ids that end a reply, and the id that pads a batch."""
    return set(stop_ids(tok)), pad_id(tok)


def seeded_uniforms(seeds: Sequence[int], steps: int) -> torch.Tensor:
    """(rows, steps) uniforms in [0, 1), row i from its own generator seeded with seeds[i]."""
    return torch.stack([torch.rand(steps, generator=torch.Generator().manual_seed(s)) for s in seeds]) \
        if seeds else torch.empty(0, steps)


class HFSampler:
    """PTS's sampler on an HF causal LM (or any module with its call signature) in this process."""

    def __init__(self, model: torch.nn.Module, tok: PreTrainedTokenizerBase):
        self.model = model
        self.eos, self.pad = eos_and_pad(tok)
        self.device = next(model.parameters()).device

    def complete(self, rows: Sequence[list[int]], seeds: Sequence[int], budgets: Sequence[int],
                 cfg: PTSConfig) -> list[list[int]]:
        # a generator's first k uniforms do not depend on how many it is asked for: a row's draws on its seed alone
        return sample(self.model, rows, cfg, self.eos, self.pad, seeded_uniforms(seeds, max(budgets, default=0)),
                      budgets)

    @torch.no_grad()
    def token_logprobs(self, prompt: list[int], solution: Sequence[int]) -> list[float]:
        ids = torch.tensor([prompt + list(solution)], device=self.device)
        logp = torch.log_softmax(self.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float(), dim=-1)
        return logp.gather(-1, torch.tensor(list(solution), device=self.device)[:, None]).squeeze(-1).tolist()

    @torch.no_grad()
    def next_tokens(self, ids: list[int], cfg: PTSConfig) -> list[tuple[int, float]]:
        probs, tokens = head(self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0, -1], cfg)
        return list(zip(tokens.tolist(), probs.tolist()))


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
           uniforms: torch.Tensor, budgets: Sequence[int] | None = None) -> list[list[int]]:
    """One sampled continuation (new tokens, EOS included) per prefix, in batches of cfg.batch_size; row i draws
    at most budgets[i] tokens (default: as many as it has uniforms).

    Row i draws its token at step t by inverting the filtered distribution's CDF at uniforms[i, t]
    ((prefixes, steps), in [0, 1)): what a row draws depends on its own numbers only, not on which
    other rows share its batch, so a search gives the same samples alone or beside other searches.

    PTS samples each prefix many times: a batch reads every distinct prefix once and shares its KV cache
    among the rows that continue it, and rows leave the batch at EOS, so each step costs only the open rows.
    Works with any module taking HF causal-LM arguments and returning `.logits`: it uses the KV cache the
    model returns, or feeds the whole sequence again when there is none.
    """
    out: list[list[int]] = []
    device = next(model.parameters()).device
    budgets = torch.tensor(list(budgets) if budgets is not None else [uniforms.shape[1]] * len(prefixes),
                           dtype=torch.long)
    eos_t = torch.tensor(sorted(eos), device=device)
    for start in range(0, len(prefixes), cfg.batch_size):
        chunk = [list(p) for p in prefixes[start : start + cfg.batch_size]]
        chunk_uniforms = uniforms[start : start + cfg.batch_size].to(device)
        chunk_budgets = budgets[start : start + cfg.batch_size].to(device)
        drawn: list[list[int]] = [[] for _ in chunk]
        # Rows whose prefix is already a finished solution, or with no budget, draw nothing.
        rows = [i for i, p in enumerate(chunk) if not (p and p[-1] in eos) and chunk_budgets[i] > 0]
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
            steps = int(chunk_budgets[rows].max())
            if cache is not None:
                cache.batch_select_indices(copy)
                _make_room(cache, steps)
            new = torch.full((len(rows), 0), pad, device=device, dtype=torch.long)
            open_ = torch.tensor(rows, device=device)  # chunk index of each row still in the batch
            for step in range(steps):
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
                going = ~torch.isin(nxt, eos_t) & (chunk_budgets[open_] > step + 1)
                if not bool(going.all()):
                    keep = going.nonzero().squeeze(1)
                    open_, nxt, ids, new, mask = open_[keep], nxt[keep], ids[keep], new[keep], mask[keep]
                    if cache is not None:
                        cache.batch_select_indices(keep)
                if not open_.numel():
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

