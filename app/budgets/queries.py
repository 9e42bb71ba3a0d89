"""SQL of the budgets domain: no business rules here."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, TextualSelect, and_, bindparam, column, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.types import Boolean, DateTime, Integer

from app.budgets.model import Budget, Hold, Subject
from app.budgets.tables import budget_slices, budgets, reservations
from app.db.metadata import PicoUSD
from app.money import pico_text


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
        escrow_slices=row.escrow_slices,
    )


_BUDGET_COLUMNS = ", ".join(c.name for c in budgets.columns)
_LOCK_BUDGETS = text(
    f"SELECT {_BUDGET_COLUMNS} FROM budgets"
    " WHERE org = :org AND budget_id = ANY(CAST(:budget_ids AS uuid[]))"
    " ORDER BY budget_id FOR UPDATE"
).columns(*budgets.columns)


def lock_budgets_by_id(conn: Connection, *, org: str, budget_ids: Iterable[UUID]) -> list[Budget]:
    """The budgets ``budget_ids``, row-locked in budget_id order.

    Lock order (docs/ledger.md): idempotency key, then reservation, then budgets sorted by
    budget_id. Every writer follows it, so two requests over overlapping subject sets can
    wait for each other but never deadlock.
    """
    ids = sorted(set(budget_ids))
    if not ids:
        return []
    rows = conn.execute(_LOCK_BUDGETS, {"org": org, "budget_ids": ids})
    return [to_budget(row) for row in rows]


# The budgets of some subjects in budget_id order, where those below the first sliced one are
# row-locked (the lock order, docs/ledger.md: budgets by id, and a sliced budget's row is not
# taken on the fast path). One statement, so the common case of no sliced budget costs what a
# plain SELECT ... FOR UPDATE did. A row that became sliced while we waited for its lock comes
# back locked with its new definition, and the caller takes the slow path for it.
_CHARGED_BUDGETS = text(
    f"""
WITH named AS (
    SELECT budget_id, escrow_slices FROM budgets
    WHERE org = :org
      AND (subject_type, subject_id) IN (SELECT * FROM unnest(CAST(:types AS text[]),
                                                              CAST(:ids AS text[])))
), first_sliced AS (
    SELECT budget_id FROM named WHERE escrow_slices > 1 ORDER BY budget_id LIMIT 1
), locked AS (
    SELECT {_BUDGET_COLUMNS} FROM budgets
    WHERE org = :org AND budget_id IN (SELECT budget_id FROM named)
      AND (budget_id < (SELECT budget_id FROM first_sliced)
           OR (SELECT budget_id FROM first_sliced) IS NULL)
    ORDER BY budget_id
    FOR UPDATE
)
SELECT {_BUDGET_COLUMNS}, true AS locked FROM locked
UNION ALL
SELECT {_BUDGET_COLUMNS}, false AS locked FROM budgets
WHERE org = :org AND budget_id IN (SELECT budget_id FROM named)
  AND budget_id >= (SELECT budget_id FROM first_sliced)
ORDER BY budget_id
"""
).columns(*budgets.columns, column("locked", type_=Boolean()))


def budgets_to_charge(
    conn: Connection, *, org: str, subjects: Sequence[Subject]
) -> list[tuple[Budget, bool]]:
    """Every budget of ``subjects`` in budget_id order, each with whether its row is now
    locked: the unsliced ones below the first sliced budget are (see _CHARGED_BUDGETS)."""
    if not subjects:
        return []
    rows = conn.execute(
        _CHARGED_BUDGETS,
        {"org": org, "types": [s.type for s in subjects], "ids": [s.id for s in subjects]},
    )
    return [(to_budget(row), bool(row.locked)) for row in rows]


_TOTALS = text(
    """
SELECT k.budget_id, k.period_start,
       coalesce(p.spent_pico_usd, 0) + coalesce(s.spent_pico_usd, 0) AS spent_pico_usd,
       coalesce(p.held_pico_usd, 0) + coalesce(s.held_pico_usd, 0) AS held_pico_usd
FROM unnest(CAST(:budget_ids AS uuid[]), CAST(:starts AS timestamptz[]))
     AS k (budget_id, period_start)
LEFT JOIN budget_periods p
       ON p.org = :org AND p.budget_id = k.budget_id AND p.period_start = k.period_start
LEFT JOIN LATERAL (
    SELECT sum(x.spent_pico_usd) AS spent_pico_usd, sum(x.held_pico_usd) AS held_pico_usd
    FROM budget_slices x
    WHERE x.org = :org AND x.budget_id = k.budget_id AND x.period_start = k.period_start
) AS s ON true
"""
).columns(
    column("budget_id"),
    column("period_start"),
    column("spent_pico_usd", type_=PicoUSD()),
    column("held_pico_usd", type_=PicoUSD()),
)


def period_balances(
    conn: Connection, *, org: str, holds: Sequence[Hold]
) -> dict[tuple[UUID, datetime], tuple[int, int]]:
    """(spent, held) of each budget period, its row plus its escrow slices, read in one
    statement (one snapshot); a period with no row yet is (0, 0)."""
    if not holds:
        return {}
    keys = list(dict.fromkeys((h.budget_id, h.period_start) for h in holds))
    rows = conn.execute(
        _TOTALS,
        {"org": org, "budget_ids": [k[0] for k in keys], "starts": [k[1] for k in keys]},
    )
    return {(r.budget_id, r.period_start): (r.spent_pico_usd, r.held_pico_usd) for r in rows}


# One fixed statement whatever the number of rows (arrays, not a VALUES list), so SQLAlchemy
# compiles it once and PostgreSQL can keep its plan. The totals returned include the period's
# escrow slices: a budget unsliced again may still have them (docs/ledger.md); they are read
# without their locks, which only ever makes spent + held look higher (their fast changes only
# release), so a check against these totals stays safe.
_ADD_TO_PERIODS = text(
    """
INSERT INTO budget_periods AS p
    (org, budget_id, period_start, period_end, spent_pico_usd, held_pico_usd)
SELECT :org, d.budget_id, d.period_start, d.period_end, d.spent, d.held
FROM unnest(CAST(:budget_ids AS uuid[]), CAST(:starts AS timestamptz[]),
            CAST(:ends AS timestamptz[]), CAST(:spent AS numeric[]), CAST(:held AS numeric[]))
     AS d (budget_id, period_start, period_end, spent, held)
ORDER BY d.budget_id, d.period_start
ON CONFLICT (org, budget_id, period_start) DO UPDATE
SET spent_pico_usd = p.spent_pico_usd + excluded.spent_pico_usd,
    held_pico_usd = p.held_pico_usd + excluded.held_pico_usd
RETURNING p.budget_id, p.period_start, p.spent_pico_usd, p.held_pico_usd,
    (SELECT coalesce(sum(x.spent_pico_usd), 0) FROM budget_slices x
     WHERE x.org = p.org AND x.budget_id = p.budget_id AND x.period_start = p.period_start)
        AS slices_spent_pico_usd,
    (SELECT coalesce(sum(x.held_pico_usd), 0) FROM budget_slices x
     WHERE x.org = p.org AND x.budget_id = p.budget_id AND x.period_start = p.period_start)
        AS slices_held_pico_usd
"""
).columns(
    column("budget_id"),
    column("period_start"),
    column("spent_pico_usd", type_=PicoUSD()),
    column("held_pico_usd", type_=PicoUSD()),
    column("slices_spent_pico_usd", type_=PicoUSD()),
    column("slices_held_pico_usd", type_=PicoUSD()),
)


def add_to_periods(
    conn: Connection,
    *,
    org: str,
    deltas: Sequence[tuple[Hold, int, int]],
) -> dict[tuple[UUID, datetime], tuple[int, int]]:
    """Add (spent, held) deltas to budget period rows, creating a period's row on first use;
    return each period's total (spent, held) after the change, escrow slices included.

    The caller holds the budgets' row locks: a period row changes only under its budget's."""
    if not deltas:
        return {}
    rows = conn.execute(
        _ADD_TO_PERIODS,
        {
            "org": org,
            "budget_ids": [hold.budget_id for hold, _, _ in deltas],
            "starts": [hold.period_start for hold, _, _ in deltas],
            "ends": [hold.period_end for hold, _, _ in deltas],
            "spent": [str(spent) for _, spent, _ in deltas],
            "held": [str(held) for _, _, held in deltas],
        },
    )
    return {
        (r.budget_id, r.period_start): (
            r.spent_pico_usd + r.slices_spent_pico_usd,
            r.held_pico_usd + r.slices_held_pico_usd,
        )
        for r in rows
    }


def period_row(conn: Connection, *, org: str, hold: Hold) -> tuple[int, int]:
    """Create the period's own row if missing; its (spent, held) without the slices."""
    row = conn.execute(
        _ADD_TO_PERIODS,
        {
            "org": org,
            "budget_ids": [hold.budget_id],
            "starts": [hold.period_start],
            "ends": [hold.period_end],
            "spent": ["0"],
            "held": ["0"],
        },
    ).one()
    return row.spent_pico_usd, row.held_pico_usd


def _take(choice: str) -> TextualSelect:
    """The take: ``choice`` (the WHERE tail, order and lock of the slice to take from) picks
    the slice; the update moves the amount from its headroom to its spent and held."""
    return (
        text(
            f"""
WITH chosen AS MATERIALIZED (
    SELECT slice FROM budget_slices
    WHERE org = :org AND budget_id = :budget_id AND period_start = :period_start
      AND is_open AND budget_version = :version
      AND (NOT :hard OR headroom_pico_usd >= :spent + :held)
{choice}
)
UPDATE budget_slices AS s
SET spent_pico_usd = s.spent_pico_usd + :spent,
    held_pico_usd = s.held_pico_usd + :held,
    headroom_pico_usd = s.headroom_pico_usd - :spent - :held
FROM chosen
WHERE s.org = :org AND s.budget_id = :budget_id AND s.period_start = :period_start
  AND s.slice = chosen.slice
RETURNING s.slice, s.headroom_pico_usd
"""
        )
        .bindparams(
            bindparam("spent", type_=PicoUSD()),
            bindparam("held", type_=PicoUSD()),
            bindparam("version", type_=Integer()),
            bindparam("start", type_=Integer()),
            bindparam("hard", type_=Boolean()),
            bindparam("period_start", type_=DateTime(timezone=True)),
        )
        .columns(column("slice", type_=Integer()), column("headroom_pico_usd", type_=PicoUSD()))
    )


# The fast path of a hot budget: take ``spent + held`` from one open slice that can cover it
# (any slice of a soft budget), skipping slices other transactions hold, starting at a random
# slice so that concurrent takers spread. The choice is a materialized CTE: as a subquery in
# FROM it may be scanned again per joined row and then, skipping the row this very statement
# just updated, pick a second slice. The caller wraps it in a savepoint: a row that failed
# the re-check after a concurrent update stays locked (PostgreSQL keeps the lock it took to
# re-check), and only rolling back to the savepoint lets it go before the slow path waits for
# the budget's row and then every slice (docs/ledger.md, "Hot budgets: escrow slices").
_TAKE_FROM_SLICE = _take(
    """    ORDER BY (slice + 64 - :start) % 64
    LIMIT 1
    FOR UPDATE SKIP LOCKED"""
)


# The same take from one given slice, waiting for its lock: after a miss that only found
# every covering slice busy. It waits holding nothing of the budget (the savepoint was rolled
# back), and for one row only, so two such waiters cannot wait for each other.
_TAKE_FROM_ONE_SLICE = _take(
    """      AND slice = :start
    FOR UPDATE"""
)


def take_from_slice(
    conn: Connection,
    *,
    org: str,
    budget: Budget,
    hold: Hold,
    spent: int,
    held: int,
    start: int,
    wait: bool = False,
) -> tuple[int, int] | None:
    """(slice, its headroom after) of the slice that took the amount, trying from slice
    ``start`` on and skipping busy ones; or, with ``wait``, from slice ``start`` only, waiting
    for it. None if none could."""
    row = conn.execute(
        _TAKE_FROM_ONE_SLICE if wait else _TAKE_FROM_SLICE,
        {
            "org": org,
            "budget_id": budget.budget_id,
            "period_start": hold.period_start,
            "version": budget.version,
            "hard": budget.mode == "hard",
            "spent": spent,
            "held": held,
            "start": start,
        },
    ).first()
    return None if row is None else (row.slice, row.headroom_pico_usd)


def covering_slices(
    conn: Connection, *, org: str, budget: Budget, hold: Hold, amount: int
) -> list[int]:
    """The open slices that could cover ``amount`` as last committed (no lock)."""
    query = select(budget_slices.c.slice).where(
        budget_slices.c.org == org,
        budget_slices.c.budget_id == budget.budget_id,
        budget_slices.c.period_start == hold.period_start,
        budget_slices.c.is_open,
        budget_slices.c.budget_version == budget.version,
    )
    if budget.mode == "hard":
        query = query.where(budget_slices.c.headroom_pico_usd >= amount)
    return list(conn.execute(query).scalars())


_SETTLE_ON_SLICE = (
    text(
        f"""
UPDATE budget_slices AS s
SET spent_pico_usd = s.spent_pico_usd + :spent,
    held_pico_usd = s.held_pico_usd + :held,
    headroom_pico_usd = s.headroom_pico_usd - :spent - :held
FROM budgets AS b
WHERE s.org = :org AND s.budget_id = :budget_id AND s.period_start = :period_start
  AND s.slice = :slice AND b.org = s.org AND b.budget_id = s.budget_id
RETURNING s.is_open, s.headroom_pico_usd, {", ".join("b." + c.name for c in budgets.columns)}
"""
    )
    .bindparams(
        bindparam("spent", type_=PicoUSD()),
        bindparam("held", type_=PicoUSD()),
        bindparam("slice", type_=Integer()),
        bindparam("period_start", type_=DateTime(timezone=True)),
    )
    .columns(
        column("is_open", type_=Boolean()),
        column("headroom_pico_usd", type_=PicoUSD()),
        *budgets.columns,
    )
)


def settle_on_slice(
    conn: Connection, *, org: str, hold: Hold, spent: int, held: int
) -> tuple[Budget, bool, int]:
    """Apply a change that gives headroom back (a release, a commit within its hold) to the
    hold's own slice, locking only that row; the budget (read, not locked), whether the slice
    is open, and its headroom after."""
    row = conn.execute(
        _SETTLE_ON_SLICE,
        {
            "org": org,
            "budget_id": hold.budget_id,
            "period_start": hold.period_start,
            "slice": hold.slice,
            "spent": spent,
            "held": held,
        },
    ).one()
    return to_budget(row), row.is_open, row.headroom_pico_usd


def lock_slices(conn: Connection, *, org: str, hold: Hold) -> list[Row[Any]]:
    """Every slice of a budget period, locked in slice order (after the budget's row)."""
    query = (
        select(budget_slices)
        .where(
            budget_slices.c.org == org,
            budget_slices.c.budget_id == hold.budget_id,
            budget_slices.c.period_start == hold.period_start,
        )
        .order_by(budget_slices.c.slice)
        .with_for_update()
    )
    return list(conn.execute(query))


def create_slices(
    conn: Connection, *, org: str, hold: Hold, slices: Sequence[int], budget_version: int
) -> None:
    """Empty, closed slices (the caller re-pools them); only under the budget's row lock."""
    if not slices:
        return
    conn.execute(
        insert(budget_slices),
        [
            {
                "org": org,
                "budget_id": hold.budget_id,
                "period_start": hold.period_start,
                "slice": index,
                "period_end": hold.period_end,
                "budget_version": budget_version,
                "is_open": False,
                "headroom_pico_usd": 0,
                "spent_pico_usd": 0,
                "held_pico_usd": 0,
            }
            for index in slices
        ],
    )


_WRITE_SLICES = text(
    """
UPDATE budget_slices AS s
SET headroom_pico_usd = v.headroom, is_open = v.is_open, budget_version = :version,
    spent_pico_usd = s.spent_pico_usd + v.spent, held_pico_usd = s.held_pico_usd + v.held
FROM unnest(CAST(:slices AS integer[]), CAST(:headrooms AS numeric[]),
            CAST(:opens AS boolean[]), CAST(:spent AS numeric[]), CAST(:held AS numeric[]))
     AS v (slice, headroom, is_open, spent, held)
WHERE s.org = :org AND s.budget_id = :budget_id AND s.period_start = :period_start
  AND s.slice = v.slice
"""
).bindparams(
    bindparam("version", type_=Integer()),
    bindparam("period_start", type_=DateTime(timezone=True)),
)


def write_slices(
    conn: Connection,
    *,
    org: str,
    hold: Hold,
    budget_version: int,
    rows: Sequence[tuple[int, int, bool, int, int]],
) -> None:
    """Set each slice's (headroom, open) and add its (spent, held) deltas:
    rows of (slice, headroom, is_open, spent delta, held delta). Under every slice's lock."""
    conn.execute(
        _WRITE_SLICES,
        {
            "org": org,
            "budget_id": hold.budget_id,
            "period_start": hold.period_start,
            "version": budget_version,
            "slices": [r[0] for r in rows],
            "headrooms": [str(r[1]) for r in rows],
            "opens": [r[2] for r in rows],
            "spent": [str(r[3]) for r in rows],
            "held": [str(r[4]) for r in rows],
        },
    )


def sliced_periods_at(
    conn: Connection, *, at: datetime, ended_after: datetime
) -> list[tuple[Budget, Hold]]:
    """Budget periods with escrow slices that began by ``at`` and end after ``ended_after``."""
    query = (
        select(budgets, budget_slices.c.period_start, budget_slices.c.period_end)
        .distinct()
        .join(
            budget_slices,
            and_(
                budget_slices.c.org == budgets.c.org,
                budget_slices.c.budget_id == budgets.c.budget_id,
            ),
        )
        .where(budget_slices.c.period_start <= at, budget_slices.c.period_end > ended_after)
    )
    return [
        (to_budget(row), Hold(row.budget_id, row.period_start, row.period_end))
        for row in conn.execute(query)
    ]


_RESERVATION_COLUMNS = ", ".join(c.name for c in reservations.columns)
_LOCK_RESERVATION = text(
    f"SELECT {_RESERVATION_COLUMNS} FROM reservations"
    " WHERE org = :org AND reservation_id = :reservation_id FOR UPDATE"
).columns(*reservations.columns)


def lock_reservation(conn: Connection, *, org: str, reservation_id: UUID) -> Row[Any] | None:
    """The reservation row, locked: first in the lock order after the idempotency key."""
    return conn.execute(_LOCK_RESERVATION, {"org": org, "reservation_id": reservation_id}).first()


def find_reservation(conn: Connection, *, reservation_id: UUID, org: str | None) -> Row[Any] | None:
    conditions = [reservations.c.reservation_id == reservation_id]
    if org is not None:
        conditions.append(reservations.c.org == org)
    return conn.execute(select(reservations).where(and_(*conditions))).first()


# The writes that end a reserve and a commit, as statements for ledger.append_many's
# ``alongside`` (one round trip with the events and the idempotency response).
_INSERT_RESERVATION = """
INSERT INTO reservations (org, reservation_id, request_id, state, amount_pico_usd, subjects,
    holds, model, provider, metadata, reserved_at, expires_at, overrun, late, version)
VALUES (:new_org, :new_reservation_id, :new_request_id, 'held', CAST(:new_amount AS numeric),
    CAST(:new_subjects AS jsonb), CAST(:new_holds AS jsonb), :new_model, :new_provider,
    CAST(:new_metadata AS jsonb), :new_reserved_at, :new_expires_at, false, false, 1)
"""


def inserting_reservation(
    *,
    org: str,
    reservation_id: UUID,
    request_id: str,
    amount_pico_usd: int,
    subjects: list[dict[str, str]],
    holds: list[dict[str, Any]],
    model: str | None,
    provider: str | None,
    metadata: dict[str, Any],
    reserved_at: datetime,
    expires_at: datetime,
) -> tuple[str, dict[str, Any]]:
    """A new held reservation (version 1), as a statement and its parameters."""
    return _INSERT_RESERVATION, {
        "new_org": org,
        "new_reservation_id": reservation_id,
        "new_request_id": request_id,
        "new_amount": pico_text(amount_pico_usd),
        "new_subjects": json.dumps(subjects),
        "new_holds": json.dumps(holds),
        "new_model": model,
        "new_provider": provider,
        "new_metadata": json.dumps(metadata),
        "new_reserved_at": reserved_at,
        "new_expires_at": expires_at,
    }


_COMMIT_RESERVATION = """
UPDATE reservations
SET state = 'committed', cost_pico_usd = CAST(:settled_cost AS numeric),
    settled_at = :settled_at, overrun = :settled_overrun, late = :settled_late,
    version = :settled_version
WHERE org = :settled_org AND reservation_id = :settled_reservation_id
"""


def committing_reservation(
    *,
    org: str,
    reservation_id: UUID,
    cost_pico_usd: int,
    settled_at: datetime,
    overrun: bool,
    late: bool,
    version: int,
) -> tuple[str, dict[str, Any]]:
    """A locked reservation marked committed, as a statement and its parameters."""
    return _COMMIT_RESERVATION, {
        "settled_org": org,
        "settled_reservation_id": reservation_id,
        "settled_cost": pico_text(cost_pico_usd),
        "settled_at": settled_at,
        "settled_overrun": overrun,
        "settled_late": late,
        "settled_version": version,
    }


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
