"""API keys: scopes, revocation, and tenant confinement through every endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app.auth import service as auth
from app.config import Settings
from app.main import create_app


@pytest.fixture
def secured(engine: Engine) -> Iterator[TestClient]:
    app = create_app(engine, Settings(), sweep=False)
    with TestClient(app) as test_client:
        yield test_client


def _key(engine: Engine, scope: str, org: str | None = None) -> dict[str, str]:
    with engine.begin() as conn:
        _, key = auth.create_key(conn, scope=scope, org=org)
    return {"Authorization": f"Bearer {key}"}


def _budget_body(org: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": {"type": "team", "id": "ml"},
        "limit_usd": "5",
        "period": "month",
    }
    if org:
        body["org"] = org
    return body


def test_missing_malformed_unknown_and_revoked_keys_are_401(
    secured: TestClient, engine: Engine
) -> None:
    assert secured.get("/v1/budgets").status_code == 401
    assert secured.get("/v1/budgets", headers={"Authorization": "Basic x"}).status_code == 401
    assert (
        secured.get("/v1/budgets", headers={"Authorization": "Bearer ulk_nope_nope"}).status_code
        == 401
    )
    headers = _key(engine, "reader")
    assert secured.get("/v1/budgets", headers=headers).status_code == 200
    key_id = headers["Authorization"].split("_")[1]
    with engine.begin() as conn:
        auth.revoke_key(conn, key_id=key_id)
    response = secured.get("/v1/budgets", headers=headers)
    assert response.status_code == 401
    assert response.json()["type"].endswith("/unauthorized")


def test_keys_are_stored_hashed(engine: Engine) -> None:
    headers = _key(engine, "admin")
    secret = headers["Authorization"].rsplit("_", 1)[1]
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT secret_hash FROM api_keys")).scalars().all()
    assert all(secret not in value for value in stored)


def test_scopes(secured: TestClient, engine: Engine) -> None:
    reader, gateway, admin = (_key(engine, s) for s in ("reader", "gateway", "admin"))
    assert secured.post("/v1/budgets", json=_budget_body("acme"), headers=reader).status_code == 403
    assert (
        secured.post("/v1/budgets", json=_budget_body("acme"), headers=gateway).status_code == 403
    )
    assert secured.post("/v1/budgets", json=_budget_body("acme"), headers=admin).status_code == 201
    quote = {"model": "gpt-4o", "usage": {"prompt_tokens": 10, "completion_tokens": 1}}
    assert secured.post("/v1/quotes", json=quote, headers=reader).status_code == 403
    assert secured.post("/v1/quotes", json=quote, headers=gateway).status_code == 200
    assert secured.get("/v1/budgets", headers=gateway).status_code == 403


def test_a_confined_key_sees_and_touches_only_its_org(secured: TestClient, engine: Engine) -> None:
    admin = _key(engine, "admin")
    theirs = secured.post("/v1/budgets", json=_budget_body("globex"), headers=admin).json()
    acme_admin = _key(engine, "admin", org="acme")
    acme_reader = _key(engine, "reader", org="acme")
    acme_gateway = _key(engine, "gateway", org="acme")
    ours = secured.post("/v1/budgets", json=_budget_body(), headers=acme_admin)
    assert ours.status_code == 201 and ours.json()["org"] == "acme"
    # Writes naming another org are refused; reads of another org's data are not found.
    assert (
        secured.post("/v1/budgets", json=_budget_body("globex"), headers=acme_admin).status_code
        == 403
    )
    assert secured.get(f"/v1/budgets/{theirs['budget_id']}", headers=acme_reader).status_code == 404
    assert (
        secured.patch(
            f"/v1/budgets/{theirs['budget_id']}", json={"limit_usd": "0"}, headers=acme_admin
        ).status_code
        == 404
    )
    listed = secured.get("/v1/budgets", headers=acme_reader).json()["budgets"]
    assert {b["org"] for b in listed} == {"acme"}
    assert (
        secured.get("/v1/budgets", params={"org": "globex"}, headers=acme_reader).status_code == 403
    )
    # A reservation of globex cannot be committed, cancelled or read with acme's key.
    globex_gateway = _key(engine, "gateway", org="globex")
    reservation = secured.post(
        "/v1/reservations",
        headers=globex_gateway,
        json={
            "request_id": "g-1",
            "subjects": [{"type": "team", "id": "ml"}],
            "amount_usd": "0.10",
        },
    ).json()
    rid = reservation["reservation_id"]
    for path in (
        f"/v1/reservations/{rid}/commit",
        f"/v1/reservations/{rid}/cancel",
        f"/v1/reservations/{rid}/extend",
    ):
        response = secured.post(
            path,
            headers=acme_gateway,
            json={"usage": {"prompt_tokens": 1}} if "commit" in path else {},
        )
        assert response.status_code == 404, (path, response.text)
    assert secured.get(f"/v1/reservations/{rid}", headers=acme_gateway).status_code == 404
    same_id = secured.post(
        "/v1/reservations",
        headers=acme_gateway,
        json={
            "request_id": "g-1",
            "org": "globex",
            "subjects": [{"type": "team", "id": "ml"}],
            "amount_usd": "0.10",
        },
    )
    assert same_id.status_code == 403
