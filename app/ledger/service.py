"""Appending to and reading the event stream: the ledger's only public API."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    ColumnElement,
    Connection,
    RowMapping,
    TextClause,
    and_,
    func,
    literal_column,
    select,
    text,
)

from app.ledger.events import CURRENT_VERSIONS, Event, Payload, upcast
from app.ledger.tables import ledger_events
from app.money import pico_text

# Readers return only events of transactions older than every transaction still running:
# their seq is below (snapshot xmin << 20), and nothing can be inserted there any more.
# A transaction also sees its own events.
_SETTLED: ColumnElement[bool] = literal_column(
    "(ledger_events.seq < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20)"
    " OR (ledger_events.seq >> 20) = pg_current_xact_id_if_assigned()::text::bigint)"
)


def append(
    conn: Connection,
    *,
    org: str,
    event_type: str,
    payload: Payload,
    occurred_at: datetime,
    request_id: str | None = None,
    reservation_id: UUID | None = None,
    budget_id: UUID | None = None,
    budget_ids: Sequence[UUID] = (),
    amount_pico_usd: int | None = None,
) -> None:
    """Append one event at the current schema version of its type."""
    append_many(
        conn,
        [
            {
                "org": org,
                "event_type": event_type,
                "payload": payload,
                "occurred_at": occurred_at,
                "request_id": request_id,
                "reservation_id": reservation_id,
                "budget_id": budget_id,
                "budget_ids": list(budget_ids),
                "amount_pico_usd": amount_pico_usd,
            }
        ],
    )


# The events of one call go to PostgreSQL as one JSON array and in one statement, whatever
# their number; the fixed text lets psycopg prepare it. Rows are inserted in array order, so
# the seq trigger numbers them in the order given.
_EVENT_COLUMNS = (
    "org, event_type, schema_version, request_id, reservation_id, budget_id, budget_ids,"
    " amount_pico_usd, payload, occurred_at"
)
APPEND_EVENTS = f"""
INSERT INTO ledger_events ({_EVENT_COLUMNS})
SELECT {_EVENT_COLUMNS}
FROM ROWS FROM (jsonb_to_recordset(CAST(:events AS jsonb)) AS (
    org text, event_type text, schema_version integer, request_id text, reservation_id uuid,
    budget_id uuid, budget_ids uuid[], amount_pico_usd numeric, payload jsonb,
    occurred_at timestamptz
)) WITH ORDINALITY AS e ({_EVENT_COLUMNS}, position)
ORDER BY position
"""


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _optional_pico(value: Any) -> str | None:
    return None if value is None else pico_text(value)


def events_json(events: Sequence[dict[str, Any]]) -> str:
    """The ``:events`` parameter of ``APPEND_EVENTS``: each event at the current schema
    version of its type, amounts as decimal strings (exact), times in ISO 8601 with offset."""
    rows = []
    for event in events:
        occurred_at: datetime = event["occurred_at"]
        if occurred_at.tzinfo is None:
            raise ValueError("an event's occurred_at must carry a time zone")
        rows.append(
            {
                "org": event["org"],
                "event_type": event["event_type"],
                "schema_version": CURRENT_VERSIONS[event["event_type"]],
                "request_id": event.get("request_id"),
                "reservation_id": _optional_text(event.get("reservation_id")),
                "budget_id": _optional_text(event.get("budget_id")),
                "budget_ids": [str(b) for b in event.get("budget_ids", ())],
                "amount_pico_usd": _optional_pico(event.get("amount_pico_usd")),
                "payload": event["payload"],
                "occurred_at": occurred_at.isoformat(),
            }
        )
    return json.dumps(rows, separators=(",", ":"))


@functools.cache
def _statement(alongside: tuple[str, ...]) -> TextClause:
    if not alongside:
        return text(APPEND_EVENTS)
    ctes = ", ".join(f"change_{index} AS ({sql})" for index, sql in enumerate(alongside))
    return text(f"WITH {ctes}\n{APPEND_EVENTS}")


def append_many(
    conn: Connection,
    events: Sequence[dict[str, Any]],
    *,
    alongside: Sequence[tuple[str, dict[str, Any]]] = (),
) -> None:
    """Append several events in one statement (seq is assigned by the database, in order).

    ``alongside``: data-modifying statements of the same transaction (SQL text, its named
    parameters) run in the same statement, so that a request's last writes (its reservation
    row, its events, its idempotency response) cost one round trip. Their parameter names must
    differ from each other's and from ``events``; none may read what another writes.
    """
    if not events and not alongside:
        return
    parameters: dict[str, Any] = {"events": events_json(events)}
    for _, own in alongside:
        parameters.update(own)
    conn.execute(_statement(tuple(sql for sql, _ in alongside)), parameters)


def _to_event(row: RowMapping) -> Event:
    return Event(
        seq=row["seq"],
        org=row["org"],
        event_type=row["event_type"],
        request_id=row["request_id"],
        reservation_id=row["reservation_id"],
        budget_id=row["budget_id"],
        budget_ids=tuple(row["budget_ids"] or ()),
        amount_pico_usd=row["amount_pico_usd"],
        payload=upcast(row["event_type"], row["schema_version"], dict(row["payload"])),
        occurred_at=row["occurred_at"],
        recorded_at=row["recorded_at"],
    )


def read_events(
    conn: Connection,
    *,
    after: int = 0,
    limit: int = 100,
    org: str | None = None,
    request_id: str | None = None,
    reservation_id: UUID | None = None,
    subject_id: str | None = None,
    settled_only: bool = True,
) -> list[Event]:
    """A page of events with seq > ``after``, in seq order.

    ``settled_only`` (for paging) leaves out events that a transaction still running could
    precede, so that a reader following ``after`` never skips a late commit; without it, every
    event visible now is returned.
    """
    conditions = [ledger_events.c.seq > after]
    if settled_only:
        conditions.append(_SETTLED)
    if org is not None:
        conditions.append(ledger_events.c.org == org)
    if request_id is not None:
        conditions.append(ledger_events.c.request_id == request_id)
    if reservation_id is not None:
        conditions.append(ledger_events.c.reservation_id == reservation_id)
    if subject_id is not None:
        conditions.append(
            ledger_events.c.payload["subjects"].contains([{"id": subject_id}])
            | (ledger_events.c.payload["subject"]["id"].astext == subject_id)
        )
    query = (
        select(ledger_events).where(and_(*conditions)).order_by(ledger_events.c.seq).limit(limit)
    )
    return [_to_event(row) for row in conn.execute(query).mappings()]


def stream_events(
    conn: Connection, *, batch_size: int = 5000, event_types: Sequence[str] = ()
) -> Iterator[Event]:
    """Every event (of ``event_types``, when given) in seq order, archived months included,
    fetched in batches through a server-side cursor."""
    from app.ledger.partitions import history_source

    where = ""
    if event_types:
        known = [t for t in event_types if t in CURRENT_VERSIONS]
        where = "WHERE event_type IN (" + ", ".join(f"'{t}'" for t in known) + ")"
    query = (
        text(f"SELECT * FROM {history_source(conn)} {where} ORDER BY seq")
        .columns(*ledger_events.c)
        .execution_options(stream_results=True, yield_per=batch_size)
    )
    result = conn.execute(query)
    for row in result.mappings():
        yield _to_event(row)


def count_events(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(ledger_events)).scalar_one())
