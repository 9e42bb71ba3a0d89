"""Rebuild the budget projections from the event stream and compare them with the live ones.

The fold streams the events (server-side cursor), so memory grows with budgets, periods and
reservations, not with the number of events. The rebuilt rows go into temporary scratch tables
and are compared with the live tables in SQL, in both directions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from app.ledger import events
from app.ledger import service as ledger
from app.ledger.events import Event


@dataclass
class Difference:
    projection: str
    side: str  # "live only" or "rebuilt only"
    row: dict[str, Any]


@dataclass
class ReplayReport:
    events: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


@dataclass
class _Fold:
    budgets: dict[UUID, dict[str, Any]] = field(default_factory=dict)
    periods: dict[tuple[str, UUID, datetime], list[Any]] = field(default_factory=dict)
    reservations: dict[UUID, dict[str, Any]] = field(default_factory=dict)

    def apply_deltas(self, event: Event) -> None:
        for delta in event.payload.get("deltas", ()):
            key = (
                event.org,
                UUID(delta["budget_id"]),
                datetime.fromisoformat(delta["period_start"]),
            )
            row = self.periods.setdefault(key, [datetime.fromisoformat(delta["period_end"]), 0, 0])
            row[1] += delta["spent_pico_usd"]
            row[2] += delta["held_pico_usd"]

    def apply(self, event: Event) -> None:
        handler = _HANDLERS.get(event.event_type)
        if handler is not None:
            handler(self, event)
        self.apply_deltas(event)


def _budget_defined(fold: _Fold, event: Event) -> None:
    p = event.payload
    assert event.budget_id is not None
    fold.budgets[event.budget_id] = {
        "org": event.org,
        "budget_id": event.budget_id,
        "subject_type": p["subject"]["type"],
        "subject_id": p["subject"]["id"],
        "limit_pico_usd": p["limit_pico_usd"],
        "period": p["period"],
        "timezone": p["timezone"],
        "mode": p["mode"],
        "alert_thresholds": list(p["alert_thresholds"]),
        "created_at": event.occurred_at,
        "updated_at": event.occurred_at,
        "version": 1,
    }


def _budget_changed(fold: _Fold, event: Event) -> None:
    assert event.budget_id is not None
    budget = fold.budgets[event.budget_id]
    if event.payload["version"] <= budget["version"]:
        return  # a newer change was folded first (see _newer)
    budget.update(event.payload["changes"])
    budget["version"] = event.payload["version"]
    budget["updated_at"] = event.occurred_at


def _newer(fold: _Fold, event: Event) -> dict[str, Any] | None:
    """The reservation, when this event is newer than what was folded into it.

    Seq follows transaction ids, which a writer may take before it waits for the
    reservation's row lock; the version, bumped under that lock, is the causal order of the
    reservation's own events (docs/ledger.md, "Reading the stream").
    """
    assert event.reservation_id is not None
    reservation = fold.reservations[event.reservation_id]
    version = event.payload.get("version")
    if version is None:
        return reservation
    if version <= reservation["version"]:
        return None
    reservation["version"] = version
    return reservation


def _reserved(fold: _Fold, event: Event) -> None:
    assert event.reservation_id is not None
    fold.reservations.setdefault(event.reservation_id, {"version": 0})
    reservation = _newer(fold, event)
    if reservation is None:
        return
    reservation.update(
        org=event.org,
        reservation_id=event.reservation_id,
        request_id=event.request_id,
        state="held",
        amount_pico_usd=event.amount_pico_usd,
        cost_pico_usd=None,
        expires_at=datetime.fromisoformat(event.payload["expires_at"]),
        settled_at=None,
        overrun=False,
        late=False,
        version=event.payload.get("version", 1),
    )


def _extended(fold: _Fold, event: Event) -> None:
    reservation = _newer(fold, event)
    if reservation is not None:
        reservation["amount_pico_usd"] = event.amount_pico_usd
        reservation["expires_at"] = datetime.fromisoformat(event.payload["expires_at"])


def _committed(fold: _Fold, event: Event) -> None:
    if event.reservation_id is None:
        return  # usage charged without a reservation: only the deltas change projections
    reservation = _newer(fold, event)
    if reservation is not None:
        reservation.update(
            state="committed",
            cost_pico_usd=event.amount_pico_usd,
            settled_at=event.occurred_at,
            overrun=event.payload["overrun"],
            late=event.payload["late"],
        )


def _settled(state: str) -> Callable[[_Fold, Event], None]:
    def handler(fold: _Fold, event: Event) -> None:
        reservation = _newer(fold, event)
        if reservation is not None:
            reservation.update(state=state, settled_at=event.occurred_at)

    return handler


_HANDLERS: dict[str, Callable[[_Fold, Event], None]] = {
    events.BUDGET_DEFINED: _budget_defined,
    events.BUDGET_CHANGED: _budget_changed,
    events.RESERVED: _reserved,
    events.EXTENDED: _extended,
    events.COMMITTED: _committed,
    events.CANCELLED: _settled("cancelled"),
    events.EXPIRED: _settled("expired"),
}

_BUDGET_COLUMNS = (
    "org",
    "budget_id",
    "subject_type",
    "subject_id",
    "limit_pico_usd",
    "period",
    "timezone",
    "mode",
    "alert_thresholds",
    "created_at",
    "updated_at",
    "version",
)
_PERIOD_COLUMNS = (
    "org",
    "budget_id",
    "period_start",
    "period_end",
    "spent_pico_usd",
    "held_pico_usd",
)
_RESERVATION_COLUMNS = (
    "org",
    "reservation_id",
    "request_id",
    "state",
    "amount_pico_usd",
    "cost_pico_usd",
    "expires_at",
    "settled_at",
    "overrun",
    "late",
    "version",
)


def _scratch(
    conn: Connection, table: str, columns: tuple[str, ...], rows: list[dict[str, Any]]
) -> None:
    scratch = f"replay_{table}"
    conn.execute(text(f"DROP TABLE IF EXISTS pg_temp.{scratch}"))
    conn.execute(
        text(
            f"CREATE TEMP TABLE {scratch} ON COMMIT DROP AS "
            f"SELECT {', '.join(columns)} FROM {table} WITH NO DATA"
        )
    )
    if rows:
        placeholders = ", ".join(f":{c}" for c in columns)
        conn.execute(
            text(f"INSERT INTO {scratch} ({', '.join(columns)}) VALUES ({placeholders})"), rows
        )


def _compare(conn: Connection, table: str, columns: tuple[str, ...]) -> list[Difference]:
    cols = ", ".join(columns)
    found = []
    for side, first, second in (
        ("live only", table, f"replay_{table}"),
        ("rebuilt only", f"replay_{table}", table),
    ):
        query = text(f"SELECT {cols} FROM {first} EXCEPT ALL SELECT {cols} FROM {second} LIMIT 100")
        found += [Difference(table, side, dict(row)) for row in conn.execute(query).mappings()]
    return found


def fold_events(
    conn: Connection, progress: Callable[[int], None] | None = None
) -> tuple[_Fold, int]:
    fold = _Fold()
    count = 0
    for event in ledger.stream_events(conn):
        fold.apply(event)
        count += 1
        if progress is not None and count % 100_000 == 0:
            progress(count)
    return fold, count


def verify(conn: Connection, progress: Callable[[int], None] | None = None) -> ReplayReport:
    """Rebuild budgets, budget periods and reservations from the events; list differences.

    Run it in a REPEATABLE READ transaction so the events and the live projections are read
    from one snapshot.
    """
    fold, count = fold_events(conn, progress)
    _scratch(conn, "budgets", _BUDGET_COLUMNS, list(fold.budgets.values()))
    _scratch(
        conn,
        "budget_periods",
        _PERIOD_COLUMNS,
        [
            {
                "org": org,
                "budget_id": budget_id,
                "period_start": start,
                "period_end": row[0],
                "spent_pico_usd": row[1],
                "held_pico_usd": row[2],
            }
            for (org, budget_id, start), row in fold.periods.items()
        ],
    )
    _scratch(conn, "reservations", _RESERVATION_COLUMNS, list(fold.reservations.values()))
    report = ReplayReport(events=count)
    report.differences += _compare(conn, "budgets", _BUDGET_COLUMNS)
    report.differences += _compare(conn, "budget_periods", _PERIOD_COLUMNS)
    report.differences += _compare(conn, "reservations", _RESERVATION_COLUMNS)
    return report
