"""The webhook endpoints through HTTP: registration, listing, revocation, delivery log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.auth import service as auth
from app.budgets import holds
from app.budgets.model import Subject
from app.config import Settings
from app.main import create_app
from tests.factories import USD, make_budget

TEAM = Subject("team", "ml")


@pytest.fixture
def secured(engine: Engine) -> Iterator[TestClient]:
    app = create_app(engine, Settings(), sweep=False)
    with TestClient(app) as test_client:
        yield test_client


def _key(engine: Engine, scope: str, org: str | None = None) -> dict[str, str]:
    with engine.begin() as conn:
        _, key = auth.create_key(conn, scope=scope, org=org)
    return {"Authorization": f"Bearer {key}"}


def _cross_warning(engine: Engine, org: str = "acme") -> None:
    with engine.begin() as conn:
        make_budget(conn, org=org, subject=TEAM, limit_pico_usd=USD, mode="soft")
        holds.record_usage(
            conn, org=org, request_id="r1", subjects=[TEAM], cost_pico_usd=USD * 9 // 10
        )


def test_webhook_lifecycle(api: TestClient, engine: Engine) -> None:
    created = api.post(
        "/v1/webhooks",
        json={"org": "acme", "url": "https://hooks.example/a", "description": "pager"},
    )
    assert created.status_code == 201, created.text
    webhook = created.json()
    assert webhook["secret"].startswith("whsec_") and len(webhook["secret"]) > 40
    assert webhook["event_types"] == ["alert_raised"] and webhook["active"] is True
    webhook_id = webhook["webhook_id"]

    listed = api.get("/v1/webhooks").json()["webhooks"]
    assert [w["webhook_id"] for w in listed] == [webhook_id]
    assert "secret" not in listed[0]
    fetched = api.get(f"/v1/webhooks/{webhook_id}").json()
    assert fetched["description"] == "pager" and "secret" not in fetched

    assert api.get(f"/v1/webhooks/{webhook_id}/deliveries").json() == {"deliveries": []}
    _cross_warning(engine)
    [delivery] = api.get(f"/v1/webhooks/{webhook_id}/deliveries").json()["deliveries"]
    assert delivery["state"] == "pending" and delivery["attempts"] == 0
    assert delivery["payload"]["data"]["spent_usd"] == "0.9"
    assert delivery["log"] == []
    pending = api.get(f"/v1/webhooks/{webhook_id}/deliveries", params={"state": "pending"})
    assert len(pending.json()["deliveries"]) == 1
    delivered = api.get(f"/v1/webhooks/{webhook_id}/deliveries?state=delivered")
    assert delivered.json()["deliveries"] == []

    revoked = api.delete(f"/v1/webhooks/{webhook_id}")
    assert revoked.status_code == 200
    assert revoked.json()["active"] is False and revoked.json()["revoked_at"] is not None
    again = api.delete(f"/v1/webhooks/{webhook_id}")
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert api.get("/v1/webhooks").json()["webhooks"][0]["active"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://hooks.example/a"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "https://"}, "url"),
        ({"url": "https://hooks.example/a", "event_types": ["budget_defined"]}, "event_types[0]"),
        ({"url": "https://hooks.example/a", "event_types": []}, "event_types"),
        ({"url": "https://hooks.example/a", "secret": "mine"}, "secret"),
    ],
)
def test_invalid_webhooks_are_refused(api: TestClient, body: dict[str, object], field: str) -> None:
    response = api.post("/v1/webhooks", json={"org": "acme", **body})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["field"] == field


def test_an_unknown_webhook_is_a_404_problem(api: TestClient) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    for response in (
        api.get(f"/v1/webhooks/{missing}"),
        api.delete(f"/v1/webhooks/{missing}"),
        api.get(f"/v1/webhooks/{missing}/deliveries"),
    ):
        assert response.status_code == 404
        assert response.json()["type"].endswith("/webhook-not-found")
        assert response.json()["webhook_id"] == missing


def test_webhooks_are_confined_to_their_org(secured: TestClient, engine: Engine) -> None:
    acme_admin = _key(engine, "admin", "acme")
    globex_admin = _key(engine, "admin", "globex")
    created = secured.post(
        "/v1/webhooks", json={"url": "https://hooks.example/acme"}, headers=acme_admin
    )
    assert created.status_code == 201 and created.json()["org"] == "acme"
    webhook_id = created.json()["webhook_id"]
    _cross_warning(engine, org="acme")

    assert secured.get("/v1/webhooks", headers=globex_admin).json()["webhooks"] == []
    for response in (
        secured.get(f"/v1/webhooks/{webhook_id}", headers=globex_admin),
        secured.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=globex_admin),
        secured.delete(f"/v1/webhooks/{webhook_id}", headers=globex_admin),
    ):
        assert response.status_code == 404
    forbidden = secured.get("/v1/webhooks", params={"org": "acme"}, headers=globex_admin)
    assert forbidden.status_code == 403 and forbidden.json()["field"] == "org"
    other_org = secured.post(
        "/v1/webhooks",
        json={"org": "acme", "url": "https://hooks.example/x"},
        headers=globex_admin,
    )
    assert other_org.status_code == 403 and other_org.json()["field"] == "org"

    reader = _key(engine, "reader", "acme")
    deliveries = secured.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=reader)
    assert len(deliveries.json()["deliveries"]) == 1
    refused = secured.post("/v1/webhooks", json={"url": "https://h.example/"}, headers=reader)
    assert refused.status_code == 403 and refused.json()["required_scope"] == "admin"
    assert secured.delete(f"/v1/webhooks/{webhook_id}", headers=reader).status_code == 403
    gateway = _key(engine, "gateway", "acme")
    assert secured.get("/v1/webhooks", headers=gateway).status_code == 403

    unconfined = _key(engine, "admin")
    needs_org = secured.post(
        "/v1/webhooks", json={"url": "https://hooks.example/y"}, headers=unconfined
    )
    assert needs_org.status_code == 422 and needs_org.json()["field"] == "org"
    listed = secured.get("/v1/webhooks", headers=unconfined).json()["webhooks"]
    assert [w["org"] for w in listed] == ["acme"]
    assert secured.delete(f"/v1/webhooks/{webhook_id}", headers=acme_admin).status_code == 200
