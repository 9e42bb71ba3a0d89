"""Reservations carry a version that orders their events causally.

Event seq follows transaction ids, which a transaction may take before it waits for a
reservation's row lock; the version, bumped under that lock, is the causal order of the
reservation's own events (docs/ledger.md, "Reading the stream").

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE reservations ADD COLUMN version integer NOT NULL DEFAULT 1")


def downgrade() -> None:
    op.execute("ALTER TABLE reservations DROP COLUMN version")
