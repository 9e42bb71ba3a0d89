"""Model rollups, and a bigint sum that stays a bigint.

- ``rollup_model_hourly`` / ``rollup_model_daily``: all spend per bucket, model, provider and
  call type. The all-spend grain of ``rollup_hourly`` / ``rollup_daily`` also carries the
  endpoint and shares its pages with the subject and tag grains, so a report by model read 1.2x
  more rows than it returns groups, two to a page. The folder adds to these tables in the same
  statement and transaction as to the others (app/reports/rollups.py); this migration fills them
  from the wide all-spend rows while it holds the watermark's row lock, so no fold can run in
  between.
- ``sum_bigint(bigint)``: ``sum`` of bigints returns numeric, which a report then builds per
  group and writes out again as text; summed with ``int8pl`` the total stays a bigint, and an
  overflow is an error ("bigint out of range"), never a wrapped number. Reports sum their
  counts with it (a report's counts are far below 2^63).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-23
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_KEYS = ("model", "provider", "call_type")
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
    model             text NOT NULL,
    provider          text NOT NULL,
    call_type         text NOT NULL,
    cost_pico_usd     numeric(38, 0) NOT NULL,
    requests          bigint NOT NULL,
    messages          bigint NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cache_read_tokens bigint NOT NULL,
    cache_write_tokens bigint NOT NULL,
    reasoning_tokens  bigint NOT NULL"""
_TABLES = {"rollup_model_hourly": "rollup_hourly", "rollup_model_daily": "rollup_daily"}


def upgrade() -> None:
    op.execute(
        "CREATE AGGREGATE sum_bigint(bigint) (sfunc = int8pl, stype = bigint,"
        " combinefunc = int8pl, initcond = '0', parallel = safe)"
    )
    op.execute(
        "COMMENT ON AGGREGATE sum_bigint(bigint) IS"
        " 'Sum of bigints as a bigint: an overflow is an error, never a wrapped number.'"
    )
    # Hold the watermark: a folder waits until the backfill has committed with this migration.
    op.execute("SELECT folded_below FROM rollup_watermark WHERE id = 1 FOR UPDATE")
    keys = ", ".join(_KEYS)
    sums = ", ".join(_SUMS)
    summed = ", ".join(f"sum({s})" for s in _SUMS)
    for table, wide in _TABLES.items():
        op.execute(
            f"CREATE TABLE {table} ({_COLUMNS},"
            f" CONSTRAINT pk_{table} PRIMARY KEY (org, bucket, {keys}))"
        )
        op.execute(
            f"INSERT INTO {table} (org, bucket, {keys}, {sums})"
            f" SELECT org, bucket, {keys}, {summed} FROM {wide}"
            " WHERE subject_type = '' AND tag = '' GROUP BY org, bucket, "
            + keys
            # In key order: a report reads a range of buckets (see migration 0013).
            + f" ORDER BY org, bucket, {keys}"
        )
        # Reports over every org (an unconfined key).
        op.execute(f"CREATE INDEX ix_{table}_bucket ON {table} (bucket)")
        op.execute(f"GRANT SELECT, INSERT, UPDATE ON {table} TO usage_ledger_app")
        op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    for table in _TABLES:
        op.execute(f"DROP TABLE {table}")
    op.execute("DROP AGGREGATE sum_bigint(bigint)")
