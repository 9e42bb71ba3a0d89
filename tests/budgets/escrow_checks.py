"""Checks of the escrow invariants against the real tables (docs/ledger.md, "Hot budgets")."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from uuid import UUID

from sqlalchemy import Connection, Engine, text

from app.budgets.replay import verify

Key = tuple[UUID, datetime, int | None]


def folded_deltas(conn: Connection) -> dict[Key, tuple[int, int]]:
    """(spent, held) per budget period and slice (None: the period's own row), summed from
    the events' deltas."""
    rows = conn.execute(
        text(
            "SELECT (d->>'budget_id')::uuid AS budget_id,"
            " (d->>'period_start')::timestamptz AS period_start, (d->>'slice')::int AS slice,"
            " sum((d->>'spent_pico_usd')::numeric) AS spent,"
            " sum((d->>'held_pico_usd')::numeric) AS held"
            " FROM ledger_events e CROSS JOIN LATERAL jsonb_array_elements(e.payload->'deltas') d"
            " WHERE jsonb_typeof(e.payload->'deltas') = 'array' GROUP BY 1, 2, 3"
        )
    )
    return {(r.budget_id, r.period_start, r.slice): (int(r.spent), int(r.held)) for r in rows}


def live_rows(conn: Connection) -> dict[Key, tuple[int, int]]:
    """(spent, held) of every period row and every slice row."""
    found: dict[Key, tuple[int, int]] = {}
    for r in conn.execute(
        text("SELECT budget_id, period_start, spent_pico_usd, held_pico_usd FROM budget_periods")
    ):
        found[(r.budget_id, r.period_start, None)] = (int(r.spent_pico_usd), int(r.held_pico_usd))
    for r in conn.execute(
        text(
            "SELECT budget_id, period_start, slice, spent_pico_usd, held_pico_usd"
            " FROM budget_slices"
        )
    ):
        found[(r.budget_id, r.period_start, r.slice)] = (
            int(r.spent_pico_usd),
            int(r.held_pico_usd),
        )
    return found


def check_escrow(conn: Connection) -> None:
    """Every row and slice equals the fold of its events; every pooled period keeps
    invariants I (headroom sums to what is left) and S (no negative slice while one is open);
    the totals view is the sum of a period's row and its slices."""
    folded = folded_deltas(conn)
    live = {key: value for key, value in live_rows(conn).items() if value != (0, 0)}
    assert {k: v for k, v in folded.items() if v != (0, 0)} == live
    totals: dict[tuple[UUID, datetime], list[int]] = defaultdict(lambda: [0, 0])
    for (budget_id, start, _), (spent, held) in live.items():
        totals[(budget_id, start)][0] += spent
        totals[(budget_id, start)][1] += held
    for r in conn.execute(text("SELECT * FROM budget_period_totals")):
        assert totals.get((r.budget_id, r.period_start), [0, 0]) == [
            int(r.spent_pico_usd),
            int(r.held_pico_usd),
        ]
    pools = conn.execute(
        text(
            "SELECT s.budget_id, s.period_start, b.limit_pico_usd, b.mode,"
            " sum(s.headroom_pico_usd) AS headroom, bool_or(s.is_open) AS any_open,"
            " min(s.headroom_pico_usd) AS lowest, t.spent_pico_usd, t.held_pico_usd"
            " FROM budget_slices s JOIN budgets b USING (org, budget_id)"
            " JOIN budget_period_totals t USING (org, budget_id, period_start)"
            " WHERE b.escrow_slices > 1 AND s.budget_version = b.version"
            " GROUP BY 1, 2, 3, 4, t.spent_pico_usd, t.held_pico_usd"
        )
    )
    for r in pools:
        left = r.limit_pico_usd - r.spent_pico_usd - r.held_pico_usd
        assert r.headroom == left, r  # I
        if r.any_open and r.mode == "hard":
            assert r.lowest >= 0, r  # S


def check_ledger(engine: Engine) -> None:
    """Replay finds nothing wrong (it compares each period's totals: row plus slices, through
    budget_period_totals) and check_escrow holds row by row and slice by slice, all in one
    snapshot."""
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        report = verify(conn)
        check_escrow(conn)
        conn.rollback()
    assert report.differences == []
