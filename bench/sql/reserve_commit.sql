-- One reserve -> commit pair in plain SQL, as app/budgets/holds.py does it: the same two
-- transactions, the same lock order, the same rows and event payloads; none of the service's
-- extra reads (API key, reservation lookups, idempotency pre-check). bench/ledger.py runs it as
--
--   PGOPTIONS='-c lock_timeout=5000 -c timezone=UTC' pgbench -n -M prepared -f THIS_FILE \
--     -D org=bench-raw -D scenario=1 -D keys=10000 -D teams=100 \
--     -D metadata='{"endpoint": ...}' -D priced_by=SHA -D quote='{...}' -c N -T S DBNAME
--
-- scenario 1 (a): one key budget of `keys`; 2 (b): one hot team budget; 3 (c): key + team + the
-- hot org budget. Budgets are monthly (period bounds computed here as the service does for
-- "month"), limits high enough never to refuse; a refusal rolls back and skips the commit,
-- which bench/ledger.py counts by comparing pgbench's pairs with the committed reservations.
-- `quote` is one message's price breakdown (constant: it only sizes the stored commit
-- response like the service's).
\set k random(1, :keys)
\set team :k % :teams
\set prompt random(500, 3000)
\set completion random(50, 800)
\set cost :prompt * 2500000 + :completion * 10000000
\set amount 50000000000

-- Reserve ----------------------------------------------------------------------------------
BEGIN;
-- 1. the idempotency key (request_id) first
INSERT INTO idempotency_keys AS i (org, operation, key, fingerprint)
VALUES (:org, 'reserve', 'raw-' || gen_random_uuid(),
        encode(sha256(convert_to(:k::text || '/' || :prompt::text, 'UTF8')), 'hex'))
ON CONFLICT DO NOTHING RETURNING i.key AS request_id \gset
-- 2. every budget of the subjects, row-locked in budget_id order
\if :scenario = 1
SELECT array_agg(budget_id ORDER BY budget_id)::text AS budget_ids,
       array_agg(limit_pico_usd ORDER BY budget_id)::text AS limits,
       array_agg(mode ORDER BY budget_id)::text AS modes,
       array_agg(timezone ORDER BY budget_id)::text AS zones,
       jsonb_agg(jsonb_build_object('type', subject_type, 'id', subject_id)
                 ORDER BY budget_id)::text AS budget_subjects,
       jsonb_agg(jsonb_build_object('type', subject_type, 'id', subject_id)
                 ORDER BY subject_type, subject_id)::text AS subjects
FROM (SELECT * FROM budgets
      WHERE org = :org
        AND (subject_type, subject_id) IN (('key', 'a-k' || lpad(:k::text, 5, '0')))
      ORDER BY budget_id FOR UPDATE) AS locked \gset
\elif :scenario = 2
SELECT array_agg(budget_id ORDER BY budget_id)::text AS budget_ids,
       array_agg(limit_pico_usd ORDER BY budget_id)::text AS limits,
       array_agg(mode ORDER BY budget_id)::text AS modes,
       array_agg(timezone ORDER BY budget_id)::text AS zones,
       jsonb_agg(jsonb_build_object('type', subject_type, 'id', subject_id)
                 ORDER BY budget_id)::text AS budget_subjects,
       jsonb_agg(jsonb_build_object('type', subject_type, 'id', subject_id)
                 ORDER BY subject_type, subject_id)::text AS subjects
FROM (SELECT * FROM budgets
      WHERE org = :org AND (subject_type, subject_id) IN (('team', 'b-hot'))
      ORDER BY budget_id FOR UPDATE) AS locked \gset
\else
SELECT array_agg(budget_id ORDER BY budget_id)::text AS budget_ids,
       array_agg(limit_pico_usd ORDER BY budget_id)::text AS limits,
       array_agg(mode ORDER BY budget_id)::text AS modes,
       array_agg(timezone ORDER BY budget_id)::text AS zones,
       jsonb_agg(jsonb_build_object('type', subject_type, 'id', subject_id)
                 ORDER BY budget_id)::text AS budget_subjects,
       jsonb_agg(jsonb_build_object('type', subject_type, 'id', subject_id)
                 ORDER BY subject_type, subject_id)::text AS subjects
FROM (SELECT * FROM budgets
      WHERE org = :org
        AND (subject_type, subject_id) IN (('key', 'c-k' || lpad(:k::text, 5, '0')),
                                           ('team', 'c-t' || lpad(:team::text, 3, '0')),
                                           ('org', 'c-org'))
      ORDER BY budget_id FOR UPDATE) AS locked \gset
\endif
-- 3. hold the amount in each budget's current period (the row is created on first use) and
--    check the hard limits on the balances after the change
WITH d AS (
    SELECT u.budget_id, u.limit_pico_usd, u.mode, u.subject,
           date_trunc('month', now(), u.zone) AS period_start,
           (date_trunc('month', now() AT TIME ZONE u.zone) + interval '1 month')
               AT TIME ZONE u.zone AS period_end
    FROM unnest(:budget_ids::uuid[], :limits::numeric[], :modes::text[], :zones::text[],
                ARRAY(SELECT jsonb_array_elements(:budget_subjects::jsonb)))
         AS u(budget_id, limit_pico_usd, mode, zone, subject)
), up AS (
    INSERT INTO budget_periods AS p
        (org, budget_id, period_start, period_end, spent_pico_usd, held_pico_usd)
    SELECT :org, budget_id, period_start, period_end, 0, :amount::numeric
    FROM d ORDER BY budget_id
    ON CONFLICT (org, budget_id, period_start) DO UPDATE
        SET spent_pico_usd = p.spent_pico_usd + excluded.spent_pico_usd,
            held_pico_usd = p.held_pico_usd + excluded.held_pico_usd
    RETURNING p.budget_id, p.period_start, p.period_end, p.spent_pico_usd, p.held_pico_usd
)
SELECT bool_and(d.mode <> 'hard'
                OR d.limit_pico_usd - up.spent_pico_usd - up.held_pico_usd >= 0)::int AS fits,
       jsonb_agg(jsonb_build_object('budget_id', up.budget_id, 'period_start', up.period_start,
                                    'period_end', up.period_end)
                 ORDER BY up.budget_id)::text AS holds,
       jsonb_agg(jsonb_build_object('budget_id', up.budget_id, 'period_start', up.period_start,
                                    'period_end', up.period_end, 'spent_pico_usd', 0,
                                    'held_pico_usd', :amount::numeric)
                 ORDER BY up.budget_id)::text AS deltas,
       jsonb_agg(jsonb_build_object('budget_id', up.budget_id, 'subject', d.subject,
                                    'mode', d.mode, 'limit_pico_usd', d.limit_pico_usd,
                                    'remaining_pico_usd',
                                    d.limit_pico_usd - up.spent_pico_usd - up.held_pico_usd)
                 ORDER BY up.budget_id)::text AS remaining
FROM up JOIN d USING (budget_id) \gset
\if :fits
-- 4. the reservation row
INSERT INTO reservations (org, reservation_id, request_id, state, amount_pico_usd, subjects,
                          holds, model, provider, metadata, reserved_at, expires_at, overrun,
                          late, version)
VALUES (:org, gen_random_uuid(), :request_id, 'held', :amount::numeric, :subjects::jsonb,
        :holds::jsonb, 'gpt-4o', NULL, :metadata::jsonb, now(),
        now() + interval '600 seconds', false, false, 1)
RETURNING reservation_id \gset
-- 5. the event
INSERT INTO ledger_events (org, event_type, schema_version, request_id, reservation_id,
                           budget_ids, amount_pico_usd, payload, occurred_at)
VALUES (:org, 'reserved', 1, :request_id, :reservation_id::uuid, :budget_ids::uuid[],
        :amount::numeric,
        jsonb_build_object('subjects', :subjects::jsonb, 'holds', :holds::jsonb,
                           'deltas', :deltas::jsonb,
                           'expires_at', now() + interval '600 seconds',
                           'model', 'gpt-4o', 'provider', NULL::text,
                           'metadata', :metadata::jsonb, 'version', 1),
        now());
-- 6. the response, for retries
UPDATE idempotency_keys
SET response = jsonb_build_object(
        'org', :org::text, 'reservation_id', :reservation_id::text,
        'request_id', :request_id::text, 'state', 'held', 'amount_pico_usd', :amount::numeric,
        'expires_at', now() + interval '600 seconds', 'budgets', :remaining::jsonb,
        'details', '{}'::jsonb)
WHERE org = :org AND operation = 'reserve' AND key = :request_id;
COMMIT;

-- Commit -----------------------------------------------------------------------------------
BEGIN;
-- 1. the idempotency key (the reservation)
INSERT INTO idempotency_keys AS i (org, operation, key, fingerprint)
VALUES (:org, 'commit', :reservation_id,
        encode(sha256(convert_to(:prompt::text || '/' || :completion::text, 'UTF8')), 'hex'))
ON CONFLICT DO NOTHING RETURNING i.key AS commit_key \gset
-- 2. the reservation row, locked
SELECT request_id AS r_request_id, state AS r_state, amount_pico_usd AS r_amount,
       holds::text AS r_holds, subjects::text AS r_subjects, version AS r_version,
       (now() > expires_at)::int AS r_late
FROM reservations WHERE org = :org AND reservation_id = :reservation_id::uuid
FOR UPDATE \gset
-- 3. the budgets it holds money in, locked in budget_id order
SELECT array_agg(budget_id ORDER BY budget_id)::text AS c_budget_ids,
       array_agg(limit_pico_usd ORDER BY budget_id)::text AS c_limits
FROM (SELECT budget_id, limit_pico_usd FROM budgets
      WHERE org = :org
        AND budget_id IN (SELECT (h ->> 'budget_id')::uuid
                          FROM jsonb_array_elements(:r_holds::jsonb) AS h)
      ORDER BY budget_id FOR UPDATE) AS locked \gset
-- 4. release the hold and charge the cost in the reservation's periods
WITH h AS (
    SELECT (h ->> 'budget_id')::uuid AS budget_id,
           (h ->> 'period_start')::timestamptz AS period_start,
           (h ->> 'period_end')::timestamptz AS period_end
    FROM jsonb_array_elements(:r_holds::jsonb) AS h
), up AS (
    INSERT INTO budget_periods AS p
        (org, budget_id, period_start, period_end, spent_pico_usd, held_pico_usd)
    SELECT :org, budget_id, period_start, period_end, :cost::numeric, - :r_amount::numeric
    FROM h ORDER BY budget_id, period_start
    ON CONFLICT (org, budget_id, period_start) DO UPDATE
        SET spent_pico_usd = p.spent_pico_usd + excluded.spent_pico_usd,
            held_pico_usd = p.held_pico_usd + excluded.held_pico_usd
    RETURNING p.budget_id, p.period_start, p.period_end, p.spent_pico_usd, p.held_pico_usd
)
SELECT jsonb_agg(jsonb_build_object('budget_id', up.budget_id,
                                    'period_start', up.period_start,
                                    'period_end', up.period_end,
                                    'spent_pico_usd', :cost::numeric,
                                    'held_pico_usd', - :r_amount::numeric)
                 ORDER BY up.budget_id)::text AS c_deltas,
       coalesce(jsonb_agg(up.budget_id::text ORDER BY up.budget_id)
                    FILTER (WHERE up.spent_pico_usd + up.held_pico_usd > l.limit_pico_usd),
                '[]'::jsonb)::text AS c_flagged
FROM up JOIN unnest(:c_budget_ids::uuid[], :c_limits::numeric[]) AS l(budget_id, limit_pico_usd)
    USING (budget_id) \gset
-- 5. the reservation's new state
UPDATE reservations
SET state = 'committed', cost_pico_usd = :cost::numeric, settled_at = now(),
    overrun = :cost::numeric > :r_amount::numeric, late = :r_late::int = 1,
    version = :r_version::int + 1
WHERE org = :org AND reservation_id = :reservation_id::uuid;
-- 6. the events: committed, then one usage_recorded for the one message
INSERT INTO ledger_events (org, event_type, schema_version, request_id, reservation_id,
                           budget_ids, amount_pico_usd, payload, occurred_at)
VALUES (:org, 'committed', 1, :r_request_id, :reservation_id::uuid, :c_budget_ids::uuid[],
        :cost::numeric,
        jsonb_build_object('held_pico_usd', :r_amount::numeric,
                           'overrun', :cost::numeric > :r_amount::numeric,
                           'late', :r_late::int = 1, 'subjects', :r_subjects::jsonb,
                           'deltas', :c_deltas::jsonb, 'messages', 1,
                           'flagged_budgets', :c_flagged::jsonb, 'model', 'gpt-4o',
                           'provider', NULL::text, 'version', :r_version::int + 1),
        now()),
       (:org, 'usage_recorded', 2, :r_request_id, :reservation_id::uuid, '{}', :cost::numeric,
        jsonb_build_object('cost_pico_usd', :cost::numeric, 'model', 'gpt-4o',
                           'provider', 'openai', 'call_type', 'chat',
                           'prompt_tokens', :prompt::int, 'completion_tokens', :completion::int,
                           'cache_read_tokens', 0, 'cache_creation_tokens', 0,
                           'cache_creation_1h_tokens', 0, 'reasoning_tokens', 0,
                           'ttft_ms', NULL::int, 'duration_ms', NULL::int,
                           'model_key', 'gpt-4o', 'priced_by', :priced_by::text,
                           'units', '{}'::jsonb, 'metadata', :metadata::jsonb,
                           'subjects', :r_subjects::jsonb, 'message_index', 0),
        now());
-- 7. the response, for retries
UPDATE idempotency_keys
SET response = jsonb_build_object(
        'org', :org::text, 'request_id', :r_request_id::text,
        'reservation_id', :reservation_id::text, 'cost_pico_usd', :cost::numeric,
        'held_pico_usd', :r_amount::numeric, 'overrun', :cost::numeric > :r_amount::numeric,
        'late', :r_late::int = 1, 'flagged_budgets', :c_flagged::jsonb,
        'details', jsonb_build_object('messages', jsonb_build_array(:quote::jsonb)))
WHERE org = :org AND operation = 'commit' AND key = :reservation_id;
COMMIT;
\else
ROLLBACK;
\endif
