"""Raising alerts: each level once per budget and period, in the charge's transaction."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine, func, select

from app.alerts import service as alerts
from app.alerts.replay import verify_alerts
from app.alerts.tables import budget_alerts, webhook_outbox
from app.budgets import holds
from app.budgets import service as budgets
from app.budgets.model import LEVELS, Subject
from app.budgets.replay import verify
from app.ledger import events
from app.ledger import service as ledger
from app.ledger.records import UsageRecord
from app.ledger.tables import ledger_events
from tests.factories import USD, make_budget

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CENT = USD // 100
TEAM = Subject("team", "ml")


def _charge(
    conn: Connection, request_id: str, cost: int, *, org: str = "acme", now: datetime = NOW
) -> None:
    holds.record_usage(
        conn,
        org=org,
        request_id=request_id,
        subjects=[TEAM],
        cost_pico_usd=cost,
        records=[UsageRecord(cost_pico_usd=cost, model="gpt-4o")],
        now=now,
    )


def _alert_events(conn: Connection, org: str = "acme") -> list[events.Event]:
    return [
        e
        for e in ledger.read_events(conn, org=org, limit=1000)
        if e.event_type == events.ALERT_RAISED
    ]


def _levels(conn: Connection, org: str = "acme") -> list[str]:
    return [e.payload["level"] for e in _alert_events(conn, org)]


def _outbox(conn: Connection, webhook_id: UUID) -> list[dict[str, Any]]:
    """The bodies queued for a webhook, by period and level (one transaction's rows share
    their created_at)."""
    rows = conn.execute(
        select(webhook_outbox.c.payload).where(webhook_outbox.c.webhook_id == webhook_id)
    )
    bodies = [dict(r.payload) for r in rows]
    return sorted(
        bodies, key=lambda b: (b["data"]["period_start"], LEVELS.index(b["data"]["level"]))
    )


def _verified(conn: Connection) -> None:
    assert verify(conn).ok
    assert verify_alerts(conn) == []


def test_levels_are_raised_once_each_as_spend_crosses_them(conn: Connection) -> None:
    make_budget(conn, subject=TEAM, limit_pico_usd=USD, mode="soft", now=NOW)
    webhook, _ = alerts.register_webhook(conn, org="acme", url="https://hooks.example/a")
    _charge(conn, "r1", 50 * CENT)
    assert _levels(conn) == []
    _charge(conn, "r2", 30 * CENT)  # 0.80: warning, exactly at the threshold
    _charge(conn, "r3", 10 * CENT)  # 0.90: still warning
    assert _levels(conn) == ["warning"]
    _charge(conn, "r4", 5 * CENT)  # 0.95: critical
    _charge(conn, "r5", 10 * CENT)  # 1.05: exceeded
    _charge(conn, "r6", 20 * CENT)  # 1.25: nothing new
    assert _levels(conn) == ["warning", "critical", "exceeded"]
    raised = _alert_events(conn)
    assert [e.request_id for e in raised] == ["r2", "r4", "r5"]
    assert [e.payload["threshold"] for e in raised] == ["0.8", "0.95", "1"]
    assert [e.payload["previous_level"] for e in raised] == ["ok", "warning", "critical"]
    assert [e.amount_pico_usd for e in raised] == [80 * CENT, 95 * CENT, 105 * CENT]
    bodies = _outbox(conn, webhook.webhook_id)
    assert [b["data"]["level"] for b in bodies] == ["warning", "critical", "exceeded"]
    assert bodies[0]["data"]["spent_usd"] == "0.8"
    assert bodies[0]["data"]["remaining_usd"] == "0.2"
    assert bodies[2]["data"]["remaining_usd"] == "-0.05"
    assert bodies[0]["id"] == raised[0].payload["alert_id"]
    _verified(conn)


def test_a_jump_raises_every_crossed_level_in_order(conn: Connection) -> None:
    budget = make_budget(conn, subject=TEAM, limit_pico_usd=USD, mode="soft", now=NOW)
    _charge(conn, "r1", 2 * USD)
    raised = _alert_events(conn)
    assert [e.payload["level"] for e in raised] == ["warning", "critical", "exceeded"]
    assert all(e.payload["previous_level"] == "ok" for e in raised)
    assert all(e.budget_id == budget.budget_id for e in raised)
    assert raised[0].seq < raised[1].seq < raised[2].seq
    # The charge's own events come first: the cause before the alert.
    kinds = [e.event_type for e in ledger.read_events(conn, org="acme", request_id="r1")]
    assert kinds == ["committed", "usage_recorded", *[events.ALERT_RAISED] * 3]
    _verified(conn)


def test_the_thresholds_define_which_levels_exist(conn: Connection) -> None:
    make_budget(
        conn,
        subject=TEAM,
        limit_pico_usd=USD,
        mode="soft",
        alert_thresholds=("0.5", "1.0"),
        now=NOW,
    )
    _charge(conn, "r1", 60 * CENT)
    _charge(conn, "r2", 60 * CENT)
    assert _levels(conn) == ["warning", "exceeded"]
    assert [e.payload["threshold"] for e in _alert_events(conn)] == ["0.5", "1"]


def test_thresholds_map_to_levels() -> None:
    assert alerts.levels_of(("0.8", "0.95", "1.0")) == {
        "warning": "0.8",
        "critical": "0.95",
        "exceeded": "1.0",
    }
    assert alerts.levels_of(("0.5", "0.7", "0.9")) == {"warning": "0.5", "critical": "0.9"}
    assert alerts.levels_of(("0.5", "1.5", "2")) == {"warning": "0.5", "exceeded": "1.5"}
    assert alerts.levels_of(("1",)) == {"exceeded": "1"}


def test_a_tiny_limit_still_raises_each_crossed_level(conn: Connection) -> None:
    # 0.8 and 0.95 of 3 pico-USD are both crossed by the same pico-USD that reaches the
    # limit: the levels are never held one at a time, but each was crossed, so each is raised.
    make_budget(conn, subject=TEAM, limit_pico_usd=3, mode="soft", now=NOW)
    _charge(conn, "r1", 2)
    assert _levels(conn) == []
    _charge(conn, "r2", 1)
    assert _levels(conn) == ["warning", "critical", "exceeded"]


def test_each_period_is_alerted_once_even_when_the_level_drops_and_returns(
    conn: Connection,
) -> None:
    budget = make_budget(conn, subject=TEAM, limit_pico_usd=USD, mode="soft", period="day", now=NOW)
    _charge(conn, "r1", 85 * CENT)
    budgets.change_budget(
        conn, org="acme", budget_id=budget.budget_id, limit_pico_usd=2 * USD, now=NOW
    )
    _charge(conn, "r2", 80 * CENT)  # 1.65 of 2: warning again in the same period
    assert _levels(conn) == ["warning"]
    tomorrow = NOW + timedelta(days=1)
    _charge(conn, "r3", 170 * CENT, now=tomorrow)
    raised = _alert_events(conn)
    assert [e.payload["level"] for e in raised] == ["warning", "warning"]
    assert raised[1].payload["period_start"] == "2026-11-23T00:00:00+00:00"
    rows = conn.execute(select(func.count()).select_from(budget_alerts)).scalar_one()
    assert rows == 2
    _verified(conn)


def test_lowering_the_limit_raises_the_levels_it_crosses(conn: Connection) -> None:
    budget = make_budget(conn, subject=TEAM, limit_pico_usd=USD, mode="soft", now=NOW)
    _charge(conn, "r1", 85 * CENT)
    budgets.change_budget(
        conn, org="acme", budget_id=budget.budget_id, limit_pico_usd=50 * CENT, now=NOW
    )
    raised = _alert_events(conn)
    assert [e.payload["level"] for e in raised] == ["warning", "critical", "exceeded"]
    assert raised[1].request_id is None
    assert raised[1].payload["previous_level"] == "warning"
    assert raised[1].payload["limit_pico_usd"] == 50 * CENT
    # Raising the limit again and changing the mode raise nothing.
    budgets.change_budget(
        conn, org="acme", budget_id=budget.budget_id, limit_pico_usd=10 * USD, mode="hard"
    )
    assert len(_alert_events(conn)) == 3
    _verified(conn)


def test_a_committed_reservation_raises_with_its_ids(conn: Connection) -> None:
    make_budget(conn, subject=TEAM, limit_pico_usd=USD, now=NOW)
    reservation = holds.reserve(
        conn,
        org="acme",
        request_id="req-1",
        subjects=[TEAM],
        amount_pico_usd=90 * CENT,
        ttl_seconds=60,
        now=NOW,
    )
    assert _levels(conn) == []  # a hold is not spend
    holds.commit_reservation(
        conn,
        org="acme",
        reservation_id=reservation.reservation_id,
        cost_pico_usd=81 * CENT,
        now=NOW,
    )
    [raised] = _alert_events(conn)
    assert raised.payload["level"] == "warning"
    assert raised.reservation_id == reservation.reservation_id
    assert raised.request_id == "req-1"
    assert raised.payload["held_pico_usd"] == 0
    _verified(conn)


def test_replay_of_alerts_finds_a_row_without_its_event(conn: Connection) -> None:
    budget = make_budget(conn, subject=TEAM, limit_pico_usd=USD, mode="soft", now=NOW)
    _charge(conn, "r1", 90 * CENT)
    assert verify_alerts(conn) == []
    conn.execute(
        budget_alerts.insert().values(
            org="acme",
            budget_id=budget.budget_id,
            period_start=datetime(2026, 11, 1, tzinfo=UTC),
            level="critical",
            period_end=datetime(2026, 12, 1, tzinfo=UTC),
            threshold="0.95",
            spent_pico_usd=95 * CENT,
            limit_pico_usd=USD,
            alert_id=UUID(int=7),
            raised_at=NOW,
        )
    )
    [difference] = verify_alerts(conn)
    assert difference.side == "live only" and difference.row["level"] == "critical"


def test_webhooks_get_only_their_own_orgs_alerts(conn: Connection) -> None:
    make_budget(conn, subject=TEAM, limit_pico_usd=USD, mode="soft", now=NOW)
    mine, _ = alerts.register_webhook(conn, org="acme", url="https://hooks.example/acme")
    revoked, _ = alerts.register_webhook(conn, org="acme", url="https://hooks.example/old")
    alerts.revoke_webhook(conn, webhook_id=revoked.webhook_id, org="acme")
    other, _ = alerts.register_webhook(conn, org="globex", url="https://hooks.example/globex")
    _charge(conn, "r1", 90 * CENT)
    assert [b["data"]["level"] for b in _outbox(conn, mine.webhook_id)] == ["warning"]
    assert _outbox(conn, revoked.webhook_id) == []
    assert _outbox(conn, other.webhook_id) == []
    assert [b["org"] for b in _outbox(conn, mine.webhook_id)] == ["acme"]


def test_concurrent_charges_raise_each_level_once(engine: Engine) -> None:
    with engine.begin() as conn:
        budget = make_budget(conn, subject=TEAM, limit_pico_usd=USD, mode="soft")
        hooks = [
            alerts.register_webhook(conn, org="acme", url=f"https://hooks.example/{n}")[0]
            for n in range(2)
        ]
        reservations = [
            holds.reserve(
                conn,
                org="acme",
                request_id=f"held-{n}",
                subjects=[TEAM],
                amount_pico_usd=5 * CENT,
                ttl_seconds=600,
            ).reservation_id
            for n in range(24)
        ]

    def direct(n: int) -> None:
        with engine.begin() as conn:
            _charge(conn, f"direct-{n}", 3 * CENT, now=datetime.now(UTC))

    def commit(reservation_id: UUID) -> None:
        with engine.begin() as conn:
            holds.commit_reservation(
                conn, org="acme", reservation_id=reservation_id, cost_pico_usd=3 * CENT
            )

    # 48 charges of 3 cents: 1.44 USD against 1 USD, crossing every level under contention.
    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(direct, n) for n in range(24)]
        futures += [pool.submit(commit, r) for r in reservations]
        for future in futures:
            future.result()

    with engine.connect() as conn:
        status = budgets.budget_status(conn, budget_id=budget.budget_id, org="acme")
        assert status.spent_pico_usd == 144 * CENT
        # Straight from the table: read_events waits for the cluster-wide snapshot horizon,
        # which other databases' open transactions on the same server can hold back.
        raised = conn.execute(
            select(ledger_events.c.payload["level"].astext).where(
                ledger_events.c.event_type == events.ALERT_RAISED
            )
        )
        assert sorted(raised.scalars()) == ["critical", "exceeded", "warning"]
        rows = conn.execute(select(budget_alerts.c.level)).scalars().all()
        assert sorted(rows) == ["critical", "exceeded", "warning"]
        for hook in hooks:
            levels = sorted(b["data"]["level"] for b in _outbox(conn, hook.webhook_id))
            assert levels == ["critical", "exceeded", "warning"]
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        _verified(conn)
        conn.rollback()
