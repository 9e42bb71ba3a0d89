"""replay --verify in chunks: the same verdict whatever the chunk size, a progress report, and
the command's progress bar."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, Engine, text

from app.budgets import holds, replay
from app.budgets.model import Subject
from app.ledger.records import UsageRecord
from tests.factories import USD, make_budget

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CENT = USD // 100
TEAM = Subject("team", "ml")
KEY = Subject("key", "k1")


def _every_kind_of_request(conn: Connection) -> None:
    """Reservations committed, extended, cancelled, expired then committed late, still held,
    and a direct charge: every path of the reservation and period folds."""
    make_budget(conn, subject=TEAM, now=NOW)
    make_budget(conn, subject=KEY, now=NOW, period="day")
    ids = {}
    for name in ("commit", "extend", "cancel", "expire", "held"):
        reservation = holds.reserve(
            conn,
            org="acme",
            request_id=name,
            subjects=[TEAM, KEY],
            amount_pico_usd=10 * CENT,
            ttl_seconds=60,
            now=NOW,
        )
        ids[name] = reservation.reservation_id
    records = [UsageRecord(cost_pico_usd=3 * CENT, model="m"), UsageRecord(cost_pico_usd=CENT)]
    holds.commit_reservation(
        conn, org="acme", reservation_id=ids["commit"], cost_pico_usd=4 * CENT, records=records
    )
    holds.extend(conn, org="acme", reservation_id=ids["extend"], amount_pico_usd=20 * CENT, now=NOW)
    holds.commit_reservation(
        conn, org="acme", reservation_id=ids["extend"], cost_pico_usd=25 * CENT, now=NOW
    )
    holds.cancel(conn, org="acme", reservation_id=ids["cancel"], now=NOW)
    later = NOW + timedelta(seconds=61)
    assert holds.expire_one(conn, org="acme", reservation_id=ids["expire"], now=later)
    holds.commit_reservation(
        conn, org="acme", reservation_id=ids["expire"], cost_pico_usd=2 * CENT, now=later
    )
    holds.record_usage(
        conn,
        org="acme",
        request_id="direct",
        subjects=[TEAM],
        cost_pico_usd=5 * CENT,
        records=[UsageRecord(cost_pico_usd=5 * CENT)],
        now=NOW,
    )


class Recorder:
    def __init__(self) -> None:
        self.total = -1
        self.done: list[int] = []

    def start(self, total: int) -> None:
        self.total = total

    def update(self, done: int) -> None:
        self.done.append(done)


@pytest.mark.parametrize("chunk_events", [1, 2, 3, 1000])
def test_every_chunk_size_rebuilds_the_same_projections(
    conn: Connection, monkeypatch: pytest.MonkeyPatch, chunk_events: int
) -> None:
    """With chunks of one event, every reservation's events are in different chunks, so its
    row comes from combining the chunks' parts."""
    _every_kind_of_request(conn)
    monkeypatch.setattr(replay, "CHUNK_EVENTS", chunk_events)
    recorder = Recorder()
    report = replay.verify(conn, recorder)
    assert report.ok, report.differences
    count = conn.execute(text("SELECT count(*) FROM ledger_events")).scalar_one()
    assert report.events == count
    assert recorder.total >= 0
    assert recorder.done == sorted(recorder.done)
    assert recorder.done[-1] == count
    assert len(recorder.done) == -(-count // chunk_events)


@pytest.mark.parametrize(
    ("change", "column"),
    [
        ("state = 'held'", "state"),
        ("amount_pico_usd = amount_pico_usd + 1", "amount_pico_usd"),
        ("expires_at = expires_at + interval '1 second'", "expires_at"),
        ("late = NOT late", "late"),
        ("cost_pico_usd = 0", "cost_pico_usd"),
    ],
)
def test_a_changed_reservation_is_found_across_chunks(
    conn: Connection, monkeypatch: pytest.MonkeyPatch, change: str, column: str
) -> None:
    _every_kind_of_request(conn)
    monkeypatch.setattr(replay, "CHUNK_EVENTS", 1)
    conn.execute(text(f"UPDATE reservations SET {change} WHERE request_id = 'expire'"))
    report = replay.verify(conn)
    assert {(d.projection, d.side) for d in report.differences} == {
        ("reservations", "live only"),
        ("reservations", "rebuilt only"),
    }
    live, rebuilt = (
        next(d.row for d in report.differences if d.side == side)
        for side in ("live only", "rebuilt only")
    )
    assert live["request_id"] == rebuilt["request_id"] == "expire"
    assert live[column] != rebuilt[column]
    assert rebuilt["state"] == "committed" and rebuilt["late"] is True


def test_a_missing_and_an_extra_period_are_each_reported_once(conn: Connection) -> None:
    _every_kind_of_request(conn)
    conn.execute(
        text(
            "INSERT INTO budget_periods (org, budget_id, period_start, period_end)"
            " SELECT org, budget_id, period_start + interval '1 year', period_end"
            " + interval '1 year' FROM budget_periods LIMIT 1"
        )
    )
    conn.execute(
        text(
            "DELETE FROM budget_periods WHERE period_start = (SELECT min(period_start)"
            " FROM budget_periods)"
        )
    )
    sides = sorted(d.side for d in replay.verify(conn).differences)
    assert sides == ["live only", "rebuilt only"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_command_draws_a_progress_bar_when_asked(engine: Engine, db_url: str) -> None:
    with engine.begin() as conn:
        _every_kind_of_request(conn)
        count = conn.execute(text("SELECT count(*) FROM ledger_events")).scalar_one()
    quiet = _run("replay", "--verify", "--database-url", db_url)
    assert quiet.returncode == 0, quiet.stderr
    assert "replay [" not in quiet.stderr  # stderr is a pipe: no bar unless asked
    shown = _run("replay", "--verify", "--progress", "--database-url", db_url)
    assert shown.returncode == 0, shown.stderr
    assert f"{count:,}/" in shown.stderr and "events" in shown.stderr and "ETA" in shown.stderr
    assert "alerts: " in shown.stderr and "rollups: " in shown.stderr
    assert f"replayed {count} events" in shown.stdout
    assert "projections match the events" in shown.stdout
