"""Dropped connections, through a real TCP proxy and pg_terminate_backend: 503 naming the
cause, nothing half-applied, and the service recovers on its own."""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import Engine, text

from tests.faults.conftest import (
    ClientFactory,
    assert_consistent,
    assert_fault,
    balances,
    create_budget,
    events_of,
    reservation_body,
)
from tests.faults.proxy import FaultProxy

HALF_USD = 500_000_000_000  # pico-USD


def _terminate_others(owner_engine: Engine, *, waiting_on_lock: bool = False) -> int:
    """pg_terminate_backend every other session of this database (or only those waiting on
    a lock); how many it terminated."""
    condition = "AND wait_event_type = 'Lock'" if waiting_on_lock else ""
    with owner_engine.connect() as conn:
        terminated = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                f" AND backend_type = 'client backend' {condition}"
            )
        ).scalar_one()
        conn.commit()
    return int(terminated)


def test_terminated_idle_connections_cost_one_503(
    db_url: str, owner_engine: Engine, app_client: ClientFactory
) -> None:
    client = app_client(db_url, pool_size=4)
    create_budget(client)
    assert _terminate_others(owner_engine) >= 1
    first = client.get("/v1/budgets")
    assert_fault(first, 503, "database-unavailable")
    # The lost connection invalidated the whole pool: every later call gets a new connection.
    assert [client.get("/v1/budgets").status_code for _ in range(5)] == [200] * 5


def test_pre_ping_hides_terminated_idle_connections(
    db_url: str, owner_engine: Engine, app_client: ClientFactory
) -> None:
    client = app_client(db_url, pool_size=4, pool_pre_ping=True)
    create_budget(client)
    assert _terminate_others(owner_engine) >= 1
    assert client.get("/v1/budgets").status_code == 200


def test_connection_terminated_mid_transaction_rolls_back(
    db_url: str, owner_engine: Engine, app_client: ClientFactory
) -> None:
    client = app_client(db_url, lock_timeout_ms=60_000)
    create_budget(client)
    responses: list[Any] = []
    with owner_engine.connect() as blocker:
        blocker.execute(text("SELECT budget_id FROM budgets FOR UPDATE"))
        waiter = threading.Thread(
            target=lambda: responses.append(
                client.post("/v1/reservations", json=reservation_body("cut-mid-1"))
            )
        )
        waiter.start()
        terminated = 0
        for _ in range(200):  # until the request waits on the budget row lock
            terminated = _terminate_others(owner_engine, waiting_on_lock=True)
            if terminated:
                break
            time.sleep(0.05)
        waiter.join(timeout=30)
        blocker.rollback()
    assert terminated == 1
    assert_fault(responses[0], 503, "database-unavailable")
    assert events_of(owner_engine, "cut-mid-1") == []
    assert balances(owner_engine) == (0, 0)
    retried = client.post("/v1/reservations", json=reservation_body("cut-mid-1"))
    assert retried.status_code == 201, retried.text
    assert events_of(owner_engine, "cut-mid-1") == ["reserved"]
    assert_consistent(owner_engine)


def test_proxy_cutting_every_connection(
    proxied_url: str, proxy: FaultProxy, owner_engine: Engine, app_client: ClientFactory
) -> None:
    client = app_client(proxied_url, pool_size=4)
    create_budget(client)
    assert proxy.cut_all() >= 1
    assert_fault(
        client.post("/v1/reservations", json=reservation_body("cut-all-1")),
        503,
        "database-unavailable",
    )
    assert events_of(owner_engine, "cut-all-1") == []
    retried = client.post("/v1/reservations", json=reservation_body("cut-all-1"))
    assert retried.status_code == 201, retried.text
    assert events_of(owner_engine, "cut-all-1") == ["reserved"]
    assert balances(owner_engine) == (0, HALF_USD)
    assert_consistent(owner_engine)


def test_black_holed_server_is_503_after_the_connect_timeout(
    proxied_url: str, proxy: FaultProxy, owner_engine: Engine, app_client: ClientFactory
) -> None:
    client = app_client(proxied_url, connect_timeout_seconds=2)
    proxy.blackhole = True
    assert_fault(
        client.post("/v1/reservations", json=reservation_body("hole-1")),
        503,
        "database-unavailable",
    )
    proxy.blackhole = False
    proxy.cut_all()
    create_budget(client)
    assert client.post("/v1/reservations", json=reservation_body("hole-1")).status_code == 201
    assert events_of(owner_engine, "hole-1") == ["reserved"]
    assert_consistent(owner_engine)


def test_slow_network_still_settles_exactly(
    proxied_url: str, proxy: FaultProxy, owner_engine: Engine, app_client: ClientFactory
) -> None:
    client = app_client(proxied_url)
    create_budget(client)
    proxy.delay_seconds = 0.01
    reserved = client.post("/v1/reservations", json=reservation_body("slow-net-1"))
    assert reserved.status_code == 201, reserved.text
    committed = client.post(
        f"/v1/reservations/{reserved.json()['reservation_id']}/commit",
        json={"usage": {"prompt_tokens": 1000, "completion_tokens": 500}},
    )
    assert committed.status_code == 200, committed.text
    assert events_of(owner_engine, "slow-net-1") == ["reserved", "committed", "usage_recorded"]
    assert_consistent(owner_engine)
