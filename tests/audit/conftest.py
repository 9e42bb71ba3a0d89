"""The table owner's engine, to tamper with the ledger as a superuser would."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine

from app.db.engine import normalise_url


@pytest.fixture
def owner(db_url: str) -> Iterator[Engine]:
    """The login's own role (a superuser in the test server), not the service's."""
    engine = create_engine(normalise_url(db_url))
    try:
        yield engine
    finally:
        engine.dispose()
