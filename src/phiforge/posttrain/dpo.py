"""DPO on the shared training loop: sigmoid loss against a frozen reference, for PTS and full-response pairs.

Pairs come in two shapes (one jsonl may mix them):
- single-token (what `phiforge pts` writes): `prompt_token_ids`, `chosen_token_id`, `rejected_token_id`;
  both tokens are scored from one forward pass of the prompt.
- full-response: `prompt` (the user's message, or a list of chat messages) with `chosen` and `rejected`
  (the assistant's reply, or a message list ending in it), rendered in the Phi-4 chat format.

The reference model's log-probabilities are computed once, before the first step, and stored in
OUT/reference_logps.npy: no second model in memory, and a resumed run uses the same reference.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from phiforge.data.batches import rows_at
from phiforge.errors import UserError
from phiforge.files import read_jsonl, write_json, write_with
from phiforge.posttrain.dpo_config import DPOConfig
from phiforge.train.loss import MicroLoss

if TYPE_CHECKING:
    from phiforge.train.loop import LoopResult

log = logging.getLogger("phiforge")


@dataclass(frozen=True)
class Pair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


# --- reading pairs -----------------------------------------------------------------------------------------


def _messages(value, path: Path, row: int, what: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user" if what == "prompt" else "assistant", "content": value}]
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return value
    raise UserError(f"{path}: row {row}: '{what}' must be a string or a list of {{role, content}} messages")


def _reply_text(tok: PreTrainedTokenizerBase, prompt: list[dict], prompt_text: str, reply: dict) -> str:
    """The reply as the model's own chat template renders it after the prompt: its content and whatever closes a
    turn in that format (<|im_end|> in ChatML, <|eot_id|> in Llama 3, ...)."""
    full = tok.apply_chat_template([*prompt, reply], tokenize=False)
    if full.startswith(prompt_text):
        return full[len(prompt_text):].rstrip("\n")
    # A template that renders a finished turn differently from a generation prompt: content and end of sequence.
    return reply["content"] + (tok.eos_token or "")


def encode_pair(tok: PreTrainedTokenizerBase, row: dict, path: Path, i: int, max_length: int) -> Pair:
    if "prompt_token_ids" in row:
        ids = [row.get("prompt_token_ids"), row.get("chosen_token_id"), row.get("rejected_token_id")]
        # bool is an int to Python; `true` is no token id
        if not (isinstance(ids[0], list) and ids[0]
                and all(isinstance(t, int) and not isinstance(t, bool) for t in [*ids[0], *ids[1:]])):
            raise UserError(f"{path}: row {i}: a token pair needs prompt_token_ids (a non-empty list of integers) "
                            "and integer chosen_token_id and rejected_token_id")
        if not all(0 <= t < len(tok) for t in ids[0] + ids[1:]):
            raise UserError(f"{path}: row {i}: token ids must lie in 0..{len(tok) - 1}, this model's tokenizer; "
                            "pairs must come from this model's tokenizer")
        if ids[1] == ids[2]:
            raise UserError(f"{path}: row {i}: chosen_token_id equals rejected_token_id, a pair that teaches nothing")
        return Pair(ids[0][-(max_length - 1):], [ids[1]], [ids[2]])
    if not all(k in row for k in ("prompt", "chosen", "rejected")):
        raise UserError(f"{path}: row {i} needs prompt, chosen and rejected (or the token fields PTS writes)")
    prompt = _messages(row["prompt"], path, i, "prompt")
    replies = [_messages(row[what], path, i, what)[-1] for what in ("chosen", "rejected")]
    if not all(m["content"].strip() for m in [prompt[-1], *replies]):
        raise UserError(f"{path}: row {i}: prompt, chosen and rejected need text; remove or fill the empty one")
    if replies[0]["content"] == replies[1]["content"]:
        raise UserError(f"{path}: row {i}: chosen equals rejected, a pair that teaches nothing")
    text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    prompt_ids = tok.encode(text, add_special_tokens=False)
    sides = []
    for what, reply in zip(("chosen", "rejected"), replies):
        if reply["role"] != "assistant":
            raise UserError(f"{path}: row {i}: '{what}' must end with an assistant message")
        sides.append(tok.encode(_reply_text(tok, prompt, text, reply), add_special_tokens=False)[: max_length - 1])
    keep = max_length - max(map(len, sides))
    return Pair(prompt_ids[-keep:], sides[0], sides[1])


def read_pairs(path: Path, tok: PreTrainedTokenizerBase, max_length: int) -> list[Pair]:
    pairs = [encode_pair(tok, row, path, i, max_length) for i, row in enumerate(read_jsonl(path), 1)]
    if not pairs:
        raise UserError(f"{path}: no pairs")
    return pairs


# --- log-probabilities and the loss -------------------------------------------------------------------------


def pair_logps(model: torch.nn.Module, pairs: list[Pair], pad: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed log p(response | prompt) of the chosen and the rejected side of each pair, and tokens read.

    Single-token pairs share one row (the prompt); others take a row per side. Log-softmax runs only at the
    positions that are scored, not over the whole (rows, length, vocab) logits.
    """
    rows: list[list[int]] = []
    picks: list[tuple[int, int, int, int, int]] = []  # (row, position, token, pair, side)
    for j, pair in enumerate(pairs):
        if len(pair.chosen) == 1 and len(pair.rejected) == 1:
            rows.append(pair.prompt)
            last = len(pair.prompt) - 1
            picks += [(len(rows) - 1, last, pair.chosen[0], j, 0), (len(rows) - 1, last, pair.rejected[0], j, 1)]
            continue
        for side, response in enumerate((pair.chosen, pair.rejected)):
            rows.append(pair.prompt + response)
            picks += [(len(rows) - 1, len(pair.prompt) - 1 + t, tok, j, side) for t, tok in enumerate(response)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    row, pos, token, j, side = torch.tensor(picks, device=device).unbind(1)
    logp = logits[row, pos].float().log_softmax(-1).gather(-1, token[:, None]).squeeze(-1)
    sums = torch.zeros(len(pairs), 2, device=device, dtype=logp.dtype).index_put((j, side), logp, accumulate=True)
    return sums[:, 0], sums[:, 1], int(mask.sum())


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Per-pair sigmoid DPO loss and the implicit rewards beta * (log pi - log pi_ref) of both sides.

    With label_smoothing e (conservative DPO) the preference is taken as flipped with probability e.
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    losses = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return losses, chosen_reward.detach(), rejected_reward.detach()


@torch.no_grad()
def all_logps(model: torch.nn.Module, pairs: list[Pair], pad: int, cfg: DPOConfig) -> np.ndarray:
    """(pairs, 2) log-probabilities of chosen and rejected under `model`, in eval mode.

    Under the same autocast as training, so the policy starts exactly at the reference (rewards 0).
    """
    from phiforge.train.loop import autocast

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(pairs), cfg.batch_size):
        with autocast(cfg.precision, device):
            chosen, rejected, _ = pair_logps(model, pairs[start : start + cfg.batch_size], pad, device)
        out.append(torch.stack([chosen, rejected], 1).double().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out)


@dataclass
class DPOLoss:
    """The loop's objective: micro-batch `index` of the pairs, scored against the stored reference log-probs."""

    pairs: list[Pair]
    reference: np.ndarray  # (pairs, 2)
    cfg: DPOConfig
    pad: int
    seed: int

    def micro_batch(self, model: torch.nn.Module, index: int, device: torch.device, rank: int = 0,
                    world: int = 1) -> MicroLoss:
        idx = rows_at(len(self.pairs), index, self.cfg.batch_size // world, self.seed, rank, world)
        chosen, rejected, tokens = pair_logps(model, [self.pairs[i] for i in idx], self.pad, device)
        ref = torch.from_numpy(self.reference[idx]).to(device=device, dtype=chosen.dtype)
        losses, rc, rr = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], self.cfg.beta, self.cfg.label_smoothing)
        stats = {"reward_chosen": rc.sum(), "reward_rejected": rr.sum(), "reward_margin": (rc - rr).sum(),
                 "reward_accuracy": (rc > rr).float().sum()}
        return MicroLoss(losses.sum(), len(idx), tokens, stats)

    def val_loss(self, model: torch.nn.Module) -> float | None:
        return None

    @property
    def seq_len(self) -> int:
        return self.cfg.max_length  # rows are at most this long: an upper bound on the attention FLOPs


# --- the command ------------------------------------------------------------------------------------------------


def reference_logps(model: torch.nn.Module, pairs: list[Pair], pad: int, path: Path, cfg: DPOConfig) -> np.ndarray:
    """The reference model's log-probs, computed once and kept at `path` (keyed by a digest of the pairs)."""
    digest = hashlib.sha256(json.dumps([vars(p) for p in pairs]).encode()).hexdigest()[:16]
    key = path.with_suffix(".json")
    if path.is_file() and key.is_file() and json.loads(key.read_text())["pairs_digest"] == digest:
        return np.load(path)
    ref = all_logps(model, pairs, pad, cfg)
    write_with(path, lambda tmp: np.save(tmp, ref))
    write_json(key, {"pairs_digest": digest, "pairs": len(pairs)})
    return ref


def run_dpo(model_dir: Path, pairs_path: Path, out: Path, cfg: DPOConfig, seed: int = 0) -> dict:
    """Train `model_dir` with DPO on `pairs_path`; OUT/model is the HF model, OUT/ keeps checkpoints and metrics.

    Under torchrun every rank trains (FSDP2, each its share of every micro-batch); rank 0 alone computes the
    reference log-probs and, with the trained weights it gets back, the figures after training."""
    from phiforge import distributed
    from phiforge.model import load_model
    from phiforge.tokenizer import add_chatml, load_tokenizer
    from phiforge.train.loop import pick_device, train
    from phiforge.train.optim import LRSchedule

    model = load_model(model_dir)
    tok = load_tokenizer(model_dir)
    # Pairs keep the model's own chat format (DPO must not change how it chats): token pairs (PTS) were sampled in
    # it, text pairs are rendered with its template. Only a tokenizer without a template gets the Phi-4 format.
    text_pairs = any("prompt_token_ids" not in row for row in read_jsonl(pairs_path))
    added = add_chatml(tok, model) if text_pairs and tok.chat_template is None else []
    if added:
        log.info("dpo: added %s to the vocabulary for the Phi-4 chat format", " ".join(added))
    pairs = read_pairs(pairs_path, tok, cfg.max_length)
    cfg = cfg.for_pairs(len(pairs))
    per_step = cfg.batch_size * cfg.grad_accum
    model.to(pick_device())
    pad = tok.pad_token_id
    ref = distributed.on_main("the reference log-probs",
                              lambda: reference_logps(model, pairs, pad, out / "reference_logps.npy", cfg))
    log.info("dpo: %d pairs, %d steps of %d (%.1f passes), beta %g, reference log-probs in %s", len(pairs),
             cfg.steps, per_step, cfg.steps * per_step / len(pairs), cfg.beta, out / "reference_logps.npy")
    result = train(model, cfg, LRSchedule(cfg.lr, cfg), DPOLoss(pairs, ref, cfg, pad, seed), out, "dpo")
    return distributed.on_main("dpo's summary", lambda: summarise(model, tok, pairs, ref, result, out, cfg))


def summarise(model: torch.nn.Module, tok: PreTrainedTokenizerBase, pairs: list[Pair], ref: np.ndarray,
              result: LoopResult, out: Path, cfg: DPOConfig) -> dict:
    """The trained model exported to OUT/model and the margins before and after, in OUT/summary.json."""
    from phiforge.train.export import export_model

    pad, per_step = tok.pad_token_id, cfg.batch_size * cfg.grad_accum
    after = all_logps(model, pairs, pad, cfg)
    export_model(model, tok, out / "model")
    summary = {
        "pairs": len(pairs),
        "steps": result.steps,
        "passes": round(result.steps * per_step / len(pairs), 2),
        "final_loss": result.final_loss,
        # log p(chosen) - log p(rejected), averaged over pairs, before (reference) and after training
        "margin_before": round(float((ref[:, 0] - ref[:, 1]).mean()), 4),
        "margin_after": round(float((after[:, 0] - after[:, 1]).mean()), 4),
        "preferred_before": round(float((ref[:, 0] > ref[:, 1]).mean()), 4),
        "preferred_after": round(float((after[:, 0] > after[:, 1]).mean()), 4),
    }
    write_json(out / "summary.json", summary)
    return summary
