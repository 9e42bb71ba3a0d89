"""Rebuild the budget projections from the event stream and compare them with the live ones.

Budget periods and reservations are rebuilt by PostgreSQL from the events, chunk by chunk of
seq (a progress report per chunk): per-chunk partial rows go to temporary tables, which spill
to disk, and are combined at the end, so memory stays bounded however long the log is and the
work runs at PostgreSQL's speed rather than a Python loop's. Budgets, a handful of events,
are folded in Python. The rebuilt rows are compared with the live tables in SQL, both ways.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from app.ledger import events
from app.ledger import service as ledger
from app.ledger.events import Event
from app.ledger.partitions import history_source


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
class _Budgets:
    budgets: dict[UUID, dict[str, Any]] = field(default_factory=dict)

    def apply(self, event: Event) -> None:
        if event.event_type == events.BUDGET_DEFINED:
            _budget_defined(self, event)
        elif event.event_type == events.BUDGET_CHANGED:
            _budget_changed(self, event)


def _budget_defined(fold: _Budgets, event: Event) -> None:
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


def _budget_changed(fold: _Budgets, event: Event) -> None:
    assert event.budget_id is not None
    budget = fold.budgets[event.budget_id]
    if event.payload["version"] <= budget["version"]:
        return  # a newer change was folded first (see _newer)
    budget.update(event.payload["changes"])
    budget["version"] = event.payload["version"]
    budget["updated_at"] = event.occurred_at


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


# A reservation's events in causal order: by the version each carries (bumped under the
# reservation's row lock; seq may invert it, docs/ledger.md), then seq for events without one.
_ORDER = "coalesce((payload->>'version')::numeric, 0) * 9223372036854775808 + seq"
_HOLDING = "event_type IN ('reserved', 'extended')"
_SETTLING = "event_type IN ('committed', 'cancelled', 'expired')"

_PERIOD_PARTS = """
INSERT INTO replay_period_parts
SELECT e.org, (d->>'budget_id')::uuid, (d->>'period_start')::timestamptz, min(e.seq),
       (array_agg((d->>'period_end')::timestamptz ORDER BY e.seq))[1],
       sum((d->>'spent_pico_usd')::numeric), sum((d->>'held_pico_usd')::numeric)
FROM (SELECT * FROM {source}) AS e CROSS JOIN LATERAL jsonb_array_elements(e.payload->'deltas') d
WHERE e.seq >= :lo AND e.seq < :hi AND jsonb_typeof(e.payload->'deltas') = 'array'
GROUP BY 1, 2, 3
"""

_RESERVATION_PARTS = f"""
INSERT INTO replay_reservation_parts
SELECT org, reservation_id,
       max(k), (array_agg(event_type ORDER BY k DESC))[1],
       max(k) FILTER (WHERE {_HOLDING}),
       (array_agg(amount_pico_usd ORDER BY k DESC) FILTER (WHERE {_HOLDING}))[1],
       (array_agg((payload->>'expires_at')::timestamptz ORDER BY k DESC)
            FILTER (WHERE {_HOLDING}))[1],
       max(request_id) FILTER (WHERE event_type = 'reserved'),
       max(amount_pico_usd) FILTER (WHERE event_type = 'committed'),
       bool_or((payload->>'overrun')::boolean) FILTER (WHERE event_type = 'committed'),
       bool_or((payload->>'late')::boolean) FILTER (WHERE event_type = 'committed'),
       max(k) FILTER (WHERE {_SETTLING}),
       (array_agg(occurred_at ORDER BY k DESC) FILTER (WHERE {_SETTLING}))[1],
       max((payload->>'version')::integer)
FROM (
    SELECT *, {_ORDER} AS k FROM {{source}}
    WHERE seq >= :lo AND seq < :hi AND reservation_id IS NOT NULL
      AND event_type IN ('reserved', 'extended', 'committed', 'cancelled', 'expired')
) AS e
GROUP BY org, reservation_id
"""

_PARTS_TABLES = """
CREATE TEMP TABLE replay_period_parts (
    org text, budget_id uuid, period_start timestamptz, first_seq bigint,
    period_end timestamptz, spent numeric, held numeric
) ON COMMIT DROP;
CREATE TEMP TABLE replay_reservation_parts (
    org text, reservation_id uuid, last_key numeric, last_type text,
    hold_key numeric, amount numeric, expires_at timestamptz, request_id text,
    cost numeric, overrun boolean, late boolean, settle_key numeric, settled_at timestamptz,
    version integer
) ON COMMIT DROP;
"""

_PERIODS = """
INSERT INTO replay_budget_periods
SELECT org, budget_id, period_start,
       (array_agg(period_end ORDER BY first_seq))[1], sum(spent), sum(held)
FROM replay_period_parts GROUP BY org, budget_id, period_start
"""

_RESERVATIONS = """
INSERT INTO replay_reservations
SELECT org, reservation_id, max(request_id),
       CASE (array_agg(last_type ORDER BY last_key DESC))[1]
           WHEN 'reserved' THEN 'held' WHEN 'extended' THEN 'held'
           ELSE (array_agg(last_type ORDER BY last_key DESC))[1] END,
       (array_agg(amount ORDER BY hold_key DESC NULLS LAST))[1],
       max(cost),
       (array_agg(expires_at ORDER BY hold_key DESC NULLS LAST))[1],
       (array_agg(settled_at ORDER BY settle_key DESC NULLS LAST))[1],
       coalesce(bool_or(overrun), false), coalesce(bool_or(late), false),
       coalesce(max(version), 1)
FROM replay_reservation_parts GROUP BY org, reservation_id
"""

CHUNK_EVENTS = 500_000


def _chunks(conn: Connection, source: str) -> tuple[int, list[tuple[int, int]]]:
    """The event count and seq ranges of about CHUNK_EVENTS events each (seqs are not dense,
    so the ranges are equal in seq, which is good enough for progress)."""
    row = conn.execute(text(f"SELECT count(*), min(seq), max(seq) FROM {source}")).one()
    count = int(row[0])
    if not count:
        return 0, []
    low, high = int(row[1]), int(row[2]) + 1
    pieces = max(1, -(-count // CHUNK_EVENTS))
    step = -(-(high - low) // pieces)
    return count, [(lo, min(lo + step, high)) for lo in range(low, high, step)]


def verify(conn: Connection, progress: Callable[[int], None] | None = None) -> ReplayReport:
    """Rebuild budgets, budget periods and reservations from the events; list differences.

    Run it in a REPEATABLE READ transaction so the events and the live projections are read
    from one snapshot. ``progress`` is called with the events replayed so far.
    """
    source = history_source(conn)
    count, chunks = _chunks(conn, source)
    for table in ("replay_period_parts", "replay_reservation_parts"):
        conn.execute(text(f"DROP TABLE IF EXISTS pg_temp.{table}"))
    for statement in _PARTS_TABLES.split(";"):
        if statement.strip():
            conn.execute(text(statement))
    periods = text(_PERIOD_PARTS.format(source=source))
    reservations = text(_RESERVATION_PARTS.format(source=source))
    for index, (lo, hi) in enumerate(chunks, start=1):
        conn.execute(periods, {"lo": lo, "hi": hi})
        conn.execute(reservations, {"lo": lo, "hi": hi})
        if progress is not None:
            progress(count * index // len(chunks))

    fold = _Budgets()
    for event in ledger.stream_events(
        conn, event_types=(events.BUDGET_DEFINED, events.BUDGET_CHANGED)
    ):
        fold.apply(event)
    _scratch(conn, "budgets", _BUDGET_COLUMNS, list(fold.budgets.values()))
    _scratch(conn, "budget_periods", _PERIOD_COLUMNS, [])
    conn.execute(text(_PERIODS))
    _scratch(conn, "reservations", _RESERVATION_COLUMNS, [])
    conn.execute(text(_RESERVATIONS))

    report = ReplayReport(events=count)
    report.differences += _compare(conn, "budgets", _BUDGET_COLUMNS)
    report.differences += _compare(conn, "budget_periods", _PERIOD_COLUMNS)
    report.differences += _compare(conn, "reservations", _RESERVATION_COLUMNS)
    return report
