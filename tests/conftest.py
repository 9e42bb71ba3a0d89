"""Database fixtures: a real PostgreSQL always, and never a database the tests did not create.

The server is, in order: $TEST_DATABASE_URL; 127.0.0.1:5432 if it answers within a few
seconds (unless $TEST_EMBEDDED is set); else an embedded server in a temporary directory.
A template database is migrated once per session; tests that need real commits get their own
clone, the rest share one clone inside an outer transaction rolled back after each test.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import Connection, Engine, event, make_url

from app.config import Settings
from app.db import migrate
from app.db.embedded import EmbeddedPostgres
from app.db.engine import make_engine


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str
    password: str | None

    def url(self, dbname: str) -> str:
        auth = self.user + (f":{self.password}" if self.password else "")
        if self.host.startswith("/"):
            return f"postgresql+psycopg://{auth}@/{dbname}?host={self.host}&port={self.port}"
        return f"postgresql+psycopg://{auth}@{self.host}:{self.port}/{dbname}"

    def janitor(
        self, dbname: str, *, template: str | None = None, as_template: bool = False
    ) -> DatabaseJanitor:
        return DatabaseJanitor(
            user=self.user,
            host=self.host,
            port=self.port,
            password=self.password,
            dbname=dbname,
            template_dbname=template,
            as_template=as_template,
        )


def _reachable(host: str, port: int, user: str) -> bool:
    try:
        with psycopg.connect(host=host, port=port, user=user, dbname="postgres", connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    explicit = os.environ.get("TEST_DATABASE_URL")
    if explicit:
        url = make_url(explicit)
        yield Server(
            url.host or "127.0.0.1", url.port or 5432, url.username or "postgres", url.password
        )
        return
    # TEST_EMBEDDED=1 skips the local server, as on a machine where none runs.
    if not os.environ.get("TEST_EMBEDDED") and _reachable("127.0.0.1", 5432, "postgres"):
        yield Server("127.0.0.1", 5432, "postgres", None)
        return
    with tempfile.TemporaryDirectory(prefix="ul-test-pg-") as directory:
        embedded = EmbeddedPostgres(Path(directory))
        embedded.start()
        try:
            yield Server(str(embedded.socket_dir), 5432, "postgres", None)
        finally:
            embedded.stop()


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> Iterator[str]:
    name = f"ul_tmpl_{uuid.uuid4().hex[:12]}"
    janitor = pg_server.janitor(name, as_template=True)
    janitor.init()
    try:
        migrate.upgrade(pg_server.url(name))
        yield name
    finally:
        janitor.drop()


@pytest.fixture
def db_url(pg_server: Server, template_db: str) -> Iterator[str]:
    """A fresh database of our own, cloned from the migrated template."""
    name = f"ul_test_{uuid.uuid4().hex[:12]}"
    janitor = pg_server.janitor(name, template=template_db)
    janitor.init()
    try:
        yield pg_server.url(name)
    finally:
        janitor.drop()


def _without_commit_flush(engine: Engine) -> Engine:
    """Tests wait for no WAL flush at commit: locks, isolation and atomicity are unchanged,
    only durability against a power cut is, which no test here exercises."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = off")
        dbapi_connection.commit()

    return engine


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = _without_commit_flush(
        make_engine(db_url, settings=Settings(pool_size=70, lock_timeout_ms=20000))
    )
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def shared_engine(pg_server: Server, template_db: str) -> Iterator[Engine]:
    name = f"ul_shared_{uuid.uuid4().hex[:12]}"
    janitor = pg_server.janitor(name, template=template_db)
    janitor.init()
    engine = make_engine(pg_server.url(name), settings=Settings(pool_size=4))
    try:
        yield engine
    finally:
        engine.dispose()
        janitor.drop()


@pytest.fixture
def conn(shared_engine: Engine) -> Iterator[Connection]:
    """A connection inside a transaction that is rolled back after the test."""
    with shared_engine.connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            transaction.rollback()
