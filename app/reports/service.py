"""Spend reports from the rollups plus the events not folded yet, in one snapshot.

Every figure is an exact integer sum: the rollups hold numeric sums of pico-USD and the events
at or above the watermark are added in the same statement (docs/reports.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, text

from app.errors import InvalidInput
from app.reports.rollups import SUMS

GRANULARITIES = ("hour", "day", "week", "month", "all")
GROUPS = ("model", "provider", "call_type", "subject_type", "subject_id", "endpoint", "tag")
_SUBJECT_COLUMNS = ("subject_type", "subject_id")
_FILTERS = ("model", "provider", "call_type", "endpoint", "subject_type", "subject_id", "tag")
_MAX_INFINITY = 2**63 - 1


@dataclass(frozen=True)
class SpendQuery:
    org: str | None
    start: datetime
    end: datetime
    granularity: str = "day"
    group_by: tuple[str, ...] = ()
    tz: str = "UTC"
    subject_type: str | None = None
    subject_id: str | None = None
    model: str | None = None
    provider: str | None = None
    call_type: str | None = None
    endpoint: str | None = None
    tag: str | None = None

    def filters(self) -> dict[str, str]:
        values = {name: getattr(self, name) for name in _FILTERS}
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class SpendRow:
    period_start: datetime | None
    groups: dict[str, str | None]
    sums: dict[str, int]

    @property
    def cost_pico_usd(self) -> int:
        return self.sums["cost_pico_usd"]

    @property
    def requests(self) -> int:
        return self.sums["requests"]

    @property
    def messages(self) -> int:
        return self.sums["messages"]


@dataclass(frozen=True)
class SpendReport:
    query: SpendQuery
    rows: list[SpendRow]
    totals: dict[str, int]
    source: dict[str, Any] = field(default_factory=dict)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidInput(f"unknown time zone {name!r}", field="tz") from error


def _on_hour(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None:
        raise InvalidInput("give a time zone offset, e.g. 2026-11-01T00:00:00Z", field=name)
    if moment.minute or moment.second or moment.microsecond:
        raise InvalidInput(f"{name} must be on a whole hour: rollups are hourly", field=name)
    return moment.astimezone(UTC)


def _offsets(zone: ZoneInfo, start: datetime, end: datetime) -> set[int]:
    """The zone's UTC offsets, in seconds, at every hour boundary of [start, end)."""
    seen: set[int] = set()
    moment = start
    step = timedelta(hours=1) if end - start <= timedelta(days=62) else timedelta(days=1)
    while moment < end:
        offset = moment.astimezone(zone).utcoffset()
        seen.add(int(offset.total_seconds()) if offset is not None else 0)
        moment += step
    return seen


def _grain(query: SpendQuery) -> str:
    subject = any(c in query.group_by for c in _SUBJECT_COLUMNS) or (
        query.subject_type is not None or query.subject_id is not None
    )
    tagged = "tag" in query.group_by or query.tag is not None
    if subject and tagged:
        raise InvalidInput(
            "a report can break spend down by subject or by tag, not both at once",
            field="group_by",
        )
    if subject:
        return "subject_type <> ''"
    if tagged:
        return "tag <> ''"
    return "subject_type = '' AND tag = ''"


def validate(query: SpendQuery) -> SpendQuery:
    if query.granularity not in GRANULARITIES:
        raise InvalidInput(
            f"granularity must be one of {', '.join(GRANULARITIES)}", field="granularity"
        )
    unknown = [g for g in query.group_by if g not in GROUPS]
    if unknown:
        raise InvalidInput(
            f"cannot group by {', '.join(unknown)}; choose from {', '.join(GROUPS)}",
            field="group_by",
        )
    start = _on_hour(query.start, "from")
    end = _on_hour(query.end, "to")
    if end <= start:
        raise InvalidInput("to must be after from", field="to")
    if end - start > timedelta(days=3700):
        raise InvalidInput("a report covers at most ten years", field="from")
    zone = _zone(query.tz)
    if query.granularity in ("day", "week", "month") and any(
        offset % 3600 for offset in _offsets(zone, start, end)
    ):
        raise InvalidInput(
            f"{query.tz} is not a whole number of hours from UTC, and rollups are hourly:"
            " use granularity hour or all, or a whole-hour zone",
            field="tz",
        )
    _grain(query)
    return SpendQuery(
        **{
            **query.__dict__,
            "start": start,
            "end": end,
            "group_by": tuple(dict.fromkeys(query.group_by)),
        }
    )


def _daily_span(query: SpendQuery) -> tuple[datetime, datetime] | None:
    """The whole UTC days inside the window that the daily rollup may answer for, if any.

    A UTC day is one bucket of the report only when the report's periods are made of UTC days:
    no periods at all, or days, weeks and months in a zone that stays at offset zero.
    """
    day_lo = query.start.replace(hour=0)
    if day_lo < query.start:
        day_lo += timedelta(days=1)
    day_hi = query.end.replace(hour=0)
    if day_hi <= day_lo:
        return None
    if query.granularity == "hour":
        return None
    if query.granularity != "all" and _offsets(_zone(query.tz), day_lo, day_hi) != {0}:
        return None
    return day_lo, day_hi


def _source_sql(query: SpendQuery, where: str, columns: str) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"start": query.start, "end": query.end}
    pieces = []
    span = _daily_span(query)
    if span is None:
        pieces.append(
            f"SELECT bucket AS at, {columns} FROM rollup_hourly"
            f" WHERE {where} AND bucket >= :start AND bucket < :end"
        )
    else:
        params["day_lo"], params["day_hi"] = span
        pieces.append(
            f"SELECT bucket AS at, {columns} FROM rollup_daily"
            f" WHERE {where} AND bucket >= :day_lo AND bucket < :day_hi"
        )
        pieces.append(
            f"SELECT bucket AS at, {columns} FROM rollup_hourly WHERE {where}"
            " AND ((bucket >= :start AND bucket < :day_lo)"
            " OR (bucket >= :day_hi AND bucket < :end))"
        )
    # A lateral argument, not a subquery: PostgreSQL inlines the function only then, and the
    # tail becomes an index range on seq in each partition instead of a scan.
    pieces.append(
        f"SELECT occurred_at AS at, {columns} FROM rollup_watermark AS mark"
        f" CROSS JOIN LATERAL usage_facts_between(mark.folded_below, {_MAX_INFINITY}) AS tail"
        f" WHERE {where} AND occurred_at >= :start AND occurred_at < :end"
    )
    return " UNION ALL ".join(pieces), params


def _where(query: SpendQuery, params: dict[str, Any]) -> str:
    conditions = [_grain(query)]
    if query.org is not None:
        conditions.append("org = :org")
        params["org"] = query.org
    for name, value in query.filters().items():
        conditions.append(f"{name} = :f_{name}")
        params[f"f_{name}"] = value
    return " AND ".join(conditions)


def _statement(
    query: SpendQuery, *, order_by_cost: bool = False, limit: int | None = None
) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {}
    where = _where(query, params)
    groups = list(query.group_by)
    columns = ", ".join([*groups, *SUMS]) if groups else ", ".join(SUMS)
    source, source_params = _source_sql(query, where, columns)
    params.update(source_params)
    selected = []
    grouping = []
    if query.granularity != "all":
        params["unit"] = query.granularity
        params["tz"] = query.tz
        selected.append("date_trunc(:unit, at, :tz) AS period_start")
        grouping.append("1")
    else:
        selected.append("NULL::timestamptz AS period_start")
    selected += groups
    grouping += groups
    selected += [f"sum({s})::numeric AS {s}" for s in SUMS]
    sql = f"SELECT {', '.join(selected)} FROM ({source}) AS src"
    if grouping:
        sql += f" GROUP BY {', '.join(grouping)}"
    if order_by_cost:
        sql += " ORDER BY cost_pico_usd DESC, " + ", ".join([*groups, "1"])
    else:
        sql += " ORDER BY " + ", ".join(["1", *groups])
    if limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = limit
    return sql, params


def _rows(conn: Connection, query: SpendQuery, sql: str, params: dict[str, Any]) -> list[SpendRow]:
    rows = []
    for row in conn.execute(text(sql), params).mappings():
        if row["cost_pico_usd"] is None:  # a grand total over no rows
            continue
        rows.append(
            SpendRow(
                period_start=row["period_start"],
                groups={g: (row[g] or None) for g in query.group_by},
                sums={s: int(row[s]) for s in SUMS},
            )
        )
    return rows


def _totals(rows: Sequence[SpendRow]) -> dict[str, int]:
    return {s: sum(row.sums[s] for row in rows) for s in SUMS}


def _source(conn: Connection) -> dict[str, Any]:
    mark = conn.execute(text("SELECT folded_below, folded_at FROM rollup_watermark")).one()
    return {"rollups_folded_below_seq": int(mark.folded_below), "rollups_folded_at": mark.folded_at}


def spend(conn: Connection, query: SpendQuery) -> SpendReport:
    """Spend per period and group; totals are the sums of the rows."""
    query = validate(query)
    sql, params = _statement(query)
    rows = _rows(conn, query, sql, params)
    return SpendReport(query=query, rows=rows, totals=_totals(rows), source=_source(conn))


def top(conn: Connection, query: SpendQuery, *, limit: int) -> SpendReport:
    """The biggest spenders over the whole window, by the query's groups."""
    query = validate(SpendQuery(**{**query.__dict__, "granularity": "all"}))
    sql, params = _statement(query, order_by_cost=True, limit=limit)
    rows = _rows(conn, query, sql, params)
    return SpendReport(query=query, rows=rows, totals=_totals(rows), source=_source(conn))


def subject_spend(
    conn: Connection,
    *,
    org: str,
    subject_type: str,
    subject_id: str,
    start: datetime,
    end: datetime,
) -> int:
    """A subject's spend in pico-USD over the hours from ``start`` (floored to its hour) to
    ``end`` (rounded up to the next hour), so ``end=now`` counts everything up to now."""
    low = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    high = end.astimezone(UTC)
    if high.minute or high.second or high.microsecond:
        high = high.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if high <= low:
        return 0
    where = "org = :org AND subject_type = :st AND subject_id = :sid AND tag = ''"
    sql = f"""
    SELECT coalesce(sum(cost_pico_usd), 0) FROM (
        SELECT cost_pico_usd FROM rollup_hourly
        WHERE {where} AND bucket >= :low AND bucket < :high
        UNION ALL
        SELECT cost_pico_usd FROM rollup_watermark AS mark
        CROSS JOIN LATERAL usage_facts_between(mark.folded_below, {_MAX_INFINITY}) AS tail
        WHERE {where} AND occurred_at >= :low AND occurred_at < :high
    ) AS src
    """
    params = {"org": org, "st": subject_type, "sid": subject_id, "low": low, "high": high}
    return int(conn.execute(text(sql), params).scalar_one())
