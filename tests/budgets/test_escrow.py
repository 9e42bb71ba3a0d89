"""Escrow slices of hot budgets: the invariants under 64 parallel workers, the slow path,
budget changes and alerts, on a real PostgreSQL (docs/ledger.md, "Hot budgets")."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from sqlalchemy import Engine, text

from app.budgets import holds, sweeper
from app.budgets import service as budgets
from app.budgets.errors import BudgetExceeded
from app.budgets.model import Reservation, Subject
from app.errors import InvalidInput
from tests.budgets.escrow_checks import check_ledger
from tests.factories import USD, make_budget

CENT = USD // 100
ORG = Subject("org", "acme")
TEAM = Subject("team", "ml")


def _define(engine: Engine, subject: Subject, limit: int, slices: int, **kw: object) -> UUID:
    with engine.begin() as conn:
        return make_budget(
            conn, subject=subject, limit_pico_usd=limit, escrow_slices=slices, **kw
        ).budget_id


def _spent_held(engine: Engine, budget_id: UUID) -> tuple[int, int]:
    with engine.connect() as conn:
        status = budgets.budget_status(conn, budget_id=budget_id, org="acme")
    return status.spent_pico_usd, status.held_pico_usd


def _reserve(
    engine: Engine, request_id: str, amount: int, subjects: list[Subject] | None = None
) -> Reservation | None:
    try:
        with engine.begin() as conn:
            return holds.reserve(
                conn,
                org="acme",
                request_id=request_id,
                subjects=subjects or [ORG],
                amount_pico_usd=amount,
                ttl_seconds=600,
            )
    except BudgetExceeded:
        return None


def _commit(engine: Engine, reservation_id: UUID, cost: int) -> None:
    with engine.begin() as conn:
        holds.commit_reservation(
            conn, org="acme", reservation_id=reservation_id, cost_pico_usd=cost
        )


def _slices(engine: Engine, budget_id: UUID) -> list[tuple[int, int, bool]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT slice, headroom_pico_usd, is_open FROM budget_slices"
                " WHERE budget_id = :id ORDER BY slice"
            ),
            {"id": budget_id},
        )
        return [(r.slice, int(r.headroom_pico_usd), r.is_open) for r in rows]


def test_400_cents_on_a_sliced_dollar_fill_it_exactly(engine: Engine) -> None:
    """Refusals come only from the slow path when the pooled headroom is short: exactly 100
    of 400 cents fit a dollar split in 16 slices, whatever slice each worker found."""
    budget_id = _define(engine, ORG, USD, 16)
    with ThreadPoolExecutor(max_workers=64) as pool:
        outcomes = list(pool.map(lambda i: _reserve(engine, f"r{i}", CENT), range(400)))
    taken = [o for o in outcomes if o is not None]
    assert len(taken) == 100
    assert _spent_held(engine, budget_id) == (0, USD)
    with engine.connect() as conn:
        used = conn.execute(
            text("SELECT count(DISTINCT (holds->0->>'slice')) FROM reservations")
        ).scalar_one()
    assert used > 1  # the holds spread over slices rather than one row
    check_ledger(engine)


def test_mixed_traffic_on_a_sliced_budget_never_shows_more_than_the_limit(
    engine: Engine,
) -> None:
    limit = 3 * USD
    budget_id = _define(engine, ORG, limit, 8)
    stop = threading.Event()
    observed: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def observe() -> None:
        while not stop.is_set():
            observed.append(_spent_held(engine, budget_id))

    def worker(number: int) -> None:
        rng = random.Random(number)
        mine: list[tuple[UUID, int]] = []
        try:
            for op in range(60):
                choice = rng.random()
                if choice < 0.5 or not mine:
                    amount = rng.randint(1, 20) * CENT // 10
                    reservation = _reserve(engine, f"w{number}-{op}", amount)
                    if reservation is not None:
                        mine.append((reservation.reservation_id, amount))
                elif choice < 0.8:
                    reservation_id, amount = mine.pop(rng.randrange(len(mine)))
                    _commit(engine, reservation_id, rng.randint(0, amount))
                else:
                    reservation_id, _ = mine.pop(rng.randrange(len(mine)))
                    with engine.begin() as conn:
                        holds.cancel(conn, org="acme", reservation_id=reservation_id)
        except BaseException as error:  # surfaced below
            errors.append(error)

    observer = threading.Thread(target=observe)
    observer.start()
    with ThreadPoolExecutor(max_workers=64) as pool:
        list(pool.map(worker, range(64)))
    stop.set()
    observer.join()
    assert not errors, errors[:3]
    assert observed, "the observer never ran"
    assert all(spent + held <= limit for spent, held in observed)
    spent, held = _spent_held(engine, budget_id)
    with engine.connect() as conn:
        committed, still_held = conn.execute(
            text(
                "SELECT coalesce(sum(cost_pico_usd) FILTER (WHERE state = 'committed'), 0),"
                " coalesce(sum(amount_pico_usd) FILTER (WHERE state = 'held'), 0)"
                " FROM reservations"
            )
        ).one()
    assert (spent, held) == (committed, still_held)
    check_ledger(engine)


def test_key_team_and_sliced_org_under_64_workers_never_deadlock_nor_overspend(
    engine: Engine,
) -> None:
    """Each request holds in a key, a team and the org (sliced): the lock order (budgets by
    id; a sliced one's row before its slices) holds across fast and slow paths."""
    keys = [Subject("key", f"k{i}") for i in range(8)]
    teams = [Subject("team", f"t{i}") for i in range(4)]
    limits = {ORG: 2 * USD, **{k: 40 * CENT for k in keys}, **{t: 80 * CENT for t in teams}}
    ids = {s: _define(engine, s, limit, 16 if s == ORG else 1) for s, limit in limits.items()}
    errors: list[BaseException] = []
    refused = Counter[str]()
    lock = threading.Lock()

    def worker(number: int) -> None:
        rng = random.Random(number)
        try:
            for op in range(25):
                subjects = [ORG, keys[number % 8], teams[number % 4]]
                amount = rng.randint(1, 4) * CENT
                reservation = _reserve(engine, f"m{number}-{op}", amount, subjects=subjects)
                if reservation is None:
                    with lock:
                        refused["refused"] += 1
                    continue
                if rng.random() < 0.7:
                    _commit(engine, reservation.reservation_id, rng.randint(0, amount))
                elif rng.random() < 0.5:
                    with engine.begin() as conn:
                        holds.cancel(conn, org="acme", reservation_id=reservation.reservation_id)
        except BaseException as error:
            errors.append(error)

    with ThreadPoolExecutor(max_workers=64) as pool:
        list(pool.map(worker, range(64)))
    assert not errors, errors[:3]
    assert refused["refused"] > 0  # the limits were reached: the refusals were exercised
    for subject, budget_id in ids.items():
        spent, held = _spent_held(engine, budget_id)
        assert spent + held <= limits[subject], subject
    check_ledger(engine)


def test_an_overrun_takes_the_slow_path_and_closes_a_spent_budget(engine: Engine) -> None:
    budget_id = _define(engine, ORG, USD, 4)
    first = _reserve(engine, "a", 50 * CENT)
    second = _reserve(engine, "b", 10 * CENT)
    assert first is not None and second is not None
    _commit(engine, first.reservation_id, 95 * CENT)  # 45 cents over its hold: never refused
    assert _spent_held(engine, budget_id) == (95 * CENT, 10 * CENT)
    assert all(not is_open for _, _, is_open in _slices(engine, budget_id))  # 5 cents past
    assert sum(h for _, h, _ in _slices(engine, budget_id)) == -5 * CENT
    assert _reserve(engine, "c", 1) is None  # refused from the pool, not from one slice
    with engine.begin() as conn:
        holds.cancel(conn, org="acme", reservation_id=second.reservation_id)
    assert _reserve(engine, "d", 2 * CENT) is not None  # 5 cents left: re-pooled and open
    assert all(is_open for _, _, is_open in _slices(engine, budget_id))
    assert sum(h for _, h, _ in _slices(engine, budget_id)) == 3 * CENT
    check_ledger(engine)


def test_usage_without_a_reservation_on_a_sliced_budget(engine: Engine) -> None:
    budget_id = _define(engine, ORG, USD, 4)
    assert _reserve(engine, "open-slices", 0) is not None
    with engine.begin() as conn:
        settlement = holds.record_usage(
            conn, org="acme", request_id="u1", subjects=[ORG], cost_pico_usd=10 * CENT
        )
    assert settlement.flagged_budgets == ()
    with engine.begin() as conn:  # past one slice's share, so pooled: taken in full
        settlement = holds.record_usage(
            conn, org="acme", request_id="u2", subjects=[ORG], cost_pico_usd=120 * CENT
        )
    assert settlement.flagged_budgets == (str(budget_id),)
    with pytest.raises(BudgetExceeded), engine.begin() as conn:  # exhausted before it
        holds.record_usage(conn, org="acme", request_id="u3", subjects=[ORG], cost_pico_usd=1)
    assert _spent_held(engine, budget_id) == (130 * CENT, 0)
    check_ledger(engine)


def test_changing_the_limit_mode_and_slice_count_re_pools(engine: Engine) -> None:
    budget_id = _define(engine, ORG, USD, 8)
    held = [_reserve(engine, f"h{i}", 10 * CENT) for i in range(3)]
    assert all(held)
    with engine.begin() as conn:
        budgets.change_budget(conn, org="acme", budget_id=budget_id, limit_pico_usd=50 * CENT)
    assert sum(h for _, h, _ in _slices(engine, budget_id)) == 20 * CENT
    with engine.begin() as conn:
        changed = budgets.change_budget(conn, org="acme", budget_id=budget_id, escrow_slices=2)
    assert changed.escrow_slices == 2
    slices = _slices(engine, budget_id)
    assert [(s, h) for s, h, o in slices if o] == [(0, 10 * CENT), (1, 10 * CENT)]
    assert all(h == 0 and not o for s, h, o in slices if s >= 2)
    for reservation in held:  # holds on slices that are now closed still settle there
        assert reservation is not None
        _commit(engine, reservation.reservation_id, 5 * CENT)
    assert _spent_held(engine, budget_id) == (15 * CENT, 0)
    with engine.begin() as conn:
        budgets.change_budget(conn, org="acme", budget_id=budget_id, escrow_slices=1)
    assert not any(o for _, _, o in _slices(engine, budget_id))
    assert _reserve(engine, "big", 36 * CENT) is None  # 35 cents left, unsliced
    assert _reserve(engine, "fits", 35 * CENT) is not None
    with engine.begin() as conn:
        budgets.change_budget(conn, org="acme", budget_id=budget_id, escrow_slices=4, mode="soft")
    assert _reserve(engine, "soft", 10 * USD) is not None  # soft: any slice takes it
    check_ledger(engine)


@pytest.mark.parametrize("slices", [0, 65])
def test_escrow_slices_outside_1_to_64_are_refused(engine: Engine, slices: int) -> None:
    with pytest.raises(InvalidInput) as refused, engine.begin() as conn:
        make_budget(conn, subject=ORG, escrow_slices=slices)
    assert refused.value.fields["field"] == "escrow_slices"


def test_alerts_of_concurrent_commits_on_different_slices_are_raised_once(
    engine: Engine,
) -> None:
    """Each commit sees only its slice, so none can tell that together they crossed 80 %; the
    sweeper reads the totals and raises each level once, however often it runs."""
    budget_id = _define(engine, ORG, USD, 16)
    reservations = [_reserve(engine, f"a{i}", 10 * CENT) for i in range(10)]
    assert all(reservations)
    with engine.connect() as conn:
        spread = conn.execute(
            text("SELECT count(DISTINCT holds->0->>'slice') FROM reservations")
        ).scalar_one()
    assert spread > 1

    def commit(reservation: Reservation | None) -> None:
        assert reservation is not None
        _commit(engine, reservation.reservation_id, 96 * CENT // 10)

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(commit, reservations))
    assert _spent_held(engine, budget_id) == (96 * CENT, 0)
    now = datetime.now(UTC)
    with ThreadPoolExecutor(max_workers=4) as pool:
        raised = list(pool.map(lambda _: sweeper.raise_sliced_alerts(engine, now=now), range(4)))
    assert sum(raised) == 2
    assert sweeper.raise_sliced_alerts(engine, now=now + timedelta(seconds=1)) == 0
    with engine.connect() as conn:
        levels = Counter(
            conn.execute(
                text(
                    "SELECT payload->>'level' FROM ledger_events WHERE event_type = 'alert_raised'"
                )
            ).scalars()
        )
    assert levels == Counter({"warning": 1, "critical": 1})
    check_ledger(engine)


def test_holds_on_plain_and_sliced_budgets_settle_together_exactly(engine: Engine) -> None:
    """One reservation on a plain key budget, a plain team budget and a sliced org budget:
    the statement that locks a run of budgets and adds to the plain periods, and the pooling of
    the sliced one after it, each refuse and charge exactly."""
    key = Subject("key", "k1")
    key_id = _define(engine, key, USD, 1)
    team_id = _define(engine, TEAM, 2 * USD, 1)
    org_id = _define(engine, ORG, 3 * USD, 4)
    every = [key, TEAM, ORG]
    first = _reserve(engine, "first", 40 * CENT, every)
    assert first is not None
    with pytest.raises(BudgetExceeded) as refused, engine.begin() as conn:
        holds.extend(  # the key has 60 cents left: raising the hold by 61 is refused
            conn, org="acme", reservation_id=first.reservation_id, amount_pico_usd=101 * CENT
        )
    assert refused.value.fields["budget_id"] == str(key_id)
    with engine.begin() as conn:
        holds.extend(
            conn, org="acme", reservation_id=first.reservation_id, amount_pico_usd=100 * CENT
        )
    assert [_spent_held(engine, b) for b in (key_id, team_id, org_id)] == [(0, USD)] * 3
    _commit(engine, first.reservation_id, 130 * CENT)  # an overrun: the slow path everywhere
    assert [_spent_held(engine, b) for b in (key_id, team_id, org_id)] == [(130 * CENT, 0)] * 3
    assert all(is_open for _, _, is_open in _slices(engine, org_id))
    assert sum(h for _, h, _ in _slices(engine, org_id)) == 170 * CENT
    second = _reserve(engine, "second", 10 * CENT, [TEAM, ORG])
    assert second is not None
    _commit(engine, second.reservation_id, 4 * CENT)  # under the hold: a slice and a plain row
    assert _spent_held(engine, team_id) == (134 * CENT, 0)
    assert _spent_held(engine, org_id) == (134 * CENT, 0)
    check_ledger(engine)


def test_a_change_sees_what_the_lock_holder_wrote_to_the_slices_while_it_waited(
    engine: Engine,
) -> None:
    """A budget unsliced again keeps a sliced-era hold: its overrun is pooled into the slices
    under the budget's lock. An extend waiting for that lock must count it once it has the lock
    (the totals are read in a statement started after the wait), or the budget is overspent."""
    budget_id = _define(engine, ORG, USD, 4)
    sliced = _reserve(engine, "sliced", 40 * CENT)
    assert sliced is not None
    with engine.begin() as conn:
        budgets.change_budget(conn, org="acme", budget_id=budget_id, escrow_slices=1)
    plain = _reserve(engine, "plain", 10 * CENT)
    assert plain is not None
    overrun_holds_the_lock = threading.Event()

    def overrun() -> None:
        with engine.begin() as conn:
            holds.commit_reservation(  # 50 cents over its hold: pooled into the slices
                conn, org="acme", reservation_id=sliced.reservation_id, cost_pico_usd=90 * CENT
            )
            overrun_holds_the_lock.set()
            time.sleep(1.0)

    thread = threading.Thread(target=overrun)
    thread.start()
    assert overrun_holds_the_lock.wait(10)
    time.sleep(0.2)
    try:
        with pytest.raises(BudgetExceeded), engine.begin() as conn:
            holds.extend(  # 90 spent + 20 held would be past the dollar
                conn, org="acme", reservation_id=plain.reservation_id, amount_pico_usd=20 * CENT
            )
    finally:
        thread.join()
    assert _spent_held(engine, budget_id) == (90 * CENT, 10 * CENT)
    check_ledger(engine)
