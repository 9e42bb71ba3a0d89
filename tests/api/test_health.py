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
