"""Rebuild ``budget_alerts`` from the ``alert_raised`` events and compare it with the live table.

The same check as ``usage-ledger replay --verify`` does for the budget projections (and with
its ``Difference`` rows): run it in a REPEATABLE READ transaction so events and table are read
from one snapshot.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, select, text

from app.budgets.replay import Difference
from app.ledger import events
from app.ledger.tables import ledger_events

_COLUMNS = (
    "org",
    "budget_id",
    "period_start",
    "level",
    "period_end",
    "threshold",
    "spent_pico_usd",
    "limit_pico_usd",
    "alert_id",
    "raised_at",
)


def rebuilt_alerts(conn: Connection) -> list[dict[str, Any]]:
    """The rows ``budget_alerts`` must hold: one per ``alert_raised`` event."""
    query = (
        select(
            ledger_events.c.org,
            ledger_events.c.budget_id,
            ledger_events.c.schema_version,
            ledger_events.c.payload,
            ledger_events.c.occurred_at,
        )
        .where(ledger_events.c.event_type == events.ALERT_RAISED)
        .order_by(ledger_events.c.seq)
    )
    rows = []
    for row in conn.execute(query):
        payload = events.upcast(events.ALERT_RAISED, row.schema_version, dict(row.payload))
        rows.append(
            {
                "org": row.org,
                "budget_id": row.budget_id,
                "period_start": datetime.fromisoformat(payload["period_start"]),
                "level": payload["level"],
                "period_end": datetime.fromisoformat(payload["period_end"]),
                "threshold": payload["threshold"],
                "spent_pico_usd": payload["spent_pico_usd"],
                "limit_pico_usd": payload["limit_pico_usd"],
                "alert_id": UUID(payload["alert_id"]),
                "raised_at": row.occurred_at,
            }
        )
    return rows


def verify_alerts(conn: Connection) -> list[Difference]:
    """Differences between ``budget_alerts`` and its rebuild from the events, both ways."""
    columns = ", ".join(_COLUMNS)
    conn.execute(text("DROP TABLE IF EXISTS pg_temp.replay_budget_alerts"))
    conn.execute(
        text(
            "CREATE TEMP TABLE replay_budget_alerts ON COMMIT DROP AS "
            f"SELECT {columns} FROM budget_alerts WITH NO DATA"
        )
    )
    rows = rebuilt_alerts(conn)
    if rows:
        placeholders = ", ".join(f":{c}" for c in _COLUMNS)
        conn.execute(
            text(f"INSERT INTO replay_budget_alerts ({columns}) VALUES ({placeholders})"), rows
        )
    found = []
    for side, first, second in (
        ("live only", "budget_alerts", "replay_budget_alerts"),
        ("rebuilt only", "replay_budget_alerts", "budget_alerts"),
    ):
        query = text(
            f"SELECT {columns} FROM {first} EXCEPT ALL SELECT {columns} FROM {second} LIMIT 100"
        )
        found += [
            Difference("budget_alerts", side, dict(row)) for row in conn.execute(query).mappings()
        ]
    return found
