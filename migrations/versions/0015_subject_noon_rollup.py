"""Subject spend per 24 hours from 12:00 UTC, for reports by subject over a whole window.

A report by subject over a window that does not start and end at midnight UTC reads the daily
subject rows for the whole days inside it and hourly rows for the partial days at its ends: up
to 12 hours at each end (a longer partial day is read as its daily row less the hours outside
the window). "The last 7 days" asked at noon is that worst case, and its 24 hours of hourly rows
were ~25,000 of the ~57,000 rows it read at 10M events. The same window in days that start at
noon has no partial day at all; for any window of whole days, one of the two alignments leaves
at most 6 hours at each end. The folder adds to this table in the same statement as to the others
(app/reports/rollups.py); this migration fills it from the hourly subject rows while it holds
the watermark's row lock, so no fold can run in between.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-23
"""

from alembic import op

revision = "0015"
down_revision = "0014"
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
_TABLE = "rollup_subject_noon"
_NOON_BUCKET = "date_trunc('day', bucket - interval '12 hours', 'UTC') + interval '12 hours'"


def upgrade() -> None:
    # Hold the watermark: a folder waits until the backfill has committed with this migration.
    op.execute("SELECT folded_below FROM rollup_watermark WHERE id = 1 FOR UPDATE")
    sums = ", ".join(_SUMS)
    summed = ", ".join(
        f"sum({s})" if s == "cost_pico_usd" else f"sum_bigint({s})" for s in _SUMS
    )
    op.execute(
        f"CREATE TABLE {_TABLE} ({_COLUMNS},"
        f" CONSTRAINT pk_{_TABLE} PRIMARY KEY (org, bucket, subject_type, subject_id))"
    )
    op.execute(
        f"INSERT INTO {_TABLE} (org, bucket, subject_type, subject_id, {sums})"
        f" SELECT org, {_NOON_BUCKET}, subject_type, subject_id, {summed}"
        " FROM rollup_subject_hourly GROUP BY org, 2, subject_type, subject_id"
        # In key order: a report reads a range of buckets (see migration 0013).
        " ORDER BY org, 2, subject_type, subject_id"
    )
    # Reports over every org (an unconfined key).
    op.execute(f"CREATE INDEX ix_{_TABLE}_bucket ON {_TABLE} (bucket)")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON {_TABLE} TO usage_ledger_app")
    op.execute(f"ANALYZE {_TABLE}")


def downgrade() -> None:
    op.execute(f"DROP TABLE {_TABLE}")
