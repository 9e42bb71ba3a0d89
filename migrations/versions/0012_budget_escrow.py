"""Escrow slices for hot budgets (docs/ledger.md, "Hot budgets: escrow slices").

A budget with ``escrow_slices`` N > 1 keeps each period's headroom (limit - spent - held) split
over N rows of ``budget_slices``; a reservation takes from one slice under that slice's row lock
instead of the budget's. A period's true spent and held are its ``budget_periods`` row plus the
sum of its slices: ``budget_period_totals`` is that sum, and every reader uses it (the status
endpoint, alerts, the reporting view, replay's comparison).

``fillfactor = 50``: a slice row is updated by every hold and release, and the free space keeps
those updates HOT (no index column changes), so the table does not bloat under a hot budget.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-22
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_TO_USD = "0.000000000001"

UPGRADE = r"""
ALTER TABLE budgets ADD COLUMN escrow_slices integer NOT NULL DEFAULT 1
    CONSTRAINT ck_budgets_escrow_slices CHECK (escrow_slices BETWEEN 1 AND 64);

CREATE TABLE budget_slices (
    org               text           NOT NULL,
    budget_id         uuid           NOT NULL,
    period_start      timestamptz    NOT NULL,
    slice             integer        NOT NULL,
    period_end        timestamptz    NOT NULL,
    -- The budget version the headroom was pooled under; a reservation that read another
    -- version of the budget goes the slow way (a change re-pools every slice).
    budget_version    integer        NOT NULL,
    -- Open: reservations may take from this slice's headroom without the budget's lock.
    is_open           boolean        NOT NULL,
    headroom_pico_usd numeric(38, 0) NOT NULL,
    spent_pico_usd    numeric(38, 0) NOT NULL DEFAULT 0,
    held_pico_usd     numeric(38, 0) NOT NULL DEFAULT 0,
    CONSTRAINT pk_budget_slices PRIMARY KEY (org, budget_id, period_start, slice),
    CONSTRAINT ck_budget_slices_slice CHECK (slice BETWEEN 0 AND 63)
) WITH (fillfactor = 50);

GRANT SELECT, INSERT, UPDATE ON budget_slices TO usage_ledger_app;

-- A period's spent and held: its row plus its slices (a sliced period always has its row).
CREATE VIEW budget_period_totals AS
SELECT p.org, p.budget_id, p.period_start, p.period_end,
       (p.spent_pico_usd + coalesce(s.spent_pico_usd, 0))::numeric(38, 0) AS spent_pico_usd,
       (p.held_pico_usd + coalesce(s.held_pico_usd, 0))::numeric(38, 0) AS held_pico_usd
FROM budget_periods p
LEFT JOIN LATERAL (
    SELECT sum(x.spent_pico_usd) AS spent_pico_usd, sum(x.held_pico_usd) AS held_pico_usd
    FROM budget_slices x
    WHERE x.org = p.org AND x.budget_id = p.budget_id AND x.period_start = p.period_start
) AS s ON true;

GRANT SELECT ON budget_period_totals TO usage_ledger_app;

CREATE OR REPLACE VIEW reporting.budget_status AS
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
    FROM public.budget_period_totals p
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
"""

DOWNGRADE = r"""
CREATE OR REPLACE VIEW reporting.budget_status AS
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

DROP VIEW budget_period_totals;
DROP TABLE budget_slices;
ALTER TABLE budgets DROP COLUMN escrow_slices;
"""


def upgrade() -> None:
    op.execute(UPGRADE.replace("{_TO_USD}", _TO_USD))


def downgrade() -> None:
    op.execute(DOWNGRADE.replace("{_TO_USD}", _TO_USD))
