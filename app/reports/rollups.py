"""Folding usage events into the hourly and daily rollups, exactly once each.

The folder is a consumer of the event stream, not a step of the hot path: a commit touches no
rollup row, so commits of one model never queue behind each other. It is exact because

- it folds only events below the settled horizon (seq < snapshot xmin << 20, see
  docs/ledger.md, "Reading the stream"): no event can later appear below it, so none is missed;
- the sums and the watermark move in one transaction, under the watermark row's lock: an event
  is below the watermark if and only if it is in the sums, so none is counted twice, even with
  several folders (serve processes) running;
- reports add the events at or above the watermark themselves, read in the same statement (one
  snapshot) as the sums, so they are exact however far behind the folder is.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from app.budgets.replay import Difference
from app.ledger.partitions import archive_cut

log = logging.getLogger(__name__)

DIMENSIONS = (
    "model",
    "provider",
    "call_type",
    "endpoint",
    "subject_type",
    "subject_id",
    "tag",
)
SUMS = (
    "cost_pico_usd",
    "requests",
    "messages",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
TABLES = {"rollup_hourly": "hour", "rollup_daily": "day"}


def _fold_statement() -> str:
    """Both rollups from one pass over the batch's facts: the hourly sums are computed once
    (a CTE read twice is materialised once) and the daily ones are sums of them."""
    dimensions = ", ".join(DIMENSIONS)
    summed = ", ".join(f"sum({s}) AS {s}" for s in SUMS)

    def added(table: str) -> str:
        return ", ".join(f"{s} = {table}.{s} + excluded.{s}" for s in SUMS)

    return f"""
WITH hourly AS (
    SELECT org, date_trunc('hour', occurred_at, 'UTC') AS bucket, {dimensions}, {summed}
    FROM usage_facts_between(:lo, :hi)
    GROUP BY org, date_trunc('hour', occurred_at, 'UTC'), {dimensions}
), into_hourly AS (
    INSERT INTO rollup_hourly (org, bucket, {dimensions}, {", ".join(SUMS)})
    SELECT org, bucket, {dimensions}, {", ".join(SUMS)} FROM hourly
    ON CONFLICT ON CONSTRAINT pk_rollup_hourly DO UPDATE SET {added("rollup_hourly")}
)
INSERT INTO rollup_daily (org, bucket, {dimensions}, {", ".join(SUMS)})
SELECT org, date_trunc('day', bucket, 'UTC'), {dimensions}, {summed}
FROM hourly
GROUP BY org, date_trunc('day', bucket, 'UTC'), {dimensions}
ON CONFLICT ON CONSTRAINT pk_rollup_daily DO UPDATE SET {added("rollup_daily")}
"""


_FOLD = text(_fold_statement())


@dataclass(frozen=True)
class Folded:
    events: int
    watermark: int


def watermark(conn: Connection) -> int:
    """Every event with a seq below this is in the rollups; no other is."""
    return int(conn.execute(text("SELECT folded_below FROM rollup_watermark")).scalar_one())


def fold(conn: Connection, *, batch: int = 50_000) -> Folded | None:
    """Fold up to ``batch`` settled events past the watermark into the rollups.

    Returns None when another folder holds the watermark (it is doing the same work). Run it in
    its own transaction; the caller commits.
    """
    row = conn.execute(
        text("SELECT folded_below FROM rollup_watermark WHERE id = 1 FOR UPDATE SKIP LOCKED")
    ).first()
    if row is None:
        return None
    low = int(row.folded_below)
    horizon = int(
        conn.execute(
            text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20")
        ).scalar_one()
    )
    if horizon <= low:
        return Folded(events=0, watermark=low)
    # Cut the batch after its last event so that the watermark stays an exact boundary.
    last = conn.execute(
        text(
            "SELECT seq FROM ledger_events WHERE seq >= :lo AND seq < :hi"
            " ORDER BY seq OFFSET :skip LIMIT 1"
        ),
        {"lo": low, "hi": horizon, "skip": batch - 1},
    ).scalar()
    high = horizon if last is None else int(last) + 1
    count = int(
        conn.execute(
            text("SELECT count(*) FROM ledger_events WHERE seq >= :lo AND seq < :hi"),
            {"lo": low, "hi": high},
        ).scalar_one()
    )
    conn.execute(_FOLD, {"lo": low, "hi": high})
    conn.execute(
        text(
            "UPDATE rollup_watermark SET folded_below = :hi, folded_at = now(),"
            " events = events + :n WHERE id = 1"
        ),
        {"hi": high, "n": count},
    )
    return Folded(events=count, watermark=high)


def fold_all(engine: Engine, *, batch: int = 50_000) -> int:
    """Fold until the rollups reach the settled horizon; returns the events folded."""
    total = 0
    while True:
        with engine.begin() as conn:
            folded = fold(conn, batch=batch)
        if folded is None or folded.events == 0:
            return total
        total += folded.events
        if folded.events < batch:
            return total


class Folder:
    """Runs ``fold_all`` every ``interval`` seconds in a daemon thread until stopped, and keeps
    the event table's monthly partitions ahead of the clock."""

    def __init__(self, engine: Engine, interval_seconds: float) -> None:
        self.engine = engine
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollup-folder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        runs = 0
        while not self._stop.wait(self.interval_seconds):
            try:
                if runs % 3600 == 0:
                    ensure_partitions(self.engine)
                runs += 1
                fold_all(self.engine)
            except OperationalError as error:
                log.warning("rollup fold postponed: %s", error.orig)
            except Exception:
                log.exception("rollup fold failed; retrying next interval")


def ensure_partitions(engine: Engine, *, months_ahead: int = 2) -> int:
    """Create the event table's partitions from this month to ``months_ahead`` months on."""
    with engine.begin() as conn:
        return int(
            conn.execute(
                text("SELECT ledger_ensure_partitions(now(), now() + make_interval(months => :m))"),
                {"m": months_ahead},
            ).scalar_one()
        )


def verify(conn: Connection) -> list[Difference]:
    """Rebuild both rollups from every event below the watermark and list the rows that
    differ from the live ones, both ways. Run it in a REPEATABLE READ transaction, so the
    watermark, the rollups and the events are read from one snapshot."""
    mark = watermark(conn)
    cut = archive_cut(conn)
    # Archived months are not in usage_facts_between's table; their rollups stay as they
    # were. A day of margin covers events recorded just after the month they occurred in.
    since = "TRUE" if cut is None else "bucket >= :since"
    params: dict[str, Any] = {"mark": mark}
    if cut is not None:
        params["since"] = cut + timedelta(days=1)
    found: list[Difference] = []
    columns = ", ".join(["org", "bucket", *DIMENSIONS, *SUMS])
    for table, unit in TABLES.items():
        scratch = f"replay_{table}"
        conn.execute(text(f"DROP TABLE IF EXISTS pg_temp.{scratch}"))
        conn.execute(
            text(
                f"CREATE TEMP TABLE {scratch} ON COMMIT DROP AS"
                f" SELECT org, date_trunc('{unit}', occurred_at, 'UTC') AS bucket,"
                f" {', '.join(DIMENSIONS)}, {', '.join(f'sum({s}) AS {s}' for s in SUMS)}"
                " FROM usage_facts_between(0, :mark)"
                f" GROUP BY org, date_trunc('{unit}', occurred_at, 'UTC'), {', '.join(DIMENSIONS)}"
            ),
            params,
        )
        for side, first, second in (
            ("live only", table, scratch),
            ("rebuilt only", scratch, table),
        ):
            query = text(
                f"SELECT {columns} FROM {first} WHERE {since}"
                f" EXCEPT ALL SELECT {columns} FROM {second} WHERE {since} LIMIT 100"
            )
            found += [
                Difference(table, side, dict(row)) for row in conn.execute(query, params).mappings()
            ]
    return found
