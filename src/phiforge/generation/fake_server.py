"""A local OpenAI-compatible chat server for tests and benchmarks, scriptable to misbehave.

It answers POST /v1/chat/completions with "<last user message> #<seed>" after `latency_s` (a body with no
messages, for /v1/completions, with the text " #<seed>" alone, as a server without vLLM's extensions), and, when a request
asks for logprobs, the first token's top_logprobs from `top_logprobs(body)` (None: answers without logprobs,
as servers that do not support them do). `fault(body)`
picks, per request, a misbehaviour instead of an answer:
  "429"       Too Many Requests with Retry-After: `retry_after`
  "500", ...  that HTTP status with an error body
  "garbage"   200 with a body that is not JSON
  "truncated" 200 whose Content-Length promises more than is sent, then the connection closes
  "hang"      no answer until the server stops (past any client timeout)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Fault = Callable[[dict], "str | None"]
TopLogprobs = Callable[[dict], "list[tuple[str, float]]"]  # (token, logprob) pairs


def answer(body: dict) -> str:
    """What the server replies to a request: its last user message and its seed."""
    last_user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
    return f"{last_user} #{body.get('seed')}"


class FakeOpenAIServer:
    """Use as a context manager; `url` is the base_url to give OpenAIBackend. Records every request body.
    `port`: 0 for a free one, or an earlier server's (the same endpoint, restarted)."""

    def __init__(self, fault: Fault | None = None, latency_s: float = 0.0, retry_after: str = "0",
                 top_logprobs: TopLogprobs | None = None, port: int = 0) -> None:
        self.fault = fault or (lambda body: None)
        self.top_logprobs = top_logprobs
        self.latency_s = latency_s
        self.retry_after = retry_after
        self.requests: list[dict] = []  # every request body received, in arrival order
        self.authorizations: list[str | None] = []  # their Authorization headers
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)  # SO_REUSEADDR: a port just closed is free
        self.httpd.daemon_threads = True
        self.httpd.fake = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_port
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()  # releases hanging requests
        self.httpd.shutdown()
        self.httpd.server_close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    disable_nagle_algorithm = True  # headers and body are two writes: without this, each answer waits ~40 ms for an ACK

    def do_POST(self) -> None:
        fake: FakeOpenAIServer = self.server.fake  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with fake.lock:
            fake.requests.append(body)
            fake.authorizations.append(self.headers.get("Authorization"))
            fault = fake.fault(body)
        if fault == "hang":
            fake.stopping.wait()
            self.close_connection = True
            return
        time.sleep(fake.latency_s)
        if "messages" in body:
            completion = {
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer(body)}, "finish_reason": "stop"}],
            }
        else:  # /completions as the API defines it: text only (no vLLM extensions such as token ids)
            completion = {"object": "text_completion", "model": body["model"],
                          "choices": [{"index": 0, "text": f" #{body.get('seed')}", "finish_reason": "stop"}]}
        if body.get("logprobs") and fake.top_logprobs is not None:
            top = [{"token": t, "logprob": lp} for t, lp in fake.top_logprobs(body)][: body.get("top_logprobs", 0)]
            completion["choices"][0]["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
        payload = json.dumps(completion).encode()
        if fault == "429":
            self.reply(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": fake.retry_after})
        elif fault is not None and fault.isdigit():
            self.reply(int(fault), b'{"error": {"message": "internal error"}}')
        elif fault == "garbage":
            self.reply(200, b"<html>upstream error</html>")
        elif fault == "truncated":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload) + 100))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.close_connection = True
        else:
            self.reply(200, payload)

    def reply(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests and benchmarks read the records
        pass
