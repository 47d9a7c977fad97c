"""Pivotal Token Search on models whose pivots are known: the planted table and a tiny trained HF model."""

from __future__ import annotations

import json
import pytest
import torch
from transformers import AutoModelForCausalLM

from phiforge.generation.fake_server import FakeOpenAIServer
from phiforge.model import build_model, phi3_config
from phiforge.posttrain.pts.config import PTSConfig
from phiforge.posttrain.pts.estimates import Estimate, gap_bounds, split_point
from phiforge.posttrain.pts.sampler import HFSampler, sample
from phiforge.posttrain.pts.search import search_problem, search_problems

from conftest import phiforge
from planted import PlantedLM, planted_tokenizer, train_planted_hf

PROBLEM = {"prompt": "Q", "answer": "7", "verifier": "numeric"}


@pytest.mark.parametrize("mode", ["adaptive", "fixed"])
def test_finds_exactly_the_planted_pivot(mode):
    tok = planted_tokenizer()
    # Fillers before and after the pivot are random too: sampling noise must not make them pivotal.
    cfg = PTSConfig(mode=mode, samples=200, round_size=25, max_new_tokens=16)
    result = search_problem(HFSampler(PlantedLM(tok, pivot=4, length=12), tok), tok, PROBLEM, cfg)
    assert result.status == "searched"
    assert sorted((pv["trace"], pv["position"]) for pv in result.pivots) == [("correct", 4), ("incorrect", 4)]
    assert len(result.pairs) == 2
    for pair in result.pairs:
        assert (pair["chosen"], pair["rejected"]) == ("7", "3")
        assert (pair["p_chosen"], pair["p_rejected"]) == (1.0, 0.0)
        assert 0.3 < pair["p_before"] < 0.7
        assert pair["prompt_token_ids"] == tok(pair["prompt"], add_special_tokens=False)["input_ids"]
    assert result.samples >= sum(p["samples"] for p in result.pairs) / 2  # all completions are counted


def test_adaptive_spends_fewer_samples_than_fixed_for_the_same_pivots():
    tok = planted_tokenizer()
    model = PlantedLM(tok, pivot=3, length=24)
    runs = {m: search_problem(HFSampler(model, tok), tok, PROBLEM, PTSConfig(mode=m, max_new_tokens=32))
            for m in ("adaptive", "fixed")}
    positions = {mode: [pv["position"] for pv in run.pivots] for mode, run in runs.items()}
    assert positions == {"adaptive": [3, 3], "fixed": [3, 3]}
    assert runs["adaptive"].samples < runs["fixed"].samples


def test_reuse_finds_the_same_pivots_for_fewer_completions():
    tok = planted_tokenizer()
    model = PlantedLM(tok, pivot=3, length=24)
    runs = {reuse: search_problem(HFSampler(model, tok), tok, PROBLEM, PTSConfig(reuse=reuse, max_new_tokens=32))
            for reuse in (True, False)}
    assert [[pv["position"] for pv in run.pivots] for run in runs.values()] == [[3, 3], [3, 3]]
    assert [len(run.pairs) for run in runs.values()] == [2, 2]
    assert runs[True].samples < runs[False].samples * 0.8


def test_a_reused_completion_counts_as_a_completion_of_the_longer_prefix_would():
    """A completion of p that passed through a longer prefix q is judged on its first max_new_tokens after q, as
    one drawn from q would be. The oracle here counts words: a completion of q (6 new tokens at most) succeeds
    exactly when q has 3 or more, so p(success | q) is 0 or 1, and any other cut of a reused completion shows."""
    from phiforge.posttrain.pts.search import Search

    tok = planted_tokenizer()
    model = PlantedLM(tok, pivot=4, length=12)
    cfg = PTSConfig(max_new_tokens=6)
    trace = tuple(tok.convert_tokens_to_ids("x y x y 7 x y x y x y".split() + ["<|im_end|>"]))
    search = Search(HFSampler(model, tok), tok, PROBLEM, cfg, lambda text: len(text.split()) >= 9, seed=0)
    search.traces.append(trace)
    search.complete(search.estimate([()], 400))
    assert search.samples == 400 and search.cache[()].p == 0.0  # judged on its own 6 new tokens, not 12
    for m, p in [(1, 0.0), (2, 0.0), (3, 1.0), (4, 1.0), (5, 1.0)]:
        est = search.estimate_of(trace[:m])
        assert 0 < est.n < 400 and est.p == p, (m, est)
    credited = search.estimate_of(trace[:2]).n  # about 400 / 4: the completions that drew x y
    search.complete(search.estimate([trace[:2]], 200))
    assert search.samples == 400 + 200 - credited and search.estimate_of(trace[:2]).p == 0.0
    # Completions drawn without room past 6 new tokens (no searched solution yet), or without reuse, count only
    # for their own prefix.
    for reuse, traces in [(True, []), (False, [trace])]:
        other = Search(HFSampler(model, tok), tok, PROBLEM, cfg.model_copy(update={"reuse": reuse}),
                       lambda text: True, seed=0)
        other.traces += traces
        other.complete(other.estimate([()], 20))
        assert other.estimate_of(trace[:2]).n == 0


@pytest.mark.parametrize("always", [True, False])
def test_an_oracle_that_never_changes_its_mind_yields_no_pairs(always):
    tok = planted_tokenizer()
    cfg = PTSConfig(min_p=0.0, max_p=1.0, max_new_tokens=16)  # search even a question that is always right/wrong
    result = search_problem(HFSampler(PlantedLM(tok), tok), tok, PROBLEM, cfg, check=lambda text: always)
    assert result.status == "searched" and result.p_success == float(always)
    assert result.pivots == [] and result.pairs == []


def test_pivot_without_a_measured_margin_is_not_exported():
    tok = planted_tokenizer()
    cfg = PTSConfig(max_new_tokens=16).model_copy(update={"min_margin": 1.01})  # no pair can show this margin
    result = search_problem(HFSampler(PlantedLM(tok), tok), tok, PROBLEM, cfg)
    assert len(result.pivots) == 2 and result.pairs == []


def test_end_pairs_off_leaves_out_pairs_with_an_end_of_reply_token():
    """The planted pivot is stopping: <|im_end|> at position 4 (a short reply, which this oracle wants) or going on."""
    tok = planted_tokenizer()
    model = PlantedLM(tok, pivot=4, length=12, tokens=("<|im_end|>", "x"))
    short = lambda text: len(text.split()) <= 4  # noqa: E731
    # 200 samples per prefix, as in the planted-pivot test: at 50, sampling noise makes a filler token look
    # pivotal in about one search in ten (the report's point-estimate rule), which is not what this test is about.
    # without reuse: with it, completions of the prefix measure both sides of this pair (the test below)
    cfg = PTSConfig(max_new_tokens=16, samples=200, round_size=25, reuse=False)
    kept = search_problem(HFSampler(model, tok), tok, PROBLEM, cfg, check=short)
    assert [pv["position"] for pv in kept.pivots] == [4, 4]
    assert {(p["chosen"], p["rejected"]) for p in kept.pairs} == {("<|im_end|>", "x")}
    left_out = search_problem(HFSampler(model, tok), tok, PROBLEM, cfg.model_copy(update={"end_pairs": False}),
                              check=short)
    assert [pv["position"] for pv in left_out.pivots] == [4, 4] and left_out.pairs == []
    assert left_out.samples < kept.samples  # no completions spent measuring pairs it would drop


def test_question_outside_the_success_band_is_skipped():
    tok = planted_tokenizer()
    result = search_problem(HFSampler(PlantedLM(tok, p_right=0.97), tok), tok, PROBLEM, PTSConfig(max_new_tokens=16))
    assert result.status == "skipped" and result.pivots == [] and result.samples == 50


def test_split_halves_cumulative_logprob_not_token_count():
    # One unlikely token at index 6 holds most of the segment's log-probability.
    logp = [-0.1] * 6 + [-5.0] + [-0.1] * 9
    cum = [0.0]
    for lp in logp:
        cum.append(cum[-1] + lp)
    k = split_point(cum, 0, len(logp))
    assert k in (6, 7)  # right beside the unlikely token, where the middle would be 8
    assert split_point([0.0] * 9, 0, 8) == 4  # no information: the middle


def test_gap_bounds_decide_clear_cases_early():
    assert gap_bounds(Estimate(10, 10), Estimate(0, 10), z=2.5)[0] > 0.2  # 1 vs 0 after 10 samples: a jump
    assert gap_bounds(Estimate(30, 30), Estimate(1, 1, exact=True), z=2.5)[1] < 0.2  # both 1: no jump
    lo, hi = gap_bounds(Estimate(5, 10), Estimate(5, 10), z=2.5)
    assert lo == 0.0 and hi > 0.2  # undecided: sample more


def test_sampler_with_kv_cache_equals_full_recompute_with_left_padding():
    config = phi3_config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=0, eos_token_id=63, pad_token_id=0)
    model = build_model(config, seed=0).eval()

    class NoCache(torch.nn.Module):  # the same model without a KV cache: the sampler feeds whole sequences
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
            return type("Out", (), {"logits": self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                                         position_ids=position_ids, use_cache=False).logits})()

    prefixes = [[5, 6, 7, 8, 9], [10], [11, 12, 13]]  # different lengths: left padding and positions matter
    cfg = PTSConfig(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=6)
    uniforms = torch.rand(len(prefixes), cfg.max_new_tokens, generator=torch.Generator().manual_seed(1))
    cached = sample(model, prefixes, cfg, {63}, 0, uniforms)
    recomputed = sample(NoCache(), prefixes, cfg, {63}, 0, uniforms)
    assert cached == recomputed and all(len(c) == 6 for c in cached)


def test_sampler_shares_prefixes_and_drops_finished_rows_without_changing_what_it_draws():
    # With top_k 1 sampling is greedy decoding: the batched sampler (duplicated prefixes, rows ending at EOS at
    # different steps, a prefix that is already finished) must give each prefix exactly its own greedy reply.
    config = phi3_config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=0, eos_token_id=63, pad_token_id=0)
    model = build_model(config, seed=3).eval()
    cfg = PTSConfig(top_k=1, max_new_tokens=8)
    prefixes = [[5, 6, 7, 8, 9], [10], [11, 12, 13], [20, 21], [30]]

    def alone(prefix, eos):  # one prefix, no padding, no batch
        return sample(model, [prefix], cfg, eos, 0, torch.rand(1, cfg.max_new_tokens))[0]

    free = [alone(p, {63}) for p in prefixes]
    stop = free[0][2]  # a token the first reply draws third: as EOS it ends rows at different steps
    replies = [alone(p, {stop}) for p in prefixes]
    assert len({len(r) for r in replies}) > 1 and any(len(r) < cfg.max_new_tokens for r in replies)
    batch = prefixes + prefixes[:2] * 3 + [[4, stop]]
    got = sample(model, batch, PTSConfig(top_k=1, max_new_tokens=8, batch_size=8), {stop}, 0,
                 torch.rand(len(batch), 8))
    assert got == replies + replies[:2] * 3 + [[]]
    budgets = [1, 8, 2, 0, 5]  # each row stops at its own budget, the others draw on
    got = sample(model, prefixes, cfg, {stop}, 0, torch.rand(len(prefixes), 8), budgets)
    assert got == [r[:b] for r, b in zip(replies, budgets)]


def test_a_search_finds_the_same_alone_or_beside_others():
    """search_problems batches the samples of concurrent searches; what each finds must not depend on it."""
    tok = planted_tokenizer()
    model = PlantedLM(tok, pivot=3, length=10)
    problems = [(i, PROBLEM) for i in range(4)]
    cfg = PTSConfig(max_new_tokens=12, batch_size=64)
    sampler = HFSampler(model, tok)
    alone = {r.index: r for r in search_problems(sampler, tok, problems, cfg.model_copy(update={"concurrent": 1}))}
    together = {r.index: r for r in search_problems(sampler, tok, problems, cfg.model_copy(update={"concurrent": 3}))}
    assert alone == together and sorted(alone) == [0, 1, 2, 3]
    assert {r.samples for r in alone.values()} != {cfg.samples}  # seeds differ by problem: not all skipped
    assert search_problem(sampler, tok, PROBLEM, cfg, index=2) == alone[2]


def test_pts_cli_on_a_trained_model_resumes_and_plots(tmp_path):
    train_planted_hf(tmp_path / "model")
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({**PROBLEM, "prompt": "Q", "id": i}) + "\n" for i in range(2)))
    out = tmp_path / "pairs.jsonl"
    args = ("pts", "--model", tmp_path / "model", "--problems", problems, "--out", out, "--max-new-tokens", "8")
    phiforge(*args)
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert pairs and all((p["chosen"], p["rejected"]) == ("7", "3") for p in pairs)
    assert {"prompt", "prompt_token_ids", "chosen_token_id", "rejected_token_id", "p_before", "p_chosen",
            "p_rejected", "samples"} <= set(pairs[0])
    assert (tmp_path / "pairs.pivots.png").stat().st_size > 0
    summary = json.loads((tmp_path / "pairs.summary.json").read_text())
    # The rerun reuses every finished problem: the same pairs, not one more sample. How many problems run at
    # once does not change what they find, so a rerun with another --concurrent keeps them too.
    rerun = phiforge(*args, "--concurrent", "1")
    assert [json.loads(line) for line in out.read_text().splitlines()] == pairs
    assert json.loads((tmp_path / "pairs.summary.json").read_text()) == summary
    assert "pts: problem" not in rerun.stderr
    # The model PTS read is untouched and still an HF model.
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "model") is not None


def test_pts_cli_rejects_bad_problems_and_other_settings(tmp_path):
    train_planted_hf(tmp_path / "model", steps=1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Q", "answer": "7", "verifier": "telepathy"}) + "\n")
    proc = phiforge("pts", "--model", tmp_path / "model", "--problems", bad, "--out", tmp_path / "p.jsonl", check=False)
    assert proc.returncode == 2 and "unknown verifier 'telepathy'" in proc.stderr
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(PROBLEM) + "\n")
    common = ("pts", "--model", tmp_path / "model", "--problems", good, "--out", tmp_path / "p.jsonl",
              "--max-new-tokens", "4")
    phiforge(*common)
    proc = phiforge(*common, "--p-gap", "0.3", check=False)
    assert proc.returncode == 2 and "other settings" in proc.stderr
    proc = phiforge(*common, "--sampler", "server", check=False)
    assert proc.returncode == 2 and "sampler 'server' needs base_url" in proc.stderr
    # a server that is no vLLM server (this one answers chat completions only) is named, in one line
    with FakeOpenAIServer() as server:
        proc = phiforge("pts", "--model", tmp_path / "model", "--problems", good, "--out", tmp_path / "s.jsonl",
                        "--sampler", "server", "--base-url", server.url, "--served-model", "teacher", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {server.url}/completions: the answer lacks vLLM's")
