"""SQL of the budgets domain: no business rules here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, and_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert

from app.budgets.model import Budget, Hold, Subject
from app.budgets.tables import budget_periods, budgets, reservations


def to_budget(row: Row[Any]) -> Budget:
    return Budget(
        org=row.org,
        budget_id=row.budget_id,
        subject=Subject(row.subject_type, row.subject_id),
        limit_pico_usd=row.limit_pico_usd,
        period=row.period,
        timezone=row.timezone,
        mode=row.mode,
        alert_thresholds=tuple(row.alert_thresholds),
        created_at=row.created_at,
        updated_at=row.updated_at,
        version=row.version,
    )


def lock_budgets_of_subjects(
    conn: Connection, *, org: str, subjects: Sequence[Subject]
) -> list[Budget]:
    """Every budget of ``subjects``, row-locked in budget_id order.

    Lock order (docs/ledger.md): idempotency key, then reservation, then budgets sorted by
    budget_id. Every writer follows it, so two requests over overlapping subject sets can
    wait for each other but never deadlock.
    """
    if not subjects:
        return []
    keys = [(s.type, s.id) for s in subjects]
    query = (
        select(budgets)
        .where(budgets.c.org == org, tuple_(budgets.c.subject_type, budgets.c.subject_id).in_(keys))
        .order_by(budgets.c.budget_id)
        .with_for_update()
    )
    return [to_budget(row) for row in conn.execute(query)]


def lock_budgets_by_id(conn: Connection, *, org: str, budget_ids: Iterable[UUID]) -> list[Budget]:
    """The budgets ``budget_ids``, row-locked in budget_id order (same lock order as above)."""
    ids = sorted(set(budget_ids))
    if not ids:
        return []
    query = (
        select(budgets)
        .where(budgets.c.org == org, budgets.c.budget_id.in_(ids))
        .order_by(budgets.c.budget_id)
        .with_for_update()
    )
    return [to_budget(row) for row in conn.execute(query)]


def period_balances(
    conn: Connection, *, org: str, holds: Sequence[Hold]
) -> dict[tuple[UUID, datetime], tuple[int, int]]:
    """(spent, held) of each budget period; a period with no row yet is (0, 0)."""
    if not holds:
        return {}
    keys = [(h.budget_id, h.period_start) for h in holds]
    query = select(
        budget_periods.c.budget_id,
        budget_periods.c.period_start,
        budget_periods.c.spent_pico_usd,
        budget_periods.c.held_pico_usd,
    ).where(
        budget_periods.c.org == org,
        tuple_(budget_periods.c.budget_id, budget_periods.c.period_start).in_(keys),
    )
    found = {
        (r.budget_id, r.period_start): (r.spent_pico_usd, r.held_pico_usd)
        for r in conn.execute(query)
    }
    return {key: found.get(key, (0, 0)) for key in keys}


def add_to_periods(
    conn: Connection,
    *,
    org: str,
    deltas: Sequence[tuple[Hold, int, int]],
) -> dict[tuple[UUID, datetime], tuple[int, int]]:
    """Add (spent, held) deltas to budget periods, creating a period's row on first use;
    return each period's (spent, held) after the change."""
    if not deltas:
        return {}
    rows = [
        {
            "org": org,
            "budget_id": hold.budget_id,
            "period_start": hold.period_start,
            "period_end": hold.period_end,
            "spent_pico_usd": spent,
            "held_pico_usd": held,
        }
        for hold, spent, held in sorted(deltas, key=lambda d: (d[0].budget_id, d[0].period_start))
    ]
    statement = insert(budget_periods).values(rows)
    result = conn.execute(
        statement.on_conflict_do_update(
            index_elements=["org", "budget_id", "period_start"],
            set_={
                "spent_pico_usd": budget_periods.c.spent_pico_usd
                + statement.excluded.spent_pico_usd,
                "held_pico_usd": budget_periods.c.held_pico_usd + statement.excluded.held_pico_usd,
            },
        ).returning(
            budget_periods.c.budget_id,
            budget_periods.c.period_start,
            budget_periods.c.spent_pico_usd,
            budget_periods.c.held_pico_usd,
        )
    )
    return {(r.budget_id, r.period_start): (r.spent_pico_usd, r.held_pico_usd) for r in result}


def lock_reservation(conn: Connection, *, org: str, reservation_id: UUID) -> Row[Any] | None:
    """The reservation row, locked: first in the lock order after the idempotency key."""
    query = (
        select(reservations)
        .where(reservations.c.org == org, reservations.c.reservation_id == reservation_id)
        .with_for_update()
    )
    return conn.execute(query).first()


def find_reservation(conn: Connection, *, reservation_id: UUID, org: str | None) -> Row[Any] | None:
    conditions = [reservations.c.reservation_id == reservation_id]
    if org is not None:
        conditions.append(reservations.c.org == org)
    return conn.execute(select(reservations).where(and_(*conditions))).first()


def insert_reservation(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(insert(reservations).values(**values))


def update_reservation(conn: Connection, *, org: str, reservation_id: UUID, **values: Any) -> None:
    conn.execute(
        update(reservations)
        .where(reservations.c.org == org, reservations.c.reservation_id == reservation_id)
        .values(**values)
    )


def due_reservations(conn: Connection, *, now: datetime, limit: int) -> list[tuple[str, UUID]]:
    """Held reservations past their expiry, skipping those a commit or cancel has locked."""
    query = (
        select(reservations.c.org, reservations.c.reservation_id)
        .where(reservations.c.state == "held", reservations.c.expires_at <= now)
        .order_by(reservations.c.expires_at)
        .limit(limit)
    )
    return [(row.org, row.reservation_id) for row in conn.execute(query)]


def find_budgets(
    conn: Connection,
    *,
    org: str | None,
    budget_id: UUID | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
) -> list[Budget]:
    conditions = []
    if org is not None:
        conditions.append(budgets.c.org == org)
    if budget_id is not None:
        conditions.append(budgets.c.budget_id == budget_id)
    if subject_type is not None:
        conditions.append(budgets.c.subject_type == subject_type)
    if subject_id is not None:
        conditions.append(budgets.c.subject_id == subject_id)
    query = (
        select(budgets)
        .where(and_(True, *conditions))
        .order_by(budgets.c.org, budgets.c.subject_type, budgets.c.subject_id, budgets.c.budget_id)
    )
    return [to_budget(row) for row in conn.execute(query)]
