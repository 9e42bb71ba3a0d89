"""Invariants under many parallel workers, each in its own transaction on a real PostgreSQL."""

from __future__ import annotations

import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from uuid import UUID

from sqlalchemy import Engine, text

from app.budgets import holds, sweeper
from app.budgets import service as budgets
from app.budgets.errors import BudgetExceeded, ReservationSettled
from app.budgets.model import Reservation, Settlement, Subject
from app.budgets.replay import verify
from tests.factories import USD, make_budget

CENT = USD // 100
ORG = Subject("org", "acme")
TEAM = Subject("team", "ml")


def _define(engine: Engine, subject: Subject, limit: int, **kw: object) -> UUID:
    with engine.begin() as conn:
        return make_budget(conn, subject=subject, limit_pico_usd=limit, **kw).budget_id


def _spent_held(engine: Engine, budget_id: UUID) -> tuple[int, int]:
    with engine.connect() as conn:
        status = budgets.budget_status(conn, budget_id=budget_id, org="acme")
    return status.spent_pico_usd, status.held_pico_usd


def _verify(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        report = verify(conn)
        conn.rollback()
    assert report.ok, report.differences[:5]


def _reserve(
    engine: Engine,
    request_id: str,
    amount: int,
    subjects: list[Subject] | None = None,
    ttl: int = 600,
) -> Reservation | None:
    try:
        with engine.begin() as conn:
            return holds.reserve(
                conn,
                org="acme",
                request_id=request_id,
                subjects=subjects or [TEAM],
                amount_pico_usd=amount,
                ttl_seconds=ttl,
            )
    except BudgetExceeded:
        return None


def test_400_reservations_of_a_cent_fill_a_dollar_exactly(engine: Engine) -> None:
    budget_id = _define(engine, TEAM, USD)
    with ThreadPoolExecutor(max_workers=64) as pool:
        outcomes = list(pool.map(lambda i: _reserve(engine, f"r{i}", CENT), range(400)))
    assert sum(1 for o in outcomes if o is not None) == 100
    assert _spent_held(engine, budget_id) == (0, USD)
    _verify(engine)


def test_mixed_traffic_never_shows_more_than_the_limit(engine: Engine) -> None:
    limit = 5 * USD
    budget_id = _define(engine, TEAM, limit)
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
            for op in range(300):
                choice = rng.random()
                if choice < 0.5 or not mine:
                    amount = rng.randint(1, 20) * CENT // 10
                    reservation = _reserve(engine, f"w{number}-{op}", amount)
                    if reservation is not None:
                        mine.append((reservation.reservation_id, amount))
                elif choice < 0.8:
                    reservation_id, amount = mine.pop(rng.randrange(len(mine)))
                    with engine.begin() as conn:
                        holds.commit_reservation(
                            conn,
                            org="acme",
                            reservation_id=reservation_id,
                            cost_pico_usd=rng.randint(0, amount),
                        )
                else:
                    reservation_id, _ = mine.pop(rng.randrange(len(mine)))
                    with engine.begin() as conn:
                        holds.cancel(conn, org="acme", reservation_id=reservation_id)
        except BaseException as error:  # surfaced below, with the worker's context lost
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
    assert spent + held <= limit
    with engine.connect() as conn:
        committed = conn.execute(
            text(
                "SELECT coalesce(sum(cost_pico_usd), 0) FROM reservations WHERE state = 'committed'"
            )
        ).scalar_one()
        still_held = conn.execute(
            text("SELECT coalesce(sum(amount_pico_usd), 0) FROM reservations WHERE state = 'held'")
        ).scalar_one()
    assert (spent, held) == (committed, still_held)
    _verify(engine)


def test_overlapping_subject_sets_in_any_order_never_deadlock(engine: Engine) -> None:
    subjects = [ORG, TEAM, Subject("key", "k1"), Subject("key", "k2"), Subject("user", "u1")]
    ids = [_define(engine, subject, 1000 * USD) for subject in subjects]
    errors: list[BaseException] = []
    costs: Counter[Subject] = Counter()
    lock = threading.Lock()

    def worker(number: int) -> None:
        rng = random.Random(number)
        for op in range(40):
            chosen = rng.sample(subjects, rng.randint(2, len(subjects)))
            try:
                reservation = _reserve(engine, f"o{number}-{op}", 3 * CENT, subjects=chosen)
                assert reservation is not None
                cost = rng.randint(0, 3 * CENT)
                with engine.begin() as conn:
                    holds.commit_reservation(
                        conn,
                        org="acme",
                        reservation_id=reservation.reservation_id,
                        cost_pico_usd=cost,
                    )
                with lock:
                    for subject in chosen:
                        costs[subject] += cost
            except BaseException as error:
                errors.append(error)

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(worker, range(32)))
    assert not errors, errors[:3]
    for subject, budget_id in zip(subjects, ids, strict=True):
        assert _spent_held(engine, budget_id) == (costs[subject], 0)  # no lost update
    _verify(engine)


def test_concurrent_retries_count_once(engine: Engine) -> None:
    budget_id = _define(engine, TEAM, USD)
    with ThreadPoolExecutor(max_workers=16) as pool:
        reservations = list(pool.map(lambda _: _reserve(engine, "same", 10 * CENT), range(16)))
    assert len({r.reservation_id for r in reservations if r}) == 1
    reservation = reservations[0]
    assert reservation is not None
    assert _spent_held(engine, budget_id) == (0, 10 * CENT)

    def commit(_: int) -> Settlement:
        with engine.begin() as conn:
            return holds.commit_reservation(
                conn, org="acme", reservation_id=reservation.reservation_id, cost_pico_usd=7 * CENT
            )

    with ThreadPoolExecutor(max_workers=16) as pool:
        settlements = list(pool.map(commit, range(16)))
    assert len(set(settlements)) == 1
    assert _spent_held(engine, budget_id) == (7 * CENT, 0)

    other = _reserve(engine, "to-cancel", 10 * CENT)
    assert other is not None

    def cancel(_: int) -> Reservation:
        with engine.begin() as conn:
            return holds.cancel(conn, org="acme", reservation_id=other.reservation_id)

    with ThreadPoolExecutor(max_workers=16) as pool:
        cancelled = list(pool.map(cancel, range(16)))
    assert {c.state for c in cancelled} == {"cancelled"}
    assert _spent_held(engine, budget_id) == (7 * CENT, 0)
    _verify(engine)


def test_expiry_racing_commits_charges_each_once(engine: Engine) -> None:
    budget_id = _define(engine, TEAM, 100 * USD)
    reservations = [_reserve(engine, f"e{i}", 10 * CENT, ttl=1) for i in range(120)]
    costs = {r.reservation_id: (i % 7) * CENT for i, r in enumerate(reservations) if r}
    assert len(costs) == 120
    after_expiry = datetime.now(UTC) + timedelta(seconds=2)

    def commit(reservation_id: UUID) -> bool:
        try:
            with engine.begin() as conn:
                return holds.commit_reservation(
                    conn,
                    org="acme",
                    reservation_id=reservation_id,
                    cost_pico_usd=costs[reservation_id],
                    now=after_expiry,
                ).late
        except ReservationSettled:
            return False

    def sweep(_: int) -> int:
        return sweeper.expire_due(engine, now=after_expiry, batch=10)

    with ThreadPoolExecutor(max_workers=24) as pool:
        sweeps = [pool.submit(sweep, n) for n in range(4)]
        commits = list(pool.map(commit, list(costs)))
        expired = sum(f.result() for f in sweeps)
    assert all(commits)  # every commit is past the expiry, so late, and charged
    assert _spent_held(engine, budget_id) == (sum(costs.values()), 0)
    with engine.connect() as conn:
        states = Counter(conn.execute(text("SELECT state FROM reservations")).scalars())
        expired_events = conn.execute(
            text("SELECT count(*) FROM ledger_events WHERE event_type = 'expired'")
        ).scalar_one()
    assert states == Counter({"committed": 120})
    assert expired_events == expired
    _verify(engine)


def test_replay_follows_causal_order_when_seq_does_not(engine: Engine) -> None:
    """A commit that took its transaction id before waiting for the sweeper's lock gets a
    lower seq than the expiry it follows; replay must still end in 'committed'."""
    budget_id = _define(engine, TEAM, USD)
    reservation = _reserve(engine, "inverted", 10 * CENT, ttl=1)
    assert reservation is not None
    later = datetime.now(UTC) + timedelta(seconds=5)
    committer = engine.connect()
    committer.begin()
    committer.execute(text("SELECT pg_current_xact_id()"))  # its id now precedes the sweeper's
    with engine.begin() as sweeper_conn:
        assert holds.expire_one(
            sweeper_conn, org="acme", reservation_id=reservation.reservation_id, now=later
        )
        result: list[Settlement] = []
        waiting = threading.Thread(
            target=lambda: result.append(
                holds.commit_reservation(
                    committer,
                    org="acme",
                    reservation_id=reservation.reservation_id,
                    cost_pico_usd=4 * CENT,
                    now=later,
                )
            )
        )
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive()  # blocked on the reservation's lock
    waiting.join(timeout=10)
    committer.commit()
    committer.close()
    assert result and result[0].late
    with engine.connect() as conn:
        order = (
            conn.execute(
                text(
                    "SELECT event_type FROM ledger_events WHERE reservation_id = :id ORDER BY seq"
                ),
                {"id": reservation.reservation_id},
            )
            .scalars()
            .all()
        )
    assert order == ["reserved", "committed", "expired"]  # seq order is not causal order
    assert _spent_held(engine, budget_id) == (4 * CENT, 0)
    _verify(engine)
