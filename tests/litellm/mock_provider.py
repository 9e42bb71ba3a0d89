"""A mock OpenAI-compatible provider on a real socket: ``POST /v1/chat/completions``, streaming
and not, answering **as many tokens as allowed**: exactly ``max_completion_tokens`` /
``max_tokens`` when the request caps its output, else a fixed answer of ``default_tokens``.

Its usage is the provider's word, as OpenAI reports it: ``prompt_tokens`` is an under-count of
the prompt bytes (a real tokenizer never emits more tokens than UTF-8 bytes, which is what the
ledger's input bound relies on), ``completion_tokens`` the tokens it sent. Markers in the last
user message change its behaviour: ``[fail]`` answers 500, ``[slow]`` waits between stream
chunks (so a client can abandon a stream midway), ``[late]`` waits before the first one,
``[cached]`` reports cached prompt tokens.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "tok "  # one token of the mock's answer
CHUNK_TOKENS = 256  # tokens per stream chunk


@dataclass
class MockProvider:
    """What the provider saw and answered, shared with the tests."""

    default_tokens: int = 2000
    slow_chunk_seconds: float = 0.2  # money-safe: seconds
    late_start_seconds: float = 3.0  # money-safe: seconds
    requests: list[dict[str, Any]] = field(default_factory=list)
    completion_tokens_sent: list[int] = field(default_factory=list)
    streams_closed_early: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def record(self, body: dict[str, Any]) -> None:
        with self.lock:
            self.requests.append(body)

    def sent(self, tokens: int) -> None:
        with self.lock:
            self.completion_tokens_sent.append(tokens)


def _last_user_text(body: Mapping[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(part.get("text", "")) for part in content)
    return ""


def prompt_tokens(body: Mapping[str, Any]) -> int:
    """The provider's prompt count: about one token per four bytes of message text."""
    total = 3
    for message in body.get("messages") or []:
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        total += 4 + len(str(text).encode()) // 4
    return total


def output_cap(body: Mapping[str, Any], default: int) -> int:
    caps = [
        body[key]
        for key in ("max_completion_tokens", "max_tokens")
        if isinstance(body.get(key), int)
    ]
    return min(caps) if caps else default


def _usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _handler(state: MockProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection; a stream ends at close

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            state.record(body)
            text = _last_user_text(body)
            if "[fail]" in text:
                self._json(500, {"error": {"message": "mock provider failure", "type": "server"}})
                return
            tokens = output_cap(body, state.default_tokens)
            prompt = prompt_tokens(body)
            cached = prompt // 2 if "[cached]" in text else 0
            model = str(body.get("model", "gpt-4o"))
            if body.get("stream"):
                self._stream(
                    body,
                    model,
                    tokens,
                    prompt,
                    cached,
                    slow="[slow]" in text,
                    late="[late]" in text,
                )
                return
            state.sent(tokens)
            self._json(
                200,
                {
                    "id": f"chatcmpl-{uuid.uuid4().hex}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": TOKEN * tokens},
                            "finish_reason": "length",
                        }
                    ],
                    "usage": _usage(prompt, tokens, cached),
                },
            )

        def _json(self, status: int, document: Mapping[str, Any]) -> None:
            payload = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _stream(
            self,
            body: Mapping[str, Any],
            model: str,
            tokens: int,
            prompt: int,
            cached: int,
            *,
            slow: bool,
            late: bool,
        ) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            ident = f"chatcmpl-{uuid.uuid4().hex}"
            sent = 0
            try:
                if late:
                    time.sleep(state.late_start_seconds)
                for piece in _pieces(tokens):
                    self._event(ident, model, {"content": TOKEN * piece}, None)
                    sent += piece
                    if slow:
                        time.sleep(state.slow_chunk_seconds)
                self._event(ident, model, {}, "length")
                options = body.get("stream_options") or {}
                if options.get("include_usage"):
                    chunk = {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [],
                        "usage": _usage(prompt, tokens, cached),
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                with state.lock:
                    state.streams_closed_early += 1
            finally:
                state.sent(sent)

        def _event(
            self, ident: str, model: str, delta: Mapping[str, Any], finish: str | None
        ) -> None:
            chunk = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish}],
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

    return Handler


def _pieces(tokens: int) -> Iterator[int]:
    while tokens > 0:
        piece = min(CHUNK_TOKENS, tokens)
        yield piece
        tokens -= piece


def start(state: MockProvider, port: int = 0) -> ThreadingHTTPServer:
    """Serve ``state`` on 127.0.0.1 in a daemon thread; ``state.url`` is its /v1 base."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    threading.Thread(target=server.serve_forever, name="mock-provider", daemon=True).start()
    return server


if __name__ == "__main__":  # a manual run: python -m tests.litellm.mock_provider PORT
    import sys

    provider = MockProvider()
    start(provider, int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(provider.url, flush=True)
    threading.Event().wait()
