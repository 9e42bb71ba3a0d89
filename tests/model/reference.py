"""A small in-memory reference model of budgets, holds and charges (docs/ledger.md).

It restates the rules in the plainest form, with no SQL and none of the service's code, so
that the state machine in test_ledger_model.py can run the same calls against both and
compare. Periods are found by bisection over UTC instants rather than from local midnights, so
a mistake in ``app.budgets.periods`` shows up as a difference too.

Each operation returns the outcome the service must produce and changes the model only when
that outcome is a success. Values the service invents (budget and reservation ids) are passed
in from the service's answer.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from app.budgets.model import BudgetRemaining, Reservation, Settlement, Subject
from app.money import format_usd

FAR_PAST = datetime(1970, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)
_SEARCH_SECONDS = 40 * 86_400  # longer than any month or week


# Outcomes: what a call returns or which refusal it raises.


@dataclass(frozen=True)
class Ok:
    value: Any


@dataclass(frozen=True)
class Refused:
    """BudgetExceeded, with its problem fields (budget_id, subject, limit, remaining, asked)."""

    fields: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Conflict:
    """IdempotencyConflict: the key was used before with different content."""


@dataclass(frozen=True)
class Settled:
    """ReservationSettled, with the state that refused the call."""

    state: str


@dataclass(frozen=True)
class Invalid:
    """InvalidInput, naming the field."""

    field: str


Outcome = Ok | Refused | Conflict | Settled | Invalid


# Periods.


def _period_key(period: str, tz: ZoneInfo, instant: datetime) -> date:
    local = instant.astimezone(tz).date()
    if period == "day":
        return local
    if period == "week":
        return local - timedelta(days=local.weekday())
    if period == "month":
        return local.replace(day=1)
    raise ValueError(period)


def _first_second(period: str, tz: ZoneInfo, low: datetime, high: datetime, key: date) -> datetime:
    """The first whole second in (low, high] whose period key is at least ``key``; the key
    never decreases with time, and is below ``key`` at ``low`` and at least ``key`` at high."""
    lo, hi = 0, int((high - low).total_seconds())
    while hi - lo > 1:
        middle = (lo + hi) // 2
        if _period_key(period, tz, low + timedelta(seconds=middle)) >= key:
            hi = middle
        else:
            lo = middle
    return low + timedelta(seconds=hi)


# Periods found so far, per (period, zone), sorted by start: the search is the slow part.
_known_periods: dict[tuple[str, str], list[tuple[datetime, datetime]]] = {}


def period_of(period: str, timezone: str, at: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the budget period containing ``at``: the instants whose local calendar
    day, Monday-week or month in ``timezone`` is the same as ``at``'s."""
    if period == "total":
        return FAR_PAST, FAR_FUTURE
    assert at.microsecond == 0, "the model's clock ticks in whole seconds"
    known = _known_periods.setdefault((period, timezone), [])
    index = bisect.bisect_right(known, (at, FAR_FUTURE))
    if index and known[index - 1][0] <= at < known[index - 1][1]:
        return known[index - 1]
    bounds = _search_period(period, timezone, at)
    known.insert(index, bounds)
    return bounds


def _search_period(period: str, timezone: str, at: datetime) -> tuple[datetime, datetime]:
    tz = ZoneInfo(timezone)
    key = _period_key(period, tz, at)
    span = timedelta(seconds=_SEARCH_SECONDS)
    start = _first_second(period, tz, at - span, at, key)
    # Any later day, week or month key is at least a day after this one.
    end = _first_second(period, tz, at, at + span, key + timedelta(days=1))
    return start, end


# State.


@dataclass
class ModelBudget:
    budget_id: UUID
    subject: Subject
    period: str
    timezone: str
    mode: str
    limit: int
    created_at: datetime
    updated_at: datetime
    version: int = 1
    # Escrow slices change how a budget is locked, never what it admits: the model has no
    # slices, so a sliced budget must behave exactly as this plain one (docs/ledger.md).
    slices: int = 1


@dataclass(frozen=True)
class HoldKey:
    budget_id: UUID
    period_start: datetime
    period_end: datetime


@dataclass
class ModelReservation:
    reservation_id: UUID
    request_id: str
    subjects: tuple[Subject, ...]
    amount: int
    holds: tuple[HoldKey, ...]
    state: str
    expires_at: datetime
    cost: int | None = None
    settled_at: datetime | None = None
    overrun: bool = False
    late: bool = False
    version: int = 1


@dataclass(frozen=True)
class ReserveContent:
    subjects: tuple[Subject, ...]
    amount: int
    ttl_seconds: int


@dataclass(frozen=True)
class UsageContent:
    subjects: tuple[Subject, ...]
    cost: int
    record_costs: tuple[int, ...]


@dataclass(frozen=True)
class CommitContent:
    cost: int
    record_costs: tuple[int, ...]


@dataclass(frozen=True)
class DefineContent:
    subject: Subject
    limit: int
    period: str
    timezone: str
    mode: str
    slices: int = 1


@dataclass
class Period:
    end: datetime
    spent: int = 0
    held: int = 0


def normalise(subjects: Sequence[Subject]) -> tuple[Subject, ...]:
    return tuple(sorted(set(subjects)))


@dataclass
class LedgerModel:
    org: str
    budgets: dict[UUID, ModelBudget] = field(default_factory=dict)
    periods: dict[tuple[UUID, datetime], Period] = field(default_factory=dict)
    reservations: dict[UUID, ModelReservation] = field(default_factory=dict)
    define_keys: dict[str, tuple[DefineContent, UUID]] = field(default_factory=dict)
    reserve_keys: dict[str, tuple[ReserveContent, Reservation]] = field(default_factory=dict)
    usage_keys: dict[str, tuple[UsageContent, Settlement]] = field(default_factory=dict)
    commit_keys: dict[UUID, tuple[CommitContent, Settlement]] = field(default_factory=dict)
    cancel_keys: dict[UUID, Reservation] = field(default_factory=dict)

    # Reading.

    def budgets_of(self, subjects: Sequence[Subject]) -> list[ModelBudget]:
        wanted = set(subjects)
        found = [b for b in self.budgets.values() if b.subject in wanted]
        return sorted(found, key=lambda b: b.budget_id)

    def hold_key(self, budget: ModelBudget, at: datetime) -> HoldKey:
        return HoldKey(budget.budget_id, *period_of(budget.period, budget.timezone, at))

    def balance(self, hold: HoldKey) -> tuple[int, int]:
        row = self.periods.get((hold.budget_id, hold.period_start))
        return (row.spent, row.held) if row is not None else (0, 0)

    def _add(self, hold: HoldKey, *, spent: int = 0, held: int = 0) -> None:
        row = self.periods.setdefault((hold.budget_id, hold.period_start), Period(hold.period_end))
        assert row.end == hold.period_end, "one period start, two ends"
        row.spent += spent
        row.held += held

    def left(self, hold: HoldKey) -> int:
        spent, held = self.balance(hold)
        return self.budgets[hold.budget_id].limit - spent - held

    def remaining(self, holds: Sequence[HoldKey]) -> tuple[BudgetRemaining, ...]:
        result = []
        for hold in sorted(holds, key=lambda h: h.budget_id):
            budget = self.budgets[hold.budget_id]
            result.append(
                BudgetRemaining(
                    budget.budget_id, budget.subject, budget.mode, budget.limit, self.left(hold)
                )
            )
        return tuple(result)

    def flagged(self, holds: Sequence[HoldKey]) -> tuple[str, ...]:
        """Budgets whose period is past its limit (after a charge)."""
        return tuple(
            str(hold.budget_id)
            for hold in sorted(holds, key=lambda h: h.budget_id)
            if self.left(hold) < 0
        )

    def _refusal(self, budget: ModelBudget, *, remaining: int, requested: int) -> Refused:
        return Refused(
            (
                ("budget_id", str(budget.budget_id)),
                ("subject", budget.subject.as_dict()),
                ("limit_usd", format_usd(budget.limit)),
                ("remaining_usd", format_usd(max(remaining, 0))),
                ("requested_usd", format_usd(requested)),
            )
        )

    def _refuse_increase(self, holds: Sequence[HoldKey], increase: int) -> Refused | None:
        """The first hard budget (by id) that cannot take ``increase`` on top of what it
        has spent and holds; none when the increase is zero."""
        if increase <= 0:
            return None
        for hold in sorted(holds, key=lambda h: h.budget_id):
            budget = self.budgets[hold.budget_id]
            if budget.mode == "hard" and self.left(hold) < increase:
                return self._refusal(budget, remaining=self.left(hold), requested=increase)
        return None

    # Budgets.

    def define_budget(
        self,
        *,
        budget_id: UUID,
        content: DefineContent,
        request_id: str | None,
        now: datetime,
    ) -> Outcome:
        if request_id is not None and request_id in self.define_keys:
            first, existing = self.define_keys[request_id]
            return Ok(existing) if first == content else Conflict()
        self.budgets[budget_id] = ModelBudget(
            budget_id=budget_id,
            subject=content.subject,
            period=content.period,
            timezone=content.timezone,
            mode=content.mode,
            limit=content.limit,
            created_at=now,
            updated_at=now,
            slices=content.slices,
        )
        if request_id is not None:
            self.define_keys[request_id] = (content, budget_id)
        return Ok(budget_id)

    def change_budget(
        self,
        *,
        budget_id: UUID,
        limit: int | None,
        mode: str | None,
        now: datetime,
        slices: int | None = None,
    ) -> Outcome:
        budget = self.budgets[budget_id]
        changed = False
        if slices is not None and slices != budget.slices:
            budget.slices, changed = slices, True
        if limit is not None and limit != budget.limit:
            budget.limit, changed = limit, True
        if mode is not None and mode != budget.mode:
            budget.mode, changed = mode, True
        if changed:
            budget.version += 1
            budget.updated_at = now
        return Ok(budget_id)

    # Holds.

    def reserve(
        self,
        *,
        reservation_id: UUID,
        request_id: str,
        subjects: Sequence[Subject],
        amount: int,
        ttl_seconds: int,
        now: datetime,
    ) -> Outcome:
        content = ReserveContent(normalise(subjects), amount, ttl_seconds)
        if request_id in self.reserve_keys:
            first, response = self.reserve_keys[request_id]
            return Ok(response) if first == content else Conflict()
        holds = tuple(self.hold_key(b, now) for b in self.budgets_of(content.subjects))
        refused = self._refuse_increase(holds, amount)
        if refused is not None:
            return refused
        for hold in holds:
            self._add(hold, held=amount)
        expires_at = now + timedelta(seconds=ttl_seconds)
        self.reservations[reservation_id] = ModelReservation(
            reservation_id=reservation_id,
            request_id=request_id,
            subjects=content.subjects,
            amount=amount,
            holds=holds,
            state="held",
            expires_at=expires_at,
        )
        response = Reservation(
            org=self.org,
            reservation_id=reservation_id,
            request_id=request_id,
            state="held",
            amount_pico_usd=amount,
            expires_at=expires_at,
            budgets=self.remaining(holds),
        )
        self.reserve_keys[request_id] = (content, response)
        return Ok(response)

    def extend(
        self,
        *,
        reservation_id: UUID,
        amount: int | None,
        ttl_seconds: int | None,
        now: datetime,
    ) -> Outcome:
        reservation = self.reservations[reservation_id]
        if reservation.state != "held":
            return Settled(reservation.state)
        new_amount = reservation.amount if amount is None else amount
        if new_amount < reservation.amount:
            return Invalid("amount_usd")
        if ttl_seconds is not None and ttl_seconds <= 0:
            return Invalid("ttl_seconds")
        increase = new_amount - reservation.amount
        refused = self._refuse_increase(reservation.holds, increase)
        if refused is not None:
            return refused
        for hold in reservation.holds:
            self._add(hold, held=increase)
        reservation.amount = new_amount
        if ttl_seconds is not None:
            reservation.expires_at = now + timedelta(seconds=ttl_seconds)
        reservation.version += 1
        return Ok(
            Reservation(
                org=self.org,
                reservation_id=reservation_id,
                request_id=reservation.request_id,
                state="held",
                amount_pico_usd=new_amount,
                expires_at=reservation.expires_at,
                budgets=self.remaining(reservation.holds),
            )
        )

    def commit(
        self, *, reservation_id: UUID, cost: int, record_costs: Sequence[int], now: datetime
    ) -> Outcome:
        if cost < 0:
            return Invalid("cost_usd")
        if record_costs and sum(record_costs) != cost:
            return Invalid("messages")
        content = CommitContent(cost, tuple(record_costs))
        if reservation_id in self.commit_keys:
            first, settlement = self.commit_keys[reservation_id]
            return Ok(settlement) if first == content else Conflict()
        reservation = self.reservations[reservation_id]
        if reservation.state in ("committed", "cancelled"):
            return Settled(reservation.state)
        # An expired hold was released by its expiry; the charge lands all the same.
        release = reservation.amount if reservation.state == "held" else 0
        late = reservation.state == "expired" or now > reservation.expires_at
        for hold in reservation.holds:
            self._add(hold, spent=cost, held=-release)
        reservation.state = "committed"
        reservation.cost = cost
        reservation.settled_at = now
        reservation.overrun = cost > reservation.amount
        reservation.late = late
        reservation.version += 1
        settlement = Settlement(
            org=self.org,
            request_id=reservation.request_id,
            reservation_id=reservation_id,
            cost_pico_usd=cost,
            held_pico_usd=reservation.amount,
            overrun=reservation.overrun,
            late=late,
            flagged_budgets=self.flagged(reservation.holds),
        )
        self.commit_keys[reservation_id] = (content, settlement)
        return Ok(settlement)

    def _release(self, reservation: ModelReservation, *, state: str, now: datetime) -> None:
        for hold in reservation.holds:
            self._add(hold, held=-reservation.amount)
        reservation.state = state
        reservation.settled_at = now
        reservation.version += 1

    def cancel(self, *, reservation_id: UUID, now: datetime) -> Outcome:
        if reservation_id in self.cancel_keys:
            return Ok(self.cancel_keys[reservation_id])
        reservation = self.reservations[reservation_id]
        if reservation.state == "committed":
            return Settled("committed")
        if reservation.state == "held":
            self._release(reservation, state="cancelled", now=now)
        # An expired hold stays expired: cancelling it changes nothing.
        response = Reservation(
            org=self.org,
            reservation_id=reservation_id,
            request_id=reservation.request_id,
            state=reservation.state,
            amount_pico_usd=reservation.amount,
            expires_at=reservation.expires_at,
        )
        self.cancel_keys[reservation_id] = response
        return Ok(response)

    def due(self, now: datetime) -> list[ModelReservation]:
        return [r for r in self.reservations.values() if r.state == "held" and r.expires_at <= now]

    def expire_one(self, *, reservation_id: UUID, now: datetime) -> Outcome:
        reservation = self.reservations[reservation_id]
        if reservation.state != "held" or reservation.expires_at > now:
            return Ok(False)
        self._release(reservation, state="expired", now=now)
        return Ok(True)

    def expire_due(self, *, now: datetime) -> Outcome:
        due = self.due(now)
        for reservation in due:
            self._release(reservation, state="expired", now=now)
        return Ok(len(due))

    # Usage without a reservation.

    def record_usage(
        self,
        *,
        request_id: str,
        subjects: Sequence[Subject],
        cost: int,
        record_costs: Sequence[int],
        now: datetime,
    ) -> Outcome:
        if cost < 0:
            return Invalid("cost_usd")
        if record_costs and sum(record_costs) != cost:
            return Invalid("messages")
        content = UsageContent(normalise(subjects), cost, tuple(record_costs))
        if request_id in self.usage_keys:
            first, settlement = self.usage_keys[request_id]
            return Ok(settlement) if first == content else Conflict()
        holds = [self.hold_key(b, now) for b in self.budgets_of(content.subjects)]
        # The money is spent already: only a hard budget exhausted before it refuses it.
        if cost > 0:
            for hold in holds:
                budget = self.budgets[hold.budget_id]
                if budget.mode == "hard" and self.left(hold) <= 0:
                    return self._refusal(budget, remaining=0, requested=cost)
        for hold in holds:
            self._add(hold, spent=cost)
        flagged = self.flagged(holds)
        settlement = Settlement(
            org=self.org,
            request_id=request_id,
            reservation_id=None,
            cost_pico_usd=cost,
            held_pico_usd=0,
            overrun=bool(flagged),
            late=False,
            flagged_budgets=flagged,
        )
        self.usage_keys[request_id] = (content, settlement)
        return Ok(settlement)
