"""Rollup indexes that lead with the bucket, for reports over every org (an unconfined key).

The primary keys lead with org, which serves a tenant's report; a report across orgs would
otherwise scan whole tables. One partial index per grain keeps each small.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_GRAINS = {
    "all": "subject_type = '' AND tag = ''",
    "subject": "subject_type <> ''",
    "tag": "tag <> ''",
}


def upgrade() -> None:
    for table in ("rollup_hourly", "rollup_daily"):
        for grain, where in _GRAINS.items():
            op.execute(f"CREATE INDEX ix_{table}_{grain}_bucket ON {table} (bucket) WHERE {where}")


def downgrade() -> None:
    for table in ("rollup_hourly", "rollup_daily"):
        for grain in _GRAINS:
            op.execute(f"DROP INDEX ix_{table}_{grain}_bucket")
