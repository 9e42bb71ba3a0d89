"""Partition ledger_events by month of recorded_at.

Old months can then be detached and archived (``usage-ledger partitions archive``) without
touching the hot path, which only ever writes the current month. seq stays unique by
construction (transaction id << 20 | n), so the primary key carries recorded_at only because
PostgreSQL requires the partition key in it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE ledger_events RENAME TO ledger_events_unpartitioned;
ALTER TABLE ledger_events_unpartitioned
    RENAME CONSTRAINT pk_ledger_events TO pk_ledger_events_unpartitioned;
ALTER INDEX ix_ledger_events_org_seq RENAME TO ix_ledger_events_unpartitioned_org_seq;
ALTER INDEX ix_ledger_events_org_request_id RENAME TO ix_ledger_events_unpartitioned_request;
ALTER INDEX ix_ledger_events_org_reservation_id
    RENAME TO ix_ledger_events_unpartitioned_reservation;
ALTER INDEX ix_ledger_events_price_overrides RENAME TO ix_ledger_events_unpartitioned_overrides;

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
    CONSTRAINT pk_ledger_events PRIMARY KEY (seq, recorded_at)
) PARTITION BY RANGE (recorded_at);

-- Catches a row for a month nobody created a partition for, so no write is ever refused;
-- ledger_ensure_partitions keeps it empty by creating months ahead.
CREATE TABLE ledger_events_default PARTITION OF ledger_events DEFAULT;

CREATE INDEX ix_ledger_events_org_seq ON ledger_events (org, seq);
CREATE INDEX ix_ledger_events_org_request_id ON ledger_events (org, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX ix_ledger_events_org_reservation_id ON ledger_events (org, reservation_id)
    WHERE reservation_id IS NOT NULL;
CREATE INDEX ix_ledger_events_price_overrides ON ledger_events (seq)
    WHERE event_type = 'price_overridden';

-- A statement trigger on the parent does not fire for statements aimed at a partition
-- directly, so every partition carries its own.
CREATE TRIGGER ledger_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_events_default
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_refuse_change();

-- Monthly partitions from the month of `from_at` to the month of `to_at`, both included.
-- SECURITY DEFINER so that the service's role, which may not create tables, can keep months
-- ahead of the clock; it creates nothing but partitions of ledger_events.
CREATE FUNCTION ledger_ensure_partitions(from_at timestamptz, to_at timestamptz)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public SET timezone = 'UTC' AS $$
DECLARE
    month   timestamptz := date_trunc('month', from_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    name    text;
    created integer := 0;
BEGIN
    WHILE month <= to_at LOOP
        name := 'ledger_events_' || to_char(month AT TIME ZONE 'UTC', 'YYYY_MM');
        IF to_regclass('public.' || name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE public.%I PARTITION OF public.ledger_events'
                ' FOR VALUES FROM (%L) TO (%L)',
                name, month, month + interval '1 month');
            EXECUTE format(
                'CREATE TRIGGER ledger_events_append_only'
                ' BEFORE UPDATE OR DELETE OR TRUNCATE ON public.%I'
                ' FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_refuse_change()', name);
            created := created + 1;
        END IF;
        month := month + interval '1 month';
    END LOOP;
    RETURN created;
END
$$;
REVOKE ALL ON FUNCTION ledger_ensure_partitions(timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger_ensure_partitions(timestamptz, timestamptz)
    TO usage_ledger_app;

SELECT ledger_ensure_partitions(
    least(coalesce((SELECT min(recorded_at) FROM ledger_events_unpartitioned), now()), now()),
    now() + interval '2 months');

INSERT INTO ledger_events SELECT * FROM ledger_events_unpartitioned;
DROP TABLE ledger_events_unpartitioned;

-- Created after the copy so that copied events keep their seq.
CREATE TRIGGER ledger_events_assign_seq BEFORE INSERT ON ledger_events
    FOR EACH ROW EXECUTE FUNCTION ledger_events_assign_seq();
CREATE TRIGGER ledger_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_refuse_change();

GRANT SELECT, INSERT ON ledger_events TO usage_ledger_app;
REVOKE UPDATE, DELETE, TRUNCATE ON ledger_events FROM usage_ledger_app;
"""

DOWNGRADE = r"""
ALTER TABLE ledger_events RENAME TO ledger_events_partitioned;
ALTER TABLE ledger_events_partitioned
    RENAME CONSTRAINT pk_ledger_events TO pk_ledger_events_partitioned;
ALTER INDEX ix_ledger_events_org_seq RENAME TO ix_ledger_events_partitioned_org_seq;
ALTER INDEX ix_ledger_events_org_request_id RENAME TO ix_ledger_events_partitioned_request;
ALTER INDEX ix_ledger_events_org_reservation_id RENAME TO ix_ledger_events_partitioned_reservation;
ALTER INDEX ix_ledger_events_price_overrides RENAME TO ix_ledger_events_partitioned_overrides;

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
INSERT INTO ledger_events SELECT * FROM ledger_events_partitioned;
DROP TABLE ledger_events_partitioned CASCADE;
DROP FUNCTION ledger_ensure_partitions(timestamptz, timestamptz);
CREATE INDEX ix_ledger_events_org_seq ON ledger_events (org, seq);
CREATE INDEX ix_ledger_events_org_request_id ON ledger_events (org, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX ix_ledger_events_org_reservation_id ON ledger_events (org, reservation_id)
    WHERE reservation_id IS NOT NULL;
CREATE INDEX ix_ledger_events_price_overrides ON ledger_events (seq)
    WHERE event_type = 'price_overridden';
CREATE TRIGGER ledger_events_assign_seq BEFORE INSERT ON ledger_events
    FOR EACH ROW EXECUTE FUNCTION ledger_events_assign_seq();
CREATE TRIGGER ledger_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_refuse_change();
GRANT SELECT, INSERT ON ledger_events TO usage_ledger_app;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
