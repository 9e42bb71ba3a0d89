"""Escrow slices: how charges and holds reach budget periods, hot budgets included.

A budget with ``escrow_slices`` N > 1 keeps each period's headroom (limit - spent - held)
split over N slice rows (docs/ledger.md, "Hot budgets: escrow slices"). Invariants, for every
period that has slices and is pooled:

- I: the sum of the slices' headroom is the limit minus the period's spent and held (its row
  plus its slices), as of the budget version the slices carry;
- S: while any slice is open, no slice's headroom is negative.

The fast path changes one slice and moves its headroom by exactly minus its (spent + held)
change, so I holds; it takes only what the slice can cover, and gives back only releases, so S
holds. Together they make a fast take safe: headroom_k >= amount and every other slice >= 0
imply limit - spent - held >= amount. Everything else (a slice that cannot cover it, an
overrun, a direct charge past a slice, a budget change) takes the slow path: the budget's row,
then all its slices in slice order, pooled and split again.

Lock order (docs/ledger.md): idempotency key, reservation, then budgets by budget_id; for a
sliced budget its row (slow path only) before its slices in slice order. The fast path takes
one slice with SKIP LOCKED inside a savepoint, or waits for one covering slice after rolling
back to it, so it never waits while holding a slice of the budget it is waiting on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from app.budgets import queries
from app.budgets.errors import BudgetExceeded
from app.budgets.model import Budget, Hold, Subject
from app.budgets.periods import period_bounds

_random = random.SystemRandom()

# A check run with the budget's exact totals after the change: (budget, spent, held, amount)
# raises BudgetExceeded to refuse.
Check = Callable[[Budget, int, int, int], None]


def check_take(budget: Budget, spent: int, held: int, amount: int) -> None:
    """Reserve and extend: a hard budget refuses what would take it past its limit."""
    left = budget.limit_pico_usd - spent - held
    if budget.mode == "hard" and amount > 0 and left < 0:
        raise BudgetExceeded.of(budget, remaining_pico_usd=left + amount, requested_pico_usd=amount)


def check_usage(budget: Budget, spent: int, held: int, amount: int) -> None:
    """A direct charge: refused by a hard budget only when it was exhausted before it."""
    left_before = budget.limit_pico_usd - (spent - amount) - held
    if budget.mode == "hard" and left_before <= 0 and amount > 0:
        raise BudgetExceeded.of(budget, remaining_pico_usd=0, requested_pico_usd=amount)


def check_none(budget: Budget, spent: int, held: int, amount: int) -> None:
    """Commits, cancels and expiries: money already spent or released is never refused."""


@dataclass(frozen=True)
class Applied:
    """Where a change left one budget period.

    ``totals`` is the period's exact (spent, held) after it when the change ran under the
    budget's lock; on the fast path only the slice's headroom after it is known, a lower
    bound of what the budget has left while its slices are open."""

    budget: Budget
    hold: Hold
    spent_pico_usd: int
    held_pico_usd: int
    totals: tuple[int, int] | None
    slice_headroom_pico_usd: int | None = None
    slice_open: bool = True

    @property
    def remaining_pico_usd(self) -> int:
        if self.totals is not None:
            return self.budget.limit_pico_usd - sum(self.totals)
        assert self.slice_headroom_pico_usd is not None
        return self.slice_headroom_pico_usd


def _split(total: int, count: int) -> list[int]:
    """``total`` in ``count`` parts differing by at most 1 (floor division, remainder to the
    first parts), summing to ``total`` exactly; negative totals too."""
    share, extra = divmod(total, count)
    return [share + 1 if index < extra else share for index in range(count)]


def pooled(
    conn: Connection,
    *,
    budget: Budget,
    hold: Hold,
    spent: int,
    held: int,
    check: Check,
) -> Applied:
    """The slow path: with the budget's row locked, lock its period's slices, apply the change
    (to the hold's slice, else a random active one, else the period's row), check it against
    the exact totals, and split the pooled headroom again over the active slices."""
    org = budget.org
    active = budget.escrow_slices if budget.escrow_slices > 1 else 0
    base_hold = replace(hold, slice=None)
    target = hold.slice
    if target is None and active:
        target = _random.randrange(active)
    base_spent, base_held = queries.period_row(conn, org=org, hold=base_hold)
    if target is None:
        # Unsliced, and the hold is on the period's row: the plain path, still under the lock.
        after = queries.add_to_periods(conn, org=org, deltas=[(base_hold, spent, held)])
        totals = after[(hold.budget_id, hold.period_start)]
        slices = queries.lock_slices(conn, org=org, hold=base_hold)
        if any(row.is_open for row in slices):
            # The budget was unsliced; close what is left of its slices.
            queries.write_slices(
                conn,
                org=org,
                hold=base_hold,
                budget_version=budget.version,
                rows=[(row.slice, 0, False, 0, 0) for row in slices],
            )
        check(budget, *totals, spent + held)
        return Applied(budget, base_hold, spent, held, totals)
    slices = queries.lock_slices(conn, org=org, hold=base_hold)
    present = {row.slice for row in slices}
    missing = sorted(({target} | set(range(active))) - present)
    queries.create_slices(
        conn, org=org, hold=base_hold, slices=missing, budget_version=budget.version
    )
    totals = (
        base_spent + spent + sum(row.spent_pico_usd for row in slices),
        base_held + held + sum(row.held_pico_usd for row in slices),
    )
    check(budget, *totals, spent + held)
    left = budget.limit_pico_usd - sum(totals)
    shares = _split(left, active) if active else []
    # A hard budget past its limit closes every slice: S could not hold, so every take goes
    # the slow way until a re-pool finds headroom again. Slices at or above the count (the
    # budget was given fewer) stay closed with no headroom: they only settle their holds.
    is_open = budget.mode == "soft" or left >= 0
    rows = [
        (
            index,
            shares[index] if index < active else 0,
            is_open and index < active,
            spent if index == target else 0,
            held if index == target else 0,
        )
        for index in sorted(present | set(missing))
    ]
    queries.write_slices(conn, org=org, hold=base_hold, budget_version=budget.version, rows=rows)
    return Applied(budget, replace(base_hold, slice=target), spent, held, totals)


# Plain statements, so that SQLAlchemy caches them like the others.
_SAVEPOINT = text("SAVEPOINT escrow_take")
_ROLLBACK_TO_SAVEPOINT = text("ROLLBACK TO SAVEPOINT escrow_take")


def _fast_take(
    conn: Connection, *, budget: Budget, hold: Hold, spent: int, held: int
) -> Applied | None:
    """Take from one slice without the budget's lock, or None with nothing locked.

    Inside a savepoint, left open on success (it ends with the transaction): see
    queries._TAKE_FROM_SLICE for the lock a miss may leave, which the rollback releases."""
    conn.execute(_SAVEPOINT)
    taken = queries.take_from_slice(
        conn,
        org=budget.org,
        budget=budget,
        hold=hold,
        spent=spent,
        held=held,
        start=_random.randrange(max(budget.escrow_slices, 1)),
    )
    if taken is None:
        # Every covering slice may just be busy: then wait for one of them rather than lock
        # the whole budget; only when none can cover it does the slow path run. Roll back
        # first: waiting while holding a slice the miss may have left locked could deadlock
        # with another waiter.
        conn.execute(_ROLLBACK_TO_SAVEPOINT)
        covering = queries.covering_slices(
            conn, org=budget.org, budget=budget, hold=hold, amount=spent + held
        )
        if covering:
            taken = queries.take_from_slice(
                conn,
                org=budget.org,
                budget=budget,
                hold=hold,
                spent=spent,
                held=held,
                start=_random.choice(covering),
                wait=True,
            )
    if taken is None:
        conn.execute(_ROLLBACK_TO_SAVEPOINT)
        return None
    index, headroom = taken
    return Applied(
        budget, replace(hold, slice=index), spent, held, None, slice_headroom_pico_usd=headroom
    )


def _flush(
    conn: Connection,
    *,
    org: str,
    plain: list[tuple[Budget, Hold]],
    spent: int,
    held: int,
    check: Check,
    applied: list[Applied],
) -> None:
    """Apply the change to the locked unsliced budgets gathered so far, in one statement, and
    check them in budget_id order, so the first budget that refuses is the one named."""
    if not plain:
        return
    after = queries.add_to_periods(conn, org=org, deltas=[(hold, spent, held) for _, hold in plain])
    for budget, hold in plain:
        totals = after[(hold.budget_id, hold.period_start)]
        check(budget, *totals, spent + held)
        applied.append(Applied(budget, hold, spent, held, totals))
    plain.clear()


def charge_subjects(
    conn: Connection,
    *,
    org: str,
    subjects: Sequence[Subject],
    at: datetime,
    spent: int,
    held: int,
    check: Check,
) -> list[Applied]:
    """Add (spent, held) to every budget of ``subjects`` in its period containing ``at``
    (reserve, record_usage), in budget_id order; ``check`` may refuse it."""
    found = queries.budgets_to_charge(conn, org=org, subjects=subjects)
    return _charge(conn, org=org, found=found, at=at, spent=spent, held=held, check=check)


def _charge(
    conn: Connection,
    *,
    org: str,
    found: list[tuple[Budget, bool]],
    at: datetime,
    spent: int,
    held: int,
    check: Check,
) -> list[Applied]:
    applied: list[Applied] = []
    plain: list[tuple[Budget, Hold]] = []  # locked and unsliced: one upsert at the end
    index = 0
    while index < len(found):
        budget, locked = found[index]
        if not locked and budget.escrow_slices == 1:
            # A run of unsliced budgets above a sliced one: lock them now, in id order.
            end = index
            while end < len(found) and not found[end][1] and found[end][0].escrow_slices == 1:
                end += 1
            fresh = queries.lock_budgets_by_id(
                conn, org=org, budget_ids=[b.budget_id for b, _ in found[index:end]]
            )
            found[index:end] = [(b, True) for b in fresh]
            continue
        hold = Hold(budget.budget_id, *period_bounds(budget.period, budget.timezone, at))
        index += 1
        if locked and budget.escrow_slices == 1:
            plain.append((budget, hold))
            continue
        _flush(conn, org=org, plain=plain, spent=spent, held=held, check=check, applied=applied)
        if not locked:
            taken = _fast_take(conn, budget=budget, hold=hold, spent=spent, held=held)
            if taken is not None:
                applied.append(taken)
                continue
            # No slice could cover it: the slow path, budget row first (the lock order).
            relocked = queries.lock_budgets_by_id(conn, org=org, budget_ids=[budget.budget_id])
            budget = relocked[0]
            if budget.escrow_slices == 1:
                plain.append((budget, hold))
                continue
        applied.append(pooled(conn, budget=budget, hold=hold, spent=spent, held=held, check=check))
    _flush(conn, org=org, plain=plain, spent=spent, held=held, check=check, applied=applied)
    return sorted(applied, key=lambda a: a.budget.budget_id)


def settle_holds(
    conn: Connection,
    *,
    org: str,
    holds: Sequence[Hold],
    spent: int,
    held: int,
    check: Check = check_none,
) -> list[Applied]:
    """Add (spent, held) to each period a reservation holds money in (commit, cancel, expire,
    extend), in budget_id order. A change that gives headroom back to a sliced hold touches
    only its slice; one that takes headroom (an overrun, a late commit, a raised hold) takes
    the slow path, so S holds."""
    ordered = sorted(holds, key=lambda h: h.budget_id)
    applied: list[Applied] = []
    plain: list[tuple[Budget, Hold]] = []
    index = 0
    while index < len(ordered):
        hold = ordered[index]
        if hold.slice is not None and spent + held <= 0:
            budget, is_open, headroom = queries.settle_on_slice(
                conn, org=org, hold=hold, spent=spent, held=held
            )
            applied.append(Applied(budget, hold, spent, held, None, headroom, slice_open=is_open))
            index += 1
            continue
        # A run of holds that need their budget's row: lock the run in one statement. The
        # change goes to their periods in a later one: a statement that waited for a lock
        # keeps the snapshot it started with, and would miss what the lock's holder changed
        # in the budget's slices (tests/budgets/test_escrow.py, "while it waited").
        end = index
        while end < len(ordered) and not (ordered[end].slice is not None and spent + held <= 0):
            end += 1
        run = ordered[index:end]
        locked = {
            b.budget_id: b
            for b in queries.lock_budgets_by_id(
                conn, org=org, budget_ids=[h.budget_id for h in run]
            )
        }
        for run_hold in run:
            budget = locked[run_hold.budget_id]
            if run_hold.slice is None and budget.escrow_slices == 1:
                plain.append((budget, run_hold))
            else:
                _flush(
                    conn, org=org, plain=plain, spent=spent, held=held, check=check, applied=applied
                )
                applied.append(
                    pooled(conn, budget=budget, hold=run_hold, spent=spent, held=held, check=check)
                )
        index = end
    _flush(conn, org=org, plain=plain, spent=spent, held=held, check=check, applied=applied)
    return sorted(applied, key=lambda a: a.budget.budget_id)


def repool(conn: Connection, *, budget: Budget, at: datetime) -> tuple[Hold, int, int]:
    """After a budget change (its row locked): split the current period's headroom again
    under the new limit, mode, version and slice count; its exact (spent, held)."""
    hold = Hold(budget.budget_id, *period_bounds(budget.period, budget.timezone, at))
    if not queries.lock_slices(conn, org=budget.org, hold=hold):
        # Nothing pooled yet: the period's first slow path makes its slices.
        spent, held = queries.period_balances(conn, org=budget.org, holds=[hold])[
            (hold.budget_id, hold.period_start)
        ]
        return hold, spent, held
    applied = pooled(conn, budget=budget, hold=hold, spent=0, held=0, check=check_none)
    assert applied.totals is not None
    return hold, *applied.totals


def hold_json(hold: Hold) -> dict[str, Any]:
    """A hold as the reservation row and the events store it."""
    found: dict[str, Any] = {
        "budget_id": str(hold.budget_id),
        "period_start": hold.period_start.isoformat(),
        "period_end": hold.period_end.isoformat(),
    }
    if hold.slice is not None:
        found["slice"] = hold.slice
    return found


def hold_from_json(data: dict[str, Any]) -> Hold:
    return Hold(
        UUID(data["budget_id"]),
        datetime.fromisoformat(data["period_start"]),
        datetime.fromisoformat(data["period_end"]),
        data.get("slice"),
    )
