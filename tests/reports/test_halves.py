"""Long reports split in two halves on two connections answer exactly what one statement does."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from app.budgets import holds
from app.budgets.model import Subject
from app.config import Settings
from app.db.engine import make_engine
from app.ledger.records import UsageRecord
from app.reports import halves, rollups
from app.reports.service import SpendJson, SpendQuery, spend_csv, spend_json
from tests.factories import wait_until_settled
from tests.reports.test_rollups import START, Recorded, _usage, _write

WINDOW = (START + timedelta(hours=5), START + timedelta(days=4, hours=7))
# (granularity, group_by, tz, whether the window's middle falls on a period boundary inside it)
CASES: list[tuple[str, tuple[str, ...], str, bool]] = [
    ("day", ("model",), "UTC", True),
    ("hour", ("subject_type", "subject_id"), "UTC", True),
    ("day", ("model", "provider", "call_type", "endpoint"), "America/New_York", True),
    ("month", (), "Europe/Berlin", True),
    ("day", ("tag",), "Asia/Kolkata", False),  # not whole hours: refused before any split
    ("week", ("model",), "UTC", False),  # the middle's week began before the window
    ("all", ("subject_type", "subject_id"), "UTC", True),  # from the subject rollups
    ("all", ("model", "endpoint"), "UTC", True),  # from the wide ones
    ("all", ("subject_id",), "UTC", True),
    ("all", (), "UTC", False),  # one row
]


@pytest.fixture
def usage(engine: Engine) -> Iterator[list[Recorded]]:
    made = _usage(random.Random(11), 90)
    _write(engine, made, "h")
    # Part rollups, part unfolded tail: both halves must add the same tail.
    wait_until_settled(engine)
    with engine.begin() as conn:
        rollups.fold(conn, batch=60)
    yield made


@pytest.fixture
def splits(monkeypatch: pytest.MonkeyPatch) -> list[SpendQuery]:
    """The later halves run on the second connection."""
    seen: list[SpendQuery] = []
    render_in = halves._render_in

    def spy(engine: Engine, snapshot: str, render: Any, query: SpendQuery) -> Any:
        seen.append(query)
        return render_in(engine, snapshot, render, query)

    monkeypatch.setattr(halves, "_render_in", spy)
    return seen


def _query(unit: str, by: tuple[str, ...], tz: str) -> SpendQuery:
    return SpendQuery(
        org="acme", start=WINDOW[0], end=WINDOW[1], granularity=unit, group_by=by, tz=tz
    )


def _whole(engine: Engine, query: SpendQuery) -> tuple[SpendJson, str]:
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        report = spend_json(conn, query)
        lines = spend_csv(conn, query)
        conn.rollback()
    return report, lines


def test_halves_answer_the_whole_report_to_the_byte(
    engine: Engine, usage: list[Recorded], splits: list[SpendQuery]
) -> None:
    for unit, by, tz, splittable in CASES:
        query = _query(unit, by, tz)
        if tz == "Asia/Kolkata":
            with pytest.raises(Exception, match="whole number of hours"):
                halves.spend_json_in_halves(engine, query)
            continue
        whole, whole_csv = _whole(engine, query)
        assert whole.rows_json != "[]"
        splits.clear()
        split = halves.spend_json_in_halves(engine, query)
        assert split.rows_json == whole.rows_json, (unit, by, tz)
        assert split.totals_json == whole.totals_json, (unit, by, tz)
        assert split.source == whole.source
        assert (split.query.start, split.query.end) == (whole.query.start, whole.query.end)
        assert halves.spend_csv_in_halves(engine, query) == whole_csv
        assert len(splits) == (2 if splittable else 0), (unit, by, tz)
        if splittable and unit != "all":
            boundary = splits[0].start
            assert WINDOW[0] < boundary < WINDOW[1]
            assert boundary.minute == 0
        if splittable and unit == "all":
            assert splits[0].keys_from is not None and splits[0].start == WINDOW[0]


def test_both_halves_read_one_snapshot(
    engine: Engine, usage: list[Recorded], monkeypatch: pytest.MonkeyPatch
) -> None:
    query = _query("day", ("model",), "UTC")
    before, _ = _whole(engine, query)
    render_in = halves._render_in

    def spend_meanwhile(engine_: Engine, snapshot: str, render: Any, half: SpendQuery) -> Any:
        # Committed after the first half's snapshot, inside the later half's window.
        with engine.begin() as conn:
            holds.record_usage(
                conn,
                org="acme",
                request_id="meanwhile",
                subjects=(Subject("user", "u1"),),
                cost_pico_usd=7_000_000,
                records=(UsageRecord(cost_pico_usd=7_000_000, model="gpt-4o", provider="openai"),),
                now=WINDOW[1] - timedelta(hours=1),
            )
        return render_in(engine_, snapshot, render, half)

    monkeypatch.setattr(halves, "_render_in", spend_meanwhile)
    split = halves.spend_json_in_halves(engine, query)
    assert (split.rows_json, split.totals_json) == (before.rows_json, before.totals_json)
    after, _ = _whole(engine, query)
    assert after.totals_json != before.totals_json


def test_a_report_runs_whole_without_a_free_slot_or_connection(
    engine: Engine, usage: list[Recorded], splits: list[SpendQuery]
) -> None:
    query = _query("day", ("model",), "UTC")
    whole, _ = _whole(engine, query)
    for _ in range(halves.SLOTS):
        assert halves._slots.acquire(blocking=False)
    try:
        assert halves.spend_json_in_halves(engine, query).rows_json == whole.rows_json
    finally:
        for _ in range(halves.SLOTS):
            halves._slots.release()
    small = make_engine(
        engine.url.render_as_string(hide_password=False), settings=Settings(pool_size=2)
    )
    try:
        assert halves.spend_json_in_halves(small, query).rows_json == whole.rows_json
    finally:
        small.dispose()
    assert splits == []
    short = SpendQuery(**{**query.__dict__, "end": WINDOW[0] + timedelta(days=1)})
    halves.spend_json_in_halves(engine, short)
    assert splits == []
    halves.spend_json_in_halves(engine, query)
    assert len(splits) == 1


@pytest.mark.parametrize("middle", [("",), ("zzzz",), ("u3",)])
def test_any_remembered_middle_key_splits_exactly(
    engine: Engine, usage: list[Recorded], splits: list[SpendQuery], middle: tuple[str, ...]
) -> None:
    """The remembered middle key only balances the halves: one below every group, above every
    group or anywhere between still gives the whole report."""
    query = _query("all", ("subject_id",), "UTC")
    whole, whole_csv = _whole(engine, query)
    halves.spend_json_in_halves(engine, query)  # remembers the median
    assert len(splits) == 1
    report = next(k for k in halves._middle_keys if k[0] == "acme" and k[3] == ("subject_id",))
    halves._middle_keys[report] = (halves._middle_keys[report][0], middle)
    try:
        splits.clear()
        assert halves.spend_json_in_halves(engine, query).rows_json == whole.rows_json
        assert halves.spend_csv_in_halves(engine, query) == whole_csv
        assert [s.keys_from for s in splits] == [middle, middle]
    finally:
        halves._middle_keys.clear()
