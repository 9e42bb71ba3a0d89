"""An event's canonical form: every column, and nothing that depends on the session, the
input's key order or a round trip through text (as in a dump and restore)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, Engine, text

from app.audit import queries
from app.ledger import events
from app.ledger import service as ledger
from tests.audit.support import checkpoint_everything, verify, write

RESERVATION = uuid.UUID("00000000-0000-0000-0000-0000000000aa")
BUDGET = uuid.UUID("00000000-0000-0000-0000-0000000000bb")


def _canonical(conn: Connection) -> list[str]:
    rows = conn.execute(text(f"SELECT {queries.CANONICAL_TEXT} FROM ledger_events ORDER BY seq"))
    return [str(row[0]) for row in rows]


def test_the_canonical_form_is_pinned(conn: Connection) -> None:
    """Format 1, character for character. If a PostgreSQL release ever renders json or jsonb
    differently, this fails before any chain does (and a new format is due)."""
    ledger.append(
        conn,
        org="acme",
        event_type=events.USAGE_RECORDED,
        occurred_at=datetime(2026, 11, 22, 12, 0, tzinfo=UTC),
        request_id='req "1"',
        reservation_id=RESERVATION,
        budget_ids=[BUDGET],
        amount_pico_usd=12,
        payload={"b": 1, "aa": {"é": "x\n", "a": [1.5, None, True]}, "a": "q"},
    )
    seq, recorded_at = conn.execute(
        text("SELECT seq, recorded_at FROM ledger_events ORDER BY seq DESC LIMIT 1")
    ).one()
    recorded = recorded_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    version = events.CURRENT_VERSIONS[events.USAGE_RECORDED]
    assert _canonical(conn)[-1] == (
        f'[{seq}, "acme", "usage_recorded", {version}, "req \\"1\\"",'
        f' "{RESERVATION}", null, ["{BUDGET}"], 12,'
        f' "2026-11-22T12:00:00.000000Z", "{recorded}",'
        ' {"a": "q", "b": 1, "aa": {"a": [1.5, null, true], "é": "x\\n"}}]'
    )


def test_the_canonical_form_ignores_the_session_settings(conn: Connection) -> None:
    write_one = {
        "org": "acme",
        "event_type": events.USAGE_RECORDED,
        "occurred_at": datetime(2026, 3, 29, 1, 30, 0, 123, tzinfo=UTC),
        "amount_pico_usd": 10**30,
        "payload": {"z": 0.1, "a": "ü"},
    }
    ledger.append(conn, **write_one)  # type: ignore[arg-type]
    before = _canonical(conn)
    digests = queries.digests(conn, "ledger_events", low=0, high=2**62)
    for setting in (
        "SET LOCAL TimeZone = 'Pacific/Chatham'",
        "SET LOCAL DateStyle = 'SQL, DMY'",
        "SET LOCAL IntervalStyle = 'sql_standard'",
        "SET LOCAL extra_float_digits = -10",
        "SET LOCAL lc_monetary = 'C'",
        "SET LOCAL bytea_output = 'escape'",
    ):
        conn.execute(text(setting))
    assert _canonical(conn) == before
    assert queries.digests(conn, "ledger_events", low=0, high=2**62) == digests


def test_a_round_trip_through_text_changes_no_digest(
    engine: Engine, owner: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What pg_dump and a restore do to each value, under other session settings: the chain
    still verifies. jsonb prints its keys in one order whatever order they came in."""
    write(engine, 3, "e")
    with engine.begin() as conn:
        ledger.append(
            conn,
            org="acme",
            event_type=events.USAGE_RECORDED,
            occurred_at=datetime(2026, 11, 22, 12, 0, 0, 500, tzinfo=UTC),
            payload={"zz": {"b": [1, 2.25], "a": None}, "a": "x"},
        )
    checkpoint_everything(engine)
    with owner.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("SET LOCAL TimeZone = 'America/St_Johns'"))
        conn.execute(text("SET LOCAL DateStyle = 'Postgres, DMY'"))
        conn.execute(
            text(
                "UPDATE ledger_events SET"
                " payload = (payload::text)::jsonb,"
                " occurred_at = (occurred_at::text)::timestamptz,"
                " recorded_at = (recorded_at::text)::timestamptz,"
                " amount_pico_usd = (amount_pico_usd::text)::numeric"
            )
        )
        # The same object, keys given in another order and with other spacing.
        conn.execute(
            text("UPDATE ledger_events SET payload = CAST(:doc AS jsonb) WHERE payload ? 'zz'"),
            {"doc": '{ "a":"x","zz":{"a":null, "b":[1,2.25]}}'},
        )
    code, out = verify(capsys, db_url)
    assert code == 0, out
    assert out.startswith("4 events in ")
