"""usage_ledger_reader reads the reporting views and nothing else."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from app.budgets import holds
from app.budgets.model import Subject
from app.ledger.records import UsageRecord
from tests.factories import USD, make_budget

READER = "usage_ledger_reader"
VIEWS = [
    "budget_status",
    "orgs",
    "request_log",
    *(
        f"{grain}_{unit}"
        for grain in ("spend", "spend_by_subject", "spend_by_tag")
        for unit in ("hourly", "daily", "monthly")
    ),
]
TABLES = [
    "ledger_events",
    "budgets",
    "budget_periods",
    "reservations",
    "api_keys",
    "idempotency_keys",
    "rollup_hourly",
    "rollup_daily",
    "rollup_watermark",
    "rollup_subject_hourly",
    "rollup_subject_daily",
    "rollup_model_hourly",
    "rollup_model_daily",
    "rollup_subject_span",
    "budget_slices",
    "budget_period_totals",
]


def _some_usage(conn: Connection) -> None:
    team = Subject("team", "ml")
    make_budget(conn, org="acme", subject=team)
    holds.record_usage(
        conn,
        org="acme",
        request_id="r1",
        subjects=[team],
        cost_pico_usd=3 * USD,
        records=[UsageRecord(cost_pico_usd=3 * USD, model="gpt-4o", provider="openai")],
        now=datetime.now(UTC),
    )


def _refused(conn: Connection, statement: str) -> None:
    with pytest.raises(DBAPIError) as refused, conn.begin_nested():
        conn.execute(text(statement))
    assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege), statement


def test_the_reader_is_a_role_no_one_can_log_in_as(conn: Connection) -> None:
    assert conn.execute(
        text("SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = :r"), {"r": READER}
    ).one() == (False, False)


def test_the_reader_reads_every_view_and_no_table(conn: Connection) -> None:
    _some_usage(conn)
    conn.execute(text(f"SET LOCAL ROLE {READER}"))
    for view in VIEWS:
        conn.execute(text(f"SELECT * FROM reporting.{view}")).all()
    spent = conn.execute(
        text("SELECT spent_pico_usd FROM reporting.budget_status WHERE org = 'acme'")
    ).scalar_one()
    assert spent == 3 * USD
    for table in TABLES:
        _refused(conn, f"SELECT 1 FROM public.{table} LIMIT 1")
    # Nor through the function the rollups fold with: it reads the events as its caller.
    _refused(conn, "SELECT * FROM public.usage_facts_between(0, 10)")
    _refused(conn, "CREATE VIEW reporting.mine AS SELECT 1 AS one")


def test_the_catalog_grants_the_reader_nothing_outside_reporting(conn: Connection) -> None:
    """Whatever later migrations add, the reader must not gain a table, a column or a
    SECURITY DEFINER function outside the reporting schema."""
    readable = conn.execute(
        text(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND has_any_column_privilege(:r, c.oid, 'SELECT')"
            " ORDER BY 1"
        ),
        {"r": READER},
    ).scalars()
    assert sorted(readable) == sorted(f"reporting.{v}" for v in VIEWS)
    writable = conn.execute(
        text(
            "SELECT c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND (has_table_privilege(:r, c.oid,"
            "      'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')"
            "      OR has_any_column_privilege(:r, c.oid, 'INSERT, UPDATE, REFERENCES'))"
        ),
        {"r": READER},
    ).scalars()
    assert list(writable) == []
    definers = conn.execute(
        text(
            "SELECT n.nspname || '.' || p.proname FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE p.prosecdef AND has_function_privilege(:r, p.oid, 'EXECUTE')"
        ),
        {"r": READER},
    ).scalars()
    assert list(definers) == ["reporting.unfolded_usage"]


def test_a_dashboard_login_made_as_documented_reads_the_views(conn: Connection) -> None:
    """docs/dashboards.md: CREATE ROLE grafana LOGIN PASSWORD '...' IN ROLE
    usage_ledger_reader. Roles are transactional, so the teardown's rollback drops it."""
    _some_usage(conn)
    login = f"grafana_test_{uuid.uuid4().hex[:10]}"
    conn.execute(text("SET LOCAL ROLE NONE"))  # CREATE ROLE needs the session's login
    conn.execute(text(f"CREATE ROLE {login} LOGIN PASSWORD 'not-used' IN ROLE {READER}"))
    conn.execute(text(f"SET LOCAL ROLE {login}"))
    cost = conn.execute(
        text("SELECT sum(cost_pico_usd) FROM reporting.spend_daily WHERE org = 'acme'")
    ).scalar_one()
    assert cost == 3 * USD
    _refused(conn, "SELECT 1 FROM public.api_keys LIMIT 1")


def test_the_service_role_reads_the_views_too(conn: Connection) -> None:
    assert conn.execute(text("SELECT current_user")).scalar_one() == "usage_ledger_app"
    for view in VIEWS:
        conn.execute(text(f"SELECT * FROM reporting.{view} LIMIT 1")).all()
