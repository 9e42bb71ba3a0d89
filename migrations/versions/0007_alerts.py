"""Budget alerts, webhooks and their outbox.

``budget_alerts`` is the once-only guard: its primary key admits each level of a budget's
period once, whatever commits race for it. ``webhook_outbox`` rows are written in the same
transaction as the ``alert_raised`` event they carry, so a crash between that commit and the
HTTP delivery loses nothing (docs/alerts.md). ``webhook_attempts`` is the delivery log.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE budget_alerts (
    org            text        NOT NULL,
    budget_id      uuid        NOT NULL,
    period_start   timestamptz NOT NULL,
    level          text        NOT NULL,
    period_end     timestamptz NOT NULL,
    threshold      text        NOT NULL,
    spent_pico_usd numeric(38, 0) NOT NULL,
    limit_pico_usd numeric(38, 0) NOT NULL,
    alert_id       uuid        NOT NULL,
    raised_at      timestamptz NOT NULL,
    CONSTRAINT pk_budget_alerts PRIMARY KEY (org, budget_id, period_start, level),
    CONSTRAINT ck_budget_alerts_level CHECK (level IN ('warning', 'critical', 'exceeded'))
);

CREATE TABLE webhooks (
    org         text        NOT NULL,
    webhook_id  uuid        NOT NULL,
    url         text        NOT NULL,
    -- Kept in clear: the worker needs it to sign every delivery (HMAC), unlike an API key.
    secret      text        NOT NULL,
    event_types text[]      NOT NULL,
    description text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    CONSTRAINT pk_webhooks PRIMARY KEY (org, webhook_id)
);
CREATE INDEX ix_webhooks_webhook_id ON webhooks (webhook_id);

CREATE TABLE webhook_outbox (
    org             text        NOT NULL,
    delivery_id     uuid        NOT NULL,
    webhook_id      uuid        NOT NULL,
    event_type      text        NOT NULL,
    payload         jsonb       NOT NULL,
    state           text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    CONSTRAINT pk_webhook_outbox PRIMARY KEY (org, delivery_id),
    CONSTRAINT fk_webhook_outbox_webhook_id_webhooks FOREIGN KEY (org, webhook_id)
        REFERENCES webhooks (org, webhook_id),
    CONSTRAINT ck_webhook_outbox_state CHECK (state IN ('pending', 'delivered', 'failed'))
);
-- The worker's claim: due pending rows, oldest first.
CREATE INDEX ix_webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX ix_webhook_outbox_webhook ON webhook_outbox (org, webhook_id, created_at);

CREATE TABLE webhook_attempts (
    org          text        NOT NULL,
    delivery_id  uuid        NOT NULL,
    attempt      integer     NOT NULL,
    webhook_id   uuid        NOT NULL,
    attempted_at timestamptz NOT NULL,
    status_code  integer,
    error        text,
    duration_ms  integer     NOT NULL,
    CONSTRAINT pk_webhook_attempts PRIMARY KEY (org, delivery_id, attempt),
    CONSTRAINT fk_webhook_attempts_delivery_id_webhook_outbox FOREIGN KEY (org, delivery_id)
        REFERENCES webhook_outbox (org, delivery_id)
);

-- Alerts and the delivery log are written once and never changed by the service.
GRANT SELECT, INSERT ON budget_alerts, webhook_attempts TO usage_ledger_app;
GRANT SELECT, INSERT, UPDATE ON webhooks, webhook_outbox TO usage_ledger_app;
"""

DOWNGRADE = r"""
DROP TABLE webhook_attempts;
DROP TABLE webhook_outbox;
DROP TABLE webhooks;
DROP TABLE budget_alerts;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
