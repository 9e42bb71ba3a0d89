"""migrate, replay --verify and expire as a user runs them, against a real database."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from app.budgets import holds
from app.budgets.model import Subject
from app.cli.main import main
from tests.factories import USD, make_budget

TEAM = Subject("team", "ml")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_replay_verify_passes_then_fails_on_a_tampered_projection(
    engine: Engine, db_url: str
) -> None:
    with engine.begin() as conn:
        budget = make_budget(conn, subject=TEAM, limit_pico_usd=USD)
        reservation = holds.reserve(
            conn,
            org="acme",
            request_id="r1",
            subjects=[TEAM],
            amount_pico_usd=USD // 10,
            ttl_seconds=60,
        )
    with engine.begin() as conn:
        holds.commit_reservation(
            conn, org="acme", reservation_id=reservation.reservation_id, cost_pico_usd=USD // 20
        )
    ok = _run("replay", "--verify", "--database-url", db_url)
    assert ok.returncode == 0, ok.stderr
    assert "projections match the events" in ok.stdout
    with engine.begin() as conn:
        conn.execute(text("RESET ROLE"))
        conn.execute(
            text("UPDATE budget_periods SET held_pico_usd = 1 WHERE budget_id = :id"),
            {"id": budget.budget_id},
        )
    bad = _run("replay", "--verify", "--database-url", db_url)
    assert bad.returncode == 1
    assert "DIFFERENCE budget_periods" in bad.stdout


def test_expire_command_releases_overdue_holds(engine: Engine, db_url: str) -> None:
    past = datetime.now(UTC) - timedelta(minutes=5)
    with engine.begin() as conn:
        make_budget(conn, subject=TEAM, limit_pico_usd=USD)
        holds.reserve(
            conn,
            org="acme",
            request_id="r1",
            subjects=[TEAM],
            amount_pico_usd=USD // 10,
            ttl_seconds=60,
            now=past,
        )
    assert main(["expire", "--database-url", db_url]) == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT state FROM reservations")).scalar_one() == "expired"


def test_migrate_is_idempotent(db_url: str) -> None:
    assert main(["migrate", "--database-url", db_url]) == 0
    assert main(["migrate", "--database-url", db_url]) == 0
