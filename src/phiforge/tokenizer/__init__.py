"""Byte-level BPE trained locally with the Phi-4 special tokens and ChatML chat template."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from phiforge.errors import UserError

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_SEP = "<|im_sep|>"
IM_END = "<|im_end|>"
# Padding gets its own token (Phi-4 pads with a dummy token too): an embedding's padding row stays
# zero and untrained, which must not be the document separator.
PAD = "<|pad|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_SEP, IM_END, PAD]

# Phi-4's chat format: <|im_start|>role<|im_sep|>content<|im_end|>, no separators between turns.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=ENDOFTEXT,
        eos_token=IM_END,  # generation of a chat turn ends here, as in Phi-4
        pad_token=PAD,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 30,
    )


def open_tokenizer(path: Path | str) -> PreTrainedTokenizerBase:
    """The HF tokenizer saved at `path`, as saved; a one-line error where there is none or it does not load."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise UserError(f"{path}: not a tokenizer directory (no tokenizer.json); give a Hugging Face tokenizer path")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: the tokenizer does not load ({e})") from None


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerBase:
    """Any HF tokenizer; one without a chat template gets Phi-4's, one without a pad token pads with EOS."""
    tok = open_tokenizer(path)
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def token_id(tok: PreTrainedTokenizerBase, token: str) -> int | None:
    """The id of `token` if the vocabulary has it as a token of its own, else None."""
    i = tok.convert_tokens_to_ids(token)
    return None if i is None or i == tok.unk_token_id else i


def stop_ids(tok: PreTrainedTokenizerBase) -> list[int]:
    """The tokens that end a chat reply: <|im_end|>, <|endoftext|> and the tokenizer's EOS, those it has."""
    ids = [token_id(tok, IM_END), token_id(tok, ENDOFTEXT), tok.eos_token_id]
    return list(dict.fromkeys(i for i in ids if i is not None))


def pad_id(tok: PreTrainedTokenizerBase) -> int:
    """The id that pads a batch: the tokenizer's pad token, else the first id that ends a reply. Padding is masked
    out or carries no loss, so any id the vocabulary has would do; that one it surely has."""
    return tok.pad_token_id if tok.pad_token_id is not None else stop_ids(tok)[0]


def chat_prompt_ids(tok: PreTrainedTokenizerBase, user: str) -> list[int]:
    """One user turn rendered with the tokenizer's own chat template, up to the start of the assistant's reply."""
    rendered = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    return tok.encode(rendered, add_special_tokens=False)


def missing_chatml(tok: PreTrainedTokenizerBase) -> list[str]:
    return [t for t in (ENDOFTEXT, IM_START, IM_SEP, IM_END) if token_id(tok, t) is None]


def add_chatml(tok: PreTrainedTokenizerBase, model) -> list[str]:
    """Teach any HF causal LM the Phi-4 chat format: add missing specials, grow its embeddings.

    The tokenizer's chat template becomes Phi-4's, so SFT data and later chats render the same way.
    """
    missing = missing_chatml(tok)
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
        if model.get_input_embeddings().num_embeddings < len(tok):
            model.resize_token_embeddings(len(tok), pad_to_multiple_of=64)
    tok.chat_template = CHAT_TEMPLATE
    tok.eos_token = IM_END
    return missing


def document_separator_id(tok: PreTrainedTokenizerBase) -> int:
    """<|endoftext|> between packed documents; a foreign tokenizer without it uses its EOS."""
    found = token_id(tok, ENDOFTEXT)
    return found if found is not None else tok.eos_token_id
