"""A real local HTTP receiver for webhooks, and helpers shared by the alerts tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app

T = TypeVar("T")


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """An HTTP server on a free local port that records every POST and answers each with the
    next of ``statuses`` (then ``default_status``)."""

    def __init__(self, statuses: list[int] | None = None, default_status: int = 200) -> None:
        self.statuses = list(statuses or [])
        self.default_status = default_status
        self.received: list[Received] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._changed:
                    receiver.received.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status = (
                        receiver.statuses.pop(0) if receiver.statuses else receiver.default_status
                    )
                    receiver._changed.notify_all()
                answer = b"ok" if status < 300 else b"receiver says no"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, timeout_seconds: float = 15) -> list[Received]:
        """The first ``count`` requests, once that many arrived; fails after the deadline."""
        deadline = time.monotonic() + timeout_seconds
        with self._changed:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"received {len(self.received)} of {count} requests")
                self._changed.wait(left)
            return list(self.received[:count])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api(engine: Engine) -> Iterator[TestClient]:
    """The app without auth or background workers, on a fresh database of its own."""
    app = create_app(engine, Settings(insecure_no_auth=True), sweep=False)
    with TestClient(app) as test_client:
        yield test_client


def eventually(check: Callable[[], T | None], timeout_seconds: float = 15) -> T:
    """Poll ``check`` until it returns something other than None; fail at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.02)
