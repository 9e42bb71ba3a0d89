"""Report routes: spend by period and group (JSON or CSV), and the biggest spenders."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from app.api.deps import Db, Prices, Reader, read_org
from app.money import format_usd
from app.reports import insights as recommend
from app.reports import service
from app.reports.rollups import SUMS
from app.reports.service import SpendQuery, SpendReport, SpendRow

router = APIRouter(prefix="/v1/reports", tags=["reports"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown or revoked API key (problem+json)"},
    403: {"description": "Wrong scope, or another org than the key's (problem+json)"},
    422: {"description": "Invalid input; `field` names it (problem+json)"},
}
_COUNTS = [s for s in SUMS if s != "cost_pico_usd"]

Name = Annotated[str | None, Query(max_length=200)]
From = Annotated[
    datetime | None,
    Query(alias="from", description="Start (inclusive), on a whole hour; default: `to` - 30 days"),
]
To = Annotated[
    datetime | None,
    Query(
        alias="to",
        description="End (exclusive), on a whole hour; default: the start of the next hour",
    ),
]


def _window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    if end is None:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if start is None:
        start = end - timedelta(days=30)
    return start, end


def _groups(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _row_json(row: SpendRow, group_by: tuple[str, ...]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "period_start": row.period_start.isoformat() if row.period_start else None
    }
    data.update({g: row.groups[g] for g in group_by})
    data["cost_usd"] = format_usd(row.cost_pico_usd)
    data.update({name: row.sums[name] for name in _COUNTS})
    return data


def _totals_json(totals: dict[str, int]) -> dict[str, Any]:
    return {"cost_usd": format_usd(totals["cost_pico_usd"]), **{n: totals[n] for n in _COUNTS}}


def _report_json(report: SpendReport, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    query = report.query
    source = dict(report.source)
    folded_at = source.get("rollups_folded_at")
    if isinstance(folded_at, datetime):
        source["rollups_folded_at"] = folded_at.isoformat()
    return {
        "org": query.org,
        "from": query.start.isoformat(),
        "to": query.end.isoformat(),
        "granularity": query.granularity,
        "tz": query.tz,
        "group_by": list(query.group_by),
        "filters": query.filters(),
        **(extra or {}),
        "rows": [_row_json(row, query.group_by) for row in report.rows],
        "totals": _totals_json(report.totals),
        "source": source,
    }


def _csv(report: SpendReport) -> Iterator[str]:
    group_by = report.query.group_by
    header = ["period_start", *group_by, "cost_usd", *_COUNTS]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for index, row in enumerate(report.rows):
        values = _row_json(row, group_by)
        writer.writerow(["" if values[c] is None else values[c] for c in header])
        if index % 500 == 499:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _json(data: dict[str, Any]) -> Response:
    # Rows are plain strings and ints; skipping response-model validation keeps a 10,000-row
    # report in milliseconds.
    return Response(json.dumps(data, separators=(",", ":")), media_type="application/json")


@router.get(
    "/spend",
    responses={
        **ERRORS,
        200: {
            "description": "Spend per period and group, with totals (JSON), or CSV with a header",
            "content": {"application/json": {}, "text/csv": {}},
        },
    },
)
def spend(
    caller: Reader,
    engine: Db,
    start: From = None,
    end: To = None,
    granularity: Annotated[
        Literal["hour", "day", "week", "month", "all"], Query(description="Period of each row")
    ] = "day",
    group_by: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Comma-separated: model, provider, call_type, subject_type, subject_id,"
            " endpoint, tag",
        ),
    ] = None,
    tz: Annotated[str, Query(max_length=64, description="IANA zone of the periods")] = "UTC",
    org: Name = None,
    subject_type: Name = None,
    subject_id: Name = None,
    model: Name = None,
    provider: Name = None,
    call_type: Name = None,
    endpoint: Name = None,
    tag: Name = None,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Response:
    """Exact spend per period and group: the sums equal the events' to the last digit."""
    window = _window(start, end)
    query = SpendQuery(
        org=read_org(caller, org),
        start=window[0],
        end=window[1],
        granularity=granularity,
        group_by=_groups(group_by),
        tz=tz,
        subject_type=subject_type,
        subject_id=subject_id,
        model=model,
        provider=provider,
        call_type=call_type,
        endpoint=endpoint,
        tag=tag,
    )
    with engine.connect() as conn:
        report = service.spend(conn, query)
    if format == "csv":
        return StreamingResponse(
            _csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="spend.csv"'},
        )
    return _json(_report_json(report))


@router.get("/top", responses={**ERRORS, 200: {"content": {"application/json": {}}}})
def top(
    caller: Reader,
    engine: Db,
    by: Annotated[Literal["subject_id", "model"], Query()] = "subject_id",
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    start: From = None,
    end: To = None,
    org: Name = None,
    subject_type: Name = None,
    model: Name = None,
    provider: Name = None,
) -> Response:
    """The biggest spenders in a window: subjects (with their type) or models."""
    window = _window(start, end)
    group_by = ("subject_type", "subject_id") if by == "subject_id" else ("model", "provider")
    query = SpendQuery(
        org=read_org(caller, org),
        start=window[0],
        end=window[1],
        granularity="all",
        group_by=group_by,
        subject_type=subject_type,
        model=model,
        provider=provider,
    )
    with engine.connect() as conn:
        report = service.top(conn, query, limit=limit)
    return _json(_report_json(report, {"by": by, "limit": limit}))


@router.get("/insights", responses={**ERRORS, 200: {"content": {"application/json": {}}}})
def insights(
    caller: Reader,
    engine: Db,
    prices: Prices,
    start: From = None,
    end: To = None,
    org: Name = None,
) -> Response:
    """Cache hit rate per model, spend share of the dearest models, and what the same tokens
    would have cost on a cheaper model of the same family, with the arithmetic."""
    window = _window(start, end)
    with engine.connect() as conn:
        found = recommend.insights(
            conn, prices, org=read_org(caller, org), start=window[0], end=window[1]
        )
    return _json(found)
