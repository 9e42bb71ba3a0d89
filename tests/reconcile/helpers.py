"""Sample exports and real ledger spend for reconciliation tests."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from app.budgets import holds
from app.budgets.model import Subject
from app.ledger.records import UsageRecord
from app.money import parse_usd
from app.reports import rollups

DATA = Path(__file__).resolve().parent / "data"
OPENAI_JSON = DATA / "openai_costs_2026-11-01_03.json"
OPENAI_PAGES = DATA / "openai_costs_pages.json"
OPENAI_CSV = DATA / "openai_costs_2026-11-01_03.csv"
ANTHROPIC_JSON = DATA / "anthropic_cost_report_2026-11-01_03.json"
ANTHROPIC_CSV = DATA / "anthropic_cost_2026-11.csv"
TEAM = Subject("team", "ml")


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=UTC)


def spend(
    engine: Engine,
    *,
    request_id: str,
    model: str | None,
    provider: str | None,
    usd: str,
    when: datetime,
    org: str = "acme",
) -> None:
    """Charge ``usd`` for one message of ``model`` through the ledger, in its own transaction."""
    cost = parse_usd(usd)
    with engine.begin() as conn:
        holds.record_usage(
            conn,
            org=org,
            request_id=request_id,
            subjects=[TEAM],
            cost_pico_usd=cost,
            records=[UsageRecord(cost_pico_usd=cost, model=model, provider=provider)],
            model=model,
            provider=provider,
            now=when,
        )


def openai_scenario(engine: Engine) -> None:
    """Ledger spend against which OPENAI_JSON differs in known ways (see test_service.py)."""
    spend(engine, request_id="a1", model="gpt-4o", provider="openai", usd="4.7345", when=at(1))
    spend(
        engine,
        request_id="a2",
        model="openai/gpt-4o-mini",
        provider=None,
        usd="0.00075",
        when=at(1),
    )
    spend(engine, request_id="a3", model="o3-mini", provider="openai", usd="0.5", when=at(1, 23))
    # Spend with other providers, another org and outside the period: none of it is compared.
    spend(
        engine,
        request_id="b1",
        model="claude-sonnet-4-5",
        provider="anthropic",
        usd="9",
        when=at(1),
    )
    spend(engine, request_id="b2", model="gpt-4o", provider="azure", usd="2", when=at(1))
    spend(
        engine,
        request_id="b3",
        model="gpt-4o",
        provider="openai",
        usd="3",
        when=at(1),
        org="globex",
    )
    spend(engine, request_id="b4", model="gpt-4o", provider="openai", usd="6", when=at(4, 0))
    spend(
        engine,
        request_id="a4",
        model="gpt-4o-2024-08-06",
        provider="openai",
        usd="7.5",
        when=at(2, 0),
    )
    spend(engine, request_id="a5", model="gpt-4.1", provider="openai", usd="0.4", when=at(2))


def fold_everything(engine: Engine, *, timeout_seconds: int = 180) -> int:
    """Fold until every event of the database is in the rollups; returns the events folded.

    Transaction ids are cluster-wide, so other sessions on a shared server can hold the settled
    horizon back for a while: keep folding until it has passed this database's last event.
    """
    deadline = time.monotonic() + timeout_seconds
    folded = 0
    while True:
        folded += rollups.fold_all(engine)
        with engine.connect() as conn:
            last = conn.execute(text("SELECT coalesce(max(seq), -1) FROM ledger_events"))
            if rollups.watermark(conn) > last.scalar_one():
                return folded
        if time.monotonic() > deadline:
            pytest.fail("the rollups did not reach the last event in time")
        time.sleep(0.1)
