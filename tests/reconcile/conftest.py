"""HTTP clients over the app on a fresh database: without auth, and with API keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    app = create_app(engine, Settings(insecure_no_auth=True), sweep=False)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def secured(engine: Engine) -> Iterator[TestClient]:
    app = create_app(engine, Settings(), sweep=False)
    with TestClient(app) as test_client:
        yield test_client
