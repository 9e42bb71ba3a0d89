"""Model-based test: random sequences of budget and hold operations against the real service
and PostgreSQL and against the in-memory reference model (reference.py), compared after
every step.

Every call runs in its own transaction with an explicit ``now`` from a fake clock that rules
move forward, across local midnights, DST changes, Mondays and month ends. Each example is a
new org (orgs isolate everything); examples share a database cloned from the migrated
template, a fresh one when replay has many events to fold. docs/reliability.md, "Model-based
test", says what is covered and how to run the long profile.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy import event as sqlalchemy_event

from app.budgets import holds, sweeper
from app.budgets import service as budgets_service
from app.budgets.errors import BudgetExceeded, ReservationSettled
from app.budgets.model import Budget, Reservation, Subject
from app.budgets.periods import period_bounds
from app.budgets.replay import verify
from app.budgets.tables import budgets, reservations
from app.config import Settings
from app.db.engine import make_engine
from app.errors import IdempotencyConflict, InvalidInput
from app.ledger.records import UsageRecord
from tests.budgets.escrow_checks import check_escrow
from tests.conftest import Server
from tests.model.reference import (
    Conflict,
    DefineContent,
    HoldKey,
    Invalid,
    LedgerModel,
    ModelBudget,
    Ok,
    Outcome,
    Refused,
    Settled,
    period_of,
)

CENT = 10**10  # pico-USD
SUBJECTS = (
    Subject("team", "ml"),
    Subject("user", "ann"),
    Subject("key", "k1"),
    Subject("project", "p0"),
)
# sampled_from shrinks towards the first value, so the first of each is a typical one.
PERIODS = ("day", "week", "month", "total")
ZONES = ("America/New_York", "America/Havana", "Australia/Lord_Howe", "Asia/Kolkata", "UTC")
ANCHORS = (
    # New York springs forward; Havana skips midnight; Monday 9 March starts a week.
    datetime(2026, 3, 8, 5, tzinfo=UTC),
    # The 25-hour day in New York, Havana's midnight twice, a new month and week around it.
    datetime(2026, 11, 1, 5, tzinfo=UTC),
    # Lord Howe turns its clocks back by half an hour.
    datetime(2026, 4, 4, 15, tzinfo=UTC),
    # February ends, and the year.
    datetime(2026, 2, 28, 12, tzinfo=UTC),
    datetime(2026, 12, 31, 12, tzinfo=UTC),
)
# Amounts far above 2**63 pico-USD check that no sum overflows (numeric(38,0), docs/ledger.md).
HUGE = 10**21
# Typical amounts fill a typical limit in two holds or charges.
LIMITS = (20 * CENT, 50 * CENT, 10 * CENT, 100 * CENT, 0, 4 * HUGE)
AMOUNTS = (10 * CENT, 5 * CENT, 20 * CENT, CENT, 40 * CENT, 1, 0, HUGE)
INCREASES = (CENT, 10 * CENT, 30 * CENT, 1, 0)
DIFFERENCES = (CENT, 30 * CENT, 1)
TTLS = (600, 60, 3600, 1, 86_400)
DURATIONS = tuple(
    timedelta(seconds=s)
    for s in (59, 1, 600, 3600, 6 * 3600, 23 * 3600, 25 * 3600, 7 * 86_400, 31 * 86_400)
)
# How a retry differs from the first call; "subjects" may add one already named (no change).
RETRY_CHANGES = ("none", "subject order", "amount", "ttl", "subjects")
# Escrow slices: 1 is a plain budget; a sliced one must agree with the plain model all the same.
SLICES = (1, 4, 2, 64)
MAX_BUDGETS = 6
VERIFY_EVERY = 10
EVENTS_PER_DATABASE = 2000

_HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much]
PROFILES = {
    "default": settings(
        max_examples=50, stateful_step_count=30, deadline=None, suppress_health_check=_HEALTH
    ),
    "long": settings(
        max_examples=2000, stateful_step_count=100, deadline=None, suppress_health_check=_HEALTH
    ),
}
PROFILE = PROFILES.get(os.environ.get("HYPOTHESIS_PROFILE", "default"), PROFILES["default"])


# An amount is a fixed value, or (pick, offset): what a budget has left in its period plus
# offset pico-USD, to land exactly on, just under and just over the edge of a limit.
Amount = int | tuple[int, int]


@dataclass(frozen=True)
class BudgetSpec:
    subject: Subject
    period: str
    timezone: str
    mode: str
    limit: int
    slices: int = 1

    def content(self) -> DefineContent:
        return DefineContent(
            self.subject, self.limit, self.period, self.timezone, self.mode, self.slices
        )


@dataclass(frozen=True)
class Request:
    """A gateway request: ``reserve`` a hold, or ``record_usage`` without one."""

    via: str
    subjects: tuple[Subject, ...]
    amount: Amount
    ttl_seconds: int
    messages: int


@dataclass(frozen=True)
class Attempt:
    """A reserve or record_usage call as made, so that it can be retried."""

    request_id: str
    subjects: tuple[Subject, ...]
    amount: int
    ttl_seconds: int
    record_costs: tuple[int, ...]


budget_specs = st.builds(
    BudgetSpec,
    subject=st.sampled_from(SUBJECTS),
    period=st.sampled_from(PERIODS),
    timezone=st.sampled_from(ZONES),
    mode=st.sampled_from(("hard", "soft")),
    limit=st.sampled_from(LIMITS),
    slices=st.sampled_from(SLICES),
)
subject_lists = st.lists(st.sampled_from(SUBJECTS), min_size=1, max_size=3)
picks = st.integers(min_value=0, max_value=255)
edges = st.tuples(picks, st.sampled_from((0, -1, 1)))
amounts: st.SearchStrategy[Amount] = st.sampled_from(AMOUNTS) | edges
increases: st.SearchStrategy[Amount | None] = (
    st.sampled_from(INCREASES) | edges | st.none() | st.just(-1)  # lowering a hold is refused
)
message_counts = st.integers(min_value=0, max_value=2)
# Whether a step on a reservation may pick a settled one (mostly it picks a live one).
any_state = st.sampled_from((False, False, False, True))
# Forward by a duration, or to a second before, at, or a second after an edge: the end of a
# budget's current period or a live hold's expiry.
clock_steps: st.SearchStrategy[timedelta | tuple[str, int]] = st.sampled_from(
    DURATIONS
) | st.tuples(st.sampled_from(("period end", "expiry")), st.sampled_from((-1, 0, 1)))
gateway_requests = st.builds(
    Request,
    via=st.sampled_from(("reserve", "record_usage")),
    subjects=subject_lists.map(tuple),
    amount=amounts,
    ttl_seconds=st.sampled_from(TTLS),
    messages=message_counts,
)


class Databases:
    """Databases cloned from the migrated template, a fresh one once replay has more than
    EVENTS_PER_DATABASE events to fold (it folds every org's), so that a long run or a long
    shrink stays as fast per step as a short one. A retired database is dropped in the
    background (a drop takes seconds) and all of them are gone when the fixture ends."""

    def __init__(self, server: Server, template: str) -> None:
        self.server = server
        self.template = template
        self.events = 0
        self.current: tuple[DatabaseJanitor, Engine] | None = None
        self.drops: list[threading.Thread] = []

    def engine_for_next_example(self) -> Engine:
        if self.current is None or self.events > EVENTS_PER_DATABASE:
            self._retire()
            name = f"ul_model_{uuid.uuid4().hex[:12]}"
            janitor = self.server.janitor(name, template=self.template)
            janitor.init()
            engine = make_engine(self.server.url(name), settings=Settings(pool_size=4))

            @sqlalchemy_event.listens_for(engine, "connect")
            def _no_commit_flush(dbapi_connection: Any, _record: Any) -> None:
                # As in tests/conftest.py: no WAL flush wait at commit; isolation unchanged.
                with dbapi_connection.cursor() as cursor:
                    cursor.execute("SET synchronous_commit = off")
                dbapi_connection.commit()

            self.current = (janitor, engine)
            self.events = 0
        return self.current[1]

    def _retire(self) -> None:
        if self.current is not None:
            janitor, engine = self.current
            self.current = None
            engine.dispose()
            drop = threading.Thread(target=janitor.drop, name=f"drop {janitor.dbname}")
            drop.start()
            self.drops.append(drop)

    def close(self) -> None:
        self._retire()
        for drop in self.drops:
            drop.join()


def _split(cost: int, messages: int) -> tuple[int, ...]:
    """Message costs that add up to ``cost``."""
    if messages == 0:
        return ()
    if messages == 1:
        return (cost,)
    return (cost // 2, cost - cost // 2)


def _records(costs: Sequence[int]) -> list[UsageRecord]:
    return [
        UsageRecord(cost_pico_usd=cost, model="gpt-4o", prompt_tokens=index)
        for index, cost in enumerate(costs)
    ]


def _call(operation: Callable[[Connection], Any], engine: Engine) -> Outcome:
    """Run ``operation`` in its own transaction; a refusal rolls it back."""
    try:
        with engine.begin() as conn:
            return Ok(operation(conn))
    except BudgetExceeded as error:
        return Refused(tuple(error.fields.items()))
    except IdempotencyConflict:
        return Conflict()
    except ReservationSettled as error:
        return Settled(error.fields["state"])
    except InvalidInput as error:
        return Invalid(error.fields["field"])


def _budget_view(budget: Budget) -> tuple[Any, ...]:
    return (
        budget.budget_id,
        budget.subject,
        budget.period,
        budget.timezone,
        budget.mode,
        budget.limit_pico_usd,
        budget.version,
        budget.created_at,
        budget.updated_at,
        budget.escrow_slices,
    )


def _model_budget_view(b: ModelBudget) -> tuple[Any, ...]:
    return (
        b.budget_id,
        b.subject,
        b.period,
        b.timezone,
        b.mode,
        b.limit,
        b.version,
        b.created_at,
        b.updated_at,
        b.slices,
    )


def _live_state(conn: Connection, org: str) -> dict[str, dict[Any, Any]]:
    """The three projections of ``org`` as plain comparable values."""
    return {
        "budgets": {
            row.budget_id: (
                row.budget_id,
                Subject(row.subject_type, row.subject_id),
                row.period,
                row.timezone,
                row.mode,
                row.limit_pico_usd,
                row.version,
                row.created_at,
                row.updated_at,
                row.escrow_slices,
            )
            for row in conn.execute(select(budgets).where(budgets.c.org == org))
        },
        # A period's totals: its row plus its escrow slices.
        "budget_periods": {
            (row.budget_id, row.period_start): (
                row.period_end,
                int(row.spent_pico_usd),
                int(row.held_pico_usd),
            )
            for row in conn.execute(
                text("SELECT * FROM budget_period_totals WHERE org = :org"), {"org": org}
            )
        },
        "reservations": {
            row.reservation_id: (
                row.request_id,
                row.state,
                row.amount_pico_usd,
                row.cost_pico_usd,
                row.expires_at,
                row.settled_at,
                row.overrun,
                row.late,
                row.version,
                tuple(Subject(**s) for s in row.subjects),
                tuple(
                    sorted(
                        (
                            UUID(h["budget_id"]),
                            datetime.fromisoformat(h["period_start"]),
                            datetime.fromisoformat(h["period_end"]),
                        )
                        for h in row.holds
                    )
                ),
            )
            for row in conn.execute(select(reservations).where(reservations.c.org == org))
        },
    }


def _model_state(model: LedgerModel) -> dict[str, dict[Any, Any]]:
    return {
        "budgets": {b.budget_id: _model_budget_view(b) for b in model.budgets.values()},
        "budget_periods": {
            key: (row.end, row.spent, row.held) for key, row in model.periods.items()
        },
        "reservations": {
            r.reservation_id: (
                r.request_id,
                r.state,
                r.amount,
                r.cost,
                r.expires_at,
                r.settled_at,
                r.overrun,
                r.late,
                r.version,
                r.subjects,
                tuple(sorted((h.budget_id, h.period_start, h.period_end) for h in r.holds)),
            )
            for r in model.reservations.values()
        },
    }


def _slice_remaining(
    actual: Outcome, expected: Outcome, sliced: set[UUID], *, bounded: bool
) -> Outcome:
    """``actual`` with the model's remaining where a budget with escrow slices answered from
    one slice: its headroom, which after a take from a hard budget's open slice (``bounded``:
    a reservation) is at most what the budget has left (docs/ledger.md, "Hot budgets: escrow
    slices"); anything else must agree exactly."""
    if not (
        isinstance(actual, Ok)
        and isinstance(expected, Ok)
        and isinstance(actual.value, Reservation)
        and isinstance(expected.value, Reservation)
        and len(actual.value.budgets) == len(expected.value.budgets)
    ):
        return actual
    fixed = []
    for got, want in zip(actual.value.budgets, expected.value.budgets, strict=True):
        if got != want and got.budget_id == want.budget_id and got.budget_id in sliced:
            within = got.mode == "soft" or got.remaining_pico_usd <= want.remaining_pico_usd
            assert within or not bounded, f"slice headroom {got} above what {want} has left"
            got = replace(got, remaining_pico_usd=want.remaining_pico_usd)
        fixed.append(got)
    return Ok(replace(actual.value, budgets=tuple(fixed)))


def _differences(name: str, live: dict[Any, Any], expected: dict[Any, Any]) -> list[str]:
    return [
        f"  {name} {key}: service {live.get(key)!r}, model {expected.get(key)!r}"
        for key in sorted(set(live) | set(expected), key=str)
        if live.get(key) != expected.get(key)
    ]


class LedgerMachine(RuleBasedStateMachine):
    """Drives app.budgets.service and app.budgets.holds and the reference model in step."""

    databases: ClassVar[Databases]
    model_type: ClassVar[type[LedgerModel]] = LedgerModel

    def __init__(self) -> None:
        super().__init__()
        self.engine = self.databases.engine_for_next_example()
        self.org = f"model-{uuid.uuid4().hex[:12]}"
        self.model = self.model_type(self.org)
        self.now = ANCHORS[0]
        self.request_count = 0
        self.steps = 0
        self.sliced: set[UUID] = set()  # budgets that have had escrow slices
        self.define_attempts: list[tuple[str, BudgetSpec]] = []
        self.reserve_attempts: list[Attempt] = []
        self.usage_attempts: list[Attempt] = []
        self.reservation_ids: list[UUID] = []

    # Helpers.

    def _request_id(self, kind: str) -> str:
        self.request_count += 1
        return f"{kind}-{self.request_count}"

    def _reservation(self, pick: int, states: Sequence[str]) -> UUID:
        """A reservation in one of ``states`` if there is one, else any reservation."""
        wanted = [r for r in self.reservation_ids if self.model.reservations[r].state in states]
        pool = wanted or self.reservation_ids
        return pool[pick % len(pool)]

    def _edge(self, choice: Amount, holds: Sequence[HoldKey]) -> int:
        """A fixed amount, or what the picked hold's budget has left plus an offset."""
        if isinstance(choice, int):
            return choice
        if not holds:
            return AMOUNTS[0]
        pick, offset = choice
        # Picks index budgets in the order they were defined, never by id: ids are random,
        # and the same draws must make the same choices when hypothesis replays or shrinks.
        order = list(self.model.budgets)
        in_order = sorted(holds, key=lambda h: order.index(h.budget_id))
        # Prefer a budget with room left: its edge is a real amount, not zero.
        roomy = [h for h in in_order if self.model.left(h) > 0] or in_order
        return max(self.model.left(roomy[pick % len(roomy)]) + offset, 0)

    def _current_holds(self, subjects: Sequence[Subject]) -> list[HoldKey]:
        return [self.model.hold_key(b, self.now) for b in self.model.budgets_of(subjects)]

    def _expect(self, step: str, actual: Outcome, expected: Outcome) -> None:
        assert actual == expected, (
            f"{step} at {self.now.isoformat()}:\n  service {actual!r}\n  model   {expected!r}"
        )

    def _define(self, spec: BudgetSpec, request_id: str | None) -> None:
        actual = _call(
            lambda conn: _budget_view(
                budgets_service.define_budget(
                    conn,
                    org=self.org,
                    subject=spec.subject,
                    limit_pico_usd=spec.limit,
                    period=spec.period,
                    timezone=spec.timezone,
                    mode=spec.mode,
                    now=self.now,
                    request_id=request_id,
                    escrow_slices=spec.slices,
                )
            ),
            self.engine,
        )
        new_id = actual.value[0] if isinstance(actual, Ok) else uuid.uuid4()
        if spec.slices > 1:
            self.sliced.add(new_id)
        expected = self.model.define_budget(
            budget_id=new_id, content=spec.content(), request_id=request_id, now=self.now
        )
        if isinstance(expected, Ok):
            expected = Ok(_model_budget_view(self.model.budgets[expected.value]))
        self._expect(f"define_budget({spec}, {request_id})", actual, expected)

    def _reserve(self, attempt: Attempt) -> None:
        actual = _call(
            lambda conn: holds.reserve(
                conn,
                org=self.org,
                request_id=attempt.request_id,
                subjects=list(attempt.subjects),
                amount_pico_usd=attempt.amount,
                ttl_seconds=attempt.ttl_seconds,
                now=self.now,
            ),
            self.engine,
        )
        new_id = actual.value.reservation_id if isinstance(actual, Ok) else uuid.uuid4()
        known = new_id in self.model.reservations
        expected = self.model.reserve(
            reservation_id=new_id,
            request_id=attempt.request_id,
            subjects=attempt.subjects,
            amount=attempt.amount,
            ttl_seconds=attempt.ttl_seconds,
            now=self.now,
        )
        actual = _slice_remaining(actual, expected, self.sliced, bounded=True)
        self._expect(f"reserve({attempt})", actual, expected)
        if isinstance(actual, Ok) and not known:
            self.reservation_ids.append(new_id)

    def _record_usage(self, attempt: Attempt) -> None:
        actual = _call(
            lambda conn: holds.record_usage(
                conn,
                org=self.org,
                request_id=attempt.request_id,
                subjects=list(attempt.subjects),
                cost_pico_usd=attempt.amount,
                records=_records(attempt.record_costs),
                now=self.now,
            ),
            self.engine,
        )
        expected = self.model.record_usage(
            request_id=attempt.request_id,
            subjects=attempt.subjects,
            cost=attempt.amount,
            record_costs=attempt.record_costs,
            now=self.now,
        )
        self._expect(f"record_usage({attempt})", actual, expected)

    def _commit(self, reservation_id: UUID, cost: int, record_costs: tuple[int, ...]) -> None:
        actual = _call(
            lambda conn: holds.commit_reservation(
                conn,
                org=self.org,
                reservation_id=reservation_id,
                cost_pico_usd=cost,
                records=_records(record_costs),
                now=self.now,
            ),
            self.engine,
        )
        expected = self.model.commit(
            reservation_id=reservation_id, cost=cost, record_costs=record_costs, now=self.now
        )
        self._expect(f"commit({reservation_id}, {cost}, {record_costs})", actual, expected)

    def _check_statuses(self) -> None:
        """Each budget's current period as the service reports it (one query per budget)."""
        with self.engine.connect() as conn:
            statuses = budgets_service.list_budget_statuses(conn, org=self.org, at=self.now)
        problems = []
        for status in statuses:
            budget = self.model.budgets[status.budget.budget_id]
            hold = self.model.hold_key(budget, self.now)
            want = (hold.period_start, hold.period_end, *self.model.balance(hold))
            got = (
                status.period_start,
                status.period_end,
                status.spent_pico_usd,
                status.held_pico_usd,
            )
            if got != want:
                problems.append(f"  status of {budget.budget_id}: service {got}, model {want}")
        assert len(statuses) == len(self.model.budgets), "budgets missing from the statuses"
        assert not problems, f"statuses differ at {self.now.isoformat()}:\n" + "\n".join(problems)

    def _verify_replay(self) -> None:
        """`usage-ledger replay --verify`: one REPEATABLE READ snapshot, every org's events."""
        with self.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            report = verify(conn)
            # Replay compares each period's totals (row plus slices); check_escrow compares
            # every period row and slice with its events' deltas.
            check_escrow(conn)
        self.databases.events = report.events
        differences = report.differences
        assert not differences, "replay --verify found differences:\n" + "\n".join(
            f"  {d.projection} {d.side}: {d.row}" for d in differences
        )

    # Setup.

    @initialize(
        anchor=st.sampled_from(ANCHORS),
        offset_minutes=st.integers(min_value=-36 * 60, max_value=12 * 60),
        specs=st.lists(budget_specs, min_size=1, max_size=4),
    )
    def start(self, anchor: datetime, offset_minutes: int, specs: list[BudgetSpec]) -> None:
        self.now = anchor + timedelta(minutes=offset_minutes)
        for spec in specs:
            self._define(spec, None)

    # Budgets.

    @precondition(lambda self: len(self.model.budgets) < MAX_BUDGETS)
    @rule(spec=budget_specs, keyed=st.booleans())
    def define_budget(self, spec: BudgetSpec, keyed: bool) -> None:
        request_id = self._request_id("define") if keyed else None
        if request_id is not None:
            self.define_attempts.append((request_id, spec))
        self._define(spec, request_id)

    @precondition(lambda self: bool(self.model.budgets))
    @rule(
        pick=picks,
        limit=st.none() | st.sampled_from(LIMITS),
        mode=st.none() | st.sampled_from(("soft", "hard")),
        slices=st.none() | st.sampled_from(SLICES),
    )
    def change_budget(
        self, pick: int, limit: int | None, mode: str | None, slices: int | None
    ) -> None:
        ids = list(self.model.budgets)
        budget_id = ids[pick % len(ids)]
        actual = _call(
            lambda conn: _budget_view(
                budgets_service.change_budget(
                    conn,
                    org=self.org,
                    budget_id=budget_id,
                    limit_pico_usd=limit,
                    mode=mode,
                    now=self.now,
                    escrow_slices=slices,
                )
            ),
            self.engine,
        )
        if slices is not None and slices > 1:
            self.sliced.add(budget_id)
        expected = self.model.change_budget(
            budget_id=budget_id, limit=limit, mode=mode, now=self.now, slices=slices
        )
        if isinstance(expected, Ok):
            expected = Ok(_model_budget_view(self.model.budgets[budget_id]))
        self._expect(f"change_budget({budget_id}, {limit}, {mode}, {slices})", actual, expected)

    # Requests and holds.

    @rule(burst=st.lists(gateway_requests, min_size=1, max_size=4))
    def requests(self, burst: list[Request]) -> None:
        """A burst of gateway requests, each a hold to settle later or usage that had none.
        Bursts make requests the commonest step and mix holds with direct charges; the
        projections are compared after each request, as after a step."""
        for index, request in enumerate(burst):
            if index:
                self.projections_agree()
            value = self._edge(request.amount, self._current_holds(request.subjects))
            if request.via == "reserve":
                attempt = Attempt(
                    self._request_id("reserve"), request.subjects, value, request.ttl_seconds, ()
                )
                self.reserve_attempts.append(attempt)
                self._reserve(attempt)
            else:
                costs = _split(value, request.messages)
                attempt = Attempt(self._request_id("usage"), request.subjects, value, 0, costs)
                self.usage_attempts.append(attempt)
                self._record_usage(attempt)

    @precondition(lambda self: bool(self.reservation_ids))
    @rule(
        pick=picks,
        any_state=any_state,
        increase=increases,
        ttl_seconds=st.none() | st.sampled_from(TTLS),
    )
    def extend(
        self,
        pick: int,
        any_state: bool,
        increase: Amount | None,
        ttl_seconds: int | None,
    ) -> None:
        """Raise a hold (to the edge of a limit, or past it) and/or move its expiry."""
        reservation_id = self._reservation(pick, () if any_state else ("held",))
        reservation = self.model.reservations[reservation_id]
        amount = None
        if increase is not None:
            amount = reservation.amount + self._edge(increase, reservation.holds)
        actual = _call(
            lambda conn: holds.extend(
                conn,
                org=self.org,
                reservation_id=reservation_id,
                amount_pico_usd=amount,
                ttl_seconds=ttl_seconds,
                now=self.now,
            ),
            self.engine,
        )
        expected = self.model.extend(
            reservation_id=reservation_id, amount=amount, ttl_seconds=ttl_seconds, now=self.now
        )
        actual = _slice_remaining(actual, expected, self.sliced, bounded=False)
        self._expect(f"extend({reservation_id}, {amount}, {ttl_seconds})", actual, expected)

    @precondition(lambda self: bool(self.reservation_ids))
    @rule(
        pick=picks,
        any_state=any_state,
        relation=st.sampled_from(("at", "under", "over", "nothing", "messages disagree")),
        difference=st.sampled_from(DIFFERENCES),
        messages=message_counts,
    )
    def commit(
        self, pick: int, any_state: bool, relation: str, difference: int, messages: int
    ) -> None:
        """Commit a cost under, at or over the hold, with 0-2 messages that add up to it."""
        reservation_id = self._reservation(pick, () if any_state else ("held", "expired"))
        held = self.model.reservations[reservation_id].amount
        cost = {
            "at": held,
            "under": max(held - difference, 0),
            "over": held + difference,
            "nothing": 0,
            "messages disagree": held,
        }[relation]
        record_costs = _split(cost, messages)
        if relation == "messages disagree":
            record_costs = (cost + 1,)
        self._commit(reservation_id, cost, record_costs)

    @precondition(lambda self: bool(self.reservation_ids))
    @rule(pick=picks, any_state=any_state)
    def cancel(self, pick: int, any_state: bool) -> None:
        """Cancel (or cancel again: the key is the reservation)."""
        reservation_id = self._reservation(pick, () if any_state else ("held", "expired"))
        actual = _call(
            lambda conn: holds.cancel(
                conn, org=self.org, reservation_id=reservation_id, now=self.now
            ),
            self.engine,
        )
        expected = self.model.cancel(reservation_id=reservation_id, now=self.now)
        self._expect(f"cancel({reservation_id})", actual, expected)

    @precondition(lambda self: bool(self.reservation_ids))
    @rule(pick=picks, sweep=st.booleans())
    def expire(self, pick: int, sweep: bool) -> None:
        """The sweeper (`usage-ledger expire`), or one hold's expiry, at the current time.
        Earlier examples' orgs hold nothing any more (teardown), so a sweep finds only this
        org's holds."""
        if sweep:
            actual: Outcome = Ok(sweeper.expire_due(self.engine, now=self.now))
            self._expect("expire_due()", actual, self.model.expire_due(now=self.now))
            return
        reservation_id = self._reservation(pick, ("held",))
        actual = _call(
            lambda conn: holds.expire_one(
                conn, org=self.org, reservation_id=reservation_id, now=self.now
            ),
            self.engine,
        )
        expected = self.model.expire_one(reservation_id=reservation_id, now=self.now)
        self._expect(f"expire_one({reservation_id})", actual, expected)

    # Retries.

    def _retry_kinds(self) -> list[str]:
        return [
            kind
            for kind, made in (
                ("define_budget", self.define_attempts),
                ("reserve", self.reserve_attempts),
                ("commit", self.model.commit_keys),
                ("record_usage", self.usage_attempts),
            )
            if made
        ]

    @precondition(lambda self: bool(self._retry_kinds()))
    @rule(kind=picks, pick=picks, change=st.sampled_from(RETRY_CHANGES))
    def retry(self, kind: int, pick: int, change: str) -> None:
        """An earlier define_budget, reserve, commit or record_usage again with its key:
        unchanged (or with its subjects reordered and repeated) it returns the first result
        and changes nothing; changed, it is an IdempotencyConflict. A refused attempt left
        no key, so its retry is a new attempt."""
        retried = self._retry_kinds()[kind % len(self._retry_kinds())]
        same = change in ("none", "subject order")
        if retried == "define_budget":
            request_id, spec = self.define_attempts[pick % len(self.define_attempts)]
            if not same:
                spec = BudgetSpec(
                    spec.subject, spec.period, spec.timezone, spec.mode, spec.limit + 1, spec.slices
                )
            self._define(spec, request_id)
        elif retried == "commit":
            committed = list(self.model.commit_keys)
            reservation_id = committed[pick % len(committed)]
            content, _ = self.model.commit_keys[reservation_id]
            cost, record_costs = content.cost, content.record_costs
            if not same:
                cost, record_costs = cost + 1, ()
            self._commit(reservation_id, cost, record_costs)
        else:
            made = self.reserve_attempts if retried == "reserve" else self.usage_attempts
            first = made[pick % len(made)]
            subjects, amount, ttl, costs = (
                first.subjects,
                first.amount,
                first.ttl_seconds,
                first.record_costs,
            )
            if change == "subject order":
                subjects = (*reversed(subjects), subjects[0])
            elif change == "amount":
                amount, costs = amount + 1, ()
            elif change == "ttl" and retried == "reserve":
                ttl += 1
            elif change in ("subjects", "ttl"):
                subjects = (*subjects, SUBJECTS[len(subjects)])
            attempt = Attempt(first.request_id, subjects, amount, ttl, costs)
            if retried == "reserve":
                self._reserve(attempt)
            else:
                self._record_usage(attempt)

    # Time.

    @rule(step=clock_steps, pick=picks)
    def advance_clock(self, step: timedelta | tuple[str, int], pick: int) -> None:
        """Forward by a duration, or to just before, at or just after the end of a budget's
        current period (midnights, Mondays and firsts of the month in its zone) or a live
        hold's expiry. Never backwards."""
        if isinstance(step, timedelta):
            self.now += step
            return
        edge, offset = step
        if edge == "period end":
            edges = [
                period_of(b.period, b.timezone, self.now)[1]
                for b in self.model.budgets.values()
                if b.period != "total"
            ]
        else:
            edges = [
                self.model.reservations[r].expires_at
                for r in self.reservation_ids
                if self.model.reservations[r].state == "held"
            ]
        if edges:
            self.now = max(self.now, edges[pick % len(edges)] + timedelta(seconds=offset))

    # After every step.

    @invariant()
    def projections_agree(self) -> None:
        """Budgets, every period touched and every reservation, as the model has them."""
        with self.engine.connect() as conn:
            live = _live_state(conn, self.org)
        expected = _model_state(self.model)
        problems = []
        for projection in ("budgets", "budget_periods", "reservations"):
            problems += _differences(projection, live[projection], expected[projection])
        for budget in self.model.budgets.values():
            bounds = period_bounds(budget.period, budget.timezone, self.now)
            if bounds != period_of(budget.period, budget.timezone, self.now):
                problems.append(f"  period of {budget.budget_id}: service {bounds}")
        assert not problems, f"projections differ at {self.now.isoformat()}:\n" + "\n".join(
            problems
        )

    @invariant()
    def statuses_and_replay_agree(self) -> None:
        """Every VERIFY_EVERY steps: the budget statuses, and replay finds no difference."""
        self.steps += 1
        if self.steps % VERIFY_EVERY == 0:
            self._check_statuses()
            self._verify_replay()

    def teardown(self) -> None:
        """Expire what this org still holds, so that a later example's sweep finds only its
        own holds; then replay must still agree (unless a step failed already: that failure
        is the report)."""
        failed = sys.exc_info()[1] is not None
        try:
            with self.engine.begin() as conn:
                held = conn.execute(
                    select(reservations.c.reservation_id, reservations.c.expires_at).where(
                        reservations.c.org == self.org, reservations.c.state == "held"
                    )
                ).all()
                for reservation_id, expires_at in held:
                    holds.expire_one(
                        conn,
                        org=self.org,
                        reservation_id=reservation_id,
                        now=max(expires_at, self.now),
                    )
        finally:
            if not failed:
                self._verify_replay()


@pytest.fixture
def databases(pg_server: Server, template_db: str) -> Iterator[Databases]:
    found = Databases(pg_server, template_db)
    try:
        yield found
    finally:
        found.close()


def test_service_agrees_with_the_reference_model(databases: Databases) -> None:
    LedgerMachine.databases = databases
    run_state_machine_as_test(LedgerMachine, settings=PROFILE)
