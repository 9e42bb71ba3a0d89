"""The spend views against an independent Python sum, to the last pico-USD, however much of
the stream the rollups have folded."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from app.budgets.model import Subject
from app.ledger.records import UsageRecord
from app.reports import rollups
from tests.reporting import workload

# Two days and a half across the end of January: hours, days and two months all get rows.
START = datetime(2026, 1, 30, 13, tzinfo=UTC)
GRAINS = {
    "spend": (),
    "spend_by_subject": ("subject_type", "subject_id"),
    "spend_by_tag": ("tag",),
}
UNITS = {"hourly": "hour", "daily": "day", "monthly": "month"}
VIEWS = [(f"{grain}_{suffix}", grain, unit) for grain in GRAINS for suffix, unit in UNITS.items()]


def _view(conn: Connection, name: str, grain: str, unit: str) -> dict[tuple[Any, ...], Any]:
    keys = ["org", unit, *GRAINS[grain], "model", "provider", "call_type", "endpoint"]
    rows = conn.execute(text(f"SELECT * FROM reporting.{name}")).mappings().all()
    got: dict[tuple[Any, ...], Any] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        assert key not in got, f"{name}: two rows for {key}"
        # USD is the same amount, exactly: 12 decimals, nothing rounded.
        assert row["cost_usd"] == Decimal(row["cost_pico_usd"]).scaleb(-12)
        assert isinstance(row["cost_pico_usd"], Decimal)
        got[key] = tuple(int(row[m]) for m in workload.MEASURES)
    return got


def _check_every_view(engine: Engine, requests: list[workload.Request]) -> None:
    facts = workload.facts(requests)
    with engine.connect() as conn:
        for name, grain, unit in VIEWS:
            expected = workload.sums(facts, unit=unit, grain=grain)
            assert _view(conn, name, grain, unit) == expected, name


def _tail(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM ledger_events WHERE seq >= :w"),
                {"w": rollups.watermark(conn)},
            ).scalar_one()
        )


def _fold(engine: Engine, *, batch: int, until_tail: int) -> None:
    """Fold until at most ``until_tail`` events are left past the watermark.

    The folder only folds below the cluster-wide xmin horizon, so a long transaction of any
    other database on the server (another test run) holds it back; wait that out.
    """
    deadline = time.monotonic() + 180
    while _tail(engine) > until_tail:
        with engine.begin() as conn:
            rollups.fold(conn, batch=min(batch, _tail(engine) - until_tail))
        if _tail(engine) > until_tail:
            assert time.monotonic() < deadline, "the xmin horizon never passed our events"
            time.sleep(0.2)


@pytest.fixture
def requests(engine: Engine) -> Iterator[list[workload.Request]]:
    made = workload.random_requests(random.Random(20261122), 90, start=START, hours=60)
    for request in made:
        with engine.begin() as conn:
            workload.write(conn, request)
    yield made


def test_spend_views_are_exact_before_during_and_after_folding(
    engine: Engine, requests: list[workload.Request]
) -> None:
    events = _tail(engine)
    assert events > 200
    _check_every_view(engine, requests)  # all from the events past the watermark

    _fold(engine, batch=events, until_tail=events - events // 2)
    assert _tail(engine) == events - events // 2
    _check_every_view(engine, requests)  # part rollups, part events, often in one bucket

    _fold(engine, batch=41, until_tail=0)
    _check_every_view(engine, requests)  # all from the rollups


def test_a_bucket_split_across_rollup_and_tail_is_one_row(engine: Engine) -> None:
    """The same key half folded and half not must come out summed, not as two rows."""
    at = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)
    first, second = (
        workload.Request(
            org="acme",
            request_id=f"split-{n}",
            at=at.replace(minute=15 + n),
            subjects=(Subject("team", "ml"),),
            records=(UsageRecord(cost_pico_usd=cost, model="gpt-4o", provider="openai"),),
        )
        for n, cost in enumerate([10**12 + 1, 2 * 10**12 + 3])
    )
    with engine.begin() as conn:
        workload.write(conn, first)
    _fold(engine, batch=100, until_tail=0)
    with engine.begin() as conn:
        workload.write(conn, second)
    assert _tail(engine) > 0
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT hour, cost_pico_usd, cost_usd, requests, messages"
                " FROM reporting.spend_hourly WHERE org = 'acme'"
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (at.replace(minute=0), 3 * 10**12 + 4, Decimal("3.000000000004"), 2, 2)
    ]
