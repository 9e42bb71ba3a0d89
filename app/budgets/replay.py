"""Rebuild the budget projections from the event stream and compare them with the live ones.

Budget periods and reservations are rebuilt by PostgreSQL from the events, chunk by chunk of
seq (a progress report per chunk): per-chunk partial rows go to temporary tables, which spill
to disk, and are combined at the end, so memory stays bounded however long the log is and the
work runs at PostgreSQL's speed rather than a Python loop's. Budgets, a handful of events,
are folded in Python. The rebuilt rows are compared with the live tables in SQL, both ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from sqlalchemy import Connection, RowMapping, text

from app.ledger import events
from app.ledger.events import Event
from app.ledger.partitions import history_source


@dataclass
class Difference:
    projection: str
    side: str  # "live only" or "rebuilt only"
    row: dict[str, Any]


class Progress(Protocol):
    """Where replay reports how far it is: the estimated total, then events done so far."""

    def start(self, total: int) -> None: ...

    def update(self, done: int) -> None: ...


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
        "escrow_slices": p.get("escrow_slices", 1),
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


def _event(row: RowMapping) -> Event:
    return Event(
        seq=row["seq"],
        org=row["org"],
        event_type=row["event_type"],
        request_id=row["request_id"],
        reservation_id=row["reservation_id"],
        budget_id=row["budget_id"],
        budget_ids=tuple(row["budget_ids"] or ()),
        amount_pico_usd=row["amount_pico_usd"],
        payload=events.upcast(row["event_type"], row["schema_version"], dict(row["payload"])),
        occurred_at=row["occurred_at"],
        recorded_at=row["recorded_at"],
    )


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
    "escrow_slices",
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


_KEYS = {
    "budgets": ("org", "budget_id"),
    "budget_periods": ("org", "budget_id", "period_start"),
    "reservations": ("org", "reservation_id"),
}


# A period's live totals are its row plus its escrow slices (docs/ledger.md, "Hot budgets").
_LIVE = {"budget_periods": "budget_period_totals"}


def _compare(
    conn: Connection, table: str, columns: tuple[str, ...], rebuilt: str | None = None
) -> list[Difference]:
    """Rows of ``table`` and of its rebuild that differ, matched on the primary key: one hash
    join (where two EXCEPT ALLs would hash both tables twice). A row missing on one side, or
    different in any column, is reported from each side that has it. ``rebuilt`` is a query
    of the rebuilt rows, when they are not in the scratch table ``replay_<table>``."""
    keys = _KEYS[table]
    on = " AND ".join(f"l.{k} = r.{k}" for k in keys)
    live = ", ".join(f"l.{c} AS l_{c}" for c in columns)
    rebuilt_columns = ", ".join(f"r.{c} AS r_{c}" for c in columns)
    source = f"replay_{table}" if rebuilt is None else f"({rebuilt})"
    differs = (
        f"l.{keys[0]} IS NULL OR r.{keys[0]} IS NULL"
        f" OR ({', '.join(f'l.{c}' for c in columns)})"
        f" IS DISTINCT FROM ({', '.join(f'r.{c}' for c in columns)})"
    )
    query = text(
        f"SELECT l.{keys[0]} IS NOT NULL AS has_live, r.{keys[0]} IS NOT NULL AS has_rebuilt,"
        f" {live}, {rebuilt_columns} FROM {_LIVE.get(table, table)} AS l"
        f" FULL JOIN {source} AS r ON {on}"
        f" WHERE {differs} LIMIT 100"
    )
    found = []
    for row in conn.execute(query).mappings():
        if row["has_live"]:
            found.append(Difference(table, "live only", {c: row[f"l_{c}"] for c in columns}))
        if row["has_rebuilt"]:
            found.append(Difference(table, "rebuilt only", {c: row[f"r_{c}"] for c in columns}))
    return found


_HOLDING = "('reserved', 'extended')"
_SETTLING = "('committed', 'cancelled', 'expired')"
_EVENTS = "('reserved', 'extended', 'committed', 'cancelled', 'expired')"
_BUDGET_EVENTS = "('budget_defined', 'budget_changed')"

# Where an event stands in its reservation's causal order: by the version it carries (bumped
# under the reservation's row lock; seq may invert it, docs/ledger.md), then by seq for events
# without one. Fixed-width digits, so that comparing the text ("C" collation) compares the
# pair, and the latest event's values ride behind it: max() of "rank|value|value" is the
# latest event's values, a plain hash aggregate (ordered aggregates or DISTINCT ON would sort
# every chunk and start a sort per reservation).
_RANK = "lpad(coalesce(version, 0)::text, 10, '0') || lpad(seq::text, 19, '0')"
_RANK_WIDTH = 29

# One statement and one read of the chunk's heap per chunk of seq (its rows are large: a
# second pass would read them again), for both projections:
#
# - the budget period deltas, summed by budget and period as written (text keys: no parsing
#   per delta, and sums that hash-aggregate without sorting); the chunks' rows are combined,
#   and the keys parsed, once at the end. A delta's other members (an escrow slice, for
#   example) do not matter: a period is the sum of its deltas;
# - each reservation's latest hold (amount, expiry), latest settlement (state, time), request,
#   cost and flags;
# - the budget events, a handful, kept whole for the fold in Python.
#
# usage_recorded, half the log, is none of these and is skipped before its payload is read.
_CHUNK = f"""
/* replay: budget projections, one chunk */
WITH c AS MATERIALIZED (
    SELECT org, seq, event_type, schema_version, reservation_id, request_id, budget_id,
           budget_ids, amount_pico_usd AS amount, occurred_at, recorded_at,
           reservation_id IS NOT NULL AND event_type IN {_EVENTS} AS of_hold,
           CASE WHEN event_type IN {_BUDGET_EVENTS} THEN payload END AS budget_payload,
           CASE WHEN jsonb_typeof(payload->'deltas') = 'array' THEN payload->'deltas' END
               AS deltas,
           CASE WHEN reservation_id IS NOT NULL AND event_type IN {_EVENTS}
                THEN (payload->>'version')::integer END AS version,
           CASE WHEN event_type IN {_HOLDING} THEN payload->>'expires_at' END AS expires_at,
           CASE WHEN event_type = 'committed' THEN (payload->>'overrun')::boolean END AS overrun,
           CASE WHEN event_type = 'committed' THEN (payload->>'late')::boolean END AS late
    FROM {{source}}
    WHERE seq >= :lo AND seq < :hi AND event_type <> 'usage_recorded'
), periods AS (
    INSERT INTO replay_period_parts
    SELECT c.org, d->>'budget_id', d->>'period_start', d->>'period_end', min(c.seq),
           sum((d->'spent_pico_usd')::numeric), sum((d->'held_pico_usd')::numeric)
    FROM c CROSS JOIN LATERAL jsonb_array_elements(c.deltas) AS d
    WHERE c.deltas IS NOT NULL
    GROUP BY 1, 2, 3, 4
), budget_events AS (
    INSERT INTO replay_budget_events
    SELECT seq, org, event_type, schema_version, request_id, reservation_id, budget_id,
           budget_ids, amount, budget_payload, occurred_at, recorded_at
    FROM c WHERE event_type IN {_BUDGET_EVENTS}
)
INSERT INTO replay_reservation_parts
SELECT org, reservation_id,
       max(request_id) FILTER (WHERE event_type = 'reserved'),
       max(amount) FILTER (WHERE event_type = 'committed'),
       bool_or(overrun), bool_or(late), max(version),
       max(({_RANK} || '|' || coalesce(amount::text, '') || '|' || coalesce(expires_at, ''))
           COLLATE "C") FILTER (WHERE event_type IN {_HOLDING}),
       max(({_RANK} || '|' || event_type || '|' || occurred_at::text)
           COLLATE "C") FILTER (WHERE event_type IN {_SETTLING})
FROM c WHERE of_hold
GROUP BY org, reservation_id
"""

_PARTS_TABLES = """
CREATE TEMP TABLE replay_period_parts (
    org text, budget_id text, period_start text, period_end text, first_seq bigint,
    spent numeric, held numeric
) ON COMMIT DROP;
CREATE TEMP TABLE replay_reservation_parts (
    org text, reservation_id uuid, request_id text, cost numeric, overrun boolean,
    late boolean, version integer, held text COLLATE "C", settled text COLLATE "C"
) ON COMMIT DROP;
CREATE TEMP TABLE replay_budget_events ON COMMIT DROP AS
    SELECT * FROM ledger_events WITH NO DATA;
"""

_PERIODS = """
INSERT INTO replay_budget_periods
SELECT org, budget_id::uuid, period_start::timestamptz,
       (array_agg(period_end::timestamptz ORDER BY first_seq))[1], sum(spent), sum(held)
FROM replay_period_parts GROUP BY org, budget_id::uuid, period_start::timestamptz
"""

# The reservations rebuilt from their parts (one per chunk that held events of it: nearly
# always one), read by the comparison as they are computed rather than stored first.
_RESERVATIONS = f"""
SELECT org, reservation_id, request_id,
       CASE WHEN settled IS NOT NULL
                 AND (held IS NULL OR left(settled, {_RANK_WIDTH}) > left(held, {_RANK_WIDTH}))
            THEN split_part(settled, '|', 2) ELSE 'held' END AS state,
       nullif(split_part(held, '|', 2), '')::numeric AS amount_pico_usd,
       cost AS cost_pico_usd,
       nullif(split_part(held, '|', 3), '')::timestamptz AS expires_at,
       nullif(split_part(settled, '|', 3), '')::timestamptz AS settled_at,
       coalesce(overrun, false) AS overrun, coalesce(late, false) AS late,
       coalesce(version, 1) AS version
FROM (
    SELECT org, reservation_id, max(request_id) AS request_id, max(cost) AS cost,
           bool_or(overrun) AS overrun, bool_or(late) AS late, max(version) AS version,
           max(held) AS held, max(settled) AS settled
    FROM replay_reservation_parts GROUP BY org, reservation_id
) AS parts
"""

# Chunks of about this many events: each is one bounded statement per projection (its sorts
# and hashes fit in work_mem below), and one step of the progress bar.
CHUNK_EVENTS = 500_000
_END = 2**63 - 1  # above every seq
# Per-statement sort and hash memory of the replay's own transaction (SET LOCAL): the server
# side of the replay is bounded by it as the client side is by streaming.
WORK_MEM = "64MB"


def _estimate(conn: Connection) -> int:
    """The planner's estimate of the events, archived months included (for the progress bar
    only: free, where a count would read the whole log once more)."""
    return int(
        conn.execute(
            text(
                "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind = 'r' AND n.nspname IN ('public', 'ledger_archive')"
                "   AND (c.relname = 'ledger_events_default'"
                "        OR c.relname ~ '^ledger_events_[0-9]{4}_[0-9]{2}$')"
            )
        ).scalar_one()
    )


def _chunks(conn: Connection, source: str) -> Iterator[tuple[int, int, int]]:
    """Seq ranges [lo, hi) of CHUNK_EVENTS events each (the last one shorter) with their
    event counts, found lazily by walking the seq index: seqs are dense within a transaction
    and sparse between them, so equal seq ranges would not hold equal work."""
    boundary = text(f"SELECT seq FROM {source} WHERE seq >= :lo ORDER BY seq OFFSET :n LIMIT 1")
    low = 0
    while True:
        high = conn.execute(boundary, {"lo": low, "n": CHUNK_EVENTS}).scalar()
        if high is None:
            rest = int(
                conn.execute(
                    text(f"SELECT count(*) FROM {source} WHERE seq >= :lo"), {"lo": low}
                ).scalar_one()
            )
            if rest:
                yield low, _END, rest
            return
        yield low, int(high), CHUNK_EVENTS
        low = int(high)


def verify(conn: Connection, progress: Progress | None = None) -> ReplayReport:
    """Rebuild budgets, budget periods and reservations from the events; list differences.

    Run it in a REPEATABLE READ transaction so the events and the live projections are read
    from one snapshot. ``progress`` is called with the events replayed so far.
    """
    source = history_source(conn)
    conn.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
    # JIT compiles each chunk's statements again (over a second each, more than a chunk's
    # work): the planner's row estimates for the delta expansion are far too high.
    conn.execute(text("SET LOCAL jit = off"))
    for table in ("replay_period_parts", "replay_reservation_parts", "replay_budget_events"):
        conn.execute(text(f"DROP TABLE IF EXISTS pg_temp.{table}"))
    for statement in _PARTS_TABLES.split(";"):
        if statement.strip():
            conn.execute(text(statement))
    chunk = text(_CHUNK.format(source=source))
    if progress is not None:
        progress.start(_estimate(conn))
    count = 0
    for lo, hi, events_in_chunk in _chunks(conn, source):
        conn.execute(chunk, {"lo": lo, "hi": hi})
        count += events_in_chunk
        if progress is not None:
            progress.update(count)

    fold = _Budgets()
    for row in conn.execute(text("SELECT * FROM replay_budget_events ORDER BY seq")).mappings():
        fold.apply(_event(row))
    _scratch(conn, "budgets", _BUDGET_COLUMNS, list(fold.budgets.values()))
    _scratch(conn, "budget_periods", _PERIOD_COLUMNS, [])
    conn.execute(text(_PERIODS))

    report = ReplayReport(events=count)
    report.differences += _compare(conn, "budgets", _BUDGET_COLUMNS)
    report.differences += _compare(conn, "budget_periods", _PERIOD_COLUMNS)
    report.differences += _compare(conn, "reservations", _RESERVATION_COLUMNS, _RESERVATIONS)
    return report
