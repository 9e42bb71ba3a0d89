"""reporting.request_log: one row per request, whatever became of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, text

from app.budgets import holds
from app.budgets.model import Subject
from app.ledger.records import UsageRecord
from tests.factories import USD, make_budget

ORG = "log-org"
T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
TEAM = Subject("team", "ml")
USER = Subject("user", "ada")


def _reserve(conn: Connection, request_id: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "org": ORG,
        "request_id": request_id,
        "subjects": [TEAM, USER],
        "amount_pico_usd": 2 * USD,
        "ttl_seconds": 60,
        "model": "gpt-4o",
        "provider": "openai",
        "now": T0,
    }
    return holds.reserve(conn, **{**values, **overrides})


def _message(cost: int, model: str = "claude-sonnet-4", provider: str = "anthropic") -> UsageRecord:
    return UsageRecord(cost_pico_usd=cost, model=model, provider=provider)


def _log(conn: Connection) -> dict[tuple[str, str], Any]:
    rows = conn.execute(
        text("SELECT * FROM reporting.request_log WHERE org = :org"), {"org": ORG}
    ).mappings()
    found: dict[tuple[str, str], Any] = {}
    for row in rows:
        key = (row["kind"], row["request_id"])
        assert key not in found
        found[key] = row
    return found


def test_every_request_is_one_row_in_its_final_state(conn: Connection) -> None:
    make_budget(conn, org=ORG, subject=TEAM, limit_pico_usd=10 * USD)
    committed = _reserve(conn, "committed", metadata={"endpoint": "/chat"})
    holds.commit_reservation(
        conn,
        org=ORG,
        reservation_id=committed.reservation_id,
        cost_pico_usd=USD + 1,
        records=[_message(USD), _message(1)],
        now=T0 + timedelta(seconds=4, milliseconds=250),
    )
    # Named no model when reserving: the first message's model and provider stand in.
    unnamed = _reserve(conn, "unnamed", model=None, provider=None)
    holds.commit_reservation(
        conn,
        org=ORG,
        reservation_id=unnamed.reservation_id,
        cost_pico_usd=5,
        records=[_message(3, "gemini-2.5-pro", "gemini"), _message(2, "gpt-4o", "openai")],
        now=T0 + timedelta(seconds=2),
    )
    overrun = _reserve(conn, "overrun-late")
    holds.commit_reservation(
        conn,
        org=ORG,
        reservation_id=overrun.reservation_id,
        cost_pico_usd=3 * USD,
        now=T0 + timedelta(seconds=90),
    )
    cancelled = _reserve(conn, "cancelled")
    holds.cancel(
        conn, org=ORG, reservation_id=cancelled.reservation_id, now=T0 + timedelta(seconds=1)
    )
    expired = _reserve(conn, "expired")
    assert holds.expire_one(
        conn, org=ORG, reservation_id=expired.reservation_id, now=T0 + timedelta(minutes=5)
    )
    held = _reserve(conn, "held", amount_pico_usd=3 * USD)
    holds.extend(conn, org=ORG, reservation_id=held.reservation_id, amount_pico_usd=4 * USD)
    holds.record_usage(
        conn,
        org=ORG,
        request_id="direct",
        subjects=[USER],
        cost_pico_usd=7,
        records=[_message(4, "o3", "openai"), _message(3)],
        now=T0 + timedelta(minutes=1),
    )
    holds.record_usage(
        conn,
        org=ORG,
        request_id="direct-named",
        subjects=[TEAM],
        cost_pico_usd=11 * USD,  # takes the team past its limit: flagged
        model="gpt-4o-mini",
        provider="openai",
        now=T0 + timedelta(minutes=2),
    )
    # The same request id as a reservation's: another idempotency scope, another request.
    holds.record_usage(
        conn,
        org=ORG,
        request_id="committed",
        subjects=[USER],
        cost_pico_usd=1,
        records=[_message(1, "mistral-large", "mistral")],
        now=T0 + timedelta(minutes=3),
    )

    log = _log(conn)
    assert sorted(log) == sorted(
        [
            ("reservation", "committed"),
            ("reservation", "unnamed"),
            ("reservation", "overrun-late"),
            ("reservation", "cancelled"),
            ("reservation", "expired"),
            ("reservation", "held"),
            ("direct", "direct"),
            ("direct", "direct-named"),
            ("direct", "committed"),
        ]
    )
    columns = (
        "state",
        "reserved_pico_usd",
        "held_pico_usd",
        "cost_pico_usd",
        "model",
        "provider",
        "overrun",
        "late",
    )

    def summary(kind: str, request_id: str) -> tuple[Any, ...]:
        return tuple(log[(kind, request_id)][c] for c in columns)

    assert summary("reservation", "committed") == (
        "committed", 2 * USD, 0, USD + 1, "gpt-4o", "openai", False, False
    )  # fmt: skip
    assert summary("reservation", "unnamed") == (
        "committed", 2 * USD, 0, 5, "gemini-2.5-pro", "gemini", False, False
    )  # fmt: skip
    assert summary("reservation", "overrun-late") == (
        "committed", 2 * USD, 0, 3 * USD, "gpt-4o", "openai", True, True
    )  # fmt: skip
    assert summary("reservation", "cancelled") == (
        "cancelled", 2 * USD, 0, None, "gpt-4o", "openai", False, False
    )  # fmt: skip
    assert summary("reservation", "expired") == (
        "expired", 2 * USD, 0, None, "gpt-4o", "openai", False, False
    )  # fmt: skip
    assert summary("reservation", "held") == (
        "held", 4 * USD, 4 * USD, None, "gpt-4o", "openai", False, False
    )  # fmt: skip
    assert summary("direct", "direct") == ("recorded", None, 0, 7, "o3", "openai", False, False)
    assert summary("direct", "direct-named") == (
        "recorded", None, 0, 11 * USD, "gpt-4o-mini", "openai", True, False
    )  # fmt: skip
    assert summary("direct", "committed") == (
        "recorded", None, 0, 1, "mistral-large", "mistral", False, False
    )  # fmt: skip

    row = log[("reservation", "committed")]
    assert row["cost_usd"] == Decimal("1.000000000001")
    assert row["reserved_usd"] == Decimal(2)
    assert row["requested_at"] == row["reserved_at"] == T0
    assert row["settled_at"] == T0 + timedelta(seconds=4, milliseconds=250)
    assert row["expires_at"] == T0 + timedelta(seconds=60)
    assert row["seconds_to_settle"] == Decimal("4.25")
    assert row["subjects"] == [{"type": "team", "id": "ml"}, {"type": "user", "id": "ada"}]
    assert row["metadata"] == {"endpoint": "/chat"}
    assert row["reservation_id"] == committed.reservation_id
    held_row = log[("reservation", "held")]
    assert (held_row["settled_at"], held_row["seconds_to_settle"]) == (None, None)
    assert held_row["held_usd"] == Decimal(4)
    direct = log[("direct", "direct")]
    assert direct["reservation_id"] is None
    assert direct["requested_at"] == direct["settled_at"] == T0 + timedelta(minutes=1)
    assert (direct["reserved_at"], direct["expires_at"], direct["seconds_to_settle"]) == (
        None,
        None,
        None,
    )
    assert direct["subjects"] == [{"type": "user", "id": "ada"}]
    assert direct["cost_usd"] == Decimal("0.000000000007")


def test_listing_recent_requests_reads_no_event_but_direct_charges(conn: Connection) -> None:
    """The log must not read the event table whole (docs/dashboards.md): among plenty of
    other events, the direct charges are found through their own index, and reservations
    through theirs."""
    conn.execute(text("SET LOCAL ROLE NONE"))  # the session's login, to insert and ANALYZE
    conn.execute(
        text(
            "INSERT INTO ledger_events (org, event_type, schema_version, request_id,"
            " amount_pico_usd, payload, occurred_at)"
            " SELECT 'acme', 'usage_recorded', 2, 'r' || n, 1, '{}',"
            " now() - n * interval '1 minute' FROM generate_series(1, 3000) AS n"
        )
    )
    conn.execute(
        text(
            "INSERT INTO reservations (org, reservation_id, request_id, state, amount_pico_usd,"
            " subjects, holds, model, reserved_at, expires_at)"
            " SELECT 'acme', gen_random_uuid(), 'r' || n, 'expired', 1, '[]', '[]', 'gpt-4o',"
            " now() - n * interval '1 minute', now() FROM generate_series(1, 3000) AS n"
        )
    )
    partition = conn.execute(
        text("SELECT tableoid::regclass::text FROM ledger_events WHERE org = 'acme' LIMIT 1")
    ).scalar_one()
    conn.execute(text("ANALYZE ledger_events"))
    conn.execute(text("ANALYZE reservations"))
    plan = "\n".join(
        conn.execute(
            text(
                "EXPLAIN SELECT request_id, model, cost_usd FROM reporting.request_log"
                " WHERE org = 'acme' AND requested_at >= now() - interval '1 hour'"
                " ORDER BY requested_at DESC LIMIT 50"
            )
        ).scalars()
    )
    # Partitions name their copy of ix_ledger_events_direct_commits after its columns.
    assert f"{partition}_org_occurred_at_idx on {partition}" in plan, plan
    assert f"Seq Scan on {partition}" not in plan, plan
    assert "ix_reservations_org_reserved_at" in plan, plan
    assert "Seq Scan on reservations" not in plan, plan
