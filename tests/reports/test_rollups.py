"""Rollups and spend reports against an independent sum of what was recorded."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, text

from app.budgets import holds
from app.budgets.model import Subject
from app.errors import InvalidInput
from app.ledger.records import UsageRecord
from app.reports import rollups
from app.reports.service import SpendQuery, spend, subject_spend, top
from tests.factories import wait_until_settled

START = datetime(2026, 10, 30, 0, tzinfo=UTC)
MODELS = [("gpt-4o", "openai"), ("claude-sonnet-4", "anthropic"), ("gemini-2.5-pro", "gemini")]
TAGS = ["prod", "batch", "eval"]


@dataclass(frozen=True)
class Recorded:
    at: datetime
    subjects: tuple[Subject, ...]
    records: tuple[UsageRecord, ...]


def _record(rng: random.Random, index: int) -> UsageRecord:
    model, provider = rng.choice(MODELS)
    metadata: dict[str, Any] = {}
    if rng.random() < 0.7:
        metadata["endpoint"] = rng.choice(["/chat", "/responses"])
    if rng.random() < 0.6:
        metadata["tags"] = rng.sample(TAGS, rng.randint(1, 2))
    return UsageRecord(
        cost_pico_usd=rng.randint(0, 10**9) * 1000 + rng.randint(0, 999),
        model=model,
        provider=provider,
        call_type=rng.choice(["chat", "embedding"]),
        prompt_tokens=rng.randint(0, 5000),
        completion_tokens=rng.randint(0, 2000),
        cache_read_tokens=rng.randint(0, 100),
        cache_creation_tokens=rng.randint(0, 50),
        reasoning_tokens=rng.randint(0, 300),
        metadata=metadata,
    )


def _usage(rng: random.Random, count: int) -> list[Recorded]:
    users = [Subject("user", f"u{i}") for i in range(6)]
    teams = [Subject("team", f"t{i}") for i in range(2)]
    made = []
    for index in range(count):
        at = START + timedelta(minutes=rng.randint(0, 5 * 24 * 60 - 1), seconds=rng.randint(0, 59))
        subjects = (rng.choice(users), rng.choice(teams))
        records = tuple(_record(rng, index) for _ in range(rng.randint(1, 3)))
        made.append(Recorded(at, subjects, records))
    return made


def _write(engine: Engine, made: list[Recorded], prefix: str) -> None:
    for index, item in enumerate(made):
        with engine.begin() as conn:
            holds.record_usage(
                conn,
                org="acme",
                request_id=f"{prefix}-{index}",
                subjects=item.subjects,
                cost_pico_usd=sum(r.cost_pico_usd for r in item.records),
                records=item.records,
                now=item.at,
            )


def _expected(
    made: list[Recorded], *, unit: str, by: tuple[str, ...], tz: str = "UTC", **filters: str
) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    """(period, groups...) -> (cost, requests, prompt tokens), summed in Python."""
    zone = ZoneInfo(tz)
    sums: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0])
    for item in made:
        for position, record in enumerate(item.records):
            local = item.at.astimezone(zone)
            period: datetime | None
            if unit == "hour":
                period = local.replace(minute=0, second=0, microsecond=0)
            elif unit == "day":
                period = local.replace(hour=0, minute=0, second=0, microsecond=0)
            else:
                period = None
            tags = record.metadata.get("tags", [])
            base = {
                "model": record.model,
                "provider": record.provider,
                "call_type": record.call_type,
                "endpoint": record.metadata.get("endpoint"),
            }
            views: list[dict[str, Any]]
            if "subject_id" in by or "subject_id" in filters:
                views = [
                    {**base, "subject_type": s.type, "subject_id": s.id} for s in item.subjects
                ]
            elif "tag" in by or "tag" in filters:
                views = [{**base, "tag": tag} for tag in tags]
            else:
                views = [base]
            for view in views:
                if any(view.get(k) != v for k, v in filters.items()):
                    continue
                key = (period.astimezone(UTC) if period else None, *(view[g] for g in by))
                sums[key][0] += record.cost_pico_usd
                sums[key][1] += 1 if position == 0 else 0
                sums[key][2] += record.prompt_tokens
    return {k: (v[0], v[1], v[2]) for k, v in sums.items()}


def _report(engine: Engine, query: SpendQuery) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    with engine.connect() as conn:
        report = spend(conn, query)
    got = {
        (
            row.period_start.astimezone(UTC) if row.period_start else None,
            *(row.groups[g] for g in query.group_by),
        ): (row.cost_pico_usd, row.requests, row.sums["prompt_tokens"])
        for row in report.rows
    }
    assert report.totals["cost_pico_usd"] == sum(v[0] for v in got.values())
    return got


SHAPES: list[tuple[str, tuple[str, ...], str, dict[str, str]]] = [
    ("day", ("model",), "UTC", {}),
    ("day", ("model", "provider", "call_type", "endpoint"), "America/New_York", {}),
    ("hour", ("model",), "UTC", {}),
    ("all", ("subject_type", "subject_id"), "UTC", {}),
    ("day", ("subject_id",), "Europe/Berlin", {"subject_type": "team"}),
    ("all", ("tag",), "UTC", {}),
    ("day", (), "UTC", {"model": "gpt-4o", "tag": "prod"}),
    ("all", (), "Asia/Kolkata", {"subject_id": "u3"}),
]


def _check_all(engine: Engine, made: list[Recorded]) -> None:
    # Windows on odd hours make the daily rollup answer for the middle and hours for the ends.
    start, end = START + timedelta(hours=5), START + timedelta(days=4, hours=7)
    inside = [m for m in made if start <= m.at < end]
    for unit, by, tz, filters in SHAPES:
        query = SpendQuery(
            org="acme",
            start=start,
            end=end,
            granularity=unit,
            group_by=by,
            tz=tz,
            **filters,
        )
        expected = _expected(inside, unit=unit, by=by, tz=tz, **filters)
        assert _report(engine, query) == expected, (unit, by, tz, filters)


@pytest.fixture
def usage(engine: Engine) -> Iterator[list[Recorded]]:
    made = _usage(random.Random(7), 120)
    _write(engine, made, "r")
    yield made


def test_reports_are_exact_before_during_and_after_folding(
    engine: Engine, usage: list[Recorded]
) -> None:
    with engine.connect() as conn:
        assert rollups.watermark(conn) == 0
    _check_all(engine, usage)  # everything comes from the events
    wait_until_settled(engine)
    with engine.begin() as conn:
        folded = rollups.fold(conn, batch=100)
    assert folded is not None and folded.events == 100
    _check_all(engine, usage)  # part rollups, part events
    assert rollups.fold_all(engine, batch=37) > 0
    with engine.connect() as conn:
        tail = conn.execute(
            text("SELECT count(*) FROM ledger_events WHERE seq >= :w"),
            {"w": rollups.watermark(conn)},
        ).scalar_one()
    assert tail == 0
    _check_all(engine, usage)  # everything from the rollups


def test_top_spenders_and_subject_spend(engine: Engine, usage: list[Recorded]) -> None:
    wait_until_settled(engine)
    rollups.fold_all(engine)
    end = START + timedelta(days=5)
    with engine.connect() as conn:
        best = top(
            conn,
            SpendQuery(org="acme", start=START, end=end, group_by=("subject_id",)),
            limit=3,
        )
        spent_u3 = subject_spend(
            conn,
            org="acme",
            subject_type="user",
            subject_id="u3",
            start=START + timedelta(hours=1, minutes=30),
            end=START + timedelta(days=2, minutes=1),
        )
    per_subject: dict[str, int] = defaultdict(int)
    for item in usage:
        for subject in item.subjects:
            per_subject[subject.id] += sum(r.cost_pico_usd for r in item.records)
    ranked = sorted(per_subject.items(), key=lambda kv: -kv[1])[:3]
    assert [(r.groups["subject_id"], r.cost_pico_usd) for r in best.rows] == ranked
    low, high = START + timedelta(hours=1), START + timedelta(days=2, hours=1)
    assert spent_u3 == sum(
        sum(r.cost_pico_usd for r in item.records)
        for item in usage
        if Subject("user", "u3") in item.subjects and low <= item.at < high
    )


def test_a_commit_without_messages_counts_as_one_request(engine: Engine) -> None:
    team = Subject("team", "solo")
    with engine.begin() as conn:
        reservation = holds.reserve(
            conn,
            org="acme",
            request_id="bare",
            subjects=[team],
            amount_pico_usd=10**10,
            ttl_seconds=600,
            model="gpt-4o",
            provider="openai",
            now=START,
        )
        holds.commit_reservation(
            conn,
            org="acme",
            reservation_id=reservation.reservation_id,
            cost_pico_usd=123,
            now=START + timedelta(seconds=3),
        )
    query = SpendQuery(
        org="acme", start=START, end=START + timedelta(hours=1), group_by=("model", "subject_id")
    )
    for _ in range(2):
        with engine.connect() as conn:
            rows = spend(conn, query).rows
        assert [(r.groups, r.cost_pico_usd, r.requests, r.messages) for r in rows] == [
            ({"model": "gpt-4o", "subject_id": "solo"}, 123, 1, 0)
        ]
        rollups.fold_all(engine)


def test_the_folder_never_misses_nor_double_counts_under_concurrent_writers(
    engine: Engine,
) -> None:
    """Writers keep transactions open across the folder's runs; the folder must not skip an
    event that commits after a later one, nor count any twice."""
    rng = random.Random(11)
    made = _usage(rng, 160)
    chunks = [made[i::4] for i in range(4)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(part: list[Recorded], name: str) -> None:
        try:
            for index, item in enumerate(part):
                with engine.begin() as conn:
                    holds.record_usage(
                        conn,
                        org="acme",
                        request_id=f"{name}-{index}",
                        subjects=item.subjects,
                        cost_pico_usd=sum(r.cost_pico_usd for r in item.records),
                        records=item.records,
                        now=item.at,
                    )
                    time.sleep(rng.random() * 0.01)  # hold the transaction open a little
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def folder() -> None:
        while not stop.is_set():
            try:
                rollups.fold_all(engine, batch=7)
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)
                return

    threads = [threading.Thread(target=writer, args=(c, f"w{i}")) for i, c in enumerate(chunks)]
    folders = [threading.Thread(target=folder) for _ in range(2)]
    for thread in [*threads, *folders]:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    for thread in folders:
        thread.join()
    assert not errors
    wait_until_settled(engine)
    rollups.fold_all(engine)
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM ledger_events WHERE seq >= :w"),
                {"w": rollups.watermark(conn)},
            ).scalar_one()
            == 0
        )
        folded = conn.execute(text("SELECT events FROM rollup_watermark")).scalar_one()
        assert folded == conn.execute(text("SELECT count(*) FROM ledger_events")).scalar_one()
    _check_all(engine, made)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"granularity": "minute"}, "granularity"),
        ({"group_by": ("colour",)}, "group_by"),
        ({"group_by": ("subject_id", "tag")}, "group_by"),
        ({"start": START + timedelta(minutes=30)}, "from"),
        ({"end": START}, "to"),
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"tz": "Asia/Kolkata"}, "tz"),
    ],
)
def test_bad_queries_name_the_field(engine: Engine, changes: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {"start": START, "end": START + timedelta(days=1), **changes}
    query = SpendQuery(org="acme", **values)
    with engine.connect() as conn, pytest.raises(InvalidInput) as raised:
        spend(conn, query)
    assert raised.value.fields["field"] == field
