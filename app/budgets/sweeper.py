"""The expiry sweeper: appends ``expired`` for overdue holds and releases them.

Used by ``serve`` (a background thread) and by ``usage-ledger expire`` (for cron). Each hold is
expired in its own transaction, so one tenant per transaction, and a commit racing the sweeper
either settles first (the sweeper then skips it) or finds it expired and is charged as late.

Each sweep also raises the alert levels of budgets with escrow slices: a commit on one slice
cannot see its period's totals, so the sweeper reads them and raises what was reached
(docs/ledger.md, "Hot budgets: escrow slices").
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from app.alerts import service as alerts
from app.background import Periodic
from app.budgets import holds, queries

# Periods that ended less than this long ago are still checked, so a level reached by the
# last commits of a period is raised after the period is over.
ALERT_LOOKBACK = timedelta(days=1)

log = logging.getLogger(__name__)


def raise_sliced_alerts(engine: Engine, *, now: datetime | None = None) -> int:
    """Raise the alert levels reached by budgets with escrow slices, each budget in its own
    transaction (one tenant each); returns how many alerts were raised."""
    moment = now or datetime.now(UTC)
    with engine.connect() as conn:
        periods = queries.sliced_periods_at(conn, at=moment, ended_after=moment - ALERT_LOOKBACK)
    raised = 0
    for budget, hold in periods:
        with engine.begin() as conn:
            spent, held = queries.period_balances(conn, org=budget.org, holds=[hold])[
                (hold.budget_id, hold.period_start)
            ]
            raised += len(
                alerts.raise_reached(
                    conn,
                    budget=budget,
                    hold=hold,
                    spent_pico_usd=spent,
                    held_pico_usd=held,
                    now=moment,
                )
            )
    return raised


def expire_due(engine: Engine, *, now: datetime | None = None, batch: int = 500) -> int:
    """Expire every hold past its expiry at ``now``, then raise the alert levels of sliced
    budgets (raise_sliced_alerts); returns how many holds were expired."""
    expired = _expire_due(engine, now=now, batch=batch)
    raise_sliced_alerts(engine, now=now)
    return expired


def _expire_due(engine: Engine, *, now: datetime | None, batch: int) -> int:
    total = 0
    while True:
        moment = now or datetime.now(UTC)
        with engine.connect() as conn:
            due = queries.due_reservations(conn, now=moment, limit=batch)
        if not due:
            return total
        expired_now = 0
        for org, reservation_id in due:
            try:
                with engine.begin() as conn:
                    if holds.expire_one(conn, org=org, reservation_id=reservation_id, now=moment):
                        expired_now += 1
            except OperationalError as error:  # lock timeout: a commit holds it; next sweep
                log.warning("expiry of %s postponed: %s", reservation_id, error.orig)
        total += expired_now
        if len(due) < batch or expired_now == 0:
            return total


class Sweeper(Periodic):
    """Runs ``expire_due`` every ``interval_seconds`` in a daemon thread until stopped."""

    name = "expiry-sweeper"
    what = "expiry sweep"

    def __init__(self, engine: Engine, interval_seconds: float) -> None:
        self.engine = engine
        super().__init__(interval_seconds)

    def tick(self) -> None:
        count = expire_due(self.engine)
        if count:
            log.info("expired %d overdue holds", count)
