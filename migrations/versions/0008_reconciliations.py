"""Provider bill reconciliations: each imported cost export and its line items.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- One row per imported provider export. The same file (same sha256) imported again for the
-- same org is the same reconciliation: the unique key makes a concurrent second import wait
-- for the first and then find it, so nothing is ever counted twice (docs/reconciliation.md).
CREATE TABLE reconciliations (
    org               text        NOT NULL,
    reconciliation_id uuid        NOT NULL,
    provider          text        NOT NULL,
    format            text        NOT NULL,
    source_sha256     text        NOT NULL,
    period_start      date        NOT NULL,
    period_end        date        NOT NULL,  -- exclusive
    line_item_count   integer     NOT NULL,
    warnings          jsonb       NOT NULL DEFAULT '[]',
    imported_at       timestamptz NOT NULL,
    CONSTRAINT pk_reconciliations PRIMARY KEY (org, reconciliation_id),
    CONSTRAINT uq_reconciliations_org_source_sha256 UNIQUE (org, source_sha256),
    CONSTRAINT ck_reconciliations_provider CHECK (provider IN ('openai', 'anthropic')),
    CONSTRAINT ck_reconciliations_period CHECK (period_start < period_end),
    CONSTRAINT ck_reconciliations_sha256 CHECK (source_sha256 ~ '^[0-9a-f]{64}$')
);
CREATE INDEX ix_reconciliations_reconciliation_id ON reconciliations (reconciliation_id);

-- The provider's line items exactly as billed: amount_text is the literal of the file, in its
-- unit (OpenAI: USD; Anthropic's cost report: cents), amount_usd the same value in USD as an
-- unconstrained numeric, so no digit of the provider's figure is ever rounded away.
CREATE TABLE reconciliation_line_items (
    org               text        NOT NULL,
    reconciliation_id uuid        NOT NULL,
    line_no           integer     NOT NULL,
    bucket_start      timestamptz NOT NULL,
    bucket_end        timestamptz NOT NULL,
    day               date        NOT NULL,
    amount_text       text        NOT NULL,
    amount_unit       text        NOT NULL,
    amount_usd        numeric     NOT NULL,
    currency          text        NOT NULL,
    line_item         text,
    model             text,
    attributes        jsonb       NOT NULL DEFAULT '{}',
    CONSTRAINT pk_reconciliation_line_items PRIMARY KEY (org, reconciliation_id, line_no),
    CONSTRAINT fk_reconciliation_line_items_org_reconciliations
        FOREIGN KEY (org, reconciliation_id) REFERENCES reconciliations (org, reconciliation_id),
    CONSTRAINT ck_reconciliation_line_items_unit CHECK (amount_unit IN ('usd', 'usd_cents')),
    CONSTRAINT ck_reconciliation_line_items_bucket CHECK (bucket_start < bucket_end)
);

-- An import is a fact, like an event: the service only ever adds one.
GRANT SELECT, INSERT ON reconciliations, reconciliation_line_items TO usage_ledger_app;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP TABLE reconciliation_line_items")
    op.execute("DROP TABLE reconciliations")
