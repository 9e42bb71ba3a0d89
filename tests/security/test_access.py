"""Access: every operation of the OpenAPI document refuses missing, malformed, revoked and
wrong-scope keys, and a key confined to one org reaches no other org's data through any path
id, query parameter, filter or body.

The operations are enumerated from ``app.openapi()`` and the scope of each from its route's
dependencies, so a new endpoint is tested as soon as it exists (and fails until it has an
example in tests/security/world.py).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app.auth import service as auth
from tests.factories import wait_until_settled
from tests.security.operations import Operation, operations
from tests.security.world import (
    EXAMPLES,
    SCOPES,
    A,
    Answer,
    B,
    World,
    body,
    build_world,
    create_key,
    example,
    headers,
    url,
)

PUBLIC = {"GET /healthz", "GET /readyz"}
"""Operations outside /v1, which need no key."""
ANY_SCOPE = {"GET /v1/reservations/{reservation_id}"}
"""Operations any valid key may call (docs/api.md: "any scope")."""
TENANT_FILTERS = ("request_id", "subject_id", "subject_type", "endpoint", "tag")
"""Query parameters that select an org's rows: given B's values, an A key must see none."""
NEUTRAL = {"from", "to", "granularity", "group_by", "tz", "format", "by", "limit", "after"}
NEUTRAL |= {"state", "model", "provider", "call_type"}
"""Query parameters that shape a read but select no org."""


def _v1(app: FastAPI) -> list[Operation]:
    return [o for o in operations(app) if o.path.startswith("/v1/")]


def _call(
    api: TestClient,
    operation: Operation,
    key: str | None,
    ids: dict[str, str],
    *,
    query: dict[str, str] | None = None,
    json: dict[str, Any] | None = None,
    authorization: str | None = None,
) -> Answer:
    sent = headers(key) if key else {}
    if authorization is not None:
        sent = {"Authorization": authorization}
    return api.request(operation.method, url(operation, ids), params=query, json=json, headers=sent)


def test_every_operation_has_an_example_a_key_requirement_and_a_sane_scope(
    app: FastAPI,
) -> None:
    found = operations(app)
    v1 = {o.key: o for o in found if o.path.startswith("/v1/")}
    missing = sorted(set(v1) - set(EXAMPLES))
    assert not missing, "add an example for " + ", ".join(missing) + " to tests/security/world.py"
    stale = sorted(set(EXAMPLES) - set(v1))
    assert not stale, f"examples for operations that no longer exist: {stale}"
    public = {o.key for o in found if not o.path.startswith("/v1/")}
    assert public <= PUBLIC, f"operations outside /v1 (which need no key): {public - PUBLIC}"
    for key, operation in v1.items():
        assert operation.authenticated, f"{key} does not authenticate its caller"
        if operation.scope is None:
            assert key in ANY_SCOPE, f"{key} admits any valid key: require() a scope"
        if operation.method != "GET":
            assert operation.scope in ("gateway", "admin"), f"{key} writes with {operation.scope}"


def _unauthorized(response: Answer) -> bool:
    return response.status_code == 401 and response.json()["type"].endswith("/unauthorized")


def test_every_operation_refuses_missing_malformed_revoked_and_wrong_scope_keys(
    api: TestClient, app: FastAPI, engine: Engine
) -> None:
    keys = {scope: create_key(engine, scope) for scope in SCOPES}
    revoked = create_key(engine, "admin")
    with engine.begin() as conn:
        auth.revoke_key(conn, key_id=revoked.split("_")[1])
    wrong_secret = "_".join(keys["admin"].split("_")[:2]) + "_" + secrets.token_urlsafe(32)
    refused = {
        "no key": None,
        "empty bearer": "Bearer ",
        "basic scheme": "Basic " + keys["admin"],
        "malformed key": "Bearer not-a-key",
        "unknown key id": "Bearer ulk_000000000000_" + secrets.token_urlsafe(32),
        "wrong secret": "Bearer " + wrong_secret,
        "revoked key": "Bearer " + revoked,
    }
    ids = {name: str(uuid.uuid4()) for name in ("budget_id", "webhook_id", "reservation_id")}
    ids |= {"reconciliation_id": str(uuid.uuid4()), "request_id": "no-such-request"}
    failures = []
    for operation in _v1(app):
        sent = body(operation, A)
        for label, authorization in refused.items():
            response = _call(
                api, operation, None, ids, json=sent, authorization=authorization or ""
            )
            if not _unauthorized(response):
                failures.append(f"{operation.key} with {label}: {response.status_code}")
        for scope, key in keys.items():
            response = _call(api, operation, key, ids, json=sent)
            allowed = operation.scope in (None, scope) or scope == "admin"
            if allowed and response.status_code in (401, 403):
                failures.append(f"{operation.key} refuses a {scope} key: {response.text}")
            if not allowed and (
                response.status_code != 403
                or response.json().get("required_scope") != operation.scope
            ):
                failures.append(f"{operation.key} admits a {scope} key: {response.status_code}")
    assert not failures, "\n".join(failures)


def _leaks(response: Answer, markers: set[str], asked: str) -> list[str]:
    """Org B's strings in a response, beyond those the request itself named."""
    return sorted(m for m in markers if m in response.text and m not in asked)


def _rows_of(engine: Engine, org: str) -> dict[str, str]:
    """A digest of every row of every table with an org column, for ``org``."""
    with engine.connect() as conn:
        tables = conn.execute(
            text(
                "SELECT table_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND column_name = 'org' ORDER BY 1"
            )
        ).scalars()
        return {
            table: conn.execute(
                text(
                    f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), ''))"
                    f' FROM "{table}" t WHERE org = :org'
                ),
                {"org": org},
            ).scalar_one()
            for table in list(tables)
        }


def _filter_values(world: World) -> dict[str, str]:
    other = world.tenants[B].ids
    return {
        "request_id": other["request_id"],
        "subject_id": f"{B}-team",
        "subject_type": "team",
        "endpoint": f"/{B}/chat",
        "tag": f"{B}-tag",
    }


def _check_read(
    api: TestClient, world: World, operation: Operation, key: str, failures: list[str]
) -> None:
    ours, theirs = world.tenants[A].ids, world.tenants[B].ids
    markers = world.markers(B) | {f"/{B}/chat", f"{B}-tag"}
    query = example(operation).query
    own = _call(api, operation, key, ours, query=query)
    if own.status_code != 200 or _leaks(own, markers, ""):
        failures.append(f"{operation.key} of org A: {own.status_code} {_leaks(own, markers, '')}")
    if operation.path_params:
        asked = url(operation, theirs)
        other = _call(api, operation, key, theirs, query=query)
        if other.status_code not in (403, 404) or _leaks(other, markers, asked):
            failures.append(f"{operation.key} with org B's ids: {other.status_code} {other.text}")
    for name in operation.query_params:
        if name == "org":
            refused = _call(api, operation, key, ours, query={**query, "org": B})
            if refused.status_code != 403 or refused.json().get("field") != "org":
                failures.append(f"{operation.key}?org={B}: {refused.status_code} {refused.text}")
        elif name in TENANT_FILTERS:
            value = _filter_values(world)[name]
            filtered = _call(api, operation, key, ours, query={**query, name: value})
            # 422 too: a report refuses some combinations (a tag with a subject breakdown).
            if filtered.status_code not in (200, 404, 422) or _leaks(filtered, markers, value):
                failures.append(f"{operation.key}?{name}={value}: {filtered.text}")
        elif name not in NEUTRAL:
            failures.append(
                f"{operation.key}: classify query parameter {name!r} in TENANT_FILTERS or "
                "NEUTRAL (tests/security/test_access.py)"
            )


def _check_read_is_not_vacuous(
    api: TestClient, world: World, operation: Operation, failures: list[str]
) -> None:
    """The unconfined admin does see org B through the same call, so the scan above could
    see a leak; or, for a read naming no org (aggregates), org A's key reads exactly what the
    admin reads with ``org=A``, which differs from org B's."""
    if example(operation).global_reason:
        return
    theirs = world.tenants[B].ids
    query = example(operation).query
    seen = _call(api, operation, world.admin, theirs, query=query)
    if seen.status_code == 200 and _leaks(seen, world.markers(B), ""):
        return
    if "org" in operation.query_params:
        ours = world.tenants[A].ids
        confined = _call(api, operation, world.tenants[A].keys["admin"], ours, query=query)
        as_a, as_b = (
            _call(api, operation, world.admin, ours, query={**query, "org": org}).json()
            for org in (A, B)
        )
        if confined.status_code == 200 and confined.json() == as_a != as_b:
            return
    failures.append(f"{operation.key}: cannot tell org B's data in its answer")


def _check_write(
    api: TestClient, world: World, operation: Operation, key: str, failures: list[str]
) -> None:
    ours, theirs = world.tenants[A].ids, world.tenants[B].ids
    confined = False
    if operation.path_params:
        confined = True
        asked = url(operation, theirs)
        other = _call(api, operation, key, theirs, json=body(operation, None))
        if other.status_code not in (403, 404) or _leaks(other, world.markers(B), asked):
            failures.append(f"{operation.key} on org B's ids: {other.status_code} {other.text}")
    if "org" in operation.body_properties:
        confined = True
        refused = _call(api, operation, key, ours, json=body(operation, B))
        if refused.status_code != 403 or refused.json().get("field") != "org":
            failures.append(f"{operation.key} naming org B: {refused.status_code} {refused.text}")
    if not confined and not example(operation).global_reason:
        failures.append(
            f"{operation.key} names neither an org nor an id: how is it confined? "
            "(give its example a global_reason if it touches no org's data)"
        )


def test_a_confined_key_reaches_no_other_orgs_data_through_any_operation(
    api: TestClient, app: FastAPI, engine: Engine
) -> None:
    world = build_world(api, engine)
    wait_until_settled(engine)  # so /v1/events pages show every event written above
    before = _rows_of(engine, B)
    failures: list[str] = []
    for operation in _v1(app):
        scopes = {operation.scope or "reader", "admin"}
        for scope in sorted(scopes):
            key = world.tenants[A].keys[scope]
            if operation.method == "GET":
                _check_read(api, world, operation, key, failures)
            else:
                _check_write(api, world, operation, key, failures)
        if operation.method == "GET":
            _check_read_is_not_vacuous(api, world, operation, failures)
    assert not failures, "\n".join(failures)
    assert _rows_of(engine, B) == before, "a confined key changed another org's rows"
