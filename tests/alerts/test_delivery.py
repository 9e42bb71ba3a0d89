"""Webhook delivery from the outbox: signed, retried with backoff, logged, crash-safe."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from app.alerts import service as alerts
from app.alerts import signing
from app.alerts.delivery import DeliveryPolicy, DeliveryWorker, deliver_due
from app.alerts.model import Delivery, Webhook
from app.alerts.tables import webhook_outbox
from app.budgets import holds
from app.budgets.model import Subject
from app.config import Settings
from app.db.engine import make_engine
from app.ledger.records import UsageRecord
from tests.alerts.conftest import Receiver, eventually
from tests.factories import USD, make_budget

CENT = USD // 100
TEAM = Subject("team", "ml")
QUICK = DeliveryPolicy(
    max_attempts=3, backoff_base_seconds=0.05, backoff_max_seconds=0.2, timeout_seconds=5
)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


def _webhook(engine: Engine, url: str, org: str = "acme") -> tuple[Webhook, str]:
    with engine.begin() as conn:
        return alerts.register_webhook(conn, org=org, url=url)


def _cross_warning(engine: Engine, request_id: str = "r1") -> None:
    """A soft 1 USD budget charged 0.85: one warning alert."""
    with engine.begin() as conn:
        make_budget(conn, subject=TEAM, limit_pico_usd=USD, mode="soft")
        holds.record_usage(
            conn,
            org="acme",
            request_id=request_id,
            subjects=[TEAM],
            cost_pico_usd=85 * CENT,
            records=[UsageRecord(cost_pico_usd=85 * CENT, model="gpt-4o")],
        )


def _deliveries(engine: Engine, webhook: Webhook) -> list[Delivery]:
    with engine.connect() as conn:
        return alerts.list_deliveries(conn, webhook_id=webhook.webhook_id, org=webhook.org)


def _one(engine: Engine, webhook: Webhook) -> Delivery:
    [delivery] = _deliveries(engine, webhook)
    return delivery


def _settled(engine: Engine, webhook: Webhook) -> Delivery | None:
    delivery = _one(engine, webhook)
    return delivery if delivery.state != "pending" else None


def test_a_delivery_is_signed_and_verifiable(
    engine: Engine, receiver: Receiver, http: httpx.Client
) -> None:
    webhook, secret = _webhook(engine, receiver.url)
    _cross_warning(engine)
    assert deliver_due(engine, client=http, policy=QUICK) == 1
    [request] = receiver.wait_for(1)
    delivery = _one(engine, webhook)

    # The recipe of docs/alerts.md, written out independently of app.alerts.signing.
    header = request.headers["usage-ledger-signature"]
    parts = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(
        secret.encode(), parts["t"].encode() + b"." + request.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    assert signing.verify(secret, request.body, header)
    assert not signing.verify("whsec_wrong", request.body, header)
    assert not signing.verify(secret, request.body + b" ", header)

    assert request.headers["usage-ledger-delivery"] == str(delivery.delivery_id)
    assert request.headers["usage-ledger-event"] == "alert_raised"
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.body)
    assert body["type"] == "alert_raised" and body["org"] == "acme"
    assert body["data"]["level"] == "warning"
    assert body["data"]["threshold"] == "0.8"
    assert body["data"]["spent_usd"] == "0.85"
    assert body["data"]["limit_usd"] == "1"
    assert body["data"]["remaining_usd"] == "0.15"
    assert body["data"]["request_id"] == "r1"
    assert body == delivery.payload

    assert delivery.state == "delivered" and delivery.attempts == 1
    assert delivery.delivered_at is not None and delivery.last_error is None
    [attempt] = delivery.log
    assert attempt.attempt == 1 and attempt.status_code == 200 and attempt.error is None
    assert attempt.duration_ms >= 0


def test_a_failing_receiver_is_retried_with_backoff_until_delivered(
    engine: Engine, receiver: Receiver, http: httpx.Client
) -> None:
    receiver.statuses = [500, 503]
    webhook, secret = _webhook(engine, receiver.url)
    _cross_warning(engine)
    deliver_due(engine, client=http, policy=QUICK)
    first = _one(engine, webhook)
    assert first.state == "pending" and first.attempts == 1
    assert first.last_error == "HTTP 500: receiver says no"
    assert first.next_attempt_at > first.created_at

    def delivered() -> Delivery | None:
        deliver_due(engine, client=http, policy=QUICK)
        return _settled(engine, webhook)

    delivery = eventually(delivered)
    assert delivery.state == "delivered" and delivery.attempts == 3
    assert delivery.last_error is None
    assert [(a.attempt, a.status_code) for a in delivery.log] == [(1, 500), (2, 503), (3, 200)]
    assert [a.error for a in delivery.log] == [
        "HTTP 500: receiver says no",
        "HTTP 503: receiver says no",
        None,
    ]
    # Each retry waited at least half its backoff (base * 2**(n-1), "equal jitter").
    gaps = [
        later.attempted_at - earlier.attempted_at
        for earlier, later in zip(delivery.log, delivery.log[1:], strict=False)
    ]
    assert gaps[0] >= timedelta(seconds=0.025) and gaps[1] >= timedelta(seconds=0.05)
    requests = receiver.wait_for(3)
    assert len({r.body for r in requests}) == 1  # the same body every time...
    assert len({r.headers["usage-ledger-delivery"] for r in requests}) == 1
    assert all(
        signing.verify(secret, r.body, r.headers["usage-ledger-signature"]) for r in requests
    )


def test_a_delivery_fails_for_good_after_its_last_attempt(
    engine: Engine, receiver: Receiver, http: httpx.Client
) -> None:
    receiver.default_status = 500
    webhook, _ = _webhook(engine, receiver.url)
    _cross_warning(engine)

    def failed() -> Delivery | None:
        deliver_due(engine, client=http, policy=QUICK)
        return _settled(engine, webhook)

    delivery = eventually(failed)
    assert delivery.state == "failed" and delivery.attempts == 3
    assert delivery.last_error == "HTTP 500: receiver says no"
    assert [a.status_code for a in delivery.log] == [500, 500, 500]
    assert deliver_due(engine, client=http, policy=QUICK) == 0
    assert len(receiver.received) == 3


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_receiver_is_logged_without_a_status(
    engine: Engine, http: httpx.Client
) -> None:
    webhook, _ = _webhook(engine, f"http://127.0.0.1:{_closed_port()}/hook")
    _cross_warning(engine)
    deliver_due(engine, client=http, policy=QUICK)
    delivery = _one(engine, webhook)
    assert delivery.state == "pending"
    [attempt] = delivery.log
    assert attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith("ConnectError")


def test_a_crash_between_commit_and_delivery_loses_nothing(
    engine: Engine, db_url: str, receiver: Receiver
) -> None:
    webhook, secret = _webhook(engine, receiver.url)
    _cross_warning(engine)
    engine.dispose()  # the process that committed is gone before any worker ran
    assert receiver.received == []

    restarted = make_engine(db_url, settings=Settings(pool_size=4))
    worker = DeliveryWorker(restarted, interval_seconds=0.05, policy=QUICK)
    worker.start()
    try:
        [request] = receiver.wait_for(1)
        assert signing.verify(secret, request.body, request.headers["usage-ledger-signature"])
        delivery = eventually(lambda: _settled(restarted, webhook))
        assert delivery.state == "delivered"
        assert json.loads(request.body)["data"]["level"] == "warning"
    finally:
        worker.stop()
        restarted.dispose()


def test_a_claim_lost_with_its_worker_is_delivered_after_the_lease(
    engine: Engine, receiver: Receiver, http: httpx.Client
) -> None:
    webhook, _ = _webhook(engine, receiver.url)
    _cross_warning(engine)
    with engine.begin() as conn:
        [claim] = alerts.claim_deliveries(conn, limit=10, lease=timedelta(seconds=0.5))
    # The worker that claimed it dies here, before posting. Until the lease runs out nobody
    # else takes it; then it is claimed again and delivered.
    assert deliver_due(engine, client=http, policy=QUICK) == 0

    def delivered() -> Delivery | None:
        deliver_due(engine, client=http, policy=QUICK)
        return _settled(engine, webhook)

    delivery = eventually(delivered)
    assert delivery.delivery_id == claim.delivery_id
    assert delivery.state == "delivered" and delivery.attempts == 2
    assert [a.attempt for a in delivery.log] == [2]
    assert len(receiver.wait_for(1)) == 1


def test_a_late_failure_of_an_expired_claim_does_not_undo_a_newer_one(
    engine: Engine, receiver: Receiver, http: httpx.Client
) -> None:
    webhook, _ = _webhook(engine, receiver.url)
    _cross_warning(engine)
    with engine.begin() as conn:
        [stale] = alerts.claim_deliveries(conn, limit=10, lease=timedelta(0))
    deliver_due(engine, client=http, policy=QUICK)  # claim 2 delivers it
    with engine.begin() as conn:  # claim 1's worker comes back and reports a failure
        alerts.record_attempt(
            conn, claim=stale, attempt=None, delivered=False, error="late", retry_in=None
        )
    delivery = _one(engine, webhook)
    assert delivery.state == "delivered" and delivery.last_error is None


def test_concurrent_workers_deliver_each_delivery_once(engine: Engine, receiver: Receiver) -> None:
    webhook, _ = _webhook(engine, receiver.url)
    with engine.begin() as conn:
        alerts.enqueue(
            conn,
            org="acme",
            event_type="alert_raised",
            bodies=[{"id": str(n), "type": "alert_raised"} for n in range(40)],
        )
    policy = DeliveryPolicy(batch=3, timeout_seconds=5)

    def work() -> None:
        with httpx.Client(timeout=5) as http:
            deliver_due(engine, client=http, policy=policy)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    requests = receiver.wait_for(40)
    assert len(receiver.received) == 40
    ids = Counter(r.headers["usage-ledger-delivery"] for r in requests)
    assert len(ids) == 40 and set(ids.values()) == {1}
    states = Counter(d.state for d in _deliveries(engine, webhook))
    assert states == {"delivered": 40}


def test_a_revoked_webhooks_pending_deliveries_fail(
    engine: Engine, receiver: Receiver, http: httpx.Client
) -> None:
    webhook, _ = _webhook(engine, receiver.url)
    _cross_warning(engine)
    with engine.begin() as conn:
        alerts.revoke_webhook(conn, webhook_id=webhook.webhook_id, org="acme")
    deliver_due(engine, client=http, policy=QUICK)
    delivery = _one(engine, webhook)
    assert delivery.state == "failed" and delivery.last_error == "webhook revoked"
    assert delivery.log == ()
    assert receiver.received == []


def test_the_app_delivers_from_its_lifespan(engine: Engine, receiver: Receiver) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    app = create_app(engine, Settings(insecure_no_auth=True, expiry_sweep_seconds=60))
    with TestClient(app) as app_client:
        created = app_client.post("/v1/webhooks", json={"org": "acme", "url": receiver.url})
        assert created.status_code == 201, created.text
        _cross_warning(engine)
        [request] = receiver.wait_for(1)
        assert json.loads(request.body)["data"]["level"] == "warning"
        webhook_id = created.json()["webhook_id"]

        def delivered() -> dict[str, Any] | None:
            found = app_client.get(f"/v1/webhooks/{webhook_id}/deliveries").json()["deliveries"]
            return found[0] if found and found[0]["state"] == "delivered" else None

        assert eventually(delivered)["log"][0]["status_code"] == 200


def test_the_backoff_doubles_from_the_base_up_to_the_cap_with_jitter() -> None:
    policy = DeliveryPolicy(backoff_base_seconds=30, backoff_max_seconds=3600)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 30), (2, 60), (3, 120), (7, 1920), (8, 3600), (500, 3600)]:
        waits = [policy.backoff_seconds(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), attempt
        assert max(waits) - min(waits) > ceiling / 4  # jittered, not fixed


def test_a_signature_is_refused_when_old_or_malformed() -> None:
    body = b'{"a":1}'
    header = signing.sign("whsec_x", body, 1_000_000)
    assert signing.verify("whsec_x", body, header, now=1_000_100)
    assert not signing.verify("whsec_x", body, header, now=1_000_000 + 301)
    assert not signing.verify("whsec_x", body, "v1=" + header.split("v1=")[1], now=1_000_000)
    assert not signing.verify("whsec_x", body, "t=1000000", now=1_000_000)
    # Several v1 values (during a secret rotation) verify when one matches.
    assert signing.verify("whsec_x", body, header + ",v1=00ff", now=1_000_000)


def test_outbox_rows_are_written_with_the_event_or_not_at_all(engine: Engine) -> None:
    webhook, _ = _webhook(engine, "https://hooks.example/x")
    with engine.begin() as conn:
        make_budget(conn, subject=TEAM, limit_pico_usd=USD, mode="soft")
    with pytest.raises(RuntimeError), engine.begin() as conn:
        holds.record_usage(
            conn, org="acme", request_id="r1", subjects=[TEAM], cost_pico_usd=90 * CENT
        )
        raise RuntimeError("the charge's transaction rolls back")
    with engine.connect() as conn:
        assert conn.execute(select(webhook_outbox.c.delivery_id)).all() == []
    with engine.begin() as conn:
        holds.record_usage(
            conn, org="acme", request_id="r1", subjects=[TEAM], cost_pico_usd=90 * CENT
        )
    with engine.connect() as conn:
        [row] = conn.execute(select(webhook_outbox.c.webhook_id)).all()
    assert row.webhook_id == webhook.webhook_id
