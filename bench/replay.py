"""``usage-ledger replay --verify`` over 10,000,000 events: events/s, peak RSS, the verdict.

Run (PostgreSQL at 127.0.0.1:5432, trust auth; the bench uses a database of its own):

    make bench-replay
    # or: .venv/bin/python bench/replay.py [--events 10000000] [--reuse | --recreate] [--drop]

1. Load (skipped with ``--reuse`` when ``ul_bench_replay`` holds a finished load). Creates and
   migrates the database, then the *seed*: through the real service code
   (``app.budgets.service.define_budget`` and ``app.budgets.holds``), every budget (2,000 keys,
   50 teams, one org; month in UTC, week in Europe/Berlin, month in America/New_York) and a few
   hundred requests of every kind, including a small budget that raises alerts. Then the
   *bulk*: requests generated inside PostgreSQL (``INSERT ... SELECT`` over
   ``generate_series``, one transaction per batch under the 2^20-events-per-transaction
   limit; the seq trigger assigns seq) with the payload shapes the service writes (checked
   against the seed's events before loading): 60% reserve -> commit, 10% reserve -> extend ->
   commit, 8% cancelled, 4% expired, 1% still held, 17% direct charges; 1-3 messages
   (``usage_recorded``) per charge, some overruns and late commits. The projections of the
   bulk (``reservations``, ``budget_periods``) are computed from the generator's plan, not
   from the events, so the replay checks the generator as much as the generator checks the
   replay: a first run that finds differences means one of them is wrong. Then the rollups
   are folded by ``app.reports.rollups.fold_all`` (the real folder) and VACUUM (ANALYZE).
2. Measure. Runs ``usage-ledger replay --verify --progress`` as a subprocess and prints the
   events, seconds, events/s, the process's peak RSS and the verdict.

``--reuse`` measures a database loaded by an earlier run; ``--recreate`` drops it and loads
again; ``--drop`` drops it at the end. No other database is touched, no server setting changed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import psycopg
from sqlalchemy import Engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _server import (  # noqa: E402
    create_database,
    database_url,
    drop_database,
    plain,
    read_meta,
    write_meta,
)

from app.budgets import holds  # noqa: E402
from app.budgets import service as budgets  # noqa: E402
from app.budgets.model import Subject  # noqa: E402
from app.db import migrate  # noqa: E402
from app.db.engine import make_engine  # noqa: E402
from app.ledger.records import UsageRecord  # noqa: E402
from app.reports import rollups  # noqa: E402

ORG = "acme"
KEYS = 2000
TEAMS = 50
GOAL_EVENTS_PER_SECOND = 100_000
# Events per request averages about 3.2, so a batch of this many requests stays well under
# the 1,048,576 events one transaction may write (the seq trigger's limit).
BATCH_REQUESTS = 250_000
LIMIT_PICO_USD = 10**24  # far above any period's spend: the bulk raises no alert
MODELS = (
    ("gpt-4o", "openai", "chat", "/v1/chat/completions"),
    ("gpt-4o-mini", "openai", "chat", "/v1/responses"),
    ("claude-sonnet-4-5", "anthropic", "chat", "/v1/messages"),
    ("claude-haiku-4-5", "anthropic", "chat", "/v1/messages"),
    ("gemini-2.5-flash", "gemini", "chat", "/v1/chat/completions"),
    ("text-embedding-3-small", "openai", "embedding", "/v1/embeddings"),
    ("deepseek-chat", "deepseek", "chat", "/v1/chat/completions"),
    ("mistral-large-latest", "mistral", "chat", "/v1/chat/completions"),
)


def budget_uuid(name: str) -> UUID:
    """The bulk SQL computes the same ids as ``md5(name)::uuid``."""
    return UUID(hashlib.md5(name.encode()).hexdigest())


def key_subject(k: int) -> Subject:
    return Subject("key", f"key-{k:04d}")


def team_subject(t: int) -> Subject:
    return Subject("team", f"team-{t:02d}")


# ---------------------------------------------------------------------------------------------
# Database housekeeping


# ---------------------------------------------------------------------------------------------
# The seed: budgets and a few hundred requests through the service itself.


def seed(engine: Engine, start: datetime) -> int:
    """Budgets and requests of every kind through the service; returns the events written."""
    at = start - timedelta(days=1)
    with engine.begin() as conn:
        budgets.define_budget(
            conn, org=ORG, subject=Subject("org", ORG), limit_pico_usd=LIMIT_PICO_USD,
            period="month", timezone="America/New_York",
            budget_id=budget_uuid("budget-org"), now=at,
        )  # fmt: skip
        for t in range(TEAMS):
            budgets.define_budget(
                conn, org=ORG, subject=team_subject(t), limit_pico_usd=LIMIT_PICO_USD,
                period="week", timezone="Europe/Berlin",
                budget_id=budget_uuid(f"budget-team-{t}"), now=at,
            )  # fmt: skip
        for k in range(KEYS):
            budgets.define_budget(
                conn, org=ORG, subject=key_subject(k), limit_pico_usd=LIMIT_PICO_USD,
                period="month", timezone="UTC", mode="hard" if k % 3 else "soft",
                budget_id=budget_uuid(f"budget-key-{k}"), now=at,
            )  # fmt: skip
        # A small budget whose charges cross its thresholds: alert_raised events and rows.
        budgets.define_budget(
            conn, org=ORG, subject=Subject("project", "alerts-demo"), limit_pico_usd=10**11,
            period="day", timezone="UTC", mode="soft", now=at,
        )  # fmt: skip
    cent = 10**10
    for n in range(300):
        now = at + timedelta(seconds=60 * n)
        k = n % 40
        subjects = [key_subject(k), team_subject(k % TEAMS), Subject("org", ORG)]
        if n % 25 == 0:
            subjects.append(Subject("project", "alerts-demo"))
        model, provider, call_type, endpoint = MODELS[n % len(MODELS)]
        records = [
            UsageRecord(
                cost_pico_usd=cent * (m + 1),
                model=model,
                provider=provider,
                call_type=call_type,
                prompt_tokens=900 + n,
                completion_tokens=120 + m,
                ttft_ms=300,
                duration_ms=1800,
                model_key=model,
                priced_by="litellm",
                metadata={"endpoint": endpoint, "tags": ["prod"]},
            )
            for m in range(1 + n % 3)
        ]
        cost = sum(r.cost_pico_usd for r in records)
        with engine.begin() as conn:
            if n % 6 == 5:
                holds.record_usage(
                    conn, org=ORG, request_id=f"seed-{n}", subjects=subjects,
                    cost_pico_usd=cost, records=records, model=model, provider=provider,
                    now=now,
                )  # fmt: skip
                continue
            reservation = holds.reserve(
                conn, org=ORG, request_id=f"seed-{n}", subjects=subjects,
                amount_pico_usd=5 * cent, ttl_seconds=600, model=model, provider=provider,
                metadata={"endpoint": endpoint}, now=now,
            )  # fmt: skip
        rid = reservation.reservation_id
        with engine.begin() as conn:
            if n % 6 == 1:
                holds.extend(
                    conn, org=ORG, reservation_id=rid, amount_pico_usd=8 * cent,
                    ttl_seconds=900, now=now + timedelta(seconds=2),
                )  # fmt: skip
            if n % 6 == 2:
                holds.cancel(conn, org=ORG, reservation_id=rid, now=now + timedelta(seconds=3))
            elif n % 6 == 3:
                holds.expire_one(conn, org=ORG, reservation_id=rid, now=now + timedelta(hours=1))
            elif n % 6 != 4 or n % 12 == 4:  # else still held
                holds.commit_reservation(
                    conn, org=ORG, reservation_id=rid, cost_pico_usd=cost, records=records,
                    now=now + timedelta(seconds=5 if n % 7 else 700),
                )  # fmt: skip
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM ledger_events")).scalar_one())


# ---------------------------------------------------------------------------------------------
# The bulk: a plan of requests, their events, and the projections they imply, all in SQL.

# One row per request. Pseudo-random draws are hashint8extended(i, n), independent per n.
_PLAN = """
CREATE TEMP TABLE bench_plan ON COMMIT DROP AS
WITH base AS (
    SELECT i,
           abs(hashint8extended(i, 1)) % 100 AS roll,
           abs(hashint8extended(i, 2)) % 10 AS mroll,
           floor(%(keys)s * power((abs(hashint8extended(i, 3)) % 1000000) / 1e6, 2))::int AS k,
           1000000000 + abs(hashint8extended(i, 4)) % 99000000000 AS amount,
           abs(hashint8extended(i, 5)) % 100 AS share,
           abs(hashint8extended(i, 6)) %% 997 AS quirk,
           abs(hashint8extended(i, 7)) %% 8 + 1 AS model,
           %(start)s::timestamptz
               + make_interval(secs => (i * %(span)s::float8 / %(requests)s)) AS t
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS i
), kinds AS (
    SELECT *,
           CASE WHEN roll < 60 THEN 'commit' WHEN roll < 70 THEN 'extend'
                WHEN roll < 78 THEN 'cancel' WHEN roll < 82 THEN 'expire'
                WHEN roll < 83 THEN 'held' ELSE 'direct' END AS kind,
           CASE WHEN mroll < 6 THEN 1 WHEN mroll < 9 THEN 2 ELSE 3 END AS m,
           k %% %(teams)s AS team
    FROM base
), costed AS (
    SELECT *,
           CASE WHEN kind = 'extend' THEN amount * 2 ELSE amount END AS final_amount,
           -- 1 in 50 costs more than its hold (an overrun); the rest 20-89% of it.
           CASE WHEN quirk %% 50 = 0 THEN (amount * 3) / m ELSE (amount * (20 + share) / 100) / m
           END AS message_cost
    FROM kinds
)
SELECT i, kind, m, k, team, t, amount, final_amount, message_cost,
       m * message_cost + m * (m - 1) / 2 AS cost,
       kind IN ('commit', 'extend') AND m * message_cost + m * (m - 1) / 2 > final_amount
           AS overrun,
       kind = 'commit' AND quirk %% 40 = 1 AS late,
       (ARRAY[%(models)s])[model] AS model_name,
       (ARRAY[%(providers)s])[model] AS provider,
       (ARRAY[%(call_types)s])[model] AS call_type,
       (ARRAY[%(endpoints)s])[model] AS endpoint,
       'req_' || lpad(to_hex(i), 12, '0') AS request_id,
       CASE WHEN kind <> 'direct' THEN md5('reservation-' || i)::uuid END AS reservation_id,
       md5('budget-key-' || k)::uuid AS key_budget,
       md5('budget-team-' || (k %% %(teams)s))::uuid AS team_budget,
       md5('budget-org')::uuid AS org_budget,
       date_trunc('month', t, 'UTC') AS key_start,
       (date_trunc('month', t, 'UTC') AT TIME ZONE 'UTC' + interval '1 month')
           AT TIME ZONE 'UTC' AS key_end,
       date_trunc('week', t, 'Europe/Berlin') AS team_start,
       (date_trunc('week', t, 'Europe/Berlin') AT TIME ZONE 'Europe/Berlin' + interval '7 days')
           AT TIME ZONE 'Europe/Berlin' AS team_end,
       date_trunc('month', t, 'America/New_York') AS org_start,
       (date_trunc('month', t, 'America/New_York') AT TIME ZONE 'America/New_York'
           + interval '1 month') AT TIME ZONE 'America/New_York' AS org_end,
       t + interval '600 seconds' AS expires_at,
       t + interval '900 seconds' AS extended_expires_at,
       t + CASE WHEN quirk %% 40 = 1 THEN interval '700 seconds' ELSE interval '5 seconds' END
           AS settled_at
FROM costed
"""

# Python's isoformat of a UTC datetime, which is how the service writes instants.
_ISO = "(to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '+00:00')"
_ISO_SECONDS = "(to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') || '+00:00')"


def _deltas(spent: str, held: str) -> str:
    parts = []
    for who in ("key", "team", "org"):
        parts.append(
            f"jsonb_build_object('budget_id', p.{who}_budget::text,"
            f" 'period_start', {_ISO_SECONDS.format(f'p.{who}_start')},"
            f" 'period_end', {_ISO_SECONDS.format(f'p.{who}_end')},"
            f" 'spent_pico_usd', {spent}, 'held_pico_usd', {held})"
        )
    return f"jsonb_build_array({', '.join(parts)})"


_HOLDS = "jsonb_build_array({})".format(
    ", ".join(
        f"jsonb_build_object('budget_id', p.{who}_budget::text,"
        f" 'period_start', {_ISO_SECONDS.format(f'p.{who}_start')},"
        f" 'period_end', {_ISO_SECONDS.format(f'p.{who}_end')})"
        for who in ("key", "team", "org")
    )
)
_SUBJECTS = (
    "jsonb_build_array(jsonb_build_object('type', 'key', 'id', 'key-' || lpad(p.k::text, 4, '0')),"
    f" jsonb_build_object('type', 'org', 'id', '{ORG}'),"
    " jsonb_build_object('type', 'team', 'id', 'team-' || lpad(p.team::text, 2, '0')))"
)

# Each request's events in order: step 0.. of its kind.
_STEP_TYPE = """
CASE p.kind
    WHEN 'commit' THEN CASE s WHEN 0 THEN 'reserved' WHEN 1 THEN 'committed'
                              ELSE 'usage_recorded' END
    WHEN 'extend' THEN CASE s WHEN 0 THEN 'reserved' WHEN 1 THEN 'extended'
                              WHEN 2 THEN 'committed' ELSE 'usage_recorded' END
    WHEN 'cancel' THEN CASE s WHEN 0 THEN 'reserved' ELSE 'cancelled' END
    WHEN 'expire' THEN CASE s WHEN 0 THEN 'reserved' ELSE 'expired' END
    WHEN 'held' THEN 'reserved'
    ELSE CASE s WHEN 0 THEN 'committed' ELSE 'usage_recorded' END
END
"""
_STEPS = """
CASE p.kind WHEN 'commit' THEN 2 + p.m WHEN 'extend' THEN 3 + p.m WHEN 'cancel' THEN 2
            WHEN 'expire' THEN 2 WHEN 'held' THEN 1 ELSE 1 + p.m END
"""
_FIRST_MESSAGE_STEP = "CASE p.kind WHEN 'commit' THEN 2 WHEN 'extend' THEN 3 ELSE 1 END"
# The version a reservation's event carries: 1 reserved, 2 extended, then the settlement.
_VERSION = "CASE WHEN e.event_type = 'reserved' THEN 1 WHEN e.event_type = 'extended' THEN 2" \
    " WHEN p.kind = 'extend' THEN 3 ELSE 2 END"  # fmt: skip


def _events_statement() -> str:
    usage_payload = (
        "jsonb_build_object('cost_pico_usd', p.message_cost + e.message,"
        " 'model', p.model_name, 'provider', p.provider, 'call_type', p.call_type,"
        " 'prompt_tokens', 400 + (p.i % 5000), 'completion_tokens', 50 + (p.i % 700),"
        " 'cache_read_tokens', CASE WHEN p.i % 3 = 0 THEN 200 + (p.i % 3000) ELSE 0 END,"
        " 'cache_creation_tokens', 0, 'cache_creation_1h_tokens', 0,"
        " 'reasoning_tokens', CASE WHEN p.i % 5 = 0 THEN 30 + (p.i % 400) ELSE 0 END,"
        " 'ttft_ms', 120 + (p.i % 800), 'duration_ms', 400 + (p.i % 9000),"
        " 'model_key', p.model_name, 'priced_by', 'litellm', 'units', '{}'::jsonb,"
        " 'metadata', jsonb_build_object('endpoint', p.endpoint,"
        "     'tags', CASE WHEN p.i % 4 = 0 THEN '[\"prod\", \"agents\"]'::jsonb"
        "                  ELSE '[\"prod\"]'::jsonb END),"
        f" 'subjects', {_SUBJECTS}, 'message_index', e.message)"
    )
    committed_payload = (
        "jsonb_build_object('held_pico_usd', CASE WHEN p.kind = 'direct' THEN 0"
        "     ELSE p.final_amount END,"
        " 'overrun', p.overrun, 'late', p.late,"
        f" 'subjects', {_SUBJECTS},"
        f" 'deltas', {_deltas('p.cost', 'CASE WHEN p.kind = ' + chr(39) + 'direct' + chr(39) + ' THEN 0 ELSE -p.final_amount END')},"  # noqa: E501
        " 'messages', p.m, 'flagged_budgets', '[]'::jsonb,"
        " 'model', p.model_name, 'provider', p.provider)"
        " || CASE WHEN p.kind = 'direct' THEN jsonb_build_object('direct', true)"
        f"    ELSE jsonb_build_object('version', {_VERSION}) END"
    )
    payload = f"""
CASE e.event_type
    WHEN 'reserved' THEN jsonb_build_object(
        'subjects', {_SUBJECTS}, 'holds', {_HOLDS}, 'deltas', {_deltas("0", "p.amount")},
        'expires_at', {_ISO.format("p.expires_at")}, 'model', p.model_name,
        'provider', p.provider, 'metadata', jsonb_build_object('endpoint', p.endpoint),
        'version', 1)
    WHEN 'extended' THEN jsonb_build_object(
        'previous_amount_pico_usd', p.amount, 'deltas', {_deltas("0", "p.amount")},
        'expires_at', {_ISO.format("p.extended_expires_at")}, 'version', 2)
    WHEN 'committed' THEN {committed_payload}
    WHEN 'cancelled' THEN jsonb_build_object(
        'deltas', {_deltas("0", "-p.amount")}, 'version', 2)
    WHEN 'expired' THEN jsonb_build_object(
        'deltas', {_deltas("0", "-p.amount")}, 'version', 2)
    ELSE {usage_payload}
END
"""
    occurred = """
CASE e.event_type WHEN 'reserved' THEN p.t WHEN 'extended' THEN p.t + interval '2 seconds'
    WHEN 'cancelled' THEN p.settled_at WHEN 'expired' THEN p.expires_at + interval '1 second'
    ELSE CASE WHEN p.kind = 'direct' THEN p.t ELSE p.settled_at END END
"""
    amount = """
CASE e.event_type WHEN 'reserved' THEN p.amount WHEN 'extended' THEN p.final_amount
    WHEN 'committed' THEN p.cost WHEN 'cancelled' THEN p.amount WHEN 'expired' THEN p.amount
    ELSE p.message_cost + e.message END
"""
    return f"""
INSERT INTO ledger_events (org, event_type, schema_version, request_id, reservation_id,
                           budget_ids, amount_pico_usd, payload, occurred_at, recorded_at)
SELECT '{ORG}', e.event_type, CASE WHEN e.event_type = 'usage_recorded' THEN 2 ELSE 1 END,
       p.request_id, CASE WHEN e.event_type = 'usage_recorded' AND p.kind = 'direct' THEN NULL
                          ELSE p.reservation_id END,
       CASE WHEN e.event_type = 'usage_recorded' THEN '{{}}'::uuid[]
            ELSE ARRAY[p.key_budget, p.team_budget, p.org_budget] END,
       {amount}, {payload}, o.at, o.at
FROM bench_plan p
CROSS JOIN LATERAL generate_series(0, {_STEPS} - 1) AS s
CROSS JOIN LATERAL (SELECT {_STEP_TYPE} AS event_type,
                           s - {_FIRST_MESSAGE_STEP} AS message) AS e
CROSS JOIN LATERAL (SELECT {occurred} AS at) AS o
"""


_RESERVATIONS = f"""
INSERT INTO reservations (org, reservation_id, request_id, state, amount_pico_usd,
    cost_pico_usd, subjects, holds, model, provider, metadata, reserved_at, expires_at,
    settled_at, overrun, late, version)
SELECT '{ORG}', p.reservation_id, p.request_id,
       CASE p.kind WHEN 'commit' THEN 'committed' WHEN 'extend' THEN 'committed'
                   WHEN 'cancel' THEN 'cancelled' WHEN 'expire' THEN 'expired' ELSE 'held' END,
       p.final_amount,
       CASE WHEN p.kind IN ('commit', 'extend') THEN p.cost END,
       {_SUBJECTS}, {_HOLDS}, p.model_name, p.provider,
       jsonb_build_object('endpoint', p.endpoint), p.t,
       CASE WHEN p.kind = 'extend' THEN p.extended_expires_at ELSE p.expires_at END,
       CASE p.kind WHEN 'held' THEN NULL WHEN 'expire' THEN p.expires_at + interval '1 second'
                   ELSE p.settled_at END,
       p.overrun, p.late,
       CASE p.kind WHEN 'held' THEN 1 WHEN 'extend' THEN 3 ELSE 2 END
FROM bench_plan p WHERE p.kind <> 'direct'
"""

# What each request leaves in its budgets' periods: the cost charged, or a hold still held.
_PERIOD_SUMS = """
INSERT INTO bench_period_sums AS s
SELECT budget_id, period_start, period_end, sum(spent), sum(held)
FROM (
    SELECT x.budget_id, x.period_start, x.period_end,
           CASE WHEN p.kind IN ('commit', 'extend', 'direct') THEN p.cost ELSE 0 END AS spent,
           CASE WHEN p.kind = 'held' THEN p.amount ELSE 0 END AS held
    FROM bench_plan p
    CROSS JOIN LATERAL (VALUES (p.key_budget, p.key_start, p.key_end),
                               (p.team_budget, p.team_start, p.team_end),
                               (p.org_budget, p.org_start, p.org_end))
        AS x(budget_id, period_start, period_end)
) AS charged
GROUP BY budget_id, period_start, period_end
ON CONFLICT (budget_id, period_start)
DO UPDATE SET spent = s.spent + excluded.spent, held = s.held + excluded.held
"""


def _plan_params(lo: int, hi: int, requests: int, start: datetime, span_seconds: int) -> str:
    def literals(index: int) -> str:
        return ", ".join("'" + str(m[index]).replace("'", "''") + "'" for m in MODELS)

    statement = _PLAN.replace("%%", "%")
    for name, value in {
        "keys": str(KEYS),
        "teams": str(TEAMS),
        "start": f"'{start.isoformat()}'",
        "span": str(span_seconds),
        "requests": str(requests),
        "lo": str(lo),
        "hi": str(hi),
        "models": literals(0),
        "providers": literals(1),
        "call_types": literals(2),
        "endpoints": literals(3),
    }.items():
        statement = statement.replace(f"%({name})s", value)
    return statement


def check_shapes(conn: psycopg.Connection[Any], lo: int) -> None:
    """Generate one small batch, roll it back, and compare the payload keys per event kind
    with those the service wrote in the seed."""
    written: dict[tuple[str, bool], set[str]] = {}
    for event_type, payload in conn.execute(
        "SELECT event_type, payload FROM ledger_events WHERE request_id LIKE 'seed-%%'"
        " AND event_type <> 'alert_raised'"
    ):
        written[(event_type, bool(payload.get("direct")))] = set(payload)
    with conn.transaction(force_rollback=True):
        conn.execute(_plan_params(lo, lo + 2000, 10**6, datetime(2026, 1, 1, tzinfo=UTC), 10))
        conn.execute(_events_statement())
        generated: dict[tuple[str, bool], set[str]] = {}
        for event_type, payload in conn.execute(
            "SELECT event_type, payload FROM ledger_events WHERE request_id LIKE 'req%%'"
        ):
            generated[(event_type, bool(payload.get("direct")))] = set(payload)
    if set(generated) != set(written):
        raise SystemExit(
            f"event kinds differ: generated {sorted(generated)}, app {sorted(written)}"
        )
    for kind, keys in written.items():
        if generated[kind] != keys:
            raise SystemExit(
                f"{kind} payload drifted from the app's: generated {sorted(generated[kind])},"
                f" app {sorted(keys)}"
            )
    print(f"payload shapes match the service's for {len(written)} event kinds", flush=True)


def load_bulk(url: str, *, events: int, start: datetime, days: int) -> tuple[int, float]:
    """Generate about ``events`` events in batches; returns the events written and seconds."""
    requests = int(events / 3.22)
    span = days * 86400
    began = time.perf_counter()
    written = 0
    with psycopg.connect(plain(url), autocommit=True) as conn:
        conn.execute(
            "SELECT ledger_ensure_partitions(%s, %s)", (start, start + timedelta(days=days + 2))
        )
        check_shapes(conn, 0)
        conn.execute(
            "CREATE UNLOGGED TABLE IF NOT EXISTS bench_period_sums (budget_id uuid,"
            " period_start timestamptz, period_end timestamptz, spent numeric, held numeric,"
            " PRIMARY KEY (budget_id, period_start))"
        )
        conn.execute("TRUNCATE bench_period_sums")
        for lo in range(0, requests, BATCH_REQUESTS):
            hi = min(lo + BATCH_REQUESTS, requests)
            with conn.transaction():
                conn.execute("SET LOCAL work_mem = '64MB'")
                conn.execute(_plan_params(lo, hi, requests, start, span))
                cursor = conn.execute(_events_statement())
                written += cursor.rowcount
                conn.execute(_RESERVATIONS)
                conn.execute(_PERIOD_SUMS)
            elapsed = time.perf_counter() - began
            print(
                f"  {written:,} events ({hi:,} requests) in {elapsed:,.0f} s"
                f" ({written / elapsed:,.0f} events/s)",
                flush=True,
            )
        conn.execute(
            f"INSERT INTO budget_periods AS b (org, budget_id, period_start, period_end,"
            f" spent_pico_usd, held_pico_usd)"
            f" SELECT '{ORG}', budget_id, period_start, period_end, spent, held"
            f" FROM bench_period_sums"
            f" ON CONFLICT (org, budget_id, period_start) DO UPDATE SET"
            f" spent_pico_usd = b.spent_pico_usd + excluded.spent_pico_usd,"
            f" held_pico_usd = b.held_pico_usd + excluded.held_pico_usd"
        )
        conn.execute("DROP TABLE bench_period_sums")
    return written, time.perf_counter() - began


def vacuum(url: str) -> float:
    began = time.perf_counter()
    with psycopg.connect(plain(url), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) ledger_events, reservations, budget_periods")
    return time.perf_counter() - began


# ---------------------------------------------------------------------------------------------
# Measuring


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process so far (it is a local PostgreSQL backend)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_replay(url: str, log: Path) -> tuple[float, int, int, str, dict[str, float]]:
    """Time ``usage-ledger replay --verify`` and return seconds, exit code, peak RSS (KiB),
    stdout and the CPU seconds of its PostgreSQL backends (sampled from /proc every half
    second: the server is local). The progress bar goes to ``log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("USAGE_LEDGER_")}
    env.pop("DATABASE_URL", None)
    command = [str(Path(sys.executable).parent / "usage-ledger"), "replay", "--verify",
               "--progress", "--database-url", url]  # fmt: skip
    cpu: dict[int, float] = {}
    role: dict[int, str] = {}
    name = urlsplit(url).path.lstrip("/")
    began = time.perf_counter()
    with (
        log.open("w") as stderr,
        psycopg.connect(plain(database_url(url, "postgres")), autocommit=True) as monitor,
    ):
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=ROOT
        )
        while process.poll() is None:
            for pid, query in monitor.execute(
                "SELECT pid, query FROM pg_stat_activity WHERE datname = %s"
                " AND backend_type = 'client backend'",
                (name,),
            ):
                used = _cpu_seconds(pid)
                if used is not None:
                    cpu[pid] = max(used, cpu.get(pid, 0.0))
                if "replay: budget projections" in (query or ""):
                    role[pid] = "budget projections, then alerts"
                elif pid not in role and "rollup" in (query or ""):
                    role[pid] = "rollups"
            time.sleep(0.5)
        stdout = process.stdout.read() if process.stdout else ""
    seconds = time.perf_counter() - began
    # ru_maxrss of the children is the largest of any waited-for child: the replay is the only
    # one this process has waited for.
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    by_role: dict[str, float] = {}
    for pid, used in cpu.items():
        label = role.get(pid, "other")
        by_role[label] = by_role.get(label, 0.0) + used
    return seconds, process.returncode, peak_kib, stdout, by_role


def load_average() -> str:
    with open("/proc/loadavg") as file:
        return " ".join(file.read().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--database", default="ul_bench_replay")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=75, help="span of the generated traffic")
    parser.add_argument("--reuse", action="store_true", help="measure an earlier load")
    parser.add_argument("--recreate", action="store_true", help="drop and load again")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    parser.add_argument("--no-fold", action="store_true", help="leave the rollups unfolded")
    args = parser.parse_args()
    url = database_url(args.server, args.database)
    exists, meta = read_meta(args.server, args.database, "replay")
    print(f"load average at start: {load_average()}", flush=True)
    if args.reuse and meta is not None and meta.get("finished"):
        print(f"reusing {args.database}: {meta}", flush=True)
        migrate.upgrade(url)  # the schema of the code being measured (a no-op when current)
    else:
        if exists and not args.recreate and meta is None:
            raise SystemExit(f"{args.database} exists but is not this bench's; pass --recreate")
        create_database(args.server, args.database)
        write_meta(args.server, args.database, {"bench": "replay", "finished": False})
        migrate.upgrade(url)
        start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
            days=args.days + 1
        )
        engine = make_engine(url)
        try:
            began = time.perf_counter()
            seeded = seed(engine, start)
            print(f"seed: {seeded:,} events through the service in"
                  f" {time.perf_counter() - began:,.1f} s", flush=True)  # fmt: skip
            written, seconds = load_bulk(url, events=args.events, start=start, days=args.days)
            rate = written / seconds
            print(f"bulk: {written:,} events in {seconds:,.1f} s: {rate:,.0f} events/s"
                  " (generated in SQL; projections from the plan)", flush=True)  # fmt: skip
            folded_seconds = 0.0
            if not args.no_fold:
                began = time.perf_counter()
                folded = rollups.fold_all(engine, batch=1_000_000)
                while more := rollups.fold_all(engine, batch=1_000_000):
                    folded += more
                folded_seconds = time.perf_counter() - began
                print(f"rollups: folded {folded:,} events in {folded_seconds:,.1f} s", flush=True)
        finally:
            engine.dispose()
        print(f"vacuum (analyze): {vacuum(url):,.1f} s", flush=True)
        meta = {"bench": "replay", "finished": True, "events": seeded + written,
                "loaded_events_per_second": round(rate), "start": str(start)}  # fmt: skip
        write_meta(args.server, args.database, meta)
    log = Path(tempfile.gettempdir()) / "bench-replay-progress.log"
    load = load_average()
    print(f"replay --verify: running (load average {load}; progress in {log})", flush=True)
    seconds, code, peak_kib, stdout, cpu = run_replay(url, log)
    tail = stdout.strip().splitlines()
    events_line = next((line for line in tail if line.startswith("replayed ")), "replayed 0")
    events = int(events_line.split()[1].replace(",", ""))
    load_end = load_average()
    print("\n".join(tail[:20]))
    # The command's own phase times (stderr): the budget projections' pass over the events,
    # the alerts check after it on the same connection, and the rollups check that runs
    # alongside both on a second connection.
    phases = [
        line.strip()
        for line in log.read_text().replace("\r", "\n").splitlines()
        if line.startswith(("budgets, periods", "alerts:", "rollups:"))
    ]
    for line in phases:
        print(f"  {line}")
    budgets_line = next((p for p in phases if p.startswith("budgets, periods")), None)
    if budgets_line is not None and events:
        budgets_seconds = float(budgets_line.rsplit(" ", 2)[-2].replace(",", ""))
        print(
            f"  budget projections alone: {events / budgets_seconds:,.0f} events/s"
            f" (goal {GOAL_EVENTS_PER_SECOND:,})"
        )
    for label, used in sorted(cpu.items()):
        per_cpu = f" = {events / used:,.0f} events per CPU second" if used and events else ""
        print(f"  PostgreSQL CPU, {label}: {used:,.1f} s{per_cpu}")
    print(
        f"\nreplay --verify: {events:,} events in {seconds:,.1f} s = {events / seconds:,.0f}"
        f" events/s (goal {GOAL_EVENTS_PER_SECOND:,}); peak RSS of the replay process"
        f" {peak_kib / 1024:,.0f} MiB; exit {code} ({'match' if code == 0 else 'DIFFERENCES'});"
        f" load average {load} at start, {load_end} at end",
        flush=True,
    )
    if args.drop:
        drop_database(args.server, args.database)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
