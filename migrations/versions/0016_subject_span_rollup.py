"""Subject spend per 12 hours and per 2, 4, 8, 16 and 32 days, for reports by subject over a
whole window; it replaces the subject sums per 24 hours from noon (migration 0015).

A report by subject over a whole window reads one row per subject and bucket, and every day
holds a row for nearly every subject: at 10M events, "the last 7 days" read ~31,500 daily rows
plus up to 12 hours of hourly rows at its ends (~46,800 rows at worst), "the last 30 days"
~150,000. Here each span's buckets start at a multiple of the span from 1970-01-01 00:00 UTC,
so a window is a short sum of them, the daily and the hourly rows (some taken off where a
bucket reaches past the window): at most ~32,000 rows for 7 days and ~42,000 for 30 at 10M
events (docs/reports.md). The 12-hour buckets do what the noon days did, at either end.

The folder adds to this table in the same statement as to the others (app/reports/rollups.py);
this migration fills it from the hourly and daily subject rows while it holds the watermark's
row lock, so no fold can run in between.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-23
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_SUMS = (
    "cost_pico_usd",
    "requests",
    "messages",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
_COLUMNS = """
    org               text NOT NULL,
    span_hours        integer NOT NULL,
    bucket            timestamptz NOT NULL,
    subject_type      text NOT NULL,
    subject_id        text NOT NULL,
    cost_pico_usd     numeric(38, 0) NOT NULL,
    requests          bigint NOT NULL,
    messages          bigint NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cache_read_tokens bigint NOT NULL,
    cache_write_tokens bigint NOT NULL,
    reasoning_tokens  bigint NOT NULL"""
_TABLE = "rollup_subject_span"
# Each span and the table whose rows it sums: 12 hours from the hourly rows, 2 days from the
# daily rows, each longer span from the one before (a span is twice the one it sums).
_SPANS = {
    12: "(SELECT 1 AS span_hours, * FROM rollup_subject_hourly) AS finer",
    48: "(SELECT 24 AS span_hours, * FROM rollup_subject_daily) AS finer",
    96: f"(SELECT * FROM {_TABLE} WHERE span_hours = 48) AS finer",
    192: f"(SELECT * FROM {_TABLE} WHERE span_hours = 96) AS finer",
    384: f"(SELECT * FROM {_TABLE} WHERE span_hours = 192) AS finer",
    768: f"(SELECT * FROM {_TABLE} WHERE span_hours = 384) AS finer",
}
_NOON = "rollup_subject_noon"
_NOON_COLUMNS = _COLUMNS.replace("    span_hours        integer NOT NULL,\n", "")
_NOON_BUCKET = "date_trunc('day', bucket - interval '12 hours', 'UTC') + interval '12 hours'"


def _summed() -> str:
    return ", ".join(f"sum({s})" if s == "cost_pico_usd" else f"sum_bigint({s})" for s in _SUMS)


def upgrade() -> None:
    # Hold the watermark: a folder waits until the backfill has committed with this migration.
    op.execute("SELECT folded_below FROM rollup_watermark WHERE id = 1 FOR UPDATE")
    sums = ", ".join(_SUMS)
    op.execute(
        f"CREATE TABLE {_TABLE} ({_COLUMNS},"
        f" CONSTRAINT pk_{_TABLE}"
        " PRIMARY KEY (org, span_hours, bucket, subject_type, subject_id))"
    )
    for span, finer in _SPANS.items():
        bucket = f"date_bin(interval '{span} hours', bucket, timestamptz '1970-01-01 00:00:00+00')"
        op.execute(
            f"INSERT INTO {_TABLE} (org, span_hours, bucket, subject_type, subject_id, {sums})"
            f" SELECT org, {span}, {bucket}, subject_type, subject_id, {_summed()}"
            f" FROM {finer} GROUP BY org, 3, subject_type, subject_id"
            # In key order: a report reads a range of buckets (see migration 0013).
            " ORDER BY org, 3, subject_type, subject_id"
        )
    # Reports over every org (an unconfined key).
    op.execute(f"CREATE INDEX ix_{_TABLE}_bucket ON {_TABLE} (span_hours, bucket)")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON {_TABLE} TO usage_ledger_app")
    op.execute(f"ANALYZE {_TABLE}")
    op.execute(f"DROP TABLE {_NOON}")


def downgrade() -> None:
    op.execute("SELECT folded_below FROM rollup_watermark WHERE id = 1 FOR UPDATE")
    sums = ", ".join(_SUMS)
    # Migration 0015's table, as it made it.
    op.execute(
        f"CREATE TABLE {_NOON} ({_NOON_COLUMNS},"
        f" CONSTRAINT pk_{_NOON} PRIMARY KEY (org, bucket, subject_type, subject_id))"
    )
    op.execute(
        f"INSERT INTO {_NOON} (org, bucket, subject_type, subject_id, {sums})"
        f" SELECT org, {_NOON_BUCKET}, subject_type, subject_id, {_summed()}"
        " FROM rollup_subject_hourly GROUP BY org, 2, subject_type, subject_id"
        " ORDER BY org, 2, subject_type, subject_id"
    )
    op.execute(f"CREATE INDEX ix_{_NOON}_bucket ON {_NOON} (bucket)")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON {_NOON} TO usage_ledger_app")
    op.execute(f"ANALYZE {_NOON}")
    op.execute(f"DROP TABLE {_TABLE}")
