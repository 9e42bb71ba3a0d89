"""Operator price overrides are events; index them for loading at start and on change.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX ix_ledger_events_price_overrides ON ledger_events (seq)"
        " WHERE event_type = 'price_overridden'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_ledger_events_price_overrides")
