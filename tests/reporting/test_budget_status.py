"""reporting.budget_status against the service's budget_status, budget by budget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, text

from app.budgets import holds
from app.budgets import service as budgets_service
from app.budgets.model import Budget, BudgetStatus, Subject
from app.budgets.periods import period_bounds
from tests.factories import USD, make_budget

ORG = "status-org"


def _db_now(conn: Connection) -> datetime:
    return conn.execute(text("SELECT now()")).scalar_one()  # type: ignore[no-any-return]


def _charge(conn: Connection, budget: Budget, pico_usd: int, now: datetime) -> None:
    holds.record_usage(
        conn,
        org=ORG,
        request_id=f"charge-{budget.budget_id}-{pico_usd}",
        subjects=[budget.subject],
        cost_pico_usd=pico_usd,
        now=now,
    )


def _hold(conn: Connection, budget: Budget, pico_usd: int, now: datetime) -> None:
    holds.reserve(
        conn,
        org=ORG,
        request_id=f"hold-{budget.budget_id}",
        subjects=[budget.subject],
        amount_pico_usd=pico_usd,
        ttl_seconds=3600,
        now=now,
    )


def _view_rows(conn: Connection) -> dict[Any, Any]:
    rows = conn.execute(
        text("SELECT * FROM reporting.budget_status WHERE org = :org"), {"org": ORG}
    ).mappings()
    return {row["budget_id"]: row for row in rows}


def _used_percent(status: BudgetStatus) -> Decimal | None:
    limit = status.budget.limit_pico_usd
    if limit == 0:
        return None
    return (Decimal(status.spent_pico_usd) * 100 / limit).quantize(
        Decimal("0.0001"), rounding=ROUND_HALF_UP
    )


def _assert_same(row: Any, status: BudgetStatus) -> None:
    budget = status.budget
    usd = Decimal(10) ** -12
    assert (row["org"], row["subject_type"], row["subject_id"]) == (
        budget.org,
        budget.subject.type,
        budget.subject.id,
    )
    assert (row["mode"], row["period"], row["timezone"]) == (
        budget.mode,
        budget.period,
        budget.timezone,
    )
    assert tuple(row["alert_thresholds"]) == budget.alert_thresholds
    assert (row["period_start"], row["period_end"]) == (status.period_start, status.period_end)
    assert row["limit_pico_usd"] == budget.limit_pico_usd
    assert row["spent_pico_usd"] == status.spent_pico_usd
    assert row["held_pico_usd"] == status.held_pico_usd
    assert row["remaining_pico_usd"] == status.remaining_pico_usd
    assert row["limit_usd"] == budget.limit_pico_usd * usd
    assert row["spent_usd"] == status.spent_pico_usd * usd
    assert row["held_usd"] == status.held_pico_usd * usd
    assert row["remaining_usd"] == status.remaining_pico_usd * usd
    assert row["used_percent"] == _used_percent(status)
    assert row["alert_level"] == status.alert_level
    assert row["budget_version"] == budget.version


def test_budget_status_matches_the_service_at_every_level(conn: Connection) -> None:
    now = _db_now(conn)
    limit = 100 * USD
    made: dict[str, Budget] = {}

    def budget(name: str, **overrides: Any) -> Budget:
        values: dict[str, Any] = {"org": ORG, "subject": Subject("team", name), "now": now}
        made[name] = make_budget(conn, **{**values, **overrides})
        return made[name]

    # Levels with the default thresholds 0.8, 0.95, 1 (month and total periods, so that no
    # period can end between the writes and the read).
    for mode in ("hard", "soft"):
        _charge(conn, budget(f"{mode}-ok", mode=mode), 79 * USD, now)
        _charge(conn, budget(f"{mode}-warning", mode=mode, period="total"), 80 * USD, now)
        _charge(conn, budget(f"{mode}-critical", mode=mode), 95 * USD, now)
        _charge(conn, budget(f"{mode}-exceeded", mode=mode), limit + 1, now)
    _charge(conn, budget("soft-far-over", mode="soft"), 3 * limit + 7, now)
    # One threshold below 1 is a warning, never critical; above 1 exceedance needs more.
    _charge(conn, budget("single", alert_thresholds=["0.5"]), 60 * USD, now)
    _charge(conn, budget("above-one", alert_thresholds=["0.5", "1.5"]), 120 * USD, now)
    # The exact boundary: spent of exactly 80% of the limit is already a warning.
    _charge(conn, budget("boundary", limit_pico_usd=1234565), 987652, now)
    _charge(conn, budget("just-below", limit_pico_usd=1234565), 987651, now)
    # Holds count against remaining, not towards the alert level.
    held = budget("held")
    _charge(conn, held, 10 * USD, now)
    _hold(conn, held, 85 * USD, now)
    # No period row yet: the bounds come from the view's own calendar, in several zones.
    budget("idle-day-ny", period="day", timezone="America/New_York")
    budget("idle-week-kolkata", period="week", timezone="Asia/Kolkata")
    budget("idle-month-lord-howe", period="month", timezone="Australia/Lord_Howe")
    budget("idle-total", period="total")
    budget("zero-limit", limit_pico_usd=0)

    rows = _view_rows(conn)
    statuses = budgets_service.list_budget_statuses(conn, org=ORG, at=now)
    assert sorted(rows) == sorted(s.budget.budget_id for s in statuses)
    for status in statuses:
        _assert_same(rows[status.budget.budget_id], status)

    level = {name: rows[b.budget_id]["alert_level"] for name, b in made.items()}
    for mode in ("hard", "soft"):
        assert [level[f"{mode}-{n}"] for n in ("ok", "warning", "critical", "exceeded")] == [
            "ok",
            "warning",
            "critical",
            "exceeded",
        ]
    assert (level["single"], level["above-one"]) == ("warning", "warning")
    assert (level["boundary"], level["just-below"]) == ("warning", "ok")
    assert level["zero-limit"] == "exceeded"
    held_row = rows[made["held"].budget_id]
    assert (held_row["held_pico_usd"], held_row["remaining_pico_usd"]) == (85 * USD, 5 * USD)
    assert held_row["alert_level"] == "ok"
    assert rows[made["soft-far-over"].budget_id]["used_percent"] == Decimal("300.0000")
    assert rows[made["boundary"].budget_id]["used_percent"] == Decimal("80.0000")


def test_a_changed_limit_applies_to_the_current_period(conn: Connection) -> None:
    now = _db_now(conn)
    budget = make_budget(conn, org=ORG, now=now)
    _charge(conn, budget, 50 * USD, now)
    budgets_service.change_budget(
        conn, org=ORG, budget_id=budget.budget_id, limit_pico_usd=52 * USD, now=now
    )
    row = _view_rows(conn)[budget.budget_id]
    assert (row["limit_pico_usd"], row["alert_level"], row["budget_version"]) == (
        52 * USD,
        "critical",
        2,
    )


def test_a_zone_this_server_does_not_know_leaves_the_period_empty(conn: Connection) -> None:
    """A budget whose zone the database's tzdata lacks must not break the view for all."""
    now = _db_now(conn)
    budget = make_budget(conn, org=ORG, now=now)
    conn.execute(
        text("UPDATE budgets SET timezone = 'Mars/Olympus', period = 'day' WHERE budget_id = :b"),
        {"b": budget.budget_id},
    )
    row = _view_rows(conn)[budget.budget_id]
    assert (row["period_start"], row["period_end"], row["spent_pico_usd"]) == (None, None, 0)


def _transitions(zone: str) -> list[datetime]:
    """Every UTC offset change of ``zone`` from 2024 to 2026, found hour by hour."""
    tz = ZoneInfo(zone)
    found = []
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    offset = moment.astimezone(tz).utcoffset()
    while moment < datetime(2027, 1, 1, tzinfo=UTC):
        moment += timedelta(hours=1)
        current = moment.astimezone(tz).utcoffset()
        if current != offset:
            found.append(moment)
            offset = current
    return found


ZONES = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "America/St_Johns",
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "America/Havana",  # clocks fall back to midnight: local midnight happens twice
    "America/Santiago",  # clocks spring forward at midnight: local midnight never happens
    "Atlantic/Azores",
    "Asia/Beirut",
    "Pacific/Chatham",
]


@pytest.mark.parametrize("zone", ZONES)
def test_the_views_calendar_is_the_services_calendar(conn: Connection, zone: str) -> None:
    """reporting.budget_period_bounds, used for periods nothing was charged in yet, must
    agree with app/budgets/periods.py at every DST change, including changes at midnight."""
    instants = [datetime(2025, 6, 15, 12, tzinfo=UTC)]
    for change in _transitions(zone):
        for hours in (-49, -25, -24, -23, -2, -1, 0, 1, 2, 23, 24, 25, 49):
            instants.append(change + timedelta(hours=hours, minutes=-1))
            instants.append(change + timedelta(hours=hours))
    cases = [(p, at) for p in ("day", "week", "month", "total") for at in instants]
    got = conn.execute(
        text(
            "SELECT b.period_start, b.period_end"
            " FROM unnest(CAST(:periods AS text[]), CAST(:instants AS timestamptz[]))"
            " WITH ORDINALITY AS c(period, instant, n),"
            " LATERAL reporting.budget_period_bounds(c.period, :zone, c.instant) AS b"
            " ORDER BY c.n"
        ),
        {"periods": [p for p, _ in cases], "instants": [at for _, at in cases], "zone": zone},
    ).all()
    expected = [period_bounds(p, zone, at) for p, at in cases]
    assert [(r.period_start, r.period_end) for r in got] == expected
