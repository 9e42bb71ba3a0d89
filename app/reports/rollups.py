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

import itertools
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text

from app.background import Periodic
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
# Each sum as a select item: money as numeric, counts with sum_bigint (migration 0014). A bigint
# sum() keeps a 128-bit state per group and returns numeric: at 10M events the verify's daily
# rebuild held ~2 KB per group and spilled at 2 GB (13.3 s), with sum_bigint 270 MB (4.8 s).
# The columns are bigints, so an overflow is an error either way.
SUMMED = ", ".join(
    f"sum({s}) AS {s}" if s == "cost_pico_usd" else f"sum_bigint({s}) AS {s}" for s in SUMS
)
# Spend per bucket and subject alone (migration 0013): what reports grouped and filtered only
# by subject read, instead of the subject grain's rows per model, provider, call type, endpoint.
SUBJECT_TABLES = {"rollup_subject_hourly": "rollup_hourly", "rollup_subject_daily": "rollup_daily"}
SUBJECT_KEYS = ("subject_type", "subject_id")
# Spend per subject alone over longer spans (migration 0016): buckets of SPAN_HOURS hours, each
# starting at a multiple of its span from SPAN_ORIGIN. A report by subject over a whole window
# reads it as a short sum of these, daily and hourly rows (app/reports/spans.py).
SUBJECT_SPAN = "rollup_subject_span"
SPAN_HOURS = (12, 48, 96, 192, 384, 768)
SPAN_ORIGIN = "timestamptz '1970-01-01 00:00:00+00'"


def span_bucket(hours: int | str) -> str:
    """SQL for the start of the ``hours``-hour bucket (a number or a SQL expression) holding an
    hourly or daily ``bucket``."""
    return f"date_bin(make_interval(hours => {hours}), bucket, {SPAN_ORIGIN})"


# All spend per bucket, model, provider and call type (migration 0014): what reports grouped and
# filtered only by those read, instead of the all-spend grain's rows per endpoint too.
MODEL_TABLES = {"rollup_model_hourly": "rollup_hourly", "rollup_model_daily": "rollup_daily"}
MODEL_KEYS = ("model", "provider", "call_type")
# Each narrow table's keys and the rows of its wide table it sums.
NARROW = {
    **{table: (SUBJECT_KEYS, "subject_type <> ''") for table in SUBJECT_TABLES},
    **{table: (MODEL_KEYS, "subject_type = '' AND tag = ''") for table in MODEL_TABLES},
}


def _fold_statement() -> str:
    """Every rollup from one pass over the batch's facts: the hourly sums are computed once
    (a CTE read several times is materialised once) and the others are sums of them."""
    dimensions = ", ".join(DIMENSIONS)
    subject = ", ".join(SUBJECT_KEYS)
    model = ", ".join(MODEL_KEYS)
    sums = ", ".join(SUMS)

    def added(table: str) -> str:
        return ", ".join(f"{s} = {table}.{s} + excluded.{s}" for s in SUMS)

    return f"""
WITH hourly AS (
    SELECT org, date_trunc('hour', occurred_at, 'UTC') AS bucket, {dimensions}, {SUMMED}
    FROM usage_facts_between(:lo, :hi)
    GROUP BY org, date_trunc('hour', occurred_at, 'UTC'), {dimensions}
), subject_hourly AS (
    SELECT org, bucket, {subject}, {SUMMED} FROM hourly WHERE subject_type <> ''
    GROUP BY org, bucket, {subject}
), model_hourly AS (
    SELECT org, bucket, {model}, {SUMMED} FROM hourly WHERE subject_type = '' AND tag = ''
    GROUP BY org, bucket, {model}
), into_hourly AS (
    INSERT INTO rollup_hourly (org, bucket, {dimensions}, {sums})
    SELECT org, bucket, {dimensions}, {sums} FROM hourly
    ON CONFLICT ON CONSTRAINT pk_rollup_hourly DO UPDATE SET {added("rollup_hourly")}
), into_daily AS (
    INSERT INTO rollup_daily (org, bucket, {dimensions}, {sums})
    SELECT org, date_trunc('day', bucket, 'UTC'), {dimensions}, {SUMMED}
    FROM hourly
    GROUP BY org, date_trunc('day', bucket, 'UTC'), {dimensions}
    ON CONFLICT ON CONSTRAINT pk_rollup_daily DO UPDATE SET {added("rollup_daily")}
), into_subject_hourly AS (
    INSERT INTO rollup_subject_hourly (org, bucket, {subject}, {sums})
    SELECT org, bucket, {subject}, {sums} FROM subject_hourly
    ON CONFLICT ON CONSTRAINT pk_rollup_subject_hourly
    DO UPDATE SET {added("rollup_subject_hourly")}
), into_subject_daily AS (
    INSERT INTO rollup_subject_daily (org, bucket, {subject}, {sums})
    SELECT org, date_trunc('day', bucket, 'UTC'), {subject}, {SUMMED}
    FROM subject_hourly
    GROUP BY org, date_trunc('day', bucket, 'UTC'), {subject}
    ON CONFLICT ON CONSTRAINT pk_rollup_subject_daily
    DO UPDATE SET {added("rollup_subject_daily")}
), into_subject_span AS (
    INSERT INTO {SUBJECT_SPAN} (org, span_hours, bucket, {subject}, {sums})
    SELECT org, span.hours, {span_bucket("span.hours")}, {subject}, {SUMMED}
    FROM subject_hourly CROSS JOIN unnest(ARRAY{list(SPAN_HOURS)}) AS span(hours)
    GROUP BY org, span.hours, {span_bucket("span.hours")}, {subject}
    ON CONFLICT ON CONSTRAINT pk_{SUBJECT_SPAN} DO UPDATE SET {added(SUBJECT_SPAN)}
), into_model_hourly AS (
    INSERT INTO rollup_model_hourly (org, bucket, {model}, {sums})
    SELECT org, bucket, {model}, {sums} FROM model_hourly
    ON CONFLICT ON CONSTRAINT pk_rollup_model_hourly DO UPDATE SET {added("rollup_model_hourly")}
)
INSERT INTO rollup_model_daily (org, bucket, {model}, {sums})
SELECT org, date_trunc('day', bucket, 'UTC'), {model}, {SUMMED}
FROM model_hourly
GROUP BY org, date_trunc('day', bucket, 'UTC'), {model}
ON CONFLICT ON CONSTRAINT pk_rollup_model_daily DO UPDATE SET {added("rollup_model_daily")}
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


class Folder(Periodic):
    """Runs ``fold_all`` every ``interval_seconds`` in a daemon thread until stopped, and keeps
    the event table's monthly partitions ahead of the clock."""

    name = "rollup-folder"
    what = "rollup fold"

    def __init__(self, engine: Engine, interval_seconds: float) -> None:
        self.engine = engine
        self._runs = 0
        super().__init__(interval_seconds)

    def tick(self) -> None:
        if self._runs % 3600 == 0:
            ensure_partitions(self.engine)
        self._runs += 1
        fold_all(self.engine)


def ensure_partitions(engine: Engine, *, months_ahead: int = 2) -> int:
    """Create the event table's partitions from this month to ``months_ahead`` months on."""
    with engine.begin() as conn:
        return int(
            conn.execute(
                text("SELECT ledger_ensure_partitions(now(), now() + make_interval(months => :m))"),
                {"m": months_ahead},
            ).scalar_one()
        )


# Per statement of the rollup check: the rebuild's hash aggregate over every fact and the hash
# full joins of the comparison (3.2M hourly rows at 10M events) fit in memory instead of spilling.
VERIFY_WORK_MEM = "128MB"
_PRIMARY_KEY = ("org", "bucket", "subject_type", "subject_id", "tag", *DIMENSIONS[:4])


def _hourly_facts() -> str:
    """The sums of ``usage_facts_between(0, :mark)`` per UTC hour and dimensions, computed as
    the function does but cheaper: each event's values are read from its payload once (the
    function's outer select reads them again for every fact row of the event), and the events
    are summed per hour, dimensions and raw ``subjects``/``tags`` before the expansion into
    subject and tag rows, which depends on nothing else. The raw values are grouped by their
    text, not as jsonb, whose equality would merge ``1`` and ``1.0`` (different ids as text).
    ``tests/reports/test_rollups.py`` pins it to the function on awkward payloads."""
    dimensions = ", ".join(DIMENSIONS[:4])
    return f"""
WITH usage AS (
    SELECT e.org, date_trunc('hour', e.occurred_at, 'UTC') AS bucket,
           left(coalesce(e.payload->>'model', ''), 200) AS model,
           left(coalesce(e.payload->>'provider', ''), 200) AS provider,
           left(coalesce(e.payload->>'call_type', ''), 200) AS call_type,
           left(coalesce(CASE WHEN jsonb_typeof(m.meta->'endpoint') = 'string'
                              THEN m.meta->>'endpoint' END, ''), 200) AS endpoint,
           (e.payload->'subjects')::text AS subjects, (m.meta->'tags')::text AS tags,
           coalesce(e.amount_pico_usd, 0) AS cost_pico_usd,
           CASE WHEN e.event_type = 'committed'
                  OR coalesce((e.payload->>'message_index')::bigint, 0) = 0
                THEN 1 ELSE 0 END::bigint AS requests,
           CASE WHEN e.event_type = 'usage_recorded' THEN 1 ELSE 0 END::bigint AS messages,
           coalesce((e.payload->>'prompt_tokens')::bigint, 0) AS prompt_tokens,
           coalesce((e.payload->>'completion_tokens')::bigint, 0) AS completion_tokens,
           coalesce((e.payload->>'cache_read_tokens')::bigint, 0) AS cache_read_tokens,
           coalesce((e.payload->>'cache_creation_tokens')::bigint,
                    (e.payload->>'cache_write_tokens')::bigint, 0) AS cache_write_tokens,
           coalesce((e.payload->>'reasoning_tokens')::bigint, 0) AS reasoning_tokens
    FROM ledger_events e
    CROSS JOIN LATERAL (
        SELECT CASE WHEN e.event_type = 'usage_recorded' THEN e.payload->'metadata' END AS meta
    ) m
    WHERE e.seq >= 0 AND e.seq < :mark
      AND (e.event_type = 'usage_recorded'
           OR (e.event_type = 'committed'
               AND coalesce((e.payload->>'messages')::bigint, 0) = 0))
    -- Not pulled up into the aggregate below, which would sort the whole payloads (1.2 KB
    -- each, 3.6 GB spilled at 10M events) and read the sums from them after the sort.
    OFFSET 0
), grouped AS (
    SELECT org, bucket, {dimensions}, subjects::jsonb AS subjects, tags::jsonb AS tags, {SUMMED}
    FROM usage GROUP BY org, bucket, {dimensions}, usage.subjects, usage.tags
)
SELECT u.org, u.bucket, {dimensions}, g.subject_type, g.subject_id, g.tag, {SUMMED}
FROM grouped u
CROSS JOIN LATERAL (
    SELECT '' AS subject_type, '' AS subject_id, '' AS tag
    UNION ALL
    SELECT DISTINCT left(s->>'type', 200), left(s->>'id', 200), ''
    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(u.subjects) = 'array'
                                   THEN u.subjects ELSE '[]' END) s
    WHERE coalesce(s->>'type', '') <> '' AND s->>'id' IS NOT NULL
    UNION ALL
    SELECT DISTINCT '', '', left(t, 200)
    FROM jsonb_array_elements_text(
        CASE jsonb_typeof(u.tags)
            WHEN 'array' THEN u.tags
            WHEN 'string' THEN jsonb_build_array(u.tags)
            ELSE '[]' END) t
    WHERE t <> ''
) g
GROUP BY u.org, u.bucket, {dimensions}, g.subject_type, g.subject_id, g.tag
"""


HOURLY_FACTS = _hourly_facts()


def verify(conn: Connection) -> list[Difference]:
    """Rebuild the rollups from every event below the watermark and list the rows that differ
    from the live ones, both ways. Run it in a REPEATABLE READ transaction, so the watermark,
    the rollups and the events are read from one snapshot."""
    mark = watermark(conn)
    cut = archive_cut(conn)
    # Archived months are not in ledger_events (which usage_facts_between and HOURLY_FACTS
    # read); their rollups stay as they were. A day of margin covers events recorded just after
    # the month they occurred in.
    since = "TRUE" if cut is None else "bucket >= :since"
    params: dict[str, Any] = {"mark": mark}
    if cut is not None:
        params["since"] = cut + timedelta(days=1)
    conn.execute(text(f"SET LOCAL work_mem = '{VERIFY_WORK_MEM}'"))
    dimensions = ", ".join(DIMENSIONS)
    # The facts are expanded once, into the hourly rebuild; the daily one is its sums per UTC
    # day, as the fold makes it (sums of integers: exact in any grouping).
    _rebuild(conn, "replay_rollup_hourly", HOURLY_FACTS, params)
    _rebuild(
        conn,
        "replay_rollup_daily",
        f"SELECT org, date_trunc('day', bucket, 'UTC') AS bucket, {dimensions}, {SUMMED}"
        f" FROM replay_rollup_hourly GROUP BY org, date_trunc('day', bucket, 'UTC'), {dimensions}",
        params,
    )
    found: list[Difference] = []
    for table in TABLES:
        found += _compare(conn, table, f"replay_{table}", _PRIMARY_KEY, since, params)
    found += _verify_narrow_tables(conn, since, params)
    return found


def _rebuild(conn: Connection, scratch: str, query: str, params: dict[str, Any]) -> None:
    conn.execute(text(f"DROP TABLE IF EXISTS pg_temp.{scratch}"))
    conn.execute(text(f"CREATE TEMP TABLE {scratch} ON COMMIT DROP AS {query}"), params)
    # The comparison's join sizes its hash tables from the statistics.
    conn.execute(text(f"ANALYZE {scratch}"))


def _compare(
    conn: Connection,
    table: str,
    rebuilt: str,
    key: tuple[str, ...],
    since: str,
    params: dict[str, Any],
) -> list[Difference]:
    """The rows of ``table`` and ``rebuilt`` (a table or a parenthesised query) that are on
    one side only, by primary key, or whose sums differ: one full join, at most 100 rows.

    A row whose sums differ is listed on both sides, with each side's sums. The key columns
    hold '' for "none", never NULL (migration 0006), so equality on them matches every row.
    """
    columns = [*key, *SUMS]
    selected = ", ".join(
        [f"live.{c} AS live_{c}" for c in columns]
        + [f"rebuilt.{c} AS rebuilt_{c}" for c in columns]
    )
    joined = " AND ".join(f"live.{c} = rebuilt.{c}" for c in key)
    live_sums = ", ".join(f"live.{s}" for s in SUMS)
    rebuilt_sums = ", ".join(f"rebuilt.{s}" for s in SUMS)
    query = text(
        f"SELECT live.org IS NOT NULL AS in_live, rebuilt.org IS NOT NULL AS in_rebuilt,"
        f" {selected}"
        f" FROM (SELECT * FROM {table} WHERE {since}) AS live"
        f" FULL JOIN (SELECT * FROM {rebuilt} AS source WHERE {since}) AS rebuilt ON {joined}"
        " WHERE live.org IS NULL OR rebuilt.org IS NULL"
        f" OR ({live_sums}) IS DISTINCT FROM ({rebuilt_sums})"
        " LIMIT 100"
    )
    found: list[Difference] = []
    for row in conn.execute(query, params).mappings():
        if row["in_live"]:
            found.append(Difference(table, "live only", {c: row[f"live_{c}"] for c in columns}))
        if row["in_rebuilt"]:
            found.append(
                Difference(table, "rebuilt only", {c: row[f"rebuilt_{c}"] for c in columns})
            )
    return found


def _verify_narrow_tables(conn: Connection, since: str, params: dict[str, Any]) -> list[Difference]:
    """The subject and model rollups against their rows of the wide rollups rebuilt from the
    events (not the live ones: a tampered live row shows in its own table only)."""
    found: list[Difference] = []
    for table, wide in {**SUBJECT_TABLES, **MODEL_TABLES}.items():
        narrow_keys, rows = NARROW[table]
        key = ("org", "bucket", *narrow_keys)
        keys = ", ".join(key)
        rebuilt = f"(SELECT {keys}, {SUMMED} FROM replay_{wide} WHERE {rows} GROUP BY {keys})"
        found += _compare(conn, table, rebuilt, key, since, params)
    _rebuild_spans(conn)
    key = ("org", "span_hours", "bucket", *SUBJECT_KEYS)
    found += _compare(conn, SUBJECT_SPAN, f"replay_{SUBJECT_SPAN}", key, since, params)
    return found


def _rebuild_spans(conn: Connection) -> None:
    """The subject spans from the rebuilt wide rollups: 12 hours from the hourly rows, 2 days
    from the daily ones, and each longer span from the one before it (twice as short), as
    migration 0016 fills them: sums of integers, exact in any grouping."""
    subject = ", ".join(SUBJECT_KEYS)
    scratch = f"replay_{SUBJECT_SPAN}"
    finer = {
        SPAN_HOURS[0]: "replay_rollup_hourly WHERE subject_type <> ''",
        SPAN_HOURS[1]: "replay_rollup_daily WHERE subject_type <> ''",
        **{
            longer: f"{scratch} WHERE span_hours = {shorter}"
            for shorter, longer in itertools.pairwise(SPAN_HOURS[1:])
        },
    }
    for hours, source in finer.items():
        bucket = span_bucket(hours)
        query = (
            f"SELECT org, {hours} AS span_hours, {bucket} AS bucket, {subject}, {SUMMED}"
            f" FROM {source} GROUP BY org, {bucket}, {subject}"
        )
        if hours == SPAN_HOURS[0]:
            conn.execute(text(f"DROP TABLE IF EXISTS pg_temp.{scratch}"))
            conn.execute(text(f"CREATE TEMP TABLE {scratch} ON COMMIT DROP AS {query}"))
        else:
            conn.execute(text(f"INSERT INTO {scratch} {query}"))
    conn.execute(text(f"ANALYZE {scratch}"))
