"""What every command does first: settings, then the one database they all share."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

from app.config import Settings
from app.db import migrate
from app.db.engine import Database, make_engine


@contextmanager
def open_database(ns: argparse.Namespace, *, as_owner: bool = False) -> Iterator[Engine]:
    """The configured database (or the embedded one), migrated to head, as an engine.

    ``as_owner`` keeps the login's own role instead of the service's, for the few commands
    that change the schema (archiving partitions)."""
    settings = Settings.from_namespace(ns)
    database = Database(settings)
    try:
        migrate.upgrade(database.url)
        engine = make_engine(database.url, settings=settings, app_role=not as_owner)
        try:
            yield engine
        finally:
            engine.dispose()
    finally:
        database.close()
