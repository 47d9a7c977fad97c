"""Teacher behind any OpenAI-compatible chat endpoint (vLLM server, llama.cpp server, a hosted API).

Each sample is its own POST {base_url}/chat/completions with its own seed (sample i: seed + i), so the
request cache stores and reuses samples one by one. Requests run concurrently on one asyncio loop.
Transient failures (429, 5xx, timeouts, dropped connections, garbage or truncated answers) are retried
with exponential backoff and jitter, honouring Retry-After; the loop is a few lines here rather than a
retry library because it needs the server's Retry-After and one-line errors naming the endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Callable, Sequence, TypeVar

import httpx2 as httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from phiforge.errors import UserError, without_credentials
from phiforge.generation.base import Messages, OnDone, Request, Sampling, expand, matches_choice, regroup

log = logging.getLogger("phiforge")

SHOW_PROGRESS_FROM = 32  # requests; fewer finish before a bar is worth drawing
TOP_LOGPROBS = 20  # the most OpenAI's API returns per token
T = TypeVar("T")


class Transient(Exception):
    """A failure worth retrying; `retry_after` is the server's requested wait in seconds, if it gave one."""

    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.retry_after = retry_after


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible server. The API key is read from `api_key_env`, never stored;
    credentials in base_url (`http://user:KEY@host/v1`) are sent as basic auth and shown nowhere."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
    ) -> None:
        shown = without_credentials(base_url)
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"base_url {shown!r} must start with http:// or https:// (e.g. http://localhost:8000/v1)")
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise UserError(f"{shown}: need concurrency >= 1, max_retries >= 0, timeout_s > 0")
        try:
            parsed = httpx.URL(base_url)
        except httpx.InvalidURL as e:
            raise UserError(f"base_url {shown!r} is not a valid URL ({without_credentials(str(e))})") from None
        self.model = model
        self.endpoint = shown.rstrip("/")  # part of request cache keys: another server's answers are not this one's
        self.url = self.endpoint + "/chat/completions"
        self.auth = httpx.BasicAuth(parsed.username, parsed.password) if parsed.userinfo else None
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s

    def chat(self, conversations: Sequence[Messages], sampling: Sampling, n: int = 1) -> list[list[str]]:
        return regroup(self.complete(expand(conversations, sampling, n)), n)

    def complete(self, requests: Sequence[Request], on_done: OnDone | None = None) -> list[str]:
        bodies = [request_body(self.model, messages, sampling) for messages, sampling in requests]
        return self.run(bodies, completion_text, on_done)

    def choice_probs(self, conversations: Sequence[Messages], choices: Sequence[str]) -> list[dict[str, float]]:
        """The first reply token's top_logprobs (one token generated), summed per choice; a choice that is not among
        them gets 0."""
        bodies = [request_body(self.model, messages, Sampling(temperature=0.0, max_tokens=1))
                  | {"logprobs": True, "top_logprobs": TOP_LOGPROBS} for messages in conversations]
        return self.run(bodies, lambda answer: self.choice_probabilities(answer, choices))

    def run(self, bodies: list[dict], read: Callable[[dict], T], on_done: Callable[[int, T], None] | None = None, *,
            url: str | None = None, show_progress: bool = True) -> list[T]:
        """POST every body to `url` (default: chat completions); read(answer) turns each JSON answer into a result
        (raising Transient when malformed). show_progress=False (no bar, no log) for a caller reporting itself."""
        if not bodies:
            return []
        headers = self.headers()
        if show_progress:
            log.info("%s: %d requests to %s, %d at a time", self.model, len(bodies), url or self.url, self.concurrency)
        return asyncio.run(self.run_all(bodies, read, headers, on_done, url or self.url, show_progress))

    def choice_probabilities(self, answer: dict, choices: Sequence[str]) -> dict[str, float]:
        try:
            top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{self.url}: the answer has no top_logprobs, so the server cannot give choice "
                            "probabilities (vLLM and llama.cpp servers can); use label_method: generate") from None
        probs = dict.fromkeys(choices, 0.0)
        for entry in top:
            if (c := matches_choice(entry["token"], choices)) is not None:
                probs[c] += math.exp(entry["logprob"])
        return probs

    def headers(self) -> dict[str, str]:
        if not self.api_key_env:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise UserError(
                f"{self.url}: environment variable {self.api_key_env} (api_key_env) is not set; export your API key there"
            )
        return {"Authorization": f"Bearer {key}"}

    async def run_all(self, bodies: list[dict], read: Callable[[dict], T], headers: dict,
                      on_done: Callable[[int, T], None] | None, url: str, show_progress: bool) -> list[T]:
        out: list = [None] * len(bodies)
        pending = iter(enumerate(bodies))  # shared by the workers: each takes the next request when free
        limits = httpx.Limits(max_connections=self.concurrency)
        progress = Progress(
            TextColumn(f"[bold]{self.model}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("retries {task.fields[retries]}"),
            TimeRemainingColumn(),
            disable=not show_progress or len(bodies) < SHOW_PROGRESS_FROM,
        )
        async with httpx.AsyncClient(headers=headers, auth=self.auth, timeout=self.timeout_s, limits=limits) as client:
            with progress:
                bar = progress.add_task("requests", total=len(bodies), retries=0)
                retries = 0

                def on_retry() -> None:
                    nonlocal retries
                    retries += 1
                    progress.update(bar, retries=retries)

                async def worker() -> None:
                    for j, body in pending:
                        out[j] = await self.request(client, url, body, read, on_retry)
                        if on_done is not None:
                            on_done(j, out[j])
                        progress.advance(bar)

                workers = [asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(bodies)))]
                try:
                    await asyncio.gather(*workers)
                finally:  # one request failed for good: stop the others (finished ones were already reported)
                    for w in workers:
                        w.cancel()
                    await asyncio.gather(*workers, return_exceptions=True)
        return out

    async def request(
        self, client: httpx.AsyncClient, url: str, body: dict, read: Callable[[dict], T], on_retry: Callable[[], None]
    ) -> T:
        attempt = 0
        while True:
            try:
                return read(await self.post(client, url, body))
            except Transient as e:
                if attempt == self.max_retries:
                    raise UserError(
                        f"{url}: gave up after {attempt + 1} attempts, last: {e}; check that the server is up "
                        f"and serves model '{self.model}', or raise max_retries / timeout_s"
                    ) from None
                delay = self.delay_s(attempt, e.retry_after)
                log.debug("%s: %s; retry %d in %.2f s", url, e, attempt + 1, delay)
                on_retry()
                await asyncio.sleep(delay)
                attempt += 1

    def delay_s(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter (so many clients do not retry in step); the server's Retry-After
        when it asks for longer. Both are capped at max_backoff_s."""
        delay = self.backoff_s * 2**attempt * random.uniform(0.5, 1.5)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_backoff_s)

    async def post(self, client: httpx.AsyncClient, url: str, body: dict) -> dict:
        try:
            r = await client.post(url, json=body)
        except httpx.TimeoutException:
            raise Transient(f"no answer within {self.timeout_s:g} s") from None
        except httpx.TransportError as e:  # refused or dropped connection, truncated body
            raise Transient(f"{type(e).__name__}{one_line(str(e))}") from None
        if r.status_code in (408, 429) or r.status_code >= 500:
            raise Transient(f"HTTP {r.status_code}{one_line(r.text)}", retry_after_s(r.headers.get("retry-after")))
        if r.status_code != 200:
            raise UserError(f"{url}: HTTP {r.status_code}{one_line(r.text)}; {self.hint(r.status_code)}")
        try:
            answer = r.json()
            if not isinstance(answer["choices"][0], dict):
                raise TypeError
        except (ValueError, KeyError, IndexError, TypeError):
            raise Transient(f"answer is not a completion{one_line(r.text) or ' (empty body)'}") from None
        return answer

    def hint(self, status: int) -> str:
        if status in (401, 403):
            key = f"the key in ${self.api_key_env}" if self.api_key_env else "api_key_env (no key is sent)"
            return f"check {key}"
        if status == 404:
            return f"check base_url (it usually ends in /v1) and that the server serves model '{self.model}'"
        return "check the model name and sampling parameters against what the server accepts"


def completion_text(answer: dict) -> str:
    message = answer["choices"][0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise Transient(f"answer has no text content{one_line(json.dumps(answer))}")
    return content


def request_body(model: str, messages: Messages, sampling: Sampling) -> dict:
    body = {
        "model": model,
        "messages": messages,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": sampling.seed,
    }
    if sampling.top_k > 0:
        body["top_k"] = sampling.top_k  # not OpenAI's API; vLLM and llama.cpp servers accept it
    return body


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: either a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def one_line(text: str, limit: int = 200) -> str:
    """A server's answer as ': <first 200 characters on one line>', or '' when it sent nothing."""
    text = " ".join(text.split())
    return "" if not text else ": " + (text if len(text) <= limit else text[:limit] + "...")
