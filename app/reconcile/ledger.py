"""The ledger's side of a reconciliation: its cost of one provider per UTC day and model."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime

from sqlalchemy import Connection

from app.reconcile import matching
from app.reports import service as reports


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


def ledger_cost_by_day_and_model(
    conn: Connection, *, org: str, provider: str, start: date, end: date
) -> dict[tuple[date, str | None], int]:
    """Pico-USD the ledger charged for ``provider`` per UTC day in [start, end) and per model
    name as the ledger recorded it (None: usage recorded without a model)."""
    report = reports.spend(
        conn,
        reports.SpendQuery(
            org=org,
            start=_midnight(start),
            end=_midnight(end),
            granularity="day",
            group_by=("model", "provider"),
            tz="UTC",
        ),
    )
    costs: dict[tuple[date, str | None], int] = defaultdict(int)
    for row in report.rows:
        model = row.groups.get("model")
        recorded = row.groups.get("provider")
        if row.period_start is None or row.cost_pico_usd == 0:
            continue
        if matching.belongs_to(provider, recorded_provider=recorded, model=model):
            costs[(row.period_start.astimezone(UTC).date(), model)] += row.cost_pico_usd
    return dict(costs)
