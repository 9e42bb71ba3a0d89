"""Reserve, commit, cancel, extend, expire and direct usage, one transaction at a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, Engine

from app.budgets import holds
from app.budgets import service as budgets
from app.budgets.errors import BudgetExceeded, ReservationSettled
from app.budgets.model import Reservation, Subject
from app.budgets.replay import verify
from app.errors import IdempotencyConflict, InvalidInput
from app.ledger import service as ledger
from app.ledger.records import UsageRecord
from tests.factories import USD, make_budget

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CENT = USD // 100
TEAM = Subject("team", "ml")
KEY = Subject("key", "k1")


def _reserve(conn: Connection, request_id: str, amount: int, **kw: object) -> Reservation:
    values: dict[str, object] = {
        "org": "acme",
        "request_id": request_id,
        "subjects": [TEAM, KEY],
        "amount_pico_usd": amount,
        "ttl_seconds": 60,
        "now": NOW,
    }
    values.update(kw)
    return holds.reserve(conn, **values)  # type: ignore[arg-type]


def _status(conn: Connection, budget_id: object, at: datetime = NOW) -> tuple[int, int]:
    status = budgets.budget_status(conn, budget_id=budget_id, org="acme", at=at)  # type: ignore[arg-type]
    return status.spent_pico_usd, status.held_pico_usd


def test_reserve_holds_against_every_budget_of_every_subject(conn: Connection) -> None:
    team = make_budget(conn, subject=TEAM, limit_pico_usd=USD, now=NOW)
    daily = make_budget(conn, subject=TEAM, limit_pico_usd=USD, period="day", now=NOW)
    key = make_budget(conn, subject=KEY, limit_pico_usd=USD, now=NOW)
    reservation = _reserve(conn, "r1", 30 * CENT)
    assert {b.budget_id for b in reservation.budgets} == {
        team.budget_id,
        daily.budget_id,
        key.budget_id,
    }
    for budget in (team, daily, key):
        assert _status(conn, budget.budget_id) == (0, 30 * CENT)
    assert all(b.remaining_pico_usd == 70 * CENT for b in reservation.budgets)


def test_refusal_names_the_budget_and_holds_nothing(conn: Connection) -> None:
    roomy = make_budget(conn, subject=TEAM, limit_pico_usd=10 * USD, now=NOW)
    tight = make_budget(conn, subject=KEY, limit_pico_usd=20 * CENT, now=NOW)
    savepoint = conn.begin_nested()
    with pytest.raises(BudgetExceeded) as refused:
        _reserve(conn, "r1", 30 * CENT)
    savepoint.rollback()
    problem = refused.value.problem()
    assert problem["status"] == 402
    assert problem["type"].endswith("/budget-exceeded")
    assert problem["budget_id"] == str(tight.budget_id)
    assert problem["remaining_usd"] == "0.2" and problem["limit_usd"] == "0.2"
    assert _status(conn, roomy.budget_id) == (0, 0)


def test_soft_budget_allows_and_flags(conn: Connection) -> None:
    soft = make_budget(conn, subject=TEAM, limit_pico_usd=10 * CENT, mode="soft", now=NOW)
    reservation = _reserve(conn, "r1", 30 * CENT)
    settlement = holds.commit_reservation(
        conn,
        org="acme",
        reservation_id=reservation.reservation_id,
        cost_pico_usd=25 * CENT,
        now=NOW,
    )
    assert settlement.flagged_budgets == (str(soft.budget_id),)
    assert _status(conn, soft.budget_id) == (25 * CENT, 0)


def test_commit_charges_actual_cost_and_records_each_message(conn: Connection) -> None:
    budget = make_budget(conn, subject=TEAM, limit_pico_usd=USD, now=NOW)
    reservation = _reserve(conn, "r1", 50 * CENT)
    records = [
        UsageRecord(cost_pico_usd=10 * CENT, model="gpt-4o", prompt_tokens=100),
        UsageRecord(cost_pico_usd=5 * CENT, model="gpt-4o", completion_tokens=7),
    ]
    settlement = holds.commit_reservation(
        conn,
        org="acme",
        reservation_id=reservation.reservation_id,
        cost_pico_usd=15 * CENT,
        records=records,
        now=NOW,
    )
    assert not settlement.overrun and not settlement.late
    assert _status(conn, budget.budget_id) == (15 * CENT, 0)
    kinds = [e.event_type for e in ledger.read_events(conn, org="acme", request_id="r1")]
    assert kinds == ["reserved", "committed", "usage_recorded", "usage_recorded"]


def test_cost_must_equal_the_messages(conn: Connection) -> None:
    make_budget(conn, subject=TEAM, now=NOW)
    reservation = _reserve(conn, "r1", 50 * CENT)
    with pytest.raises(InvalidInput) as refused:
        holds.commit_reservation(
            conn,
            org="acme",
            reservation_id=reservation.reservation_id,
            cost_pico_usd=15 * CENT,
            records=[UsageRecord(cost_pico_usd=CENT)],
            now=NOW,
        )
    assert refused.value.fields["field"] == "messages"


def test_overrun_is_charged_in_full_and_flagged(conn: Connection) -> None:
    budget = make_budget(conn, subject=TEAM, limit_pico_usd=USD, now=NOW)
    reservation = _reserve(conn, "r1", 10 * CENT)
    settlement = holds.commit_reservation(
        conn, org="acme", reservation_id=reservation.reservation_id, cost_pico_usd=2 * USD, now=NOW
    )
    assert settlement.overrun
    assert settlement.flagged_budgets == (str(budget.budget_id),)
    assert _status(conn, budget.budget_id) == (2 * USD, 0)


def test_cancel_releases_and_a_later_commit_is_refused(conn: Connection) -> None:
    budget = make_budget(conn, subject=TEAM, now=NOW)
    reservation = _reserve(conn, "r1", 10 * CENT)
    cancelled = holds.cancel(conn, org="acme", reservation_id=reservation.reservation_id, now=NOW)
    assert cancelled.state == "cancelled"
    assert _status(conn, budget.budget_id) == (0, 0)
    again = holds.cancel(conn, org="acme", reservation_id=reservation.reservation_id, now=NOW)
    assert again == cancelled
    with pytest.raises(ReservationSettled):
        holds.commit_reservation(
            conn, org="acme", reservation_id=reservation.reservation_id, cost_pico_usd=CENT, now=NOW
        )


def test_expired_hold_is_released_and_a_late_commit_still_charged(conn: Connection) -> None:
    budget = make_budget(conn, subject=TEAM, now=NOW)
    reservation = _reserve(conn, "r1", 10 * CENT)
    later = NOW + timedelta(seconds=61)
    assert holds.expire_one(conn, org="acme", reservation_id=reservation.reservation_id, now=later)
    assert _status(conn, budget.budget_id) == (0, 0)
    settlement = holds.commit_reservation(
        conn,
        org="acme",
        reservation_id=reservation.reservation_id,
        cost_pico_usd=7 * CENT,
        now=later,
    )
    assert settlement.late
    assert _status(conn, budget.budget_id) == (7 * CENT, 0)
    assert verify(conn).ok


def test_a_hold_not_yet_due_is_not_expired(conn: Connection) -> None:
    make_budget(conn, subject=TEAM, now=NOW)
    reservation = _reserve(conn, "r1", 10 * CENT)
    assert not holds.expire_one(
        conn, org="acme", reservation_id=reservation.reservation_id, now=NOW + timedelta(seconds=30)
    )


def test_extend_raises_the_hold_and_is_refused_past_a_hard_limit(conn: Connection) -> None:
    budget = make_budget(conn, subject=TEAM, limit_pico_usd=USD, now=NOW)
    reservation = _reserve(conn, "r1", 10 * CENT)
    extended = holds.extend(
        conn,
        org="acme",
        reservation_id=reservation.reservation_id,
        amount_pico_usd=60 * CENT,
        ttl_seconds=300,
        now=NOW,
    )
    assert extended.expires_at == NOW + timedelta(seconds=300)
    assert _status(conn, budget.budget_id) == (0, 60 * CENT)
    savepoint = conn.begin_nested()
    with pytest.raises(BudgetExceeded):
        holds.extend(
            conn,
            org="acme",
            reservation_id=reservation.reservation_id,
            amount_pico_usd=2 * USD,
            now=NOW,
        )
    savepoint.rollback()
    holds.commit_reservation(
        conn,
        org="acme",
        reservation_id=reservation.reservation_id,
        cost_pico_usd=55 * CENT,
        now=NOW,
    )
    assert _status(conn, budget.budget_id) == (55 * CENT, 0)
    assert verify(conn).ok


def test_retries_return_the_original_and_different_content_conflicts(conn: Connection) -> None:
    budget = make_budget(conn, subject=TEAM, now=NOW)
    first = _reserve(conn, "r1", 10 * CENT)
    assert _reserve(conn, "r1", 10 * CENT) == first
    with pytest.raises(IdempotencyConflict):
        _reserve(conn, "r1", 11 * CENT)
    commit = holds.commit_reservation(
        conn, org="acme", reservation_id=first.reservation_id, cost_pico_usd=4 * CENT, now=NOW
    )
    assert (
        holds.commit_reservation(
            conn, org="acme", reservation_id=first.reservation_id, cost_pico_usd=4 * CENT, now=NOW
        )
        == commit
    )
    with pytest.raises(IdempotencyConflict):
        holds.commit_reservation(
            conn, org="acme", reservation_id=first.reservation_id, cost_pico_usd=5 * CENT, now=NOW
        )
    assert _status(conn, budget.budget_id) == (4 * CENT, 0)


def test_the_same_request_id_in_another_org_is_another_request(engine: Engine) -> None:
    results = []
    for org in ("acme", "globex"):
        with engine.begin() as conn:
            budget = make_budget(conn, org=org, subject=TEAM, now=NOW)
            results.append((budget, _reserve(conn, "r1", 10 * CENT, org=org)))
    (acme_budget, acme), (globex_budget, globex) = results
    assert acme.reservation_id != globex.reservation_id
    with engine.connect() as conn:
        assert _status(conn, acme_budget.budget_id) == (0, 10 * CENT)
        status = budgets.budget_status(
            conn, budget_id=globex_budget.budget_id, org="globex", at=NOW
        )
        assert status.held_pico_usd == 10 * CENT


def test_record_usage_charges_directly_and_refuses_when_exhausted(conn: Connection) -> None:
    budget = make_budget(conn, subject=TEAM, limit_pico_usd=10 * CENT, now=NOW)
    first = holds.record_usage(
        conn, org="acme", request_id="u1", subjects=[TEAM], cost_pico_usd=12 * CENT, now=NOW
    )
    assert first.flagged_budgets == (str(budget.budget_id),)
    assert _status(conn, budget.budget_id) == (12 * CENT, 0)
    assert (
        holds.record_usage(
            conn, org="acme", request_id="u1", subjects=[TEAM], cost_pico_usd=12 * CENT, now=NOW
        )
        == first
    )
    savepoint = conn.begin_nested()
    with pytest.raises(BudgetExceeded):
        holds.record_usage(
            conn, org="acme", request_id="u2", subjects=[TEAM], cost_pico_usd=CENT, now=NOW
        )
    savepoint.rollback()
    assert verify(conn).ok


def test_a_new_period_starts_at_zero_and_old_holds_settle_in_their_period(
    conn: Connection,
) -> None:
    budget = make_budget(
        conn, subject=TEAM, limit_pico_usd=USD, period="day", timezone="Europe/Berlin", now=NOW
    )
    before_midnight = datetime(2026, 11, 22, 22, 59, tzinfo=UTC)  # 23:59 in Berlin
    reservation = _reserve(conn, "r1", 90 * CENT, now=before_midnight)
    after_midnight = before_midnight + timedelta(minutes=2)
    assert _status(conn, budget.budget_id, at=after_midnight) == (0, 0)
    _reserve(conn, "r2", 90 * CENT, now=after_midnight)  # fits: a new day
    holds.commit_reservation(
        conn,
        org="acme",
        reservation_id=reservation.reservation_id,
        cost_pico_usd=80 * CENT,
        now=after_midnight,
    )
    assert _status(conn, budget.budget_id, at=before_midnight) == (80 * CENT, 0)
    assert _status(conn, budget.budget_id, at=after_midnight) == (0, 90 * CENT)
    assert verify(conn).ok


def test_period_rolls_over_across_a_dst_change(conn: Connection) -> None:
    budget = make_budget(
        conn, subject=TEAM, limit_pico_usd=USD, period="day", timezone="America/New_York", now=NOW
    )
    # 2026-11-01 is the 25-hour day in New York: 04:00 UTC to 05:00 UTC next day.
    late_on_the_long_day = datetime(2026, 11, 2, 4, 30, tzinfo=UTC)  # 23:30 local, still 1 Nov
    next_day = datetime(2026, 11, 2, 5, 30, tzinfo=UTC)  # 00:30 local on 2 Nov
    _reserve(conn, "r1", 90 * CENT, now=late_on_the_long_day)
    status = budgets.budget_status(
        conn, budget_id=budget.budget_id, org="acme", at=late_on_the_long_day
    )
    assert status.period_end - status.period_start == timedelta(hours=25)
    _reserve(conn, "r2", 90 * CENT, now=next_day)
    assert _status(conn, budget.budget_id, at=next_day) == (0, 90 * CENT)


def test_limit_change_is_an_event_and_applies_from_now(conn: Connection) -> None:
    budget = make_budget(conn, subject=TEAM, limit_pico_usd=USD, now=NOW)
    _reserve(conn, "r1", 80 * CENT)
    changed = budgets.change_budget(
        conn, org="acme", budget_id=budget.budget_id, limit_pico_usd=50 * CENT, now=NOW
    )
    assert changed.version == 2 and changed.limit_pico_usd == 50 * CENT
    savepoint = conn.begin_nested()
    with pytest.raises(BudgetExceeded):
        _reserve(conn, "r2", CENT)
    savepoint.rollback()
    kinds = [e.event_type for e in ledger.read_events(conn, org="acme")]
    assert kinds.count("budget_changed") == 1
    assert verify(conn).ok


def test_replay_verify_finds_a_tampered_projection(conn: Connection) -> None:
    from sqlalchemy import text

    budget = make_budget(conn, subject=TEAM, now=NOW)
    _reserve(conn, "r1", 10 * CENT)
    assert verify(conn).ok
    conn.execute(
        text("UPDATE budget_periods SET spent_pico_usd = spent_pico_usd + 1 WHERE budget_id = :id"),
        {"id": budget.budget_id},
    )
    report = verify(conn)
    assert not report.ok
    assert {d.projection for d in report.differences} == {"budget_periods"}
