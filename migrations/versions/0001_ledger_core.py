"""Ledger core: append-only events, budgets, budget periods, reservations, idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'usage_ledger_app') THEN
        CREATE ROLE usage_ledger_app NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database of this cluster created it concurrently
END
$$;

CREATE TABLE ledger_events (
    seq             bigint      NOT NULL,
    org             text        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    request_id      text,
    reservation_id  uuid,
    budget_id       uuid,
    budget_ids      uuid[]      NOT NULL DEFAULT '{}',
    amount_pico_usd numeric(38, 0),
    payload         jsonb       NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_ledger_events PRIMARY KEY (seq)
);
CREATE INDEX ix_ledger_events_org_seq ON ledger_events (org, seq);
CREATE INDEX ix_ledger_events_org_request_id ON ledger_events (org, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX ix_ledger_events_org_reservation_id ON ledger_events (org, reservation_id)
    WHERE reservation_id IS NOT NULL;

-- seq = (top-level transaction id << 20) | n-th event of that transaction.
-- Every transaction whose id is below the snapshot xmin of a reader has finished, so a reader
-- that returns only seq < (xmin << 20) never skips an event that commits later: see
-- docs/ledger.md, "Reading the stream". The same trigger keeps each transaction to one tenant.
CREATE FUNCTION ledger_events_assign_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    n   integer := coalesce(nullif(current_setting('usage_ledger.event_n', true), ''), '0')::integer;
    org text    := nullif(current_setting('usage_ledger.event_org', true), '');
BEGIN
    IF org IS NULL THEN
        PERFORM set_config('usage_ledger.event_org', NEW.org, true);
    ELSIF org <> NEW.org THEN
        RAISE EXCEPTION 'one transaction may write events of one org only (% then %)', org, NEW.org
            USING ERRCODE = 'check_violation';
    END IF;
    IF n >= 1048576 THEN
        RAISE EXCEPTION 'too many events in one transaction' USING ERRCODE = 'program_limit_exceeded';
    END IF;
    NEW.seq := (pg_current_xact_id()::text::bigint << 20) | n;
    PERFORM set_config('usage_ledger.event_n', (n + 1)::text, true);
    RETURN NEW;
END
$$;
CREATE TRIGGER ledger_events_assign_seq BEFORE INSERT ON ledger_events
    FOR EACH ROW EXECUTE FUNCTION ledger_events_assign_seq();

CREATE FUNCTION ledger_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER ledger_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_refuse_change();

CREATE TABLE budgets (
    org              text        NOT NULL,
    budget_id        uuid        NOT NULL,
    subject_type     text        NOT NULL,
    subject_id       text        NOT NULL,
    limit_pico_usd   numeric(38, 0) NOT NULL,
    period           text        NOT NULL,
    timezone         text        NOT NULL,
    mode             text        NOT NULL,
    alert_thresholds text[]      NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    version          integer     NOT NULL,
    CONSTRAINT pk_budgets PRIMARY KEY (org, budget_id),
    CONSTRAINT ck_budgets_limit CHECK (limit_pico_usd >= 0),
    CONSTRAINT ck_budgets_period CHECK (period IN ('day', 'week', 'month', 'total')),
    CONSTRAINT ck_budgets_mode CHECK (mode IN ('hard', 'soft'))
);
CREATE INDEX ix_budgets_subject ON budgets (org, subject_type, subject_id);
CREATE INDEX ix_budgets_budget_id ON budgets (budget_id);

CREATE TABLE budget_periods (
    org            text        NOT NULL,
    budget_id      uuid        NOT NULL,
    period_start   timestamptz NOT NULL,
    period_end     timestamptz NOT NULL,
    spent_pico_usd numeric(38, 0) NOT NULL DEFAULT 0,
    held_pico_usd  numeric(38, 0) NOT NULL DEFAULT 0,
    -- No CHECK on held: the upsert that adds a negative delta is checked as an insert first.
    CONSTRAINT pk_budget_periods PRIMARY KEY (org, budget_id, period_start)
);

CREATE TABLE reservations (
    org             text        NOT NULL,
    reservation_id  uuid        NOT NULL,
    request_id      text        NOT NULL,
    state           text        NOT NULL,
    amount_pico_usd numeric(38, 0) NOT NULL,
    cost_pico_usd   numeric(38, 0),
    subjects        jsonb       NOT NULL,
    holds           jsonb       NOT NULL,
    model           text,
    provider        text,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    reserved_at     timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    settled_at      timestamptz,
    overrun         boolean     NOT NULL DEFAULT false,
    late            boolean     NOT NULL DEFAULT false,
    CONSTRAINT pk_reservations PRIMARY KEY (org, reservation_id),
    CONSTRAINT uq_reservations_request_id UNIQUE (org, request_id),
    CONSTRAINT ck_reservations_state CHECK (state IN ('held', 'committed', 'cancelled', 'expired'))
);
CREATE INDEX ix_reservations_due ON reservations (expires_at) WHERE state = 'held';
CREATE INDEX ix_reservations_reservation_id ON reservations (reservation_id);

CREATE TABLE idempotency_keys (
    org         text        NOT NULL,
    operation   text        NOT NULL,
    key         text        NOT NULL,
    fingerprint text        NOT NULL,
    response    jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_idempotency_keys PRIMARY KEY (org, operation, key)
);

GRANT USAGE ON SCHEMA public TO usage_ledger_app;
GRANT SELECT, INSERT ON ledger_events TO usage_ledger_app;
REVOKE UPDATE, DELETE, TRUNCATE ON ledger_events FROM usage_ledger_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON budgets, budget_periods, reservations, idempotency_keys
    TO usage_ledger_app;
GRANT SELECT ON alembic_version TO usage_ledger_app;
"""

DOWNGRADE = r"""
DROP TABLE idempotency_keys;
DROP TABLE reservations;
DROP TABLE budget_periods;
DROP TABLE budgets;
DROP TABLE ledger_events;
DROP FUNCTION ledger_events_refuse_change();
DROP FUNCTION ledger_events_assign_seq();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
