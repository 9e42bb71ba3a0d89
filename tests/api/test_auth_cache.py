"""Verified API keys are remembered for a few seconds: one lookup per key and TTL, and a
revocation is honoured at once, in this process directly and from any other through the
revocation listener; without a word from the listener, within the TTL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, text

from app.auth import service as auth
from app.config import Settings
from app.main import create_app


class Clock:
    """A hand-moved clock for the cache's TTL (no test waits for real seconds)."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lookups(engine: Engine) -> Iterator[list[str]]:
    """Every statement that reads api_keys, as the server sends it."""
    seen: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if "FROM api_keys" in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def secured(engine: Engine, clock: Clock) -> Iterator[TestClient]:
    app = create_app(engine, Settings(), sweep=False)
    # Not listening until its listener has connected, as the app's own: with listening=True
    # from the start, _wait_listening returned at once and the listener's first forget_all
    # could drop the test's first verified key (a flake seen under load).
    app.state.verified_keys = auth.VerifiedKeys(ttl_seconds=5.0, clock=clock, listening=False)
    with TestClient(app) as test_client:
        _wait_listening(app.state.verified_keys)
        yield test_client


def _reader(engine: Engine) -> tuple[str, dict[str, str]]:
    with engine.begin() as conn:
        info, key = auth.create_key(conn, scope="reader", org="acme")
    return info.key_id, {"Authorization": f"Bearer {key}"}


def test_a_verified_key_is_looked_up_once_per_ttl(
    secured: TestClient, engine: Engine, clock: Clock, lookups: list[str]
) -> None:
    _, headers = _reader(engine)
    for _ in range(3):
        assert secured.get("/v1/budgets", headers=headers).status_code == 200
    assert len(lookups) == 1
    clock.seconds += 5.0
    assert secured.get("/v1/budgets", headers=headers).status_code == 200
    assert len(lookups) == 2


def test_unknown_and_wrong_secret_keys_are_never_remembered(
    secured: TestClient, engine: Engine, lookups: list[str]
) -> None:
    key_id, headers = _reader(engine)
    wrong = {"Authorization": f"Bearer ulk_{key_id}_not-the-secret"}
    for _ in range(2):
        assert secured.get("/v1/budgets", headers=wrong).status_code == 401
    assert len(lookups) == 2
    # The right key still works and the wrong one still fails once the right one is cached.
    assert secured.get("/v1/budgets", headers=headers).status_code == 200
    assert secured.get("/v1/budgets", headers=wrong).status_code == 401


def test_a_revocation_by_another_process_is_honoured_when_the_ttl_runs_out(
    secured: TestClient, engine: Engine, clock: Clock
) -> None:
    key_id, headers = _reader(engine)
    assert secured.get("/v1/budgets", headers=headers).status_code == 200
    # What `usage-ledger keys revoke` does from another process: this one's cache is not told.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE api_keys SET revoked_at = now() WHERE key_id = :key_id"),
            {"key_id": key_id},
        )
    clock.seconds += 4.9
    assert secured.get("/v1/budgets", headers=headers).status_code == 200
    clock.seconds += 0.1
    response = secured.get("/v1/budgets", headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"] == "revoked API key"


def test_a_revocation_in_this_process_is_honoured_at_once(
    secured: TestClient, engine: Engine
) -> None:
    key_id, headers = _reader(engine)
    assert secured.get("/v1/budgets", headers=headers).status_code == 200
    with engine.begin() as conn:
        auth.revoke_key(conn, key_id=key_id)
    assert secured.get("/v1/budgets", headers=headers).status_code == 401


def test_the_cache_stays_bounded(clock: Clock) -> None:
    cache = auth.VerifiedKeys(ttl_seconds=5.0, max_entries=3, clock=clock)
    callers = [auth.Principal(key_id=f"k{n}", scope="reader", org=None) for n in range(4)]
    for n, caller in enumerate(callers):
        cache.put(f"hash-{n}", caller, verified_at=clock(), generation=cache.generation)
    assert cache.get("hash-3") == callers[3]
    assert sum(cache.get(f"hash-{n}") is not None for n in range(4)) <= 3


def _wait_listening(cache: auth.VerifiedKeys) -> None:
    deadline = time.monotonic() + 30
    while not cache.listening:
        assert time.monotonic() < deadline, "the revocation listener never connected"
        time.sleep(0.02)


def test_a_revocation_by_another_process_is_heard_at_once(
    secured: TestClient, engine: Engine, clock: Clock
) -> None:
    cache: auth.VerifiedKeys = secured.app.state.verified_keys  # type: ignore[attr-defined]
    _wait_listening(cache)
    key_id, headers = _reader(engine)
    assert secured.get("/v1/budgets", headers=headers).status_code == 200
    assert secured.get("/v1/budgets", headers=headers).status_code == 200  # from the cache
    # What revoke_key does in another process: the UPDATE and the notification, and nothing
    # in this process's memory. The hand-moved clock stands still, so only the listener can
    # make the cache forget the key.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE api_keys SET revoked_at = now() WHERE key_id = :key_id"),
            {"key_id": key_id},
        )
        conn.execute(text("SELECT pg_notify(:c, :k)"), {"c": auth.REVOCATIONS, "k": key_id})
    deadline = time.monotonic() + 10
    while secured.get("/v1/budgets", headers=headers).status_code == 200:
        assert time.monotonic() < deadline, "the revocation was not heard"
        time.sleep(0.05)
    response = secured.get("/v1/budgets", headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"] == "revoked API key"


def test_without_a_listener_nothing_is_remembered(engine: Engine, lookups: list[str]) -> None:
    app = create_app(engine, Settings(), sweep=False)
    assert app.state.verified_keys.listening is False
    client = TestClient(app)  # no lifespan: no listener
    _, headers = _reader(engine)
    for _ in range(3):
        assert client.get("/v1/budgets", headers=headers).status_code == 200
    assert len(lookups) == 3
