"""Did post-training help? Two models on the same held-out problems: greedy accuracy with Wilson 95%
intervals, and McNemar's exact test on the problems where they disagree (a paired test: both models
answer the same questions, so only the discordant ones carry evidence)."""

from __future__ import annotations

from pathlib import Path

import torch

from phiforge.stats import accuracy, mcnemar_exact
from phiforge.synth.verify import verify


@torch.no_grad()
def greedy_replies(model_dir: Path, problems: list[dict], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy chat replies of the model in `model_dir` to each problem's prompt (the format PTS searched with)."""
    from phiforge.generation.greedy import chat_replies
    from phiforge.model import load_model
    from phiforge.tokenizer import load_tokenizer
    from phiforge.train.loop import pick_device

    model, tok = load_model(model_dir).to(pick_device()).eval(), load_tokenizer(model_dir)
    return chat_replies(model, tok, [p["prompt"] for p in problems], max_new_tokens, batch_size)


def compare(before: Path, after: Path, problems: list[dict], max_new_tokens: int, batch_size: int) -> tuple[dict, list[dict]]:
    """Summary (accuracies, intervals, McNemar) and one row per problem with both replies."""
    replies = {name: greedy_replies(path, problems, max_new_tokens, batch_size) for name, path in
               (("before", before), ("after", after))}
    ok = {name: [verify(p, r).ok for p, r in zip(problems, rs)] for name, rs in replies.items()}
    summary = {"before": accuracy(ok["before"]), "after": accuracy(ok["after"]),
               "mcnemar": mcnemar_exact(ok["before"], ok["after"])}
    rows = [{"prompt": p["prompt"], "answer": p["answer"], "before": rb, "after": ra, "before_ok": ob, "after_ok": oa}
            for p, rb, ra, ob, oa in zip(problems, replies["before"], replies["after"], ok["before"], ok["after"])]
    return summary, rows
