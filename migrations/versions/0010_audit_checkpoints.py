"""Tamper evidence: an append-only hash chain of checkpoints over the event log.

Each checkpoint covers a half-open range of seqs ``[from_seq, below_seq)``, contiguous with the
previous one, and records ``entries``: every event of the range as its 8-byte seq and the
SHA-256 of its canonical form (40 bytes each), so that ``usage-ledger audit verify`` can name
the first altered, missing or unexpected event. ``hash`` chains the checkpoint to the one
before it. The hot path never touches this table: a checkpointer consumes settled events past
the newest checkpoint (app/audit, docs/audit.md).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE ledger_checkpoints (
    from_seq      bigint      NOT NULL,
    below_seq     bigint      NOT NULL,
    events        integer     NOT NULL,
    format        smallint    NOT NULL,
    previous_hash bytea       NOT NULL,
    hash          bytea       NOT NULL,
    entries       bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- One checkpoint per starting point and per end: two checkpointers can never fork the chain.
    CONSTRAINT pk_ledger_checkpoints PRIMARY KEY (from_seq),
    CONSTRAINT uq_ledger_checkpoints_below_seq UNIQUE (below_seq),
    CONSTRAINT ck_ledger_checkpoints_range CHECK (from_seq >= 0 AND from_seq < below_seq),
    CONSTRAINT ck_ledger_checkpoints_entries
        CHECK (events > 0 AND octet_length(entries) = 40 * events),
    CONSTRAINT ck_ledger_checkpoints_hashes
        CHECK (octet_length(hash) = 32 AND octet_length(previous_hash) = 32)
);
-- Digests are incompressible: spare TOAST the attempt.
ALTER TABLE ledger_checkpoints ALTER COLUMN entries SET STORAGE EXTERNAL;

-- Its own function rather than ledger_events_refuse_change(), whose message names ledger_events.
CREATE FUNCTION ledger_checkpoints_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_checkpoints is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER ledger_checkpoints_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_checkpoints_refuse_change();

GRANT SELECT, INSERT ON ledger_checkpoints TO usage_ledger_app;
REVOKE UPDATE, DELETE, TRUNCATE ON ledger_checkpoints FROM usage_ledger_app;
"""

DOWNGRADE = r"""
DROP TABLE ledger_checkpoints;
DROP FUNCTION ledger_checkpoints_refuse_change();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
