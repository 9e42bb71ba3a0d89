"""Engines for the configured database, or the embedded one started on demand."""

from __future__ import annotations

import atexit
import logging
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url

from app.config import Settings
from app.db.embedded import EmbeddedPostgres

log = logging.getLogger(__name__)

APP_ROLE = "usage_ledger_app"


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


class Database:
    """The database every command uses: the configured URL, else the embedded server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: EmbeddedPostgres | None = None
        if settings.database_url:
            self.url = normalise_url(settings.database_url)
        else:
            self.embedded = EmbeddedPostgres(settings.data_dir)
            log.info(
                "no database URL configured: starting embedded PostgreSQL in %s", settings.data_dir
            )
            self.url = self.embedded.start()
            atexit.register(self.close)

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


def make_engine(url: str, *, settings: Settings | None = None, app_role: bool = True) -> Engine:
    """An engine whose connections act as the application's role where the login may.

    Acting as ``usage_ledger_app`` means even a bug in the service cannot UPDATE or DELETE an
    event: the role holds INSERT and SELECT on ``ledger_events`` only (see docs/ledger.md).
    """
    settings = settings or Settings()
    engine = create_engine(
        normalise_url(url),
        pool_size=settings.pool_size,
        max_overflow=0,
        pool_timeout=10,
        pool_pre_ping=False,
        # Statement logs and error messages never show bound values: they carry webhook
        # signing secrets and callers' metadata.
        hide_parameters=True,
    )
    lock_timeout_ms = int(settings.lock_timeout_ms)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {lock_timeout_ms}")
            # Compiling a plan costs ~50 ms; no query of the service runs long enough to win it.
            cursor.execute("SET jit = off")
            if app_role:
                cursor.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)"
                    " AND pg_has_role(current_user, %s, 'MEMBER')",
                    (APP_ROLE, APP_ROLE),
                )
                row = cursor.fetchone()
                if row and row[0]:
                    cursor.execute(f"SET ROLE {APP_ROLE}")
        dbapi_connection.commit()

    return engine
