"""``serve``: migrate, then serve HTTP with the expiry sweeper running."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

import uvicorn
from sqlalchemy import Engine

from app.auth import service as auth
from app.config import Settings, add_database_arguments, add_pricing_arguments, add_server_arguments
from app.db import migrate
from app.db.engine import Database, make_engine
from app.main import create_app

log = logging.getLogger(__name__)


def _serve(ns: argparse.Namespace) -> int:
    settings = Settings.from_namespace(ns)
    # SIGTERM must unwind normally so an embedded server we started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    database = Database(settings)
    try:
        migrate.upgrade(database.url)
        engine = make_engine(database.url, settings=settings)
        _announce_auth(engine, settings)
        app = create_app(engine, settings)
        log.info("serving on http://%s:%d", settings.host, settings.port)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)
        engine.dispose()
    finally:
        database.close()
    return 0


def _announce_auth(engine: Engine, settings: Settings) -> None:
    """Auth is always on; only --insecure-no-auth turns it off, and says so loudly."""
    if settings.insecure_no_auth:
        log.warning(
            "AUTH IS DISABLED (--insecure-no-auth): every caller is an admin of every "
            "org. Use this for local demos only."
        )
        return
    with engine.connect() as conn:
        active = [k for k in auth.list_keys(conn) if k.revoked_at is None]
    if not active:
        log.warning(
            "no API key exists yet: create one with "
            "`usage-ledger keys create --scope admin` (same database flags as serve)"
        )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="Serve the HTTP API.")
    add_database_arguments(parser)
    add_server_arguments(parser)
    add_pricing_arguments(parser)
    parser.set_defaults(func=_serve)
