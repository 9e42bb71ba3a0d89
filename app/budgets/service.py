"""Budgets: define, change and read them. Reservations and charges live in holds.py."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, insert, update

from app.alerts import service as alerts
from app.budgets import escrow, queries
from app.budgets.errors import BudgetNotFound
from app.budgets.model import Budget, BudgetStatus, Hold, Subject, alert_level
from app.budgets.periods import PERIODS, period_bounds, zone
from app.budgets.tables import budgets
from app.errors import InvalidInput
from app.ledger import events, idempotency
from app.ledger import service as ledger
from app.money import format_usd
from app.reports import service as reports

MODES = ("hard", "soft")
DEFAULT_THRESHOLDS = ("0.8", "0.95", "1.0")
MAX_ESCROW_SLICES = 64


def _check_slices(escrow_slices: int | None) -> None:
    if escrow_slices is not None and not 1 <= escrow_slices <= MAX_ESCROW_SLICES:
        raise InvalidInput(
            f"escrow_slices must be from 1 to {MAX_ESCROW_SLICES}", field="escrow_slices"
        )


def _validate(
    *,
    period: str | None,
    timezone: str | None,
    mode: str | None,
    limit_pico_usd: int | None,
    alert_thresholds: Sequence[str] | None,
) -> tuple[str, ...] | None:
    if period is not None and period not in PERIODS:
        raise InvalidInput(f"period must be one of {', '.join(PERIODS)}", field="period")
    if mode is not None and mode not in MODES:
        raise InvalidInput("mode must be hard or soft", field="mode")
    if timezone is not None:
        try:
            zone(timezone)
        except ValueError as error:
            raise InvalidInput(str(error), field="timezone") from error
    if limit_pico_usd is not None and limit_pico_usd < 0:
        raise InvalidInput("limit must not be negative", field="limit_usd")
    if alert_thresholds is None:
        return None
    cleaned = []
    for index, text in enumerate(alert_thresholds):
        try:
            value = Decimal(text)
        except (InvalidOperation, TypeError) as error:
            raise InvalidInput(
                "threshold must be a decimal string", field=f"alert_thresholds[{index}]"
            ) from error
        if not value.is_finite() or value <= 0 or value > 10:
            raise InvalidInput(
                "threshold must be a fraction of the limit in (0, 10]",
                field=f"alert_thresholds[{index}]",
            )
        cleaned.append(str(value.normalize()) if value == value.to_integral() else text)
    return tuple(sorted(set(cleaned), key=Decimal))


def define_budget(
    conn: Connection,
    *,
    org: str,
    subject: Subject,
    limit_pico_usd: int,
    period: str,
    timezone: str = "UTC",
    mode: str = "hard",
    alert_thresholds: Sequence[str] = DEFAULT_THRESHOLDS,
    budget_id: UUID | None = None,
    now: datetime | None = None,
    request_id: str | None = None,
    escrow_slices: int = 1,
) -> Budget:
    """Create a budget for ``subject`` and append ``budget_defined``.

    With a ``request_id`` a retry returns the budget the first attempt created. With
    ``escrow_slices`` > 1 its headroom is split into that many slices (docs/ledger.md, "Hot
    budgets: escrow slices"); they are made by the first reservation of each period.
    """
    _check_slices(escrow_slices)
    thresholds = _validate(
        period=period,
        timezone=timezone,
        mode=mode,
        limit_pico_usd=limit_pico_usd,
        alert_thresholds=alert_thresholds,
    )
    assert thresholds is not None
    if request_id is not None:
        content = {
            "subject": subject.as_dict(),
            "limit": limit_pico_usd,
            "period": period,
            "timezone": timezone,
            "mode": mode,
            "thresholds": list(thresholds),
            **({"escrow_slices": escrow_slices} if escrow_slices != 1 else {}),
        }
        previous = idempotency.claim(
            conn,
            org=org,
            operation="define_budget",
            key=request_id,
            content_fingerprint=idempotency.fingerprint(content),
        )
        if previous is not None:
            return get_budget(conn, budget_id=UUID(previous["budget_id"]), org=org)
    now = now or datetime.now(UTC)
    budget = Budget(
        org=org,
        budget_id=budget_id or uuid.uuid4(),
        subject=subject,
        limit_pico_usd=limit_pico_usd,
        period=period,
        timezone=timezone,
        mode=mode,
        alert_thresholds=thresholds,
        created_at=now,
        updated_at=now,
        version=1,
        escrow_slices=escrow_slices,
    )
    conn.execute(
        insert(budgets).values(
            org=org,
            budget_id=budget.budget_id,
            subject_type=subject.type,
            subject_id=subject.id,
            limit_pico_usd=limit_pico_usd,
            period=period,
            timezone=timezone,
            mode=mode,
            alert_thresholds=list(thresholds),
            created_at=now,
            updated_at=now,
            version=1,
            escrow_slices=escrow_slices,
        )
    )
    ledger.append(
        conn,
        org=org,
        event_type=events.BUDGET_DEFINED,
        occurred_at=now,
        budget_id=budget.budget_id,
        budget_ids=[budget.budget_id],
        amount_pico_usd=limit_pico_usd,
        payload={
            "subject": subject.as_dict(),
            "limit_pico_usd": limit_pico_usd,
            "period": period,
            "timezone": timezone,
            "mode": mode,
            "alert_thresholds": list(thresholds),
            "escrow_slices": escrow_slices,
        },
    )
    if request_id is not None:
        idempotency.store(
            conn,
            org=org,
            operation="define_budget",
            key=request_id,
            response={"budget_id": str(budget.budget_id)},
        )
    return budget


def change_budget(
    conn: Connection,
    *,
    org: str,
    budget_id: UUID,
    limit_pico_usd: int | None = None,
    mode: str | None = None,
    alert_thresholds: Sequence[str] | None = None,
    now: datetime | None = None,
    escrow_slices: int | None = None,
) -> Budget:
    """Change a budget's limit, mode, thresholds or escrow slices from now on; appends
    ``budget_changed``. A sliced budget's current period is pooled and split again."""
    _check_slices(escrow_slices)
    thresholds = _validate(
        period=None,
        timezone=None,
        mode=mode,
        limit_pico_usd=limit_pico_usd,
        alert_thresholds=alert_thresholds,
    )
    now = now or datetime.now(UTC)
    locked = queries.lock_budgets_by_id(conn, org=org, budget_ids=[budget_id])
    if not locked:
        raise BudgetNotFound(f"no budget {budget_id}", budget_id=str(budget_id))
    old = locked[0]
    changes: dict[str, object] = {}
    if limit_pico_usd is not None and limit_pico_usd != old.limit_pico_usd:
        changes["limit_pico_usd"] = limit_pico_usd
    if mode is not None and mode != old.mode:
        changes["mode"] = mode
    if thresholds is not None and thresholds != old.alert_thresholds:
        changes["alert_thresholds"] = list(thresholds)
    if escrow_slices is not None and escrow_slices != old.escrow_slices:
        changes["escrow_slices"] = escrow_slices
    if not changes:
        return old
    changed = conn.execute(
        update(budgets)
        .where(budgets.c.org == org, budgets.c.budget_id == budget_id)
        .values(**changes, updated_at=now, version=old.version + 1)
        .returning(budgets)
    ).one()
    ledger.append(
        conn,
        org=org,
        event_type=events.BUDGET_CHANGED,
        occurred_at=now,
        budget_id=budget_id,
        budget_ids=[budget_id],
        amount_pico_usd=changes.get("limit_pico_usd"),  # type: ignore[arg-type]
        payload={"changes": changes, "version": old.version + 1},
    )
    budget = queries.to_budget(changed)
    # The slices carry the budget version they were pooled under: split the current period
    # again under the new limit, mode and count, with the row and every slice locked.
    hold, spent, held = escrow.repool(conn, budget=budget, at=now)
    if "limit_pico_usd" in changes or "alert_thresholds" in changes:
        # A lower limit or threshold can put the current period at a higher level with no
        # charge at all; raise it now rather than at the next charge (docs/alerts.md).
        alerts.raise_for_change(
            conn,
            before=old,
            after=budget,
            hold=hold,
            spent_pico_usd=spent,
            held_pico_usd=held,
            now=now,
        )
    return budget


def get_budget(conn: Connection, *, budget_id: UUID, org: str | None) -> Budget:
    found = queries.find_budgets(conn, org=org, budget_id=budget_id)
    if not found:
        raise BudgetNotFound(f"no budget {budget_id}", budget_id=str(budget_id))
    return found[0]


def status_of(conn: Connection, budget: Budget, *, at: datetime | None = None) -> BudgetStatus:
    """Spent and held in the budget's period containing ``at`` (default now), its escrow
    slices included."""
    at = at or datetime.now(UTC)
    start, end = period_bounds(budget.period, budget.timezone, at)
    hold = Hold(budget.budget_id, start, end)
    spent, held = queries.period_balances(conn, org=budget.org, holds=[hold])[
        (budget.budget_id, start)
    ]
    return BudgetStatus(
        budget=budget, period_start=start, period_end=end, spent_pico_usd=spent, held_pico_usd=held
    )


def budget_status(
    conn: Connection, *, budget_id: UUID, org: str | None, at: datetime | None = None
) -> BudgetStatus:
    """The current status of one budget."""
    return status_of(conn, get_budget(conn, budget_id=budget_id, org=org), at=at)


def list_budget_statuses(
    conn: Connection,
    *,
    org: str | None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    at: datetime | None = None,
) -> list[BudgetStatus]:
    """Budgets of an org (optionally of one subject), each with its current status."""
    found = queries.find_budgets(conn, org=org, subject_type=subject_type, subject_id=subject_id)
    return [status_of(conn, budget, at=at) for budget in found]


def describe(status: BudgetStatus) -> dict[str, object]:
    """The JSON form of a budget status, money as exact decimal strings."""
    budget = status.budget
    return {
        "budget_id": str(budget.budget_id),
        "org": budget.org,
        "subject": budget.subject.as_dict(),
        "limit_usd": format_usd(budget.limit_pico_usd),
        "spent_usd": format_usd(status.spent_pico_usd),
        "held_usd": format_usd(status.held_pico_usd),
        "remaining_usd": format_usd(status.remaining_pico_usd),
        "period": budget.period,
        "timezone": budget.timezone,
        "mode": budget.mode,
        "alert_thresholds": list(budget.alert_thresholds),
        "alert_level": status.alert_level,
        "period_start": status.period_start.isoformat(),
        "period_end": status.period_end.isoformat(),
        "version": budget.version,
        "escrow_slices": budget.escrow_slices,
    }


FORECAST_WINDOW = timedelta(days=7)
_MICROSECONDS_PER_HOUR = 3_600_000_000
RUN_RATE = (
    "run_rate: the subject's spend in the window (the last 7 days, or since the period start"
    " if later, from a whole hour) divided by the window's length, times the time left until"
    " the period end, added to what is spent; held amounts are not counted; amounts are"
    " rounded down to the pico-USD"
)


@dataclass(frozen=True)
class Forecast:
    """Projected spend at the period end from the recent spend rate (docs/alerts.md)."""

    method: str
    description: str
    window_start: datetime | None = None
    window_end: datetime | None = None
    window_spent_pico_usd: int | None = None
    rate_pico_usd_per_hour: int | None = None
    projected_at: datetime | None = None
    projected_spent_pico_usd: int | None = None
    projected_alert_level: str | None = None
    exceeds_limit: bool | None = None
    limit_reached_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        def moment(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        def usd(value: int | None) -> str | None:
            return format_usd(value) if value is not None else None

        return {
            "method": self.method,
            "description": self.description,
            "window_start": moment(self.window_start),
            "window_end": moment(self.window_end),
            "window_spent_usd": usd(self.window_spent_pico_usd),
            "rate_usd_per_hour": usd(self.rate_pico_usd_per_hour),
            "projected_at": moment(self.projected_at),
            "projected_spent_usd": usd(self.projected_spent_pico_usd),
            "projected_alert_level": self.projected_alert_level,
            "exceeds_limit": self.exceeds_limit,
            "limit_reached_at": moment(self.limit_reached_at),
        }


def _next_whole_hour(moment: datetime) -> datetime:
    floored = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return floored if floored == moment else floored + timedelta(hours=1)


def forecast(conn: Connection, status: BudgetStatus, *, at: datetime) -> Forecast:
    """Spend at the period end if the subject keeps spending at its recent rate.

    Exact integer arithmetic on microseconds and pico-USD; divisions round down, except the
    moment the limit is reached, which rounds up (never earlier than the rate says).
    """
    budget = status.budget
    if budget.period == "total":
        return Forecast("none", "a total budget has no period end, so no period-end forecast")
    # Reports count spend by whole hours (rollups are hourly), so the window starts on one;
    # rounding up keeps it inside the period in zones that are not whole hours from UTC.
    # Empty (rate 0) in the first partial hour of a period that does not start on one.
    window_start = min(_next_whole_hour(max(status.period_start, at - FORECAST_WINDOW)), at)
    elapsed_us = (at - window_start) // timedelta(microseconds=1)
    remaining_us = (status.period_end - at) // timedelta(microseconds=1)
    window_spent, extra, rate = 0, 0, 0
    if elapsed_us > 0:
        window_spent = reports.subject_spend(
            conn,
            org=budget.org,
            subject_type=budget.subject.type,
            subject_id=budget.subject.id,
            start=window_start,
            end=at,
        )
        extra = window_spent * remaining_us // elapsed_us
        rate = window_spent * _MICROSECONDS_PER_HOUR // elapsed_us
    projected = status.spent_pico_usd + extra
    limit = budget.limit_pico_usd
    reached_at = None
    if status.spent_pico_usd < limit <= projected and window_spent > 0:
        needed_us = -(-(limit - status.spent_pico_usd) * elapsed_us // window_spent)
        reached_at = at + timedelta(microseconds=needed_us)
    return Forecast(
        method="run_rate",
        description=RUN_RATE,
        window_start=window_start,
        window_end=at,
        window_spent_pico_usd=window_spent,
        rate_pico_usd_per_hour=rate,
        projected_at=status.period_end,
        projected_spent_pico_usd=projected,
        projected_alert_level=alert_level(projected, limit, budget.alert_thresholds),
        exceeds_limit=projected > limit,
        limit_reached_at=reached_at,
    )


def describe_status(conn: Connection, status: BudgetStatus, *, at: datetime) -> dict[str, object]:
    """``describe`` plus the period-end forecast, as of ``at``."""
    return {
        **describe(status),
        "forecast": forecast(conn, status, at=at).as_json(),
        "as_of": at.isoformat(),
    }


def alerts_raised(conn: Connection, status: BudgetStatus) -> list[dict[str, Any]]:
    """The alert levels raised so far in the status's period."""
    return alerts.alerts_in_period(
        conn,
        org=status.budget.org,
        budget_id=status.budget.budget_id,
        period_start=status.period_start,
    )
