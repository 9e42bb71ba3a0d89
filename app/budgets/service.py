"""Budgets: define, change and read them. Reservations and charges live in holds.py."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from uuid import UUID

from sqlalchemy import Connection, insert, update

from app.budgets import queries
from app.budgets.errors import BudgetNotFound
from app.budgets.model import Budget, BudgetStatus, Hold, Subject
from app.budgets.periods import PERIODS, period_bounds, zone
from app.budgets.tables import budgets
from app.errors import InvalidInput
from app.ledger import events, idempotency
from app.ledger import service as ledger
from app.money import format_usd

MODES = ("hard", "soft")
DEFAULT_THRESHOLDS = ("0.8", "0.95", "1.0")


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
) -> Budget:
    """Create a budget for ``subject`` and append ``budget_defined``.

    With a ``request_id`` a retry returns the budget the first attempt created.
    """
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
) -> Budget:
    """Change a budget's limit, mode or thresholds from now on; appends ``budget_changed``."""
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
    return queries.to_budget(changed)


def get_budget(conn: Connection, *, budget_id: UUID, org: str | None) -> Budget:
    found = queries.find_budgets(conn, org=org, budget_id=budget_id)
    if not found:
        raise BudgetNotFound(f"no budget {budget_id}", budget_id=str(budget_id))
    return found[0]


def status_of(conn: Connection, budget: Budget, *, at: datetime | None = None) -> BudgetStatus:
    """Spent and held in the budget's period containing ``at`` (default now)."""
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
    }
