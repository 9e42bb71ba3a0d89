"""The contract of the reporting schema, its documentation, and the Grafana dashboard: every
query of docs/dashboards.md and of deploy/grafana/usage-ledger.json runs as the reader."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text

from app.budgets import holds
from app.budgets.model import Subject
from tests.factories import USD, make_budget
from tests.reporting import workload

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "usage-ledger.json"
DOCS = ROOT / "docs" / "dashboards.md"
DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": "${DS_POSTGRES}"}

_SPEND_SUMS = [
    ("cost_pico_usd", "numeric"),
    ("cost_usd", "numeric"),
    ("requests", "bigint"),
    ("messages", "bigint"),
    ("prompt_tokens", "bigint"),
    ("completion_tokens", "bigint"),
    ("cache_read_tokens", "bigint"),
    ("cache_write_tokens", "bigint"),
    ("reasoning_tokens", "bigint"),
]
_DIMENSIONS = [("model", "text"), ("provider", "text"), ("call_type", "text"), ("endpoint", "text")]
_GRAIN_KEYS = {
    "spend": [],
    "spend_by_subject": [("subject_type", "text"), ("subject_id", "text")],
    "spend_by_tag": [("tag", "text")],
}
_BUCKETS = {"hourly": "hour", "daily": "day", "monthly": "month"}

# The published columns, in order. Releases may append columns and add views; a column here
# may never change or go (docs/dashboards.md, "The contract").
CONTRACT: dict[str, list[tuple[str, str]]] = {
    f"{grain}_{suffix}": [
        ("org", "text"),
        (bucket, "timestamp with time zone"),
        *keys,
        *_DIMENSIONS,
        *_SPEND_SUMS,
    ]
    for grain, keys in _GRAIN_KEYS.items()
    for suffix, bucket in _BUCKETS.items()
}
CONTRACT["budget_status"] = [
    ("org", "text"),
    ("budget_id", "uuid"),
    ("subject_type", "text"),
    ("subject_id", "text"),
    ("mode", "text"),
    ("period", "text"),
    ("timezone", "text"),
    ("alert_thresholds", "text[]"),
    ("limit_pico_usd", "numeric"),
    ("limit_usd", "numeric"),
    ("period_start", "timestamp with time zone"),
    ("period_end", "timestamp with time zone"),
    ("spent_pico_usd", "numeric"),
    ("spent_usd", "numeric"),
    ("held_pico_usd", "numeric"),
    ("held_usd", "numeric"),
    ("remaining_pico_usd", "numeric"),
    ("remaining_usd", "numeric"),
    ("used_percent", "numeric"),
    ("alert_level", "text"),
    ("budget_version", "integer"),
    ("created_at", "timestamp with time zone"),
    ("updated_at", "timestamp with time zone"),
]
CONTRACT["request_log"] = [
    ("org", "text"),
    ("request_id", "text"),
    ("reservation_id", "uuid"),
    ("kind", "text"),
    ("state", "text"),
    ("requested_at", "timestamp with time zone"),
    ("reserved_pico_usd", "numeric"),
    ("reserved_usd", "numeric"),
    ("held_pico_usd", "numeric"),
    ("held_usd", "numeric"),
    ("cost_pico_usd", "numeric"),
    ("cost_usd", "numeric"),
    ("model", "text"),
    ("provider", "text"),
    ("subjects", "jsonb"),
    ("metadata", "jsonb"),
    ("reserved_at", "timestamp with time zone"),
    ("expires_at", "timestamp with time zone"),
    ("settled_at", "timestamp with time zone"),
    ("seconds_to_settle", "numeric"),
    ("overrun", "boolean"),
    ("late", "boolean"),
]
CONTRACT["orgs"] = [("org", "text")]

START = datetime(2026, 4, 27, 0, tzinfo=UTC)
RANGE = (START + timedelta(hours=6), START + timedelta(days=2, hours=18))


def _columns(conn: Connection) -> dict[str, list[tuple[str, str]]]:
    rows = conn.execute(
        text(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " WHERE n.nspname = 'reporting' AND c.relkind = 'v'"
            " ORDER BY c.relname, a.attnum"
        )
    ).all()
    found: dict[str, list[tuple[str, str]]] = {}
    for view, column, kind in rows:
        found.setdefault(view, []).append((column, kind))
    return found


def test_published_columns_are_only_ever_added_to(conn: Connection) -> None:
    found = _columns(conn)
    assert set(CONTRACT) <= set(found), "a published view is gone"
    for view, columns in CONTRACT.items():
        assert found[view][: len(columns)] == columns, view


def test_no_column_is_a_floating_point_number(conn: Connection) -> None:
    kinds = {kind for columns in _columns(conn).values() for _, kind in columns}
    assert not kinds & {"real", "double precision", "money"}


def _sections(markdown: str) -> list[str]:
    return re.split(r"\n(?=#+ )", markdown)


def test_every_column_is_documented(conn: Connection) -> None:
    sections = _sections(DOCS.read_text())
    for view, columns in _columns(conn).items():
        documented = [s for s in sections if f"`reporting.{view}`" in s]
        assert documented, f"docs/dashboards.md has no section on reporting.{view}"
        rows = "\n".join(line for line in documented[0].splitlines() if line.startswith("|"))
        missing = [c for c, _ in columns if f"`{c}`" not in rows]
        assert not missing, f"reporting.{view}: {missing} not in its table in the docs"


def _usage(conn: Connection) -> list[workload.Request]:
    """One org's usage, budgets at several levels, and requests in every state."""
    made = [
        dataclasses.replace(r, org="acme")
        for r in workload.random_requests(random.Random(5), 40, start=START, hours=72)
    ]
    for request in made:
        workload.write(conn, request)
    now = conn.execute(text("SELECT now()")).scalar_one()
    for index, spent in enumerate([0, 50, 85, 97, 130]):
        budget = make_budget(
            conn, org="acme", subject=Subject("project", f"p{index}"), mode="soft", now=now
        )
        holds.record_usage(
            conn,
            org="acme",
            request_id=f"budget-{index}",
            subjects=[budget.subject],
            cost_pico_usd=spent * USD,
            now=now,
        )
    for state in ("held", "cancelled", "expired"):
        reservation = holds.reserve(
            conn,
            org="acme",
            request_id=f"open-{state}",
            subjects=[Subject("team", "t0")],
            amount_pico_usd=USD,
            ttl_seconds=60,
            model="gpt-4o",
            now=START + timedelta(days=1),
        )
        if state == "cancelled":
            holds.cancel(conn, org="acme", reservation_id=reservation.reservation_id)
        elif state == "expired":
            holds.expire_one(
                conn,
                org="acme",
                reservation_id=reservation.reservation_id,
                now=START + timedelta(days=1, minutes=2),
            )
    return made


@pytest.fixture
def as_reader(conn: Connection) -> Iterator[tuple[Connection, list[workload.Request]]]:
    made = _usage(conn)
    conn.execute(text("SET LOCAL ROLE usage_ledger_reader"))
    yield conn, made


def _grafana(sql: str, *, org: str = "acme", interval_seconds: int = 3600) -> str:
    """Expand the Grafana macros and variables the dashboard uses, as Grafana's PostgreSQL
    data source does; anything else left with a $ fails the test."""
    start, end = (moment.strftime("%Y-%m-%dT%H:%M:%SZ") for moment in RANGE)
    sql = sql.replace("${org}", org).replace("$org", org)
    sql = re.sub(
        r"\$__timeGroupAlias\(\s*(\w+)\s*,\s*\$__interval\s*\)",
        lambda m: (
            f'floor(extract(epoch FROM {m[1]}) / {interval_seconds}) * {interval_seconds} AS "time"'
        ),
        sql,
    )
    sql = re.sub(r"\$__timeFilter\(\s*(\w+)\s*\)", rf"\1 BETWEEN '{start}' AND '{end}'", sql)
    assert "$" not in sql, sql
    return sql


def _dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] == 39
    assert dashboard["__inputs"] == [
        {
            "name": "DS_POSTGRES",
            "label": "usage-ledger PostgreSQL",
            "description": dashboard["__inputs"][0]["description"],
            "type": "datasource",
            "pluginId": "grafana-postgresql-datasource",
            "pluginName": "PostgreSQL",
        }
    ]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    required = {r["id"] for r in dashboard["__requires"] if r["type"] == "panel"}
    assert {p["type"] for p in panels} == required
    assert {"timeseries", "table", "gauge", "bargauge"} <= required
    for panel in panels:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["rawQuery"] is True and target["editorMode"] == "code"
            assert target["format"] in ("table", "time_series")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["org"]["datasource"] == DATASOURCE


def test_every_dashboard_query_runs_as_the_reader(
    as_reader: tuple[Connection, list[workload.Request]],
) -> None:
    conn, made = as_reader
    dashboard = _dashboard()
    orgs = conn.execute(text(_grafana(dashboard["templating"]["list"][0]["query"]))).scalars()
    assert "acme" in list(orgs)
    results: dict[str, list[Any]] = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            rows = conn.execute(text(_grafana(target["rawSql"]))).mappings().all()
            results[panel["title"]] = list(rows)
            if target["format"] == "time_series":
                assert rows and {"time", "metric"} <= set(rows[0]), panel["title"]

    start, end = RANGE
    inside = [f for f in workload.facts(made) if start <= workload.bucket(f.at, "hour") <= end]
    spent = sum(f.measures[0] for f in inside if not f.subject_type and not f.tag)
    assert spent > 0
    assert results["Spend in range (USD)"][0]["spend_usd"] == Decimal(spent).scaleb(-12)
    over_time = results["Spend over time by model (USD)"]
    assert sum(r["spend_usd"] for r in over_time) == Decimal(spent).scaleb(-12)
    assert 0 < len(results["Top subjects in range (USD)"]) <= 10
    gauges = {
        r["budget"]: r["used_percent"]
        for r in results["Budgets: share of the limit spent this period"]
    }
    assert gauges["project:p4 (soft, month)"] == Decimal("130.0000")
    states = {r["state"] for r in results["Request log"]}
    assert states == {"committed", "recorded", "held", "cancelled", "expired"}
    assert results["Budgets past a threshold (now)"][0] == {
        "warning": 1,
        "critical": 1,
        "exceeded": 1,
    }


def _sql_examples() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)


def test_every_documented_query_runs_as_the_reader(
    as_reader: tuple[Connection, list[workload.Request]],
) -> None:
    conn, _ = as_reader
    examples = _sql_examples()
    assert len(examples) >= 6
    for example in examples:
        with conn.begin_nested():
            conn.execute(text(example)).all()


def test_the_documented_login_recipe_names_the_reader_role() -> None:
    assert (
        "CREATE ROLE grafana LOGIN PASSWORD 'choose-a-long-secret' IN ROLE usage_ledger_reader;"
        in DOCS.read_text()
    )
