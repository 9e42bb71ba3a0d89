"""Plain factories over the public service API."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import Connection, Engine, text

from app.budgets import service as budgets
from app.budgets.model import Budget, Subject

USD = 10**12


def make_budget(conn: Connection, **overrides: Any) -> Budget:
    values: dict[str, Any] = {
        "org": "acme",
        "subject": Subject("team", f"team-{uuid.uuid4().hex[:6]}"),
        "limit_pico_usd": 100 * USD,
        "period": "month",
        "timezone": "UTC",
        "mode": "hard",
    }
    values.update(overrides)
    return budgets.define_budget(conn, **values)


def wait_until_settled(engine: Engine, timeout: float = 180.0) -> None:
    """Wait until every event written so far is below the settled horizon.

    Transaction ids are cluster-wide, so a transaction open in any database of the server (a
    parallel test session) holds the horizon back for a moment; folders and pagers then see
    less than everything, as they should.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            settled = conn.execute(
                text(
                    "SELECT coalesce(max(seq), -1)"
                    " < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20)"
                    " FROM ledger_events"
                )
            ).scalar_one()
        if settled:
            return
        time.sleep(0.02)
    raise AssertionError("events stayed above the settled horizon")
