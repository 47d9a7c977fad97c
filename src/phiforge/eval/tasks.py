"""Evaluation tasks. Each takes an EvalInput and returns metrics plus the sample count `n`.

Add a task by writing a function and decorating it with @task("name"); the recipe's eval.tasks
list picks which run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from phiforge.data import passkey, synthetic_math
from phiforge.data.chat import encode_chat
from phiforge.data.documents import tokenize
from phiforge.data.layouts import IGNORE, pack_examples, pack_stream
from phiforge.data.shards import Packed
from phiforge.eval.instructions import instruction_set
from phiforge.eval.simpleqa import graded_replies, heldout_questions, simpleqa_rates
from phiforge.files import read_jsonl
from phiforge.generation.greedy import chat_replies, cut, greedy
from phiforge.recipe import EvalConfig
from phiforge.stats import wilson
from phiforge.tokenizer import IM_END, IM_START, chat_prompt_ids, document_separator_id, pad_id, stop_ids
from phiforge.train.loss import mean_loss


@dataclass
class EvalInput:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    cfg: EvalConfig
    heldout_docs: list[str]  # held-out corpus text for perplexity
    problems: list[dict]  # held-out verified problems: question, answer
    seq_len: int  # the context perplexity is measured at
    seed: int

    @cached_property
    def heldout_ids(self) -> list[list[int]]:
        """The held-out documents in this model's tokens, shared by the tasks that score text."""
        return tokenize(self.tokenizer, self.heldout_docs)

    def greedy(self, prompts: list[list[int]], max_new_tokens: int, stops: list[int]) -> list[str]:
        """generation.greedy with this input's model and batch size."""
        return greedy(self.model, self.tokenizer, prompts, max_new_tokens, stops, self.cfg.batch_size)


TaskFn = Callable[[EvalInput], dict[str, float]]
TASKS: dict[str, TaskFn] = {}


def task(name: str) -> Callable[[TaskFn], TaskFn]:
    def register(fn: TaskFn) -> TaskFn:
        TASKS[name] = fn
        return fn

    return register


@task("perplexity")
def perplexity(inp: EvalInput) -> dict[str, float]:
    """Held-out loss, perplexity and bits per byte, beside the best unigram model of the same text."""
    tok = inp.tokenizer
    ids, chars, tokens = [], 0, 0
    for doc, doc_ids in zip(inp.heldout_docs, inp.heldout_ids):
        ids.append(doc_ids)
        chars += len(doc.encode())
        tokens += len(doc_ids)
        if tokens >= inp.cfg.perplexity_tokens:
            break
    data = pack_stream(ids, inp.seq_len, document_separator_id(tok))
    loss = mean_loss(inp.model, data, inp.cfg.batch_size)
    targets = data.tokens[0][:, 1:].ravel()  # in memory: one shard
    n = len(targets)
    # A unigram fitted on the very text it is scored on: a floor no real unigram model gets under.
    freq = np.bincount(targets) / n
    unigram = float(-(freq[freq > 0] * np.log(freq[freq > 0])).sum())
    bytes_per_token = chars / max(1, tokens)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50)),
        "bits_per_byte": loss / math.log(2) / bytes_per_token,
        "unigram_loss": unigram,
        "n": n,
    }


@task("problems")
def problems(inp: EvalInput) -> dict[str, float]:
    """Greedy accuracy on held-out verified problems, in the pretraining format and as a chat turn."""
    tok = inp.tokenizer
    items = inp.problems[: inp.cfg.max_problems]
    stops = stop_ids(tok)
    completion = inp.greedy([tok.encode(f"Problem: {p['question']}\nSolution:", add_special_tokens=False) for p in items],
                            40, stops)
    chat = inp.greedy([chat_prompt_ids(tok, p["question"]) for p in items], 40, stops)

    def correct(reply: str, answer: str, completion_format: bool) -> bool:
        reply = cut(reply, "\n\n", "Problem:", IM_END, IM_START)
        if completion_format and "Answer:" in reply:
            reply = reply.split("Answer:")[1].split("\n")[0]
        return synthetic_math.extract_answer(reply) == answer

    n = len(items)
    return {
        "solution_loss": _solution_loss(inp, items),
        "accuracy_completion": sum(correct(r, p["answer"], True) for r, p in zip(completion, items)) / max(1, n),
        "accuracy_chat": sum(correct(r, p["answer"], False) for r, p in zip(chat, items)) / max(1, n),
        "n": n,
    }


def _solution_loss(inp: EvalInput, items: list[dict]) -> float:
    """Mean loss of the reference chat answer (worked steps and answer): how close the model is, not just hit or miss."""
    tok = inp.tokenizer
    convs = [synthetic_math.Problem(p["key"], p["family"], p["question"], p["steps"], p["answer"]).as_messages()
             for p in items]
    packed = pack_examples([encode_chat(tok, c) for c in convs], inp.seq_len, pad_id(tok))
    return mean_loss(inp.model, packed, inp.cfg.batch_size)


@task("long_context")
def long_context(inp: EvalInput) -> dict[str, float]:
    """Held-out loss on the far half of windows of several lengths: what a longer context buys.

    A model trained at 256 tokens degrades past 256 positions; midtraining at 4x should not.
    """
    tok, ids = inp.tokenizer, inp.heldout_ids
    out: dict[str, float] = {}
    rows = 0
    for length in inp.cfg.passkey_lengths:
        tokens = pack_stream(ids, length, document_separator_id(tok)).tokens[0]  # in memory: one shard
        tokens = tokens[: max(1, inp.cfg.perplexity_tokens // length)]
        labels = tokens.astype(np.int64)
        labels[:, : length // 2 + 1] = IGNORE  # score only positions in the second half of the window
        out[f"loss@{length}"] = mean_loss(inp.model, Packed([tokens], [labels]), inp.cfg.batch_size)
        rows += len(tokens)
    out["n"] = rows
    return out


@task("passkey")
def passkey_retrieval(inp: EvalInput) -> dict[str, float]:
    """Find a 5-digit key hidden at a random depth in filler text of several lengths (in tokens)."""
    tok = inp.tokenizer
    rng = random.Random(inp.seed)
    per_filler = len(tok.encode(passkey.FILLER * 20, add_special_tokens=False)) / 20
    base = len(tok.encode(passkey.passkey_text(12345, 0, 0), add_special_tokens=False))
    out: dict[str, float] = {}
    for length in inp.cfg.passkey_lengths:
        fillers = max(0, round((length - base) / per_filler))
        prompts, keys = [], []
        for _ in range(inp.cfg.passkey_trials):
            key = rng.randint(10000, 99999)
            before = rng.randint(0, fillers)
            prompts.append(tok.encode(passkey.passkey_text(key, before, fillers - before), add_special_tokens=False))
            keys.append(str(key))
        replies = inp.greedy(prompts, 6, stop_ids(tok))
        hits = sum(synthetic_math.extract_answer(r.split(".")[0] or "x") == k for r, k in zip(replies, keys))
        out[f"acc@{length}"] = hits / len(keys)
    out["n"] = inp.cfg.passkey_trials * len(inp.cfg.passkey_lengths)
    return out


CHAT_PROBES = [
    "Hello! Who are you?",
    "What is 2 + 2?",
    "Write a Python function that adds two numbers.",
    "Name a color.",
    "Solve for x: 2x + 3 = 7.",
    "Say something short.",
    "What number comes after 41?",
    "Give me one word.",
]


@task("chat_format")
def chat_format(inp: EvalInput) -> dict[str, float]:
    """Share of chat replies that are non-empty, end with a stop token (<|im_end|>) and open no new turn."""
    tok = inp.tokenizer
    stops = stop_ids(tok)
    ends = tok.convert_ids_to_tokens(stops)
    replies = inp.greedy([chat_prompt_ids(tok, q) for q in CHAT_PROBES], 64, stops)

    def well_formed(reply: str) -> bool:
        body = cut(reply, *ends)
        return any(e in reply for e in ends) and body.strip() != "" and IM_START not in body

    return {"well_formed": sum(map(well_formed, replies)) / len(replies), "n": len(replies)}


@task("instructions")
def instructions(inp: EvalInput) -> dict[str, float]:
    """IFEval-style: the share of prompts whose verifiable format constraint the greedy chat reply meets."""
    items = instruction_set(inp.cfg.instruction_prompts, inp.seed)
    replies = chat_replies(inp.model, inp.tokenizer, [prompt for prompt, _ in items], 96, inp.cfg.batch_size)
    followed = [inst.check(reply) for (_, inst), reply in zip(items, replies)]
    low, high = wilson(sum(followed), len(followed))
    return {"followed": sum(followed) / len(followed), "ci95_low": low, "ci95_high": high, "n": len(followed)}


def load_problems(path: Path) -> list[dict]:
    return list(read_jsonl(path))


@task("simpleqa")
def simpleqa(inp: EvalInput) -> dict[str, float]:
    """SimpleQA's grades of greedy chat answers to held-out facts (eval.qa, else generated held-out facts), and the
    share of made-up-entity questions the model declines."""
    questions = heldout_questions(inp.cfg.qa, inp.cfg.max_problems, inp.cfg.bogus_questions, inp.seed)
    return simpleqa_rates(graded_replies(inp.model, inp.tokenizer, questions, inp.cfg.batch_size))
