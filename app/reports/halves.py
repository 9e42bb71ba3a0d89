"""A long report computed as two halves at once, on two connections that share a snapshot.

A spend report's cost is its rows: aggregating the rollup rows and rendering 6,000 JSON rows
takes one PostgreSQL backend 35-60 ms on this project's 2-core benchmark box, nearly all of it
CPU (docs/benchmarks.md, "Reports at 10M events"). Rows are ordered by period, then by group
keys, so the report splits into two whose rows, written one after the other, are the whole
report's: the periods before a boundary period and those from it on, or, for a report over the
whole window (``granularity=all``), the groups whose keys sort below a middle key and the rest.
Both halves read one snapshot (the second connection imports the first's), so together they
are exactly what one statement would have answered: the same watermark, the same events, each
group in one half only, and totals that are exact sums of the two.

A report is split only when it spans at least ``MIN_SPAN``, has more than one row to give, and
a second connection is to be had without waiting: at most ``SLOTS`` halves run at once per
process, and never with the pool nearly out of connections, where the second half would queue
behind the gateway's requests. Otherwise it runs whole, on one connection.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.pool import QueuePool

from app.money import format_usd, parse_usd
from app.reports.service import (
    SpendJson,
    SpendQuery,
    middle_keys,
    spend_csv,
    spend_json,
    validate,
)

MIN_SPAN = timedelta(days=2)
SLOTS = 2
_slots = threading.BoundedSemaphore(SLOTS)
_executor = ThreadPoolExecutor(max_workers=SLOTS, thread_name_prefix="report-half")
# What pg_export_snapshot() returns: hex words and dashes ("00000003-0000001B-1").
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f]+(-[0-9A-Fa-f]+)+")

Result = TypeVar("Result")

# Where reports over the whole window split their groups, by report (org, window, groups,
# filters), for five minutes. Any key splits a report exactly (each group falls on one side);
# the median only balances the halves, and it moves slowly, while finding it from a sample big
# enough to balance them (``MIDDLE_KEYS_SAMPLE`` rollup rows) costs ~14 ms at 10M events.
MIDDLE_KEYS_SECONDS = 300.0
# At 10M events the by-subject report's 4,839 groups split 2,932 / 1,907 at the median of the
# latest 2,000 hourly rows (the subjects active in the last three hours) and 2,606 / 2,233 at
# that of the latest 10,000; the larger half sets the report's time.
MIDDLE_KEYS_SAMPLE = 10_000
_MIDDLE_KEYS_KEPT = 256
_Remembered = tuple[float, tuple[str, ...]]  # (time.monotonic() seconds, the keys)
_middle_keys: OrderedDict[tuple[Any, ...], _Remembered] = OrderedDict()
_middle_keys_lock = threading.Lock()


def spend_json_in_halves(engine: Engine, query: SpendQuery) -> SpendJson:
    """``service.spend_json`` in a REPEATABLE READ transaction, split in two where it pays."""
    return _run(engine, validate(query), spend_json, _join_json)


def spend_csv_in_halves(engine: Engine, query: SpendQuery) -> str:
    """``service.spend_csv`` (CSV lines, no header), split in two where it pays."""
    return _run(engine, validate(query), spend_csv, _join_csv)


def _run(
    engine: Engine,
    query: SpendQuery,
    render: Callable[[Connection, SpendQuery], Result],
    join: Callable[[Result, Result], Result],
) -> Result:
    split = _worth_splitting(engine, query) and _slots.acquire(blocking=False)
    try:
        with _snapshot_reader(engine) as first:
            parts = _halves(first, query) if split else None
            if parts is None:
                return render(first, query)
            snapshot = str(first.execute(text("SELECT pg_export_snapshot()")).scalar_one())
            later = _executor.submit(_render_in, engine, snapshot, render, parts[1])
            # The exported snapshot lives as long as this transaction: it stays open until the
            # other half has imported it and finished, whatever happens to this half.
            try:
                earlier = render(first, parts[0])
            except BaseException:
                wait([later])
                raise
            return join(earlier, later.result())
    finally:
        if split:
            _slots.release()


def _worth_splitting(engine: Engine, query: SpendQuery) -> bool:
    if query.end - query.start < MIN_SPAN:
        return False
    if query.granularity == "all" and not query.group_by:
        return False  # one row
    pool = engine.pool
    # Two connections for one report only when others remain for everyone else.
    return not isinstance(pool, QueuePool) or pool.checkedout() + 2 < pool.size()


def _snapshot_reader(engine: Engine) -> Any:
    return engine.connect().execution_options(isolation_level="REPEATABLE READ")


def _halves(conn: Connection, query: SpendQuery) -> tuple[SpendQuery, SpendQuery] | None:
    """The report as two whose rows, one after the other, are its rows: split by period where
    rows are ordered by period first, else by group keys."""
    if query.granularity != "all":
        boundary = _boundary(conn, query)
        if boundary is None:
            return None
        return _with(query, end=boundary), _with(query, start=boundary)
    keys = _cached_middle_keys(conn, query)
    if keys is None:
        return None
    return _with(query, keys_below=keys), _with(query, keys_from=keys)


def _cached_middle_keys(conn: Connection, query: SpendQuery) -> tuple[str, ...] | None:
    report = (
        query.org,
        query.start,
        query.end,
        query.group_by,
        tuple(sorted(query.filters().items())),
    )
    now = time.monotonic()
    with _middle_keys_lock:
        kept = _middle_keys.get(report)
        if kept is not None and now - kept[0] < MIDDLE_KEYS_SECONDS:
            return kept[1]
    keys = middle_keys(conn, query, sample=MIDDLE_KEYS_SAMPLE)
    if keys is not None:  # a report with no spend yet may have some in a moment
        with _middle_keys_lock:
            _middle_keys[report] = (now, keys)
            _middle_keys.move_to_end(report)
            while len(_middle_keys) > _MIDDLE_KEYS_KEPT:
                _middle_keys.popitem(last=False)
    return keys


def _boundary(conn: Connection, query: SpendQuery) -> datetime | None:
    """The start of the period containing the window's midpoint, as the report's statement
    computes periods (``date_trunc`` in the query's zone), if it splits the window in two."""
    middle = query.start + (query.end - query.start) / 2
    boundary = conn.execute(
        text("SELECT date_trunc(:unit, CAST(:middle AS timestamptz), :tz)"),
        {"unit": query.granularity, "middle": middle, "tz": query.tz},
    ).scalar_one()
    if not isinstance(boundary, datetime) or not query.start < boundary < query.end:
        return None
    if boundary.minute or boundary.second or boundary.microsecond:
        return None  # not a whole hour: no rollup bucket ends there
    return boundary


def _render_in(
    engine: Engine,
    snapshot: str,
    render: Callable[[Connection, SpendQuery], Result],
    query: SpendQuery,
) -> Result:
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise ValueError(f"unexpected snapshot id {snapshot!r}")
    with _snapshot_reader(engine) as conn:
        # The first statement of the transaction: it then reads what the first half reads.
        conn.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
        return render(conn, query)


def _with(query: SpendQuery, **changes: Any) -> SpendQuery:
    return SpendQuery(**{**query.__dict__, **changes})


def _join_csv(earlier: str, later: str) -> str:
    return earlier + later


def _join_json(earlier: SpendJson, later: SpendJson) -> SpendJson:
    first, second = json.loads(earlier.totals_json), json.loads(later.totals_json)
    totals: dict[str, Any] = {}
    for name, value in first.items():
        if name == "cost_usd":
            totals[name] = format_usd(
                parse_usd(value, allow_negative=True) + parse_usd(second[name], allow_negative=True)
            )
        else:
            totals[name] = int(value) + int(second[name])
    return SpendJson(
        query=_with(later.query, start=earlier.query.start, keys_from=earlier.query.keys_from),
        row_runs=earlier.row_runs + later.row_runs,
        # As PostgreSQL's json_build_object writes it, so both paths answer the same text.
        totals_json="{"
        + ", ".join(f"{json.dumps(k)} : {json.dumps(v)}" for k, v in totals.items())
        + "}",
        source=earlier.source,
    )
