"""Engines for the configured database, or the embedded one started on demand."""

from __future__ import annotations

import atexit
import logging
from typing import Any

from sqlalchemy import Engine, ExceptionContext, create_engine, event, make_url
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.config import Settings
from app.db.embedded import EmbeddedPostgres
from app.errors import (
    DatabaseBusy,
    DatabaseFault,
    DatabaseUnavailable,
    LockTimeout,
    OutcomeUnknown,
    PoolExhausted,
    StatementTimeout,
)

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
    connect_args: dict[str, Any] = {}
    if settings.connect_timeout_seconds > 0:
        # Bounds a connect to a server that accepts TCP but never answers (docs/reliability.md).
        connect_args["connect_timeout"] = settings.connect_timeout_seconds
    target = make_url(normalise_url(url))
    if target.drivername == "postgresql+psycopg":
        target = target.set(drivername="postgresql+usage_ledger")
    engine = create_engine(
        target,
        pool_size=settings.pool_size,
        max_overflow=0,
        pool_timeout=settings.pool_timeout_seconds,
        pool_pre_ping=settings.pool_pre_ping,
        connect_args=connect_args,
        # Statement logs and error messages never show bound values: they carry webhook
        # signing secrets and callers' metadata.
        hide_parameters=True,
    )
    lock_timeout_ms = int(settings.lock_timeout_ms)
    statement_timeout_ms = int(settings.statement_timeout_ms)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {lock_timeout_ms}")
            if statement_timeout_ms > 0:
                cursor.execute(f"SET statement_timeout = {statement_timeout_ms}")
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

    _watch_commits(engine)
    return engine


class CommitOutcomeUnknown(OperationalError):
    """The connection was lost while COMMIT was in flight: the server may have committed the
    transaction or not, and no one can tell from this side. Still an ``OperationalError``, so
    code that catches those (the workers, the batch endpoint) keeps working."""


# Set on a driver exception raised by COMMIT itself; read by the error hook.
_DURING_COMMIT = "_usage_ledger_during_commit"


class LedgerDialect(PGDialect_psycopg):
    """psycopg 3, marking the errors of COMMIT itself.

    A dialect method rather than SQLAlchemy's ``begin``/``commit`` connection events: those
    put every statement of every connection on SQLAlchemy's slower event path."""

    supports_statement_cache = True

    def do_commit(self, dbapi_connection: Any) -> None:
        try:
            dbapi_connection.commit()
        except Exception as error:
            setattr(error, _DURING_COMMIT, True)
            raise


registry.register("postgresql.usage_ledger", __name__, "LedgerDialect")


def _watch_commits(engine: Engine) -> None:
    """Tell a connection lost during COMMIT (outcome unknown) from one lost before it (rolled
    back): only the first may have applied a request that the caller sees as failed."""

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> BaseException | None:
        original = context.original_exception
        if not (context.is_disconnect and getattr(original, _DURING_COMMIT, False)):
            return None
        log.warning("connection lost during COMMIT: the transaction's outcome is unknown")
        return CommitOutcomeUnknown(
            "COMMIT",
            None,
            original if isinstance(original, Exception) else Exception(str(original)),
            connection_invalidated=True,
        )


_RETRY = "retry with the same request_id"


def database_fault(error: BaseException) -> DatabaseFault | None:
    """The problem a driver or pool error amounts to, or None when it is not a database fault
    (a bug, a constraint violation: those stay 500). Messages of the driver never reach the
    problem: they may quote SQL or data."""
    if isinstance(error, PoolTimeout):
        return PoolExhausted(
            "every database connection stayed busy for the whole pool timeout; nothing was "
            f"applied: {_RETRY} after Retry-After"
        )
    if isinstance(error, CommitOutcomeUnknown):
        return OutcomeUnknown(
            "the database connection was lost while the transaction was committing, so it may "
            f"or may not have been applied: {_RETRY} (and the same body), which returns the "
            "first result if it was applied and applies it once if it was not",
            outcome="unknown",
        )
    if not isinstance(error, DBAPIError):
        return None
    sqlstate = getattr(error.orig, "sqlstate", None)
    fields: dict[str, Any] = {"sqlstate": sqlstate} if sqlstate else {}
    if sqlstate == "57014":
        return StatementTimeout(
            "a database statement ran longer than the statement timeout and was cancelled; "
            f"nothing was applied: {_RETRY}",
            **fields,
        )
    if sqlstate == "55P03":
        return LockTimeout(
            "a lock wait ran longer than the lock timeout (another transaction holds the "
            f"rows); nothing was applied: {_RETRY}",
            **fields,
        )
    if sqlstate in {"40P01", "40001"}:
        return DatabaseBusy(
            f"the database refused the transaction under contention; nothing was applied: {_RETRY}",
            **fields,
        )
    if error.connection_invalidated or isinstance(error, OperationalError):
        return DatabaseUnavailable(
            "the database is unreachable or the connection was lost before commit; nothing was "
            f"applied: {_RETRY}",
            **fields,
        )
    return None
