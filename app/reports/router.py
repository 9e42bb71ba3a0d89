"""Report routes: spend by period and group (JSON or CSV), and the biggest spenders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from app.api.deps import Db, Prices, Reader, read_org
from app.errors import InvalidInput
from app.reports import halves, service
from app.reports import insights as recommend
from app.reports.rollups import SUMS
from app.reports.service import SpendJson, SpendQuery

router = APIRouter(prefix="/v1/reports", tags=["reports"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown or revoked API key (problem+json)"},
    403: {"description": "Wrong scope, or another org than the key's (problem+json)"},
    422: {"description": "Invalid input; `field` names it (problem+json)"},
}
_COUNTS = [s for s in SUMS if s != "cost_pico_usd"]
_CSV_CHUNK = 1 << 16
_DEFAULT_SPAN = timedelta(days=30)

Name = Annotated[str | None, Query(max_length=200)]
From = Annotated[
    datetime | None,
    Query(
        alias="from", description="Start (inclusive), on a whole UTC hour; default: `to` - 30 days"
    ),
]
To = Annotated[
    datetime | None,
    Query(
        alias="to",
        description="End (exclusive), on a whole UTC hour; default: the start of the next hour",
    ),
]


def _window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    if end is None:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if start is None:
        # On the wall clock of its offset, as the subtraction below is done.
        if end.replace(tzinfo=None) - datetime.min < _DEFAULT_SPAN:
            raise InvalidInput(
                "to is too early for the default window of 30 days before it; give from",
                field="to",
            )
        start = end - _DEFAULT_SPAN
    return start, end


def _groups(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _document(report: SpendJson, extra: dict[str, Any] | None = None) -> Response:
    """The report's JSON: its query in Python, its rows and totals as PostgreSQL wrote them."""
    query = report.query
    source = dict(report.source)
    folded_at = source.get("rollups_folded_at")
    if isinstance(folded_at, datetime):
        source["rollups_folded_at"] = folded_at.isoformat()
    head = json.dumps(
        {
            "org": query.org,
            "from": query.start.isoformat(),
            "to": query.end.isoformat(),
            "granularity": query.granularity,
            "tz": query.tz,
            "group_by": list(query.group_by),
            "filters": query.filters(),
            **(extra or {}),
        },
        separators=(",", ":"),
    )
    body = "".join(
        (
            head[:-1],
            ',"rows":',
            *report.rows_pieces(),
            ',"totals":',
            report.totals_json,
            ',"source":',
            json.dumps(source, separators=(",", ":")),
            "}",
        )
    )
    return Response(body, media_type="application/json")


def _csv(query: SpendQuery, lines: str) -> Iterator[str]:
    yield ",".join(["period_start", *query.group_by, "cost_usd", *_COUNTS]) + "\n"
    for at in range(0, len(lines), _CSV_CHUNK):
        yield lines[at : at + _CSV_CHUNK]


def _json(data: dict[str, Any]) -> Response:
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
    # One snapshot for the watermark and the report (the service then passes the watermark
    # to its statement as a constant), shared by both halves when a long report is split.
    if format == "csv":
        lines = halves.spend_csv_in_halves(engine, query)
        return StreamingResponse(
            _csv(service.validate(query), lines),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="spend.csv"'},
        )
    return _document(halves.spend_json_in_halves(engine, query))


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
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        report = service.spend_json(conn, query, top_limit=limit)
    return _document(report, {"by": by, "limit": limit})


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
