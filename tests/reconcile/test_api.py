"""POST /v1/reconciliations and GET /v1/reconciliations/{id}: scopes, tenancy, errors."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.auth import service as auth
from tests.reconcile.helpers import ANTHROPIC_JSON, OPENAI_JSON, openai_scenario

URL = "/v1/reconciliations"


def _body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "org": "acme",
        "provider": "openai",
        "content": OPENAI_JSON.read_text(encoding="utf-8"),
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def _key(engine: Engine, scope: str, org: str | None = None) -> dict[str, str]:
    with engine.begin() as conn:
        _, key = auth.create_key(conn, scope=scope, org=org)
    return {"Authorization": f"Bearer {key}"}


def test_import_then_read_again(client: TestClient, engine: Engine) -> None:
    openai_scenario(engine)
    created = client.post(URL, json=_body())
    assert created.status_code == 201, created.text
    document = created.json()
    assert document["org"] == "acme"
    assert document["format"] == "openai-costs-json"
    assert document["period"] == {"from": "2026-11-01", "to": "2026-11-03"}
    assert document["totals"] == {
        "ledger_usd": "13.13525",
        "provider_usd": "13.31567",
        "difference_usd": "0.18042",
    }
    first = document["rows"][0]
    assert (first["day"], first["model"], first["status"]) == (
        "2026-11-01",
        "o3-mini",
        "ledger_only",
    )
    assert (first["ledger_usd"], first["provider_usd"], first["difference_usd"]) == (
        "0.5",
        "0",
        "-0.5",
    )
    assert [r["line_item"] for r in document["rows"] if r["model"] is None] == [
        "web search tool calls"
    ]

    again = client.post(URL, json=_body())
    assert again.status_code == 200
    assert again.json()["reconciliation_id"] == document["reconciliation_id"]
    assert again.json()["totals"] == document["totals"]

    read = client.get(f"{URL}/{document['reconciliation_id']}")
    assert read.status_code == 200
    assert read.json()["rows"] == document["rows"]


def test_an_explicit_period(client: TestClient) -> None:
    response = client.post(URL, json=_body(**{"from": "2026-11-02", "to": "2026-11-02"}))
    assert response.status_code == 201
    document = response.json()
    assert document["period"] == {"from": "2026-11-02", "to": "2026-11-02"}
    assert document["excluded"] == {"line_items": 6, "provider_usd": "5.01525"}
    conflict = client.post(URL, json=_body(**{"from": "2026-11-01"}))
    assert conflict.status_code == 409
    assert conflict.json()["reconciliation_id"] == document["reconciliation_id"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"provider": "azure"}, "provider"),
        ({"provider": None}, "provider"),
        ({"content": ""}, "content"),
        ({"content": None}, "content"),
        ({"content": '{"data": [{"start_time": 1793491200, "end_time": 1}]}'}, "content"),
        ({"provider": "anthropic"}, "provider"),
        ({"from": "2026-11-03", "to": "2026-11-01"}, "to"),
        ({"from": "November"}, "from"),
        ({"org": None}, "org"),
        ({"org": "no spaces"}, "org"),
        ({"format": "csv"}, "format"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    client: TestClient, overrides: dict[str, Any], field: str
) -> None:
    body = _body()
    for name, value in overrides.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    response = client.post(URL, json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["field"] == field
    assert problem["type"].startswith("https://usage-ledger.dev/problems/")


def test_a_bad_file_says_where_in_it(client: TestClient) -> None:
    content = OPENAI_JSON.read_text(encoding="utf-8").replace('"usd"', '"eur"', 1)
    problem = client.post(URL, json=_body(content=content)).json()
    assert problem["type"].endswith("/invalid-export")
    assert problem["field"] == "content"
    assert problem["location"] == "data[0].results[0].amount.currency"


def test_an_unknown_reconciliation_is_404(client: TestClient) -> None:
    response = client.get(f"{URL}/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert response.json()["type"].endswith("/reconciliation-not-found")


def test_scopes_and_tenant_confinement(secured: TestClient, engine: Engine) -> None:
    acme_admin = _key(engine, "admin", "acme")
    body = _body(org=None)
    assert secured.post(URL, json=body, headers=_key(engine, "reader", "acme")).status_code == 403
    assert secured.post(URL, json=body, headers=_key(engine, "gateway", "acme")).status_code == 403
    other_org = secured.post(URL, json=_body(org="globex"), headers=acme_admin)
    assert other_org.status_code == 403
    assert other_org.json()["field"] == "org"

    created = secured.post(URL, json=body, headers=acme_admin)
    assert created.status_code == 201
    assert created.json()["org"] == "acme"
    path = f"{URL}/{created.json()['reconciliation_id']}"
    assert secured.get(path, headers=_key(engine, "reader", "acme")).status_code == 200
    assert secured.get(path, headers=_key(engine, "reader")).status_code == 200
    hidden = secured.get(path, headers=_key(engine, "reader", "globex"))
    assert hidden.status_code == 404
    assert secured.get(path, headers=_key(engine, "gateway", "acme")).status_code == 403
    assert secured.get(path).status_code == 401

    # The same file for another org is that org's own reconciliation, not acme's.
    globex = secured.post(URL, json=_body(org="globex"), headers=_key(engine, "admin"))
    assert globex.status_code == 201
    assert globex.json()["reconciliation_id"] != created.json()["reconciliation_id"]


def test_an_anthropic_report_through_the_api(client: TestClient) -> None:
    body = _body(provider="anthropic", content=ANTHROPIC_JSON.read_text(encoding="utf-8"))
    document = client.post(URL, json=body).json()
    assert document["format"] == "anthropic-cost-report-json"
    assert document["totals"]["provider_usd"] == "47.982134560001"
    assert document["exact"] is True


def test_the_routes_are_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths[URL]) == {"post"}
    assert set(paths[URL + "/{reconciliation_id}"]) == {"get"}
