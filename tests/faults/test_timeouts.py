"""Pool exhaustion, statement timeouts and lock timeouts: 503/504 problems naming the cause,
nothing applied, and a retry with the same request_id applied once."""

from __future__ import annotations

import argparse

from sqlalchemy import Engine, text

from app.config import SERVE_STATEMENT_TIMEOUT_MS, Settings, add_server_arguments
from tests.faults.conftest import (
    ClientFactory,
    assert_consistent,
    assert_fault,
    balances,
    create_budget,
    events_of,
    reservation_body,
)

HALF_USD = 500_000_000_000  # pico-USD


def test_pool_exhaustion_is_503_and_clears(
    db_url: str, owner_engine: Engine, app_client: ClientFactory
) -> None:
    client = app_client(db_url, pool_size=2, pool_timeout_seconds=0.2)
    create_budget(client)
    engine = client.app.state.engine  # type: ignore[attr-defined]
    held = [engine.connect(), engine.connect()]
    try:
        listed = client.get("/v1/budgets")
        reserved = client.post("/v1/reservations", json=reservation_body("pool-1"))
    finally:
        for conn in held:
            conn.close()
    body = assert_fault(listed, 503, "pool-exhausted")
    assert body["title"] == "All database connections are busy"
    assert_fault(reserved, 503, "pool-exhausted")
    assert events_of(owner_engine, "pool-1") == []

    assert client.get("/v1/budgets").status_code == 200
    retried = client.post("/v1/reservations", json=reservation_body("pool-1"))
    assert retried.status_code == 201, retried.text
    assert events_of(owner_engine, "pool-1") == ["reserved"]
    assert balances(owner_engine) == (0, HALF_USD)
    assert_consistent(owner_engine)


def test_statement_timeout_is_504_and_nothing_applied(
    db_url: str, owner_engine: Engine, app_client: ClientFactory
) -> None:
    client = app_client(db_url, statement_timeout_ms=1000, lock_timeout_ms=60_000)
    create_budget(client)
    with owner_engine.connect() as blocker:
        blocker.execute(text("SELECT budget_id FROM budgets FOR UPDATE"))
        waited = client.post("/v1/reservations", json=reservation_body("slow-1"))
        blocker.rollback()
    body = assert_fault(waited, 504, "statement-timeout")
    assert body["sqlstate"] == "57014"
    assert events_of(owner_engine, "slow-1") == []
    assert balances(owner_engine) == (0, 0)

    retried = client.post("/v1/reservations", json=reservation_body("slow-1"))
    assert retried.status_code == 201, retried.text
    again = client.post("/v1/reservations", json=reservation_body("slow-1"))
    assert again.json()["reservation_id"] == retried.json()["reservation_id"]
    assert events_of(owner_engine, "slow-1") == ["reserved"]
    assert balances(owner_engine) == (0, HALF_USD)
    assert_consistent(owner_engine)


def test_lock_timeout_is_503(db_url: str, owner_engine: Engine, app_client: ClientFactory) -> None:
    client = app_client(db_url, statement_timeout_ms=60_000, lock_timeout_ms=200)
    create_budget(client)
    with owner_engine.connect() as blocker:
        blocker.execute(text("SELECT budget_id FROM budgets FOR UPDATE"))
        waited = client.post("/v1/reservations", json=reservation_body("locked-1"))
        blocker.rollback()
    body = assert_fault(waited, 503, "lock-timeout")
    assert body["sqlstate"] == "55P03"
    assert events_of(owner_engine, "locked-1") == []
    assert client.post("/v1/reservations", json=reservation_body("locked-1")).status_code == 201
    assert events_of(owner_engine, "locked-1") == ["reserved"]
    assert_consistent(owner_engine)


def test_fault_settings_are_serve_flags() -> None:
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    defaults = Settings.from_namespace(parser.parse_args([]))
    assert defaults.statement_timeout_ms == SERVE_STATEMENT_TIMEOUT_MS
    assert defaults.pool_pre_ping is False
    given = Settings.from_namespace(
        parser.parse_args(
            [
                "--statement-timeout-ms",
                "250",
                "--pool-timeout-seconds",
                "0.5",
                "--connect-timeout-seconds",
                "3",
                "--pool-pre-ping",
            ]
        )
    )
    assert given.statement_timeout_ms == 250
    assert given.pool_timeout_seconds == 0.5
    assert given.connect_timeout_seconds == 3
    assert given.pool_pre_ping is True
    # Commands other than serve keep PostgreSQL's default: no statement timeout.
    assert Settings().statement_timeout_ms == 0
