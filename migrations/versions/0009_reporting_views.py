"""The reporting schema of views for SQL dashboards.

``reporting`` is a contract (docs/dashboards.md): its views are queried by dashboards under the
NOLOGIN role ``usage_ledger_reader``, which may read these views and nothing else. Views run
with their owner's rights on the tables they name, so the reader needs no grant on any table.
Functions called in a view, however, run with the caller's rights: the one that reads the
event stream, ``reporting.unfolded_usage()``, is therefore SECURITY DEFINER.

Spend views are exact, as the spend reports are (app/reports/service.py): the rollups below
the watermark plus the events not folded yet, read in one statement and so in one snapshot.
They read the event table only past the watermark; the request log reads direct charges
through a partial index made for it.

A later revision may only add views and append columns (CREATE OR REPLACE VIEW allows exactly
that); it never renames, retypes or removes one.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# pico-USD to USD: multiplying by an exact 1e-12 keeps every digit (scale 12), whereas numeric
# division would round to a scale PostgreSQL picks from the operands.
_TO_USD = "0.000000000001"

_SUMS = f"""
    sum(cost_pico_usd) AS cost_pico_usd,
    sum(cost_pico_usd) * {_TO_USD} AS cost_usd,
    sum(requests)::bigint AS requests,
    sum(messages)::bigint AS messages,
    sum(prompt_tokens)::bigint AS prompt_tokens,
    sum(completion_tokens)::bigint AS completion_tokens,
    sum(cache_read_tokens)::bigint AS cache_read_tokens,
    sum(cache_write_tokens)::bigint AS cache_write_tokens,
    sum(reasoning_tokens)::bigint AS reasoning_tokens"""

_MEASURES = (
    "cost_pico_usd, requests, messages, prompt_tokens, completion_tokens,"
    " cache_read_tokens, cache_write_tokens, reasoning_tokens"
)

# The three grains of the rollups (migration 0006): all spend, a subject's share, a tag's share.
_GRAINS = {
    "spend": ("", "subject_type = '' AND tag = ''"),
    "spend_by_subject": ("subject_type, subject_id, ", "subject_type <> ''"),
    "spend_by_tag": ("tag, ", "tag <> ''"),
}

# view suffix -> (bucket column, rollup table, date_trunc unit)
_UNITS = {
    "hourly": ("hour", "rollup_hourly", "hour"),
    "daily": ("day", "rollup_daily", "day"),
    "monthly": ("month", "rollup_daily", "month"),
}


def _spend_view(name: str, suffix: str) -> str:
    keys, grain = _GRAINS[name]
    bucket, table, unit = _UNITS[suffix]
    dimensions = f"org, {bucket}, {keys}model, provider, call_type, endpoint"
    folded_bucket = "bucket" if unit != "month" else "date_trunc('month', bucket, 'UTC')"
    return f"""
CREATE VIEW reporting.{name}_{suffix} AS
SELECT {dimensions},{_SUMS}
FROM (
    SELECT org, {folded_bucket} AS {bucket}, {keys}model, provider, call_type, endpoint,
           {_MEASURES}
    FROM public.{table}
    WHERE {grain}
    UNION ALL
    SELECT org, date_trunc('{unit}', occurred_at, 'UTC'), {keys}model, provider, call_type,
           endpoint, {_MEASURES}
    FROM reporting.unfolded_usage()
    WHERE {grain}
) AS spend
GROUP BY {dimensions};
"""


_SPEND_VIEWS = "".join(_spend_view(name, suffix) for name in _GRAINS for suffix in _UNITS)

UPGRADE = rf"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'usage_ledger_reader') THEN
        CREATE ROLE usage_ledger_reader NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database of this cluster created it concurrently
END
$$;

CREATE SCHEMA reporting;
COMMENT ON SCHEMA reporting IS
    'Stable views for dashboards (docs/dashboards.md): columns are only ever added.';

-- The request log lists requests by time: reservations by when they were taken, and direct
-- charges, which exist only as events, through an index over just those events.
CREATE INDEX ix_reservations_org_reserved_at ON reservations (org, reserved_at);
CREATE INDEX ix_ledger_events_direct_commits ON ledger_events (org, occurred_at)
    WHERE event_type = 'committed' AND reservation_id IS NULL;

-- The events at or above the rollup watermark as usage facts. SECURITY DEFINER because a
-- function called from a view runs with the caller's rights, and the reader may not read
-- ledger_events; STABLE, so that it reads the snapshot of the statement that calls it and the
-- watermark, the rollups and this tail agree. pg_temp last, so that no caller's temporary
-- table can stand in for one that usage_facts_between names unqualified. A standard-SQL body,
-- so that PostgreSQL records the dependency: usage_facts_between cannot be dropped or
-- replaced by another signature while this depends on it.
CREATE FUNCTION reporting.unfolded_usage()
RETURNS TABLE (
    seq bigint, org text, occurred_at timestamptz,
    model text, provider text, call_type text, endpoint text,
    subject_type text, subject_id text, tag text,
    cost_pico_usd numeric, requests bigint, messages bigint,
    prompt_tokens bigint, completion_tokens bigint, cache_read_tokens bigint,
    cache_write_tokens bigint, reasoning_tokens bigint
)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
BEGIN ATOMIC
    SELECT * FROM public.usage_facts_between(
        (SELECT folded_below FROM public.rollup_watermark), 9223372036854775807);
END;

-- The UTC instant of a local wall-clock time, resolved as app/budgets/periods.py resolves it
-- (zoneinfo, fold=0): in a gap, with the offset before the change, as PostgreSQL does too; at
-- a time that occurs twice, the earlier instant, where PostgreSQL takes the later one. The
-- earlier candidate uses the offset in force a day before: no zone changes twice a day.
CREATE FUNCTION reporting.local_instant(local_time timestamp, tz_name text)
RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN e.earlier < l.later AND e.earlier AT TIME ZONE tz_name = local_time
                THEN e.earlier ELSE l.later END
    FROM (SELECT local_time AT TIME ZONE tz_name AS later) AS l
    CROSS JOIN LATERAL (
        SELECT (local_time - ((l.later - interval '1 day') AT TIME ZONE tz_name
                              - (l.later - interval '1 day') AT TIME ZONE 'UTC'))
               AT TIME ZONE 'UTC' AS earlier
    ) AS e
$$;

-- The [start, end) of the budget period containing `instant`, as app/budgets/periods.py
-- computes it. NULLs for a zone this server does not know (its tzdata may be older than
-- Python's), so that one such budget cannot break the whole view.
CREATE FUNCTION reporting.budget_period_bounds(
    period text, tz_name text, instant timestamptz,
    OUT period_start timestamptz, OUT period_end timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    local_start timestamp;
BEGIN
    IF period = 'total' THEN
        period_start := timestamptz '1970-01-01 00:00:00+00';
        period_end := timestamptz '9999-12-31 00:00:00+00';
        RETURN;
    END IF;
    local_start := date_trunc(period, instant AT TIME ZONE tz_name);
    period_start := reporting.local_instant(local_start, tz_name);
    period_end := reporting.local_instant(local_start + ('1 ' || period)::interval, tz_name);
EXCEPTION WHEN invalid_parameter_value THEN
    period_start := NULL;
    period_end := NULL;
END
$$;
{_SPEND_VIEWS}
-- The current period comes from its budget_periods row when one exists (the row the service
-- created, whatever tzdata says today), else from budget_period_bounds: then nothing was held
-- or spent in it yet.
CREATE VIEW reporting.budget_status AS
SELECT b.org, b.budget_id, b.subject_type, b.subject_id, b.mode, b.period, b.timezone,
       b.alert_thresholds,
       b.limit_pico_usd::numeric AS limit_pico_usd,
       b.limit_pico_usd * {_TO_USD} AS limit_usd,
       s.period_start, s.period_end,
       s.spent_pico_usd,
       s.spent_pico_usd * {_TO_USD} AS spent_usd,
       s.held_pico_usd,
       s.held_pico_usd * {_TO_USD} AS held_usd,
       b.limit_pico_usd - s.spent_pico_usd - s.held_pico_usd AS remaining_pico_usd,
       (b.limit_pico_usd - s.spent_pico_usd - s.held_pico_usd) * {_TO_USD} AS remaining_usd,
       -- Rounded half up to 4 decimals by integer division, exact where numeric division
       -- would first round to a scale of its own choosing.
       div(s.spent_pico_usd * 2000000 + b.limit_pico_usd, nullif(2 * b.limit_pico_usd, 0))
           * 0.0001 AS used_percent,
       CASE WHEN a.top_crossed IS NULL THEN 'ok'
            WHEN a.top_crossed >= 1 THEN 'exceeded'
            WHEN a.below_one > 1 AND a.top_crossed = a.top_below_one THEN 'critical'
            ELSE 'warning' END AS alert_level,
       b.version AS budget_version, b.created_at, b.updated_at
FROM public.budgets b
LEFT JOIN LATERAL (
    SELECT p.period_start, p.period_end, p.spent_pico_usd, p.held_pico_usd
    FROM public.budget_periods p
    WHERE p.org = b.org AND p.budget_id = b.budget_id
      AND p.period_start <= now() AND now() < p.period_end
    ORDER BY p.period_start DESC
    LIMIT 1
) AS p ON true
-- Scalar subqueries, so that the bounds are computed only for a budget with no row.
CROSS JOIN LATERAL (
    SELECT coalesce(p.period_start, (
               SELECT c.period_start
               FROM reporting.budget_period_bounds(b.period, b.timezone, now()) AS c
           )) AS period_start,
           coalesce(p.period_end, (
               SELECT c.period_end
               FROM reporting.budget_period_bounds(b.period, b.timezone, now()) AS c
           )) AS period_end,
           coalesce(p.spent_pico_usd, 0) AS spent_pico_usd,
           coalesce(p.held_pico_usd, 0) AS held_pico_usd
) AS s
-- Levels as app/budgets/model.py alert_level: exceeded at a threshold >= 1, critical at the
-- highest below 1 (when there are several below 1), else warning; spent only, holds aside.
CROSS JOIN LATERAL (
    SELECT max(t.value) FILTER (WHERE s.spent_pico_usd >= t.value * b.limit_pico_usd)
               AS top_crossed,
           max(t.value) FILTER (WHERE t.value < 1) AS top_below_one,
           count(*) FILTER (WHERE t.value < 1) AS below_one
    FROM (SELECT threshold::numeric AS value FROM unnest(b.alert_thresholds) AS threshold) AS t
) AS a;

-- One row per request: every reservation, and every charge made without one (record_usage:
-- a `committed` event with no reservation and "direct": true), in state `recorded` as
-- GET /v1/requests/{{id}} names it. Model and provider are the
-- ones named when the request began, else those of its first message (one index probe, made
-- only when the column is read and the request named none).
CREATE VIEW reporting.request_log AS
SELECT r.org, r.request_id, r.reservation_id,
       'reservation'::text AS kind,
       r.state,
       r.reserved_at AS requested_at,
       r.amount_pico_usd::numeric AS reserved_pico_usd,
       r.amount_pico_usd * {_TO_USD} AS reserved_usd,
       CASE WHEN r.state = 'held' THEN r.amount_pico_usd ELSE 0 END::numeric AS held_pico_usd,
       CASE WHEN r.state = 'held' THEN r.amount_pico_usd ELSE 0 END * {_TO_USD} AS held_usd,
       r.cost_pico_usd::numeric AS cost_pico_usd,
       r.cost_pico_usd * {_TO_USD} AS cost_usd,
       coalesce(r.model, (
           SELECT m.payload->>'model' FROM public.ledger_events m
           WHERE m.org = r.org AND m.reservation_id = r.reservation_id
             AND m.event_type = 'usage_recorded'
           ORDER BY m.seq LIMIT 1)) AS model,
       coalesce(r.provider, (
           SELECT m.payload->>'provider' FROM public.ledger_events m
           WHERE m.org = r.org AND m.reservation_id = r.reservation_id
             AND m.event_type = 'usage_recorded'
           ORDER BY m.seq LIMIT 1)) AS provider,
       r.subjects,
       r.metadata,
       r.reserved_at,
       r.expires_at,
       r.settled_at,
       extract(epoch FROM r.settled_at - r.reserved_at) AS seconds_to_settle,
       r.overrun,
       r.late
FROM public.reservations r
UNION ALL
SELECT e.org, e.request_id, NULL::uuid,
       'direct'::text,
       'recorded'::text,
       e.occurred_at,
       NULL::numeric,
       NULL::numeric,
       0::numeric,
       0::numeric * {_TO_USD},
       e.amount_pico_usd::numeric,
       e.amount_pico_usd * {_TO_USD},
       coalesce(e.payload->>'model', (
           SELECT m.payload->>'model' FROM public.ledger_events m
           WHERE m.org = e.org AND m.request_id = e.request_id
             AND m.event_type = 'usage_recorded' AND m.reservation_id IS NULL
           ORDER BY m.seq LIMIT 1)),
       coalesce(e.payload->>'provider', (
           SELECT m.payload->>'provider' FROM public.ledger_events m
           WHERE m.org = e.org AND m.request_id = e.request_id
             AND m.event_type = 'usage_recorded' AND m.reservation_id IS NULL
           ORDER BY m.seq LIMIT 1)),
       coalesce(e.payload->'subjects', '[]'::jsonb),
       '{{}}'::jsonb,
       NULL::timestamptz,
       NULL::timestamptz,
       e.occurred_at,
       NULL::numeric,
       coalesce((e.payload->>'overrun')::boolean, false),
       false
FROM public.ledger_events e
WHERE e.event_type = 'committed' AND e.reservation_id IS NULL;

-- Every org with spend, a budget or a request, for a dashboard's org picker. The rollups and
-- reservations are walked one org at a time down their primary keys (a loose index scan)
-- rather than read whole.
CREATE VIEW reporting.orgs AS
WITH RECURSIVE rolled(org) AS (
    SELECT min(org) FROM public.rollup_daily
    UNION ALL
    SELECT (SELECT min(d.org) FROM public.rollup_daily d WHERE d.org > rolled.org)
    FROM rolled WHERE rolled.org IS NOT NULL
), reserved(org) AS (
    SELECT min(org) FROM public.reservations
    UNION ALL
    SELECT (SELECT min(r.org) FROM public.reservations r WHERE r.org > reserved.org)
    FROM reserved WHERE reserved.org IS NOT NULL
)
SELECT org FROM rolled WHERE org IS NOT NULL
UNION
SELECT org FROM reserved WHERE org IS NOT NULL
UNION
SELECT org FROM public.budgets
UNION
SELECT org FROM reporting.unfolded_usage();

COMMENT ON VIEW reporting.spend_hourly IS 'All spend per UTC hour, model, provider, call type, endpoint; exact.';
COMMENT ON VIEW reporting.spend_daily IS 'All spend per UTC day, model, provider, call type, endpoint; exact.';
COMMENT ON VIEW reporting.spend_monthly IS 'All spend per UTC month, model, provider, call type, endpoint; exact.';
COMMENT ON VIEW reporting.spend_by_subject_hourly IS 'Each subject''s spend per UTC hour; exact.';
COMMENT ON VIEW reporting.spend_by_subject_daily IS 'Each subject''s spend per UTC day; exact.';
COMMENT ON VIEW reporting.spend_by_subject_monthly IS 'Each subject''s spend per UTC month; exact.';
COMMENT ON VIEW reporting.spend_by_tag_hourly IS 'Each tag''s spend per UTC hour; exact.';
COMMENT ON VIEW reporting.spend_by_tag_daily IS 'Each tag''s spend per UTC day; exact.';
COMMENT ON VIEW reporting.spend_by_tag_monthly IS 'Each tag''s spend per UTC month; exact.';
COMMENT ON VIEW reporting.budget_status IS 'Every budget in its current period, with its alert level.';
COMMENT ON VIEW reporting.request_log IS 'One row per request: reservations and direct charges.';
COMMENT ON VIEW reporting.orgs IS 'Every org with spend, a budget or a request.';

-- The reader gets the views and what they call, nothing else; the service's role likewise.
REVOKE ALL ON FUNCTION reporting.unfolded_usage() FROM PUBLIC;
REVOKE ALL ON FUNCTION reporting.local_instant(timestamp, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION reporting.budget_period_bounds(text, text, timestamptz) FROM PUBLIC;
GRANT USAGE ON SCHEMA reporting TO usage_ledger_reader, usage_ledger_app;
GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO usage_ledger_reader, usage_ledger_app;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA reporting TO usage_ledger_reader, usage_ledger_app;
"""

# The role stays: it is shared by every database of the cluster, like usage_ledger_app.
DOWNGRADE = r"""
DROP SCHEMA reporting CASCADE;
DROP INDEX ix_ledger_events_direct_commits;
DROP INDEX ix_reservations_org_reserved_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
