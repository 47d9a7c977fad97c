"""Chat conversations as training examples (data/chat.py)."""

from __future__ import annotations

from phiforge.data.chat import encode_chat
from phiforge.data.layouts import IGNORE


def test_sft_labels_cover_assistant_only(tok):
    messages = [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "7"}]
    ids, labels = encode_chat(tok, messages)
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(ids) == rendered
    learned = tok.decode([i for i, label in zip(ids, labels) if label != IGNORE])
    assert learned == "7<|im_end|>"
