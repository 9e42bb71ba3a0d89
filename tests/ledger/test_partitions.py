"""The event table's monthly partitions: append-only in each, archiving without losing a thing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from app.budgets import holds
from app.budgets.model import Subject
from app.budgets.replay import verify
from app.cli.main import main
from app.db.engine import normalise_url
from app.ledger import partitions
from app.reports import rollups
from app.reports.service import SpendQuery, spend
from tests.factories import USD, make_budget, wait_until_settled

TEAM = Subject("team", "archive")
JANUARY = datetime(2026, 1, 15, 12, tzinfo=UTC)


@pytest.fixture
def owner(db_url: str) -> Iterator[Engine]:
    engine = create_engine(normalise_url(db_url))
    try:
        yield engine
    finally:
        engine.dispose()


def test_events_land_in_the_month_partition_and_months_are_kept_ahead(
    engine: Engine, owner: Engine
) -> None:
    with engine.begin() as conn:
        make_budget(conn, subject=TEAM)
    with owner.connect() as conn:
        found = {p.name: p for p in partitions.list_partitions(conn, count=True)}
    this_month = datetime.now(UTC).strftime("ledger_events_%Y_%m")
    assert found[this_month].events == 1 and found["ledger_events_default"].events == 0
    ahead = (datetime.now(UTC).replace(day=1) + timedelta(days=40)).strftime("ledger_events_%Y_%m")
    assert ahead in found
    assert rollups.ensure_partitions(engine, months_ahead=5) >= 1  # the service's role may


@pytest.mark.parametrize("statement", ["UPDATE {} SET org = 'x'", "DELETE FROM {}", "TRUNCATE {}"])
def test_each_partition_refuses_change_even_to_its_owner(
    engine: Engine, owner: Engine, statement: str
) -> None:
    with engine.begin() as conn:
        make_budget(conn, subject=TEAM)
    month = datetime.now(UTC).strftime("ledger_events_%Y_%m")
    for table in (month, "ledger_events_default", "ledger_events"):
        with owner.begin() as conn, pytest.raises(DBAPIError, match="append-only"):
            conn.execute(text(statement.format(table)))


def _january_usage(engine: Engine, owner: Engine) -> None:
    """Usage recorded in January 2026: the test moves recorded_at's default back in time."""
    with owner.begin() as conn:
        partitions.ensure(conn, JANUARY, JANUARY)
        conn.execute(
            text(
                "ALTER TABLE ledger_events ALTER COLUMN recorded_at"
                " SET DEFAULT '2026-01-15T12:00:00Z'"
            )
        )
    try:
        with engine.begin() as conn:
            make_budget(conn, subject=TEAM, period="total", limit_pico_usd=100 * USD, now=JANUARY)
        for index in range(5):
            with engine.begin() as conn:
                holds.record_usage(
                    conn,
                    org="acme",
                    request_id=f"jan-{index}",
                    subjects=[TEAM],
                    cost_pico_usd=USD + index,
                    now=JANUARY + timedelta(hours=index),
                )
    finally:
        with owner.begin() as conn:
            conn.execute(
                text("ALTER TABLE ledger_events ALTER COLUMN recorded_at SET DEFAULT now()")
            )


def _fold_everything(engine: Engine) -> None:
    wait_until_settled(engine)
    rollups.fold_all(engine)


def test_archiving_old_months_keeps_reports_replay_and_the_hot_path(
    engine: Engine, owner: Engine, db_url: str
) -> None:
    _january_usage(engine, owner)
    with owner.begin() as conn, pytest.raises(partitions.NotFolded):
        partitions.archive(conn, before=datetime(2026, 2, 1, tzinfo=UTC))
    _fold_everything(engine)
    assert main(["partitions", "archive", "--before", "2026-02", "--database-url", db_url]) == 0
    with owner.connect() as conn:
        archived = [p for p in partitions.list_partitions(conn, count=True) if not p.attached]
        assert [(p.schema, p.name, p.events) for p in archived] == [
            ("ledger_archive", "ledger_events_2026_01", 6)
        ]
        live = conn.execute(text("SELECT count(*) FROM ledger_events")).scalar_one()
        assert live == 0

    # The hot path goes on, charging the same total budget.
    with engine.begin() as conn:
        holds.record_usage(conn, org="acme", request_id="now-1", subjects=[TEAM], cost_pico_usd=USD)
    rollups.fold_all(engine)
    with engine.connect() as conn:
        january = spend(
            conn,
            SpendQuery(
                org="acme",
                start=datetime(2026, 1, 1, tzinfo=UTC),
                end=datetime(2026, 2, 1, tzinfo=UTC),
                granularity="month",
            ),
        )
    assert january.totals["cost_pico_usd"] == 5 * USD + 10
    assert january.totals["requests"] == 5
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        assert verify(conn).ok
        assert rollups.verify(conn) == []
        conn.rollback()
    assert main(["replay", "--verify", "--database-url", db_url]) == 0

    assert (
        main(
            [
                "partitions",
                "restore",
                "--name",
                "ledger_events_2026_01",
                "--database-url",
                db_url,
            ]
        )
        == 0
    )
    with owner.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ledger_events")).scalar_one() == 7


def test_rollup_verification_catches_a_tampered_rollup(engine: Engine, owner: Engine) -> None:
    with engine.begin() as conn:
        holds.record_usage(conn, org="acme", request_id="r", subjects=[TEAM], cost_pico_usd=3 * USD)
    _fold_everything(engine)
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        assert rollups.verify(conn) == []
        conn.rollback()
    with owner.begin() as conn:
        changed = conn.execute(text("UPDATE rollup_daily SET cost_pico_usd = cost_pico_usd + 1"))
        assert changed.rowcount == 2
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        differences = rollups.verify(conn)
        conn.rollback()
    assert {(d.projection, d.side) for d in differences} == {
        ("rollup_daily", "live only"),
        ("rollup_daily", "rebuilt only"),
    }
