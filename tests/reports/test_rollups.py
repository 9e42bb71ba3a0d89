"""Rollups and spend reports against an independent sum of what was recorded."""

from __future__ import annotations

import csv
import io
import json
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
from alembic import command
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from app.budgets import holds
from app.budgets.model import Subject
from app.db.engine import normalise_url
from app.db.migrate import alembic_config
from app.errors import InvalidInput
from app.ledger.records import UsageRecord
from app.money import format_usd, parse_usd
from app.reports import rollups, service
from app.reports.service import (
    SpendQuery,
    _usd,
    spend,
    spend_csv,
    spend_json,
    subject_spend,
    top,
)
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
            elif unit == "week":  # from Monday, as date_trunc
                day = local.replace(hour=0, minute=0, second=0, microsecond=0)
                period = day - timedelta(days=day.weekday())
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


def _instant(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


def _report_json(
    engine: Engine, query: SpendQuery, isolation: str
) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    """The report as PostgreSQL writes it in JSON, in a transaction of ``isolation`` (the
    watermark is a constant of the statement only under REPEATABLE READ)."""
    with engine.connect().execution_options(isolation_level=isolation) as conn:
        report = spend_json(conn, query)
        conn.rollback()
    rows = json.loads(report.rows_json)
    totals = json.loads(report.totals_json)
    got = {
        (_instant(row["period_start"]), *(row[g] for g in query.group_by)): (
            parse_usd(row["cost_usd"]),
            row["requests"],
            row["prompt_tokens"],
        )
        for row in rows
    }
    assert len(got) == len(rows)
    assert parse_usd(totals["cost_usd"]) == sum(v[0] for v in got.values())
    assert totals["requests"] == sum(v[1] for v in got.values())
    return got


SHAPES: list[tuple[str, tuple[str, ...], str, dict[str, Any]]] = [
    ("day", ("model",), "UTC", {}),
    ("day", ("model", "provider", "call_type", "endpoint"), "America/New_York", {}),
    ("hour", ("model",), "UTC", {}),
    ("all", ("subject_type", "subject_id"), "UTC", {}),
    ("day", ("subject_id",), "Europe/Berlin", {"subject_type": "team"}),
    ("all", ("tag",), "UTC", {}),
    ("day", (), "UTC", {"model": "gpt-4o", "tag": "prod"}),
    ("all", (), "Asia/Kolkata", {"subject_id": "u3"}),
    ("day", ("subject_id",), "UTC", {"subject_type": "user"}),
    ("day", ("subject_type", "subject_id", "model"), "UTC", {}),
    # From the model rollups: grouped and filtered by model, provider and call type only.
    ("week", ("provider", "call_type"), "UTC", {"model": "gpt-4o"}),
    ("all", ("model", "provider"), "UTC", {"call_type": "chat"}),
    ("day", (), "Europe/Berlin", {"provider": "openai"}),
]


def _check_all(engine: Engine, made: list[Recorded]) -> None:
    # Windows on odd hours: the daily rollup answers for the middle; an end of under 12 hours
    # is read from its hours, a longer one as its day less the hours outside the window. Reports
    # by subject over the whole window read a signed sum of hourly, 12-hour, daily and longer
    # buckets (app/reports/spans.py): the last window, of 30 days around the data, reads
    # buckets of 8 and 16 days that reach past it.
    for start, end in (
        (START + timedelta(hours=5), START + timedelta(days=4, hours=7)),
        (START + timedelta(hours=14), START + timedelta(days=3, hours=20)),
        (START + timedelta(hours=12), START + timedelta(days=3, hours=11)),
        (START - timedelta(days=13, hours=3), START + timedelta(days=17, hours=9)),
    ):
        _check_window(engine, made, start, end)


def _check_window(engine: Engine, made: list[Recorded], start: datetime, end: datetime) -> None:
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
        rows = _report(engine, query)
        assert rows == expected, (unit, by, tz, filters)
        for isolation in ("REPEATABLE READ", "READ COMMITTED"):
            rendered = _report_json(engine, query, isolation)
            assert rendered == expected, (unit, by, tz, filters, isolation)
            assert list(rendered) == list(rows)  # the same order


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
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        assert rollups.verify(conn) == []
        conn.rollback()


def _verify(engine: Engine) -> set[tuple[str, str]]:
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        found = rollups.verify(conn)
        conn.rollback()
    return {(d.projection, d.side) for d in found}


@pytest.mark.parametrize(
    ("table", "tampered", "before"),
    [
        ("rollup_subject_daily", "subject_id = 'u3'", "0012"),
        ("rollup_model_hourly", "model = 'gpt-4o'", "0013"),
        ("rollup_subject_span", "subject_id = 'u3'", "0015"),
    ],
)
def test_narrow_rollups_are_verified_and_backfilled_by_their_migration(
    db_url: str, engine: Engine, usage: list[Recorded], table: str, tampered: str, before: str
) -> None:
    wait_until_settled(engine)
    rollups.fold_all(engine, batch=50)
    owner = create_engine(normalise_url(db_url))
    try:
        with owner.begin() as conn:
            changed = conn.execute(
                text(f"UPDATE {table} SET requests = requests + 1 WHERE {tampered}")
            )
            assert changed.rowcount > 0
        assert _verify(engine) == {(table, "live only"), (table, "rebuilt only")}
        # The table's migration drops it and fills it again from the wide rollups.
        engine.dispose()
        command.downgrade(alembic_config(db_url), before)
        with owner.connect() as conn:
            assert conn.execute(text(f"SELECT to_regclass('{table}')")).scalar() is None
        command.upgrade(alembic_config(db_url), "head")
        with owner.connect() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        owner.dispose()
    assert _verify(engine) == set()
    _check_all(engine, usage)


def test_a_report_by_subject_over_a_whole_window_reads_spans_and_one_by_day_reads_days() -> None:
    start = START + timedelta(hours=5)
    end = START + timedelta(days=7, hours=5)
    by_subject = SpendQuery(
        org="acme", start=start, end=end, granularity="all", group_by=("subject_type", "subject_id")
    )
    sql, params = service._statement(service.validate(by_subject))
    assert "rollup_subject_span" in sql
    read = sorted(v for k, v in params.items() if k.startswith("span_"))
    assert read  # the buckets, as arrays of their starts
    # Reports with periods read UTC days and hours.
    by_day = SpendQuery(**{**by_subject.__dict__, "granularity": "day"})
    sql, _ = service._statement(service.validate(by_day))
    assert "rollup_subject_span" not in sql
    assert "rollup_subject_daily" in sql


def test_verify_names_rows_on_one_side_and_rows_whose_sums_differ(
    db_url: str, engine: Engine, usage: list[Recorded]
) -> None:
    wait_until_settled(engine)
    rollups.fold_all(engine, batch=50)
    assert _verify(engine) == set()
    owner = create_engine(normalise_url(db_url))
    try:
        with owner.begin() as conn:
            changed = conn.execute(
                text(
                    "UPDATE rollup_hourly SET cost_pico_usd = cost_pico_usd + 1 WHERE ctid ="
                    " (SELECT ctid FROM rollup_hourly WHERE subject_id = 'u1' AND tag = ''"
                    " ORDER BY bucket, model, call_type, endpoint LIMIT 1)"
                    " RETURNING bucket, model, cost_pico_usd"
                )
            ).one()
            removed = conn.execute(
                text(
                    "DELETE FROM rollup_daily WHERE ctid ="
                    " (SELECT ctid FROM rollup_daily WHERE tag = 'eval' ORDER BY bucket LIMIT 1)"
                    " RETURNING bucket, requests"
                )
            ).one()
            conn.execute(
                text(
                    "INSERT INTO rollup_subject_hourly SELECT org, bucket, 'user', 'ghost',"
                    " 1, 1, 1, 1, 1, 1, 1, 1 FROM rollup_subject_hourly LIMIT 1"
                )
            )
    finally:
        owner.dispose()
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        found = rollups.verify(conn)
        conn.rollback()
    assert sorted((d.projection, d.side) for d in found) == [
        ("rollup_daily", "rebuilt only"),
        ("rollup_hourly", "live only"),
        ("rollup_hourly", "rebuilt only"),
        ("rollup_subject_hourly", "live only"),
    ]
    rows = {(d.projection, d.side): d.row for d in found}
    live, rebuilt = rows["rollup_hourly", "live only"], rows["rollup_hourly", "rebuilt only"]
    assert (live["bucket"], live["model"], live["subject_id"]) == (
        changed.bucket,
        changed.model,
        "u1",
    )
    assert {k: v for k, v in live.items() if k != "cost_pico_usd"} == {
        k: v for k, v in rebuilt.items() if k != "cost_pico_usd"
    }
    assert live["cost_pico_usd"] == changed.cost_pico_usd == rebuilt["cost_pico_usd"] + 1
    daily = rows["rollup_daily", "rebuilt only"]
    assert (daily["bucket"], daily["tag"], daily["requests"]) == (
        removed.bucket,
        "eval",
        removed.requests,
    )
    assert rows["rollup_subject_hourly", "live only"]["subject_id"] == "ghost"


AWKWARD_PAYLOADS: list[tuple[str, dict[str, Any]]] = [
    ("usage_recorded", {"model": "m", "subjects": [{"type": "user", "id": 1}], "metadata": {}}),
    ("usage_recorded", {"model": "m", "subjects": [{"type": "user", "id": 1.0}], "metadata": {}}),
    (
        "usage_recorded",
        {
            "model": "m",
            "message_index": 1,
            "subjects": [{"type": "user", "id": "a"}, {"type": "user", "id": "a"}, {"id": "x"}],
            "metadata": {"tags": [1, 1.0, "", "t", "t"], "endpoint": 7},
            "cache_write_tokens": 5,
        },
    ),
    (
        "usage_recorded",
        {
            "model": "m" * 300,
            "subjects": {"type": "user", "id": "a"},
            "metadata": {"tags": "solo", "endpoint": "/e"},
            "cache_creation_tokens": 2,
            "cache_write_tokens": 9,
        },
    ),
    ("usage_recorded", {"subjects": [{"type": "team", "id": None}], "metadata": {"tags": 3}}),
    ("committed", {"model": "m", "messages": 0, "subjects": [{"type": "team", "id": "t"}]}),
    ("committed", {"model": "m", "messages": 2, "subjects": [{"type": "team", "id": "t"}]}),
    ("reserved", {"model": "m", "subjects": [{"type": "team", "id": "t"}]}),
]


def test_verify_rebuilds_the_same_sums_as_usage_facts_between(
    db_url: str, engine: Engine, usage: list[Recorded]
) -> None:
    owner = create_engine(normalise_url(db_url))
    try:
        with owner.begin() as conn:
            for index, (event_type, payload) in enumerate(AWKWARD_PAYLOADS):
                conn.execute(
                    text(
                        "INSERT INTO ledger_events"
                        " (org, event_type, schema_version, payload, amount_pico_usd, occurred_at)"
                        " VALUES ('acme', :type, 1, CAST(:payload AS jsonb), :cost, :at)"
                    ),
                    {
                        "type": event_type,
                        "payload": json.dumps(payload),
                        "cost": 10**12 + index,
                        "at": START + timedelta(minutes=index),
                    },
                )
    finally:
        owner.dispose()
    dimensions = ", ".join(rollups.DIMENSIONS)
    summed = ", ".join(f"sum({s}) AS {s}" for s in rollups.SUMS)
    by_function = (
        f"SELECT org, date_trunc('hour', occurred_at, 'UTC') AS bucket, {dimensions}, {summed}"
        " FROM usage_facts_between(0, :mark)"
        f" GROUP BY org, date_trunc('hour', occurred_at, 'UTC'), {dimensions}"
    )
    columns = ", ".join(["org", "bucket", *rollups.DIMENSIONS, *rollups.SUMS])
    mark = 2**62
    with engine.connect() as conn:
        rebuilt = conn.execute(
            text(f"SELECT {columns} FROM ({rollups.HOURLY_FACTS}) AS lean"), {"mark": mark}
        ).all()
        expected = conn.execute(
            text(f"SELECT {columns} FROM ({by_function}) AS facts"), {"mark": mark}
        ).all()
    assert sorted(rebuilt) == sorted(expected)
    awkward = {
        (row.subject_id, row.tag, row.model[:3], row.requests)
        for row in rebuilt
        if row.bucket == START and row.cost_pico_usd >= 10**12
    }
    assert {("1", "", "m", 1), ("1.0", "", "m", 1), ("a", "", "m", 0)} <= awkward
    assert {("", "1", "m", 0), ("", "1.0", "m", 0), ("", "solo", "mmm", 1)} <= awkward
    assert ("t", "", "m", 1) in awkward  # the commit without messages; not the one with two


def test_money_written_by_postgresql_is_format_usd(conn: Connection) -> None:
    amounts = [0, 1, 10, 10**12, 10**12 + 1, -(10**12) - 5, 1234567890123456789012345678, 10**37]
    for amount in amounts:
        written = conn.execute(text(f"SELECT {_usd('CAST(:a AS numeric(38, 0))')}"), {"a": amount})
        assert written.scalar_one() == format_usd(amount), amount


def test_counts_are_summed_exactly_or_not_at_all(conn: Connection) -> None:
    """sum_bigint (migration 0014) keeps a report's counts bigints: exact, and an overflow is
    an error, never a wrapped number."""
    top = 2**63 - 1
    summed = "SELECT sum_bigint(n) FROM unnest(CAST(:ns AS bigint[])) AS n"
    assert conn.execute(text(summed), {"ns": [top - 5, 2, 3]}).scalar_one() == top
    assert conn.execute(text(summed), {"ns": [-4, 4, 1]}).scalar_one() == 1
    with pytest.raises(DBAPIError, match="out of range"):
        conn.execute(text(summed), {"ns": [top, 1]})


def test_csv_written_by_postgresql_quotes_like_the_csv_module(engine: Engine) -> None:
    awkward = ['a,"b"', "line\nbreak", "plain", "semi;colon"]
    with engine.begin() as conn:
        for index, name in enumerate(awkward):
            holds.record_usage(
                conn,
                org="acme",
                request_id=f"csv-{index}",
                subjects=[Subject("team", name)],
                cost_pico_usd=10**12 // 3 + index,
                records=[
                    UsageRecord(
                        cost_pico_usd=10**12 // 3 + index, model="gpt-4o", provider="openai"
                    )
                ],
                now=START + timedelta(minutes=index),
            )
    query = SpendQuery(
        org="acme", start=START, end=START + timedelta(hours=2), group_by=("subject_id",)
    )
    with engine.connect() as conn:
        lines = spend_csv(conn, query)
        rows = spend(conn, query).rows
    parsed = list(csv.reader(io.StringIO(lines)))
    assert parsed == [
        [
            row.period_start.isoformat() if row.period_start else "",
            row.groups["subject_id"] or "",
            format_usd(row.cost_pico_usd),
            *(str(row.sums[s]) for s in rollups.SUMS[1:]),
        ]
        for row in rows
    ]
    assert {p[1] for p in parsed} == set(awkward)


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
