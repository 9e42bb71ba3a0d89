"""The app over a real PostgreSQL, directly or through a fault-injecting TCP proxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, make_url, select

from app.budgets import replay
from app.budgets.tables import budget_periods
from app.config import Settings
from app.db.engine import make_engine
from app.ledger.tables import ledger_events
from app.main import create_app
from tests.conftest import Server
from tests.faults.proxy import FaultProxy

PROBLEM_JSON = "application/problem+json"
# What a problem document must never show: a stack trace, SQL, driver or pool internals.
LEAKS = ("Traceback", 'File "', "psycopg", "sqlalchemy", "QueuePool", "SELECT", "INSERT", "UPDATE")

ClientFactory = Callable[..., TestClient]


@pytest.fixture
def proxy(pg_server: Server) -> Iterator[FaultProxy]:
    upstream: tuple[str, int] | str = (pg_server.host, pg_server.port)
    if pg_server.host.startswith("/"):
        upstream = f"{pg_server.host}/.s.PGSQL.{pg_server.port}"
    fault_proxy = FaultProxy(upstream)
    try:
        yield fault_proxy
    finally:
        fault_proxy.close()


@pytest.fixture
def proxied_url(db_url: str, proxy: FaultProxy) -> str:
    """``db_url`` through the proxy, unencrypted so that the proxy can read the messages."""
    url = make_url(db_url)
    query = {k: v for k, v in url.query.items() if k not in ("host", "port")}
    query.update({"sslmode": "disable", "gssencmode": "disable"})
    proxied = url.set(host="127.0.0.1", port=proxy.port, query=query)
    return proxied.render_as_string(hide_password=False)


@pytest.fixture
def owner_engine(db_url: str) -> Iterator[Engine]:
    """Straight to the database as its owner, for checks and for blocking locks."""
    engine = make_engine(db_url, settings=Settings(pool_size=2), app_role=False)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def app_client() -> Iterator[ClientFactory]:
    """Build a client over the real app on ``url`` with ``settings``; closed at teardown.

    Server errors come back as responses (a 500 is a 500 here, not an exception in the test)."""
    opened: list[tuple[TestClient, Engine]] = []

    def build(url: str, **settings: Any) -> TestClient:
        config = Settings(insecure_no_auth=True, **settings)
        engine = make_engine(url, settings=config)
        client = TestClient(
            create_app(engine, config, sweep=False), raise_server_exceptions=False
        ).__enter__()
        opened.append((client, engine))
        return client

    try:
        yield build
    finally:
        for client, engine in opened:
            client.__exit__(None, None, None)
            engine.dispose()


def create_budget(client: TestClient, limit_usd: str = "10") -> str:
    response = client.post(
        "/v1/budgets",
        json={
            "org": "acme",
            "subject": {"type": "team", "id": "ml"},
            "limit_usd": limit_usd,
            "period": "month",
            "mode": "hard",
        },
    )
    assert response.status_code == 201, response.text
    budget_id: str = response.json()["budget_id"]
    return budget_id


def reservation_body(request_id: str, amount_usd: str = "0.50") -> dict[str, Any]:
    return {
        "org": "acme",
        "request_id": request_id,
        "subjects": [{"type": "team", "id": "ml"}],
        "model": "gpt-4o",
        "amount_usd": amount_usd,
    }


def usage_body(request_id: str) -> dict[str, Any]:
    return {
        "org": "acme",
        "request_id": request_id,
        "subjects": [{"type": "team", "id": "ml"}],
        "model": "gpt-4o",
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500},
    }


def assert_fault(response: Any, status: int, condition: str) -> dict[str, Any]:
    """``response`` is the problem+json of ``condition`` with Retry-After, and leaks nothing."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["retry-after"] == "1"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://usage-ledger.dev/problems/{condition}"
    assert body["status"] == status
    assert "request_id" in body["detail"]
    for leak in LEAKS:
        assert leak not in response.text, f"{leak!r} leaked into {response.text}"
    return body


def assert_consistent(engine: Engine) -> None:
    """The projections equal the events replayed (`replay --verify`, through app code)."""
    snapshot = engine.connect().execution_options(isolation_level="REPEATABLE READ")
    with snapshot as conn, conn.begin():
        report = replay.verify(conn)
    assert report.ok, report.differences


def events_of(engine: Engine, request_id: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(ledger_events.c.event_type)
            .where(ledger_events.c.request_id == request_id)
            .order_by(ledger_events.c.seq)
        )
        return [row.event_type for row in rows]


def balances(engine: Engine) -> tuple[int, int]:
    """(spent, held) in pico-USD over every budget period."""
    with engine.connect() as conn:
        rows = conn.execute(select(budget_periods.c.spent_pico_usd, budget_periods.c.held_pico_usd))
        spent = held = 0
        for row in rows:
            spent += int(row.spent_pico_usd)
            held += int(row.held_pico_usd)
    return spent, held
