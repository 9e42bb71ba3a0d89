"""Two tenants with data behind every endpoint, their keys, and an example request for every
operation of the API.

``EXAMPLES`` must name every operation under /v1: tests/security/test_access.py fails for an
operation without one, so a new endpoint is covered by the access tests as soon as it exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.auth import service as auth
from tests.security.operations import Operation

A = "acme"
B = "globex"
SCOPES = ("gateway", "reader", "admin")
EXPORT = Path(__file__).parents[1] / "reconcile" / "data" / "openai_costs_2026-11-01_03.csv"
USAGE = {"prompt_tokens": 1000, "completion_tokens": 500}


class Answer(Protocol):
    """A test client's response (httpx's or httpx2's, whichever starlette's client uses)."""

    status_code: int

    @property
    def text(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def json(self) -> Any: ...


@dataclass(frozen=True)
class Example:
    """A request an org-A key may make: its body (``org`` is added where needed) and the query
    it reads with. ``global_reason`` marks an operation on deployment-wide data, not an org's."""

    body: dict[str, Any] | None = None
    query: dict[str, str] = field(default_factory=dict)
    global_reason: str | None = None


def _subjects(org: str) -> list[dict[str, str]]:
    return [{"type": "team", "id": f"{org}-team"}]


EXAMPLES: dict[str, Example] = {
    "POST /v1/budgets": Example(
        {"subject": {"type": "team", "id": "acme-new"}, "limit_usd": "5", "period": "month"}
    ),
    "GET /v1/budgets": Example(),
    "GET /v1/budgets/{budget_id}": Example(),
    "PATCH /v1/budgets/{budget_id}": Example({"limit_usd": "6"}),
    "GET /v1/budgets/{budget_id}/status": Example(),
    "POST /v1/webhooks": Example({"url": "https://acme.example/other-hook"}),
    "GET /v1/webhooks": Example(),
    "GET /v1/webhooks/{webhook_id}": Example(),
    "DELETE /v1/webhooks/{webhook_id}": Example(),
    "GET /v1/webhooks/{webhook_id}/deliveries": Example(),
    "POST /v1/reservations": Example(
        {"request_id": "acme-new-hold", "subjects": _subjects(A), "amount_usd": "0.01"}
    ),
    "GET /v1/reservations/{reservation_id}": Example(),
    "POST /v1/reservations/{reservation_id}/commit": Example({"usage": USAGE}),
    "POST /v1/reservations/{reservation_id}/cancel": Example({}),
    "POST /v1/reservations/{reservation_id}/extend": Example({"ttl_seconds": 60}),
    "POST /v1/usage": Example(
        {
            "request_id": "acme-new-usage",
            "subjects": _subjects(A),
            "model": "gpt-4o",
            "usage": USAGE,
        }
    ),
    "POST /v1/usage:batch": Example(
        {
            "records": [
                {
                    "request_id": "acme-batch-1",
                    "subjects": _subjects(A),
                    "model": "gpt-4o",
                    "usage": USAGE,
                }
            ]
        }
    ),
    "POST /v1/quotes": Example(
        {"model": "gpt-4o", "usage": USAGE}, global_reason="prices a usage; reads no org's data"
    ),
    "POST /v1/prices/overrides": Example(
        {"model_key": "ft:gpt-4o:acme:v2", "fields": {"input_cost_per_token": "0.000001"}},
        global_reason="price overrides apply to every org (unconfined admin keys only)",
    ),
    "GET /v1/prices/overrides": Example(global_reason="price overrides apply to every org"),
    "GET /v1/reports/spend": Example(query={"group_by": "subject_type,subject_id,model"}),
    "GET /v1/reports/top": Example(),
    "GET /v1/reports/insights": Example(),
    "POST /v1/reconciliations": Example(
        {"provider": "openai", "content": EXPORT.read_text(encoding="utf-8"), "from": "2026-11-02"}
    ),
    "GET /v1/reconciliations/{reconciliation_id}": Example(),
    "GET /v1/events": Example(),
    "GET /v1/requests/{request_id}": Example(),
}


@dataclass
class Tenant:
    org: str
    keys: dict[str, str]
    """Full API keys of each scope, confined to this org."""
    ids: dict[str, str]
    """A path parameter's name -> this org's value of it."""


@dataclass
class World:
    admin: str
    """An unconfined admin key."""
    tenants: dict[str, Tenant]

    def markers(self, org: str) -> set[str]:
        """Strings that appear only in ``org``'s data: its name, ids and subject ids."""
        tenant = self.tenants[org]
        return {org, f"{org}-team", *tenant.ids.values()}


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create_key(engine: Engine, scope: str, org: str | None = None) -> str:
    with engine.begin() as conn:
        _, key = auth.create_key(conn, scope=scope, org=org)
    return key


def _created(api: TestClient, key: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(path, json=body, headers=headers(key))
    assert response.status_code in (200, 201), (path, response.text)
    created: dict[str, Any] = response.json()
    return created


def _tenant(api: TestClient, engine: Engine, admin: str, org: str) -> Tenant:
    keys = {scope: create_key(engine, scope, org) for scope in SCOPES}
    gateway = keys["gateway"]
    webhook = _created(api, admin, "/v1/webhooks", {"org": org, "url": f"https://{org}.example/h"})
    # A soft budget far below the usage: alerts are raised, so the webhook has deliveries.
    budget = _created(
        api,
        admin,
        "/v1/budgets",
        {
            "org": org,
            "subject": _subjects(org)[0],
            "limit_usd": "0.001",
            "period": "month",
            "mode": "soft",
        },
    )
    usage_body = {
        "request_id": f"{org}-usage-1",
        "subjects": _subjects(org),
        "model": "gpt-4o",
        # Different figures per org, so that aggregates of one differ from the other's.
        "usage": {"prompt_tokens": 1000 + len(org), "completion_tokens": 500},
        "metadata": {"endpoint": f"/{org}/chat", "tags": [f"{org}-tag"]},
    }
    _created(api, gateway, "/v1/usage", usage_body)
    hold = _created(
        api,
        gateway,
        "/v1/reservations",
        {
            "request_id": f"{org}-hold-1",
            "subjects": _subjects(org),
            "model": "gpt-4o",
            "amount_usd": "0.05",
        },
    )
    reconciliation = _created(
        api,
        admin,
        "/v1/reconciliations",
        {"org": org, "provider": "openai", "content": EXPORT.read_text(encoding="utf-8")},
    )
    ids = {
        "budget_id": budget["budget_id"],
        "webhook_id": webhook["webhook_id"],
        "reservation_id": hold["reservation_id"],
        "reconciliation_id": reconciliation["reconciliation_id"],
        "request_id": f"{org}-usage-1",
    }
    return Tenant(org, keys, ids)


def build_world(api: TestClient, engine: Engine) -> World:
    """Orgs A and B, each with a webhook, a budget, a usage, a held reservation and a
    reconciliation; and one deployment-wide price override."""
    admin = create_key(engine, "admin")
    _created(
        api,
        admin,
        "/v1/prices/overrides",
        {"model_key": "ft:gpt-4o:shared:v1", "fields": {"input_cost_per_token": "0.000001"}},
    )
    return World(admin, {org: _tenant(api, engine, admin, org) for org in (A, B)})


def example(operation: Operation) -> Example:
    found = EXAMPLES.get(operation.key)
    assert found is not None, (
        f"add an example for {operation.key} to EXAMPLES in tests/security/world.py"
    )
    return found


def url(operation: Operation, ids: dict[str, str]) -> str:
    path = operation.path
    for name in operation.path_params:
        assert name in ids, (
            f"{operation.key}: no id for path parameter {name!r}; create one in _tenant()"
        )
        path = path.replace("{" + name + "}", ids[name])
    return path


def body(operation: Operation, org: str | None) -> dict[str, Any] | None:
    """The example's body, naming ``org`` when the operation's body has an org."""
    base = example(operation).body
    if base is None:
        return None
    if org is not None and "org" in operation.body_properties:
        return {"org": org, **base}
    return dict(base)
