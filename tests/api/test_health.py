from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_the_database_and_migrations(client: TestClient, engine: Engine) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["migrations"] == "at head"
    with engine.begin() as conn:
        conn.execute(text("RESET ROLE"))
        conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    behind = client.get("/readyz")
    assert behind.status_code == 503


def test_unknown_path_is_a_problem_document(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"].endswith("/not-found")


def test_openapi_and_docs_are_served(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    paths = set(document["paths"])
    assert {
        "/v1/budgets",
        "/v1/budgets/{budget_id}",
        "/v1/reservations",
        "/v1/reservations/{reservation_id}/commit",
        "/v1/reservations/{reservation_id}/cancel",
        "/v1/reservations/{reservation_id}/extend",
        "/v1/usage",
        "/v1/quotes",
        "/v1/prices/overrides",
        "/healthz",
        "/readyz",
    } <= paths
    reserve = document["paths"]["/v1/reservations"]["post"]["responses"]
    assert {"201", "402", "409", "422"} <= set(reserve)
    assert client.get("/docs").status_code == 200
