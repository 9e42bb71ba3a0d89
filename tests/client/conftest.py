"""A real HTTP server for the client tests: uvicorn in a background thread over a fresh
database, with API keys on (an admin key, and a gateway key confined to org ``acme``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from sqlalchemy import Engine

from app import main as app_main
from app.auth.service import create_key
from app.config import Settings
from app.pricing.sources import load_table
from app.pricing.table import PriceTable

ORG = "acme"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class LiveServer:
    url: str
    admin_key: str
    gateway_key: str
    reader_key: str


@pytest.fixture(scope="session")
def price_table() -> PriceTable:
    return load_table(prices_path=None, prices_url=None)


@pytest.fixture
def live(
    engine: Engine, price_table: PriceTable, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LiveServer]:
    # The bundled price table is loaded once per session, not once per server.
    monkeypatch.setattr(app_main, "load_table", lambda **_: price_table)
    with engine.begin() as conn:
        _, admin = create_key(conn, scope="admin", name="tests")
        _, gateway = create_key(conn, scope="gateway", org=ORG, name="tests")
        _, reader = create_key(conn, scope="reader", org=ORG, name="tests")
    app = app_main.create_app(engine, Settings(insecure_no_auth=False), sweep=False)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the test server did not start")
        time.sleep(0.01)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", admin, gateway, reader)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
