"""Spend rollups and their watermark.

Rollups are folded from the event stream by one folder at a time (app/reports/rollups.py):
every event with seq below ``rollup_watermark.folded_below`` is in them exactly once and no
other is, and the watermark moves in the same transaction as the sums. Reports add the events
at or above the watermark themselves, so they are exact whether the folder is current or not.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_SUMS = """
    cost_pico_usd     numeric(38, 0) NOT NULL,
    requests          bigint NOT NULL,
    messages          bigint NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cache_read_tokens bigint NOT NULL,
    cache_write_tokens bigint NOT NULL,
    reasoning_tokens  bigint NOT NULL"""

_KEYS = """
    org          text NOT NULL,
    bucket       timestamptz NOT NULL,
    model        text NOT NULL,
    provider     text NOT NULL,
    call_type    text NOT NULL,
    endpoint     text NOT NULL,
    subject_type text NOT NULL,
    subject_id   text NOT NULL,
    tag          text NOT NULL"""

_PK = "org, bucket, subject_type, subject_id, tag, model, provider, call_type, endpoint"

UPGRADE = rf"""
-- One row per (bucket, dimensions) at one of three grains: subject_type = subject_id = tag = ''
-- is all spend; a subject row is that subject's share (a request charged to a key, a user and a
-- team counts in each of their rows); a tag row likewise. '' also stands for "not reported".
CREATE TABLE rollup_hourly ({_KEYS},{_SUMS},
    CONSTRAINT pk_rollup_hourly PRIMARY KEY ({_PK})
);
CREATE TABLE rollup_daily ({_KEYS},{_SUMS},
    CONSTRAINT pk_rollup_daily PRIMARY KEY ({_PK})
);
-- Subject reports over long windows read subjects first.
CREATE INDEX ix_rollup_daily_subject ON rollup_daily (org, subject_type, subject_id, bucket)
    WHERE subject_type <> '';
CREATE INDEX ix_rollup_hourly_subject ON rollup_hourly (org, subject_type, subject_id, bucket)
    WHERE subject_type <> '';

CREATE TABLE rollup_watermark (
    id           integer NOT NULL DEFAULT 1,
    folded_below bigint  NOT NULL,
    folded_at    timestamptz NOT NULL DEFAULT now(),
    events       bigint  NOT NULL DEFAULT 0,
    CONSTRAINT pk_rollup_watermark PRIMARY KEY (id),
    CONSTRAINT ck_rollup_watermark_single CHECK (id = 1)
);
INSERT INTO rollup_watermark (folded_below) VALUES (0);

-- Each usage event as rows of the rollups' shape: one row for all spend, one per subject and
-- one per tag. A request's first message counts it as a request; a commit that came without
-- messages counts as one request with its cost and no tokens. Dimension values are cut to 200
-- characters so that no key can outgrow a btree entry and stall the folder.
CREATE FUNCTION usage_facts_between(lo bigint, hi bigint)
RETURNS TABLE (
    seq bigint, org text, occurred_at timestamptz,
    model text, provider text, call_type text, endpoint text,
    subject_type text, subject_id text, tag text,
    cost_pico_usd numeric, requests bigint, messages bigint,
    prompt_tokens bigint, completion_tokens bigint, cache_read_tokens bigint,
    cache_write_tokens bigint, reasoning_tokens bigint
)
LANGUAGE sql STABLE AS $$
    WITH usage AS (
        SELECT e.seq, e.org, e.occurred_at, e.payload,
               coalesce(e.amount_pico_usd, 0) AS cost,
               CASE WHEN e.event_type = 'committed'
                      OR coalesce((e.payload->>'message_index')::bigint, 0) = 0
                    THEN 1 ELSE 0 END::bigint AS requests,
               CASE WHEN e.event_type = 'usage_recorded' THEN 1 ELSE 0 END::bigint AS messages,
               CASE WHEN e.event_type = 'usage_recorded' THEN e.payload->'metadata' END AS meta
        FROM ledger_events e
        WHERE e.seq >= lo AND e.seq < hi
          AND (e.event_type = 'usage_recorded'
               OR (e.event_type = 'committed'
                   AND coalesce((e.payload->>'messages')::bigint, 0) = 0))
    )
    SELECT u.seq, u.org, u.occurred_at,
           left(coalesce(u.payload->>'model', ''), 200),
           left(coalesce(u.payload->>'provider', ''), 200),
           left(coalesce(u.payload->>'call_type', ''), 200),
           left(coalesce(CASE WHEN jsonb_typeof(u.meta->'endpoint') = 'string'
                              THEN u.meta->>'endpoint' END, ''), 200),
           g.subject_type, g.subject_id, g.tag,
           u.cost, u.requests, u.messages,
           coalesce((u.payload->>'prompt_tokens')::bigint, 0),
           coalesce((u.payload->>'completion_tokens')::bigint, 0),
           coalesce((u.payload->>'cache_read_tokens')::bigint, 0),
           coalesce((u.payload->>'cache_creation_tokens')::bigint,
                    (u.payload->>'cache_write_tokens')::bigint, 0),
           coalesce((u.payload->>'reasoning_tokens')::bigint, 0)
    FROM usage u
    CROSS JOIN LATERAL (
        SELECT '' AS subject_type, '' AS subject_id, '' AS tag
        UNION ALL
        SELECT DISTINCT left(s->>'type', 200), left(s->>'id', 200), ''
        FROM jsonb_array_elements(CASE WHEN jsonb_typeof(u.payload->'subjects') = 'array'
                                       THEN u.payload->'subjects' ELSE '[]' END) s
        WHERE coalesce(s->>'type', '') <> '' AND s->>'id' IS NOT NULL
        UNION ALL
        SELECT DISTINCT '', '', left(t, 200)
        FROM jsonb_array_elements_text(
            CASE jsonb_typeof(u.meta->'tags')
                WHEN 'array' THEN u.meta->'tags'
                WHEN 'string' THEN jsonb_build_array(u.meta->'tags')
                ELSE '[]' END) t
        WHERE t <> ''
    ) g
$$;

GRANT SELECT, INSERT, UPDATE ON rollup_hourly, rollup_daily, rollup_watermark
    TO usage_ledger_app;
GRANT EXECUTE ON FUNCTION usage_facts_between(bigint, bigint) TO usage_ledger_app;
"""

DOWNGRADE = """
DROP FUNCTION usage_facts_between(bigint, bigint);
DROP TABLE rollup_watermark;
DROP TABLE rollup_daily;
DROP TABLE rollup_hourly;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
