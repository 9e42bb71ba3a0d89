"""An HTTP client over the app on a fresh database of its own."""

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
