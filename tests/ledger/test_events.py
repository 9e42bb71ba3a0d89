"""The event table is append-only, versioned, and paged without missing late commits."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from app.ledger import events
from app.ledger import service as ledger
from app.ledger.records import UsageRecord

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _append(conn: Connection, org: str = "acme", request_id: str = "r1") -> None:
    ledger.append(
        conn,
        org=org,
        event_type=events.USAGE_RECORDED,
        occurred_at=NOW,
        request_id=request_id,
        amount_pico_usd=5,
        payload=UsageRecord(cost_pico_usd=5, model="gpt-4o").to_payload(),
    )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_events SET org = 'evil'",
        "DELETE FROM ledger_events",
        "TRUNCATE ledger_events",
    ],
)
def test_the_app_role_cannot_change_events(conn: Connection, statement: str) -> None:
    _append(conn)
    assert conn.execute(text("SELECT current_user")).scalar_one() == "usage_ledger_app"
    savepoint = conn.begin_nested()
    with pytest.raises(DBAPIError) as refused:
        conn.execute(text(statement))
    savepoint.rollback()
    assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_events SET org = 'evil'",
        "DELETE FROM ledger_events",
        "TRUNCATE ledger_events",
    ],
)
def test_even_the_owner_is_refused_by_the_trigger(conn: Connection, statement: str) -> None:
    _append(conn)
    conn.execute(text("RESET ROLE"))
    try:
        savepoint = conn.begin_nested()
        with pytest.raises(DBAPIError, match="append-only"):
            conn.execute(text(statement))
        savepoint.rollback()
    finally:
        conn.execute(text("SET ROLE usage_ledger_app"))
    assert conn.execute(text("SELECT count(*) FROM ledger_events")).scalar_one() >= 1


def test_one_transaction_writes_one_tenant_only(conn: Connection) -> None:
    _append(conn, org="acme")
    savepoint = conn.begin_nested()
    with pytest.raises(DBAPIError, match="one org only"):
        _append(conn, org="globex")
    savepoint.rollback()


def test_an_old_event_version_is_upcast_on_read(conn: Connection) -> None:
    # A usage_recorded v1 payload as an earlier release wrote it.
    conn.execute(
        text(
            "INSERT INTO ledger_events (org, event_type, schema_version, request_id, payload,"
            " occurred_at) VALUES ('acme', 'usage_recorded', 1, 'old-1', :payload, now())"
        ),
        {
            "payload": '{"model": "gpt-4o", "prompt_tokens": 10, "completion_tokens": 2,'
            ' "cache_write_tokens": 3, "cost_usd": "0.000125"}'
        },
    )
    [event] = ledger.read_events(conn, org="acme", request_id="old-1")
    assert event.payload["cache_creation_tokens"] == 3
    assert event.payload["cache_creation_1h_tokens"] == 0
    assert event.payload["cost_pico_usd"] == 125_000_000
    assert "cost_usd" not in event.payload
    record = UsageRecord.from_payload(event.payload)
    assert record.cost_pico_usd == 125_000_000 and record.call_type == "chat"


def test_a_future_version_is_refused() -> None:
    with pytest.raises(events.UnknownEventVersion):
        events.upcast(events.RESERVED, 99, {})


def test_seq_is_increasing_within_a_transaction(conn: Connection) -> None:
    for i in range(5):
        _append(conn, request_id=f"s{i}")
    seqs = (
        conn.execute(
            text("SELECT seq FROM ledger_events WHERE request_id LIKE 's%' ORDER BY request_id")
        )
        .scalars()
        .all()
    )
    assert seqs == sorted(seqs) and len(set(seqs)) == 5


def test_events_are_stored_exactly_in_the_order_given(conn: Connection) -> None:
    """Several events in one statement: amounts past 64 bits, microseconds and offsets, ids
    and payloads come back as given, numbered in the order given."""
    berlin = datetime(2026, 3, 29, 2, 59, 59, 999999, tzinfo=timezone(timedelta(hours=2)))
    reservation = uuid.uuid4()
    budgets = [uuid.uuid4(), uuid.uuid4()]
    given = [
        {
            "org": "acme",
            "event_type": events.COMMITTED,
            "occurred_at": berlin,
            "request_id": f"exact-{index}",
            "reservation_id": reservation if index else None,
            "budget_ids": budgets[:index],
            "amount_pico_usd": 10**30 + index if index != 1 else None,
            "payload": {"index": index, "text": 'é \\ " ✓', "big": 2**70},
        }
        for index in range(3)
    ]
    ledger.append_many(conn, given)
    rows = conn.execute(
        text(
            "SELECT request_id, reservation_id, budget_ids, amount_pico_usd, payload, occurred_at"
            " FROM ledger_events WHERE request_id LIKE 'exact-%' ORDER BY seq"
        )
    ).all()
    assert [r.request_id for r in rows] == ["exact-0", "exact-1", "exact-2"]
    for row, event in zip(rows, given, strict=True):
        assert row.reservation_id == event["reservation_id"]
        assert row.budget_ids == event["budget_ids"]
        amount = event["amount_pico_usd"]
        assert row.amount_pico_usd == (None if amount is None else Decimal(str(amount)))
        assert row.payload == event["payload"]
        assert row.occurred_at == berlin


@pytest.mark.parametrize("amount", [0.5, True, Decimal("1")])
def test_an_event_amount_that_is_not_int_pico_usd_is_refused(
    conn: Connection, amount: object
) -> None:
    with pytest.raises(TypeError, match="int pico-USD"):
        ledger.append(
            conn,
            org="acme",
            event_type=events.USAGE_RECORDED,
            occurred_at=NOW,
            amount_pico_usd=amount,  # type: ignore[arg-type]
            payload={},
        )


def test_paging_never_misses_a_late_commit(engine: Engine) -> None:
    """Writers commit out of seq order; a reader paging by seq must still see every event."""
    writers, per_writer = 8, 25
    done = threading.Event()
    seen: list[int] = []

    def write(worker: int) -> None:
        for i in range(per_writer):
            with engine.begin() as conn:
                _append(conn, request_id=f"w{worker}-{i}")
                # Hold some transactions open so that later ones commit first.
                time.sleep(0.02 if (worker + i) % 3 == 0 else 0)

    def read() -> None:
        after = 0
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            finished = done.is_set() and len(seen) >= writers * per_writer
            with engine.connect() as conn:
                page = ledger.read_events(conn, after=after, limit=50)
            if page:
                seen.extend(e.seq for e in page)
                after = page[-1].seq
            elif finished:
                return
            else:
                # Empty: caught up for now. Transactions elsewhere in the cluster can hold the
                # settled horizon back for a moment; a consumer simply polls again.
                time.sleep(0.005)

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join(timeout=180)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT seq FROM ledger_events ORDER BY seq")).scalars().all()
    assert len(stored) == writers * per_writer
    assert seen == stored  # every event, once, in seq order
