"""Alembic environment: DDL lives only in the versions/ scripts (static SQL)."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from app.db.engine import normalise_url

config = context.config
url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
if not url:
    raise SystemExit("set DATABASE_URL or use `usage-ledger migrate`")

engine = create_engine(normalise_url(url))
with engine.connect() as connection:
    # One migration run at a time, even when several servers start at once.
    connection.exec_driver_sql("SELECT pg_advisory_lock(7318001)")
    connection.commit()
    try:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        connection.exec_driver_sql("SELECT pg_advisory_unlock(7318001)")
        connection.commit()
engine.dispose()
