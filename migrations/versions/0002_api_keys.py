"""API keys, stored hashed, with a scope and an optional tenant confinement.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- A reference table when distributed by org: a key may span tenants (org IS NULL).
CREATE TABLE api_keys (
    key_id      text        NOT NULL,
    secret_hash text        NOT NULL,
    scope       text        NOT NULL,
    org         text,
    name        text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CONSTRAINT pk_api_keys PRIMARY KEY (key_id),
    CONSTRAINT ck_api_keys_scope CHECK (scope IN ('gateway', 'reader', 'admin'))
);
GRANT SELECT, INSERT, UPDATE ON api_keys TO usage_ledger_app;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP TABLE api_keys")
