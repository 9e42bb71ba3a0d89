"""The app with authentication on, over a fresh database of its own, and its API keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app


@pytest.fixture
def app(engine: Engine) -> FastAPI:
    return create_app(engine, Settings(), sweep=False)


@pytest.fixture
def api(app: FastAPI) -> Iterator[TestClient]:
    # A 500 is a response to assert on, not an exception to re-raise in the test.
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
