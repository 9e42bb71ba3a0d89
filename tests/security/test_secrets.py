"""Secrets: an API key's secret is stored only as a hash and never reaches a log line (the
app's, SQLAlchemy's or uvicorn's access log, at DEBUG), an event, a response or any table; a
webhook's signing secret appears in its creation response only."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, text

from app.auth import service as auth
from tests.security.world import USAGE, A, create_key, headers


@contextmanager
def _serving(app: FastAPI) -> Iterator[str]:
    """The app behind a real uvicorn server, so its access log is written as in production."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, log_level="debug")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _secret(key: str) -> str:
    return key.split("_", 2)[2]


def _tables_holding(engine: Engine, needle: str) -> list[str]:
    with engine.connect() as conn:
        tables = conn.execute(
            text(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
            )
        ).scalars()
        return [
            table
            for table in list(tables)
            if conn.execute(
                text(f'SELECT count(*) FROM "{table}" t WHERE strpos(t::text, :needle) > 0'),
                {"needle": needle},
            ).scalar_one()
        ]


def test_key_secrets_reach_no_log_event_response_or_table(
    app: FastAPI, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error", "sqlalchemy.engine"):
        caplog.set_level(logging.DEBUG, logger=name)
    admin = create_key(engine, "admin")
    gateway = create_key(engine, "gateway", A)
    reader = create_key(engine, "reader", A)
    revoked = create_key(engine, "gateway", A)
    with engine.begin() as conn:
        auth.revoke_key(conn, key_id=revoked.split("_")[1])
    keys = [admin, gateway, reader, revoked]
    wrong = f"ulk_{admin.split('_')[1]}_{secrets.token_urlsafe(32)}"
    answers: list[httpx.Response] = []
    with _serving(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        created = http.post(
            "/v1/webhooks",
            json={"org": A, "url": "https://acme.example/hook"},
            headers=headers(admin),
        )
        assert created.status_code == 201, created.text
        webhook_secret = created.json()["secret"]

        def call(method: str, path: str, key: str, **kwargs: object) -> httpx.Response:
            response = http.request(method, path, headers=headers(key), **kwargs)  # type: ignore[arg-type]
            answers.append(response)
            return response

        budget = {"subject": {"type": "team", "id": "ml"}, "limit_usd": "0.001", "mode": "soft"}
        made = call("POST", "/v1/budgets", admin, json={"org": A, **budget, "period": "month"})
        assert made.status_code == 201, made.text
        usage = {"request_id": "r-1", "subjects": [budget["subject"]], "model": "gpt-4o"}
        assert call("POST", "/v1/usage", gateway, json={**usage, "usage": USAGE}).is_success
        hold = call(
            "POST",
            "/v1/reservations",
            gateway,
            json={"request_id": "r-2", "subjects": [budget["subject"]], "amount_usd": "0.05"},
        ).json()
        path = f"/v1/reservations/{hold['reservation_id']}/commit"
        assert call("POST", path, gateway, json={"usage": USAGE, "model": "gpt-4o"}).is_success
        for read in ("/v1/budgets", "/v1/events", "/v1/requests/r-1", "/v1/webhooks"):
            assert call("GET", read, reader).status_code == 200, read
        webhook_id = created.json()["webhook_id"]
        assert call("GET", f"/v1/webhooks/{webhook_id}/deliveries", reader).status_code == 200
        # Refusals: a real key id with a wrong secret, a revoked key, the wrong scope, bad input.
        assert call("GET", "/v1/budgets", wrong).status_code == 401
        assert call("GET", "/v1/budgets", revoked).status_code == 401
        assert call("POST", "/v1/budgets", reader, json=budget).status_code == 403
        assert call("POST", "/v1/usage", gateway, json={**usage, "usage": {"x": 1}}).is_error
        answers.append(http.get("/v1/budgets", headers={"Authorization": f"Basic {admin}"}))
    assert any(r.name == "uvicorn.access" for r in caplog.records), "no access log captured"
    assert any(r.name.startswith("sqlalchemy.engine") for r in caplog.records)
    logged = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    with engine.connect() as conn:
        payloads = " ".join(conn.execute(text("SELECT payload::text FROM ledger_events")).scalars())
        rows = conn.execute(text("SELECT key_id, secret_hash FROM api_keys")).all()
    stored: dict[str, str] = {row.key_id: row.secret_hash for row in rows}
    assert payloads, "no events were written"
    for key in [*keys, wrong]:
        for needle in (key, _secret(key)):
            assert needle not in logged, "a key secret was logged"
            assert needle not in payloads, "a key secret is in an event"
            for response in answers:
                assert needle not in response.text, f"a key secret answered {response.url}"
                assert needle not in str(response.headers)
            assert not _tables_holding(engine, needle), "a key secret is stored"
    for key in keys:
        key_id = key.split("_")[1]
        assert stored[key_id] == hashlib.sha256(_secret(key).encode()).hexdigest()
    assert webhook_secret not in payloads, "a webhook secret is in an event"
    # SQLAlchemy at DEBUG logs the rows it reads, and signing a delivery reads the webhook's
    # secret: that opt-in dump aside, no log line holds it (bound values are hidden).
    lines = [
        caplog.handler.format(r)
        for r in caplog.records
        if not (r.name.startswith("sqlalchemy.engine") and r.levelno == logging.DEBUG)
    ]
    assert webhook_secret not in "\n".join(lines), "a webhook secret was logged"
    for response in answers:
        assert webhook_secret not in response.text, f"the webhook secret answered {response.url}"
