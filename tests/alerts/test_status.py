"""Budget status: spent, held, remaining, alert level, alerts raised, and the forecast."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine

from app.budgets import holds
from app.budgets import service as budgets
from app.budgets.model import Budget, Subject
from app.ledger.records import UsageRecord
from app.money import format_usd, parse_usd
from tests.factories import USD, make_budget

CENT = USD // 100
TEAM = Subject("team", "ml")
MARCH = datetime(2026, 3, 1, tzinfo=UTC)


def _charge(conn: Connection, request_id: str, cost: int, now: datetime) -> None:
    holds.record_usage(
        conn,
        org="acme",
        request_id=request_id,
        subjects=[TEAM],
        cost_pico_usd=cost,
        records=[UsageRecord(cost_pico_usd=cost, model="gpt-4o")],
        now=now,
    )


def _hold(conn: Connection, request_id: str, amount: int, now: datetime) -> None:
    holds.reserve(
        conn,
        org="acme",
        request_id=request_id,
        subjects=[TEAM],
        amount_pico_usd=amount,
        ttl_seconds=86_400,
        now=now,
    )


def _described(conn: Connection, budget: Budget, at: datetime) -> dict[str, object]:
    return budgets.describe_status(conn, budgets.status_of(conn, budget, at=at), at=at)


def test_the_forecast_extends_the_last_weeks_rate_to_the_period_end(conn: Connection) -> None:
    budget = make_budget(conn, subject=TEAM, limit_pico_usd=10 * USD, now=MARCH)
    _charge(conn, "r1", USD, datetime(2026, 3, 2, 10, tzinfo=UTC))  # before the window
    _charge(conn, "r2", 3 * USD, datetime(2026, 3, 10, 9, 30, tzinfo=UTC))
    _charge(conn, "r3", 36 * CENT, datetime(2026, 3, 14, 23, 59, tzinfo=UTC))
    _hold(conn, "r4", 25 * CENT, datetime(2026, 3, 15, 11, tzinfo=UTC))
    at = datetime(2026, 3, 15, 12, tzinfo=UTC)
    described = _described(conn, budget, at)
    assert described["spent_usd"] == "4.36"
    assert described["held_usd"] == "0.25"
    assert described["remaining_usd"] == "5.39"
    assert described["alert_level"] == "ok"
    assert described["as_of"] == "2026-03-15T12:00:00+00:00"
    # 3.36 USD over the 168 hours since 03-08 12:00 is 0.02 USD an hour; 396 hours are left
    # until April: 4.36 + 7.92 = 12.28, and the 5.64 USD left last 282 hours.
    assert described["forecast"] == {
        "method": "run_rate",
        "description": budgets.RUN_RATE,
        "window_start": "2026-03-08T12:00:00+00:00",
        "window_end": "2026-03-15T12:00:00+00:00",
        "window_spent_usd": "3.36",
        "rate_usd_per_hour": "0.02",
        "projected_at": "2026-04-01T00:00:00+00:00",
        "projected_spent_usd": "12.28",
        "projected_alert_level": "exceeded",
        "exceeds_limit": True,
        "limit_reached_at": "2026-03-27T06:00:00+00:00",
    }


def test_the_window_starts_at_the_period_start_and_rounds_down(conn: Connection) -> None:
    budget = make_budget(conn, subject=TEAM, limit_pico_usd=10 * USD, now=MARCH)
    _charge(conn, "r1", USD, datetime(2026, 3, 1, 0, 30, tzinfo=UTC))
    at = datetime(2026, 3, 1, 3, tzinfo=UTC)
    forecast = _described(conn, budget, at)["forecast"]
    assert isinstance(forecast, dict)
    assert forecast["window_start"] == "2026-03-01T00:00:00+00:00"
    # 1 USD in 3 hours: 0.333... an hour, rounded down to the pico-USD; the projection is
    # 1 + 1 * 741/3 = 248 USD (741 hours left in March), exact.
    assert forecast["rate_usd_per_hour"] == "0.333333333333"
    assert forecast["projected_spent_usd"] == "248"
    assert forecast["limit_reached_at"] == "2026-03-02T06:00:00+00:00"  # 9 USD at 1/3 an hour


def test_a_period_not_on_a_whole_hour_counts_only_its_own_hours(conn: Connection) -> None:
    budget = make_budget(
        conn, subject=TEAM, limit_pico_usd=100 * USD, period="day", timezone="Asia/Kolkata"
    )
    # The Kolkata day of 2026-03-15 is [03-14 18:30, 03-15 18:30) UTC.
    _charge(conn, "r1", 50 * CENT, datetime(2026, 3, 14, 18, 10, tzinfo=UTC))  # the day before
    _charge(conn, "r2", 10 * CENT, datetime(2026, 3, 14, 18, 40, tzinfo=UTC))
    early = _described(conn, budget, datetime(2026, 3, 14, 18, 50, tzinfo=UTC))
    assert early["spent_usd"] == "0.1"
    assert early["forecast"] == {
        **early["forecast"],  # type: ignore[dict-item]
        "window_start": "2026-03-14T18:50:00+00:00",
        "window_spent_usd": "0",
        "rate_usd_per_hour": "0",
        "projected_spent_usd": "0.1",
        "exceeds_limit": False,
        "limit_reached_at": None,
    }
    _charge(conn, "r3", 70 * CENT, datetime(2026, 3, 14, 19, 30, tzinfo=UTC))
    later = _described(conn, budget, datetime(2026, 3, 14, 20, 10, tzinfo=UTC))
    forecast = later["forecast"]
    assert isinstance(forecast, dict)
    # 0.7 USD in the 70 minutes since 19:00 (0.6 an hour); 1340 minutes left: 0.8 + 13.4.
    assert forecast["window_start"] == "2026-03-14T19:00:00+00:00"
    assert forecast["window_spent_usd"] == "0.7"
    assert forecast["rate_usd_per_hour"] == "0.6"
    assert forecast["projected_at"] == "2026-03-15T18:30:00+00:00"
    assert forecast["projected_spent_usd"] == "14.2"
    assert forecast["projected_alert_level"] == "ok"


def test_a_total_budget_has_no_period_end_forecast(conn: Connection) -> None:
    budget = make_budget(conn, subject=TEAM, period="total", now=MARCH)
    _charge(conn, "r1", USD, datetime(2026, 3, 2, tzinfo=UTC))
    forecast = _described(conn, budget, datetime(2026, 3, 3, tzinfo=UTC))["forecast"]
    assert isinstance(forecast, dict)
    assert forecast["method"] == "none"
    assert "no period end" in forecast["description"]
    assert forecast["projected_spent_usd"] is None and forecast["exceeds_limit"] is None


def _expected_projection(forecast: dict[str, str], spent: int) -> tuple[str, str]:
    """Projected spend and hourly rate recomputed from the response's own window."""
    start = datetime.fromisoformat(forecast["window_start"])
    end = datetime.fromisoformat(forecast["window_end"])
    period_end = datetime.fromisoformat(forecast["projected_at"])
    window_spent = parse_usd(forecast["window_spent_usd"])
    elapsed = (end - start) // timedelta(microseconds=1)
    remaining = (period_end - end) // timedelta(microseconds=1)
    projected = spent + window_spent * remaining // elapsed
    return format_usd(projected), format_usd(window_spent * 3_600_000_000 // elapsed)


def test_the_status_endpoint(api: TestClient, engine: Engine) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        budget = make_budget(conn, subject=TEAM, limit_pico_usd=10 * USD)
        total = make_budget(conn, subject=TEAM, limit_pico_usd=1000 * USD, period="total")
        _charge(conn, "r1", 850 * CENT, now)
        _hold(conn, "r2", 25 * CENT, now)

    response = api.get(f"/v1/budgets/{budget.budget_id}/status")
    assert response.status_code == 200, response.text
    status = response.json()
    assert status["limit_usd"] == "10"
    assert status["spent_usd"] == "8.5"
    assert status["held_usd"] == "0.25"
    assert status["remaining_usd"] == "1.25"
    assert status["alert_level"] == "warning"
    assert status["alert_thresholds"] == ["0.8", "0.95", "1"]
    [alert] = status["alerts"]
    assert alert["level"] == "warning" and alert["threshold"] == "0.8"
    forecast = status["forecast"]
    assert forecast["method"] == "run_rate"
    assert forecast["window_spent_usd"] == "8.5"
    assert forecast["window_end"] == status["as_of"]
    assert forecast["projected_at"] == status["period_end"]
    projected, rate = _expected_projection(forecast, 850 * CENT)
    assert forecast["projected_spent_usd"] == projected
    assert forecast["rate_usd_per_hour"] == rate
    assert forecast["exceeds_limit"] == (parse_usd(projected) > 10 * USD)

    fetched = api.get(f"/v1/budgets/{budget.budget_id}").json()
    assert fetched["alert_level"] == "warning" and fetched["forecast"]["method"] == "run_rate"
    assert "alerts" not in fetched
    listed = {b["budget_id"]: b for b in api.get("/v1/budgets").json()["budgets"]}
    assert listed[str(budget.budget_id)]["spent_usd"] == "8.5"
    assert listed[str(budget.budget_id)]["forecast"]["window_spent_usd"] == "8.5"
    assert listed[str(total.budget_id)]["forecast"]["method"] == "none"
    assert listed[str(total.budget_id)]["alert_level"] == "ok"

    missing = api.get("/v1/budgets/00000000-0000-0000-0000-000000000000/status")
    assert missing.status_code == 404
    assert missing.json()["type"].endswith("/budget-not-found")
