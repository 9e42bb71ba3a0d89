"""Reconciliations against real ledger spend on PostgreSQL: report, persistence, idempotency."""

from __future__ import annotations

import hashlib
import threading
from datetime import date
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import Connection, Engine, text

from app.errors import InvalidInput
from app.money import parse_usd
from app.reconcile import service
from app.reconcile.errors import ReconciliationConflict, ReconciliationNotFound
from tests.reconcile.helpers import (
    ANTHROPIC_JSON,
    OPENAI_CSV,
    OPENAI_JSON,
    at,
    fold_everything,
    openai_scenario,
    spend,
)

D1, D2 = date(2026, 11, 1), date(2026, 11, 2)


def _import(
    conn: Connection, path: Any = OPENAI_JSON, org: str = "acme", **kw: Any
) -> tuple[service.Reconciliation, bool]:
    values: dict[str, Any] = {"provider": "openai", "content": path.read_text(encoding="utf-8")}
    values.update(kw)
    return service.import_export(conn, org=org, **values)


def _summary(report: service.Report) -> list[tuple[date, str | None, str, int, int, int]]:
    return [
        (
            r.day,
            r.model or r.line_item,
            r.status,
            r.ledger_pico_usd,
            r.provider_pico_usd,
            r.difference_pico_usd,
        )
        for r in report.rows
    ]


USD = parse_usd
EXPECTED = [
    (D1, "o3-mini", "ledger_only", USD("0.5"), 0, -USD("0.5")),
    (D2, "gpt-4.1", "matched", USD("0.4"), USD("0.8"), USD("0.4")),
    (D1, "web search tool calls", "provider_only", 0, USD("0.25"), USD("0.25")),
    (D1, "gpt-4o", "matched", USD("4.7345"), USD("4.7645"), USD("0.03")),
    (D2, "text-embedding-3-small", "provider_only", 0, USD("0.00042"), USD("0.00042")),
    (D1, "gpt-4o-mini", "matched", USD("0.00075"), USD("0.00075"), 0),
    (D2, "gpt-4o", "matched", USD("7.5"), USD("7.5"), 0),
]


def test_report_compares_per_day_and_model_whether_or_not_rollups_are_folded(
    engine: Engine,
) -> None:
    openai_scenario(engine)
    with engine.begin() as conn:
        reconciliation, created = _import(conn)
    assert created
    with engine.connect() as conn:
        unfolded = service.report_of(conn, reconciliation)
    assert fold_everything(engine) > 0
    with engine.connect() as conn:
        folded = service.report_of(conn, reconciliation)
    for report in (unfolded, folded):
        assert _summary(report) == EXPECTED
        assert report.totals == {
            "ledger_pico_usd": USD("13.13525"),
            "provider_pico_usd": USD("13.31567"),
            "difference_pico_usd": USD("0.18042"),
        }
        # 0.030000000000000002 USD is finer than a pico-dollar: rounded, and said so.
        assert not report.exact
        assert [r.provider_exact for r in report.rows].count(False) == 1
    document = service.report_to_json(folded)
    assert document["period"] == {"from": "2026-11-01", "to": "2026-11-03"}
    assert document["totals"] == {
        "ledger_usd": "13.13525",
        "provider_usd": "13.31567",
        "difference_usd": "0.18042",
    }
    gpt4o = document["rows"][3]
    assert gpt4o["ledger_models"] == ["gpt-4o"]
    assert gpt4o["provider_models"] == ["gpt-4o-2024-08-06"]
    assert gpt4o["provider_line_items"] == 3


def test_the_report_follows_the_ledger_after_import(engine: Engine) -> None:
    with engine.begin() as conn:
        reconciliation, _ = _import(conn)
    with engine.connect() as conn:
        before = service.report_of(conn, reconciliation)
    assert before.totals["ledger_pico_usd"] == 0
    spend(engine, request_id="late", model="gpt-4o", provider="openai", usd="7.5", when=at(2))
    with engine.connect() as conn:
        after = service.report(conn, org="acme", reconciliation_id=reconciliation.reconciliation_id)
    assert after.totals["ledger_pico_usd"] == USD("7.5")


def test_anthropic_report_matches_dated_ids_to_aliases(engine: Engine) -> None:
    spend(
        engine,
        request_id="s1",
        model="claude-sonnet-4-5",
        provider="anthropic",
        usd="18.30623456",
        when=at(1),
    )
    spend(engine, request_id="s2", model="gpt-4o", provider="openai", usd="1", when=at(1))
    with engine.begin() as conn:
        reconciliation, _ = _import(conn, ANTHROPIC_JSON, provider="anthropic")
        report = service.report_of(conn, reconciliation)
    day1 = {(r.day, r.model or r.line_item): r for r in report.rows if r.day == D1}
    sonnet = day1[(D1, "claude-sonnet-4-5")]
    assert (sonnet.ledger_pico_usd, sonnet.provider_pico_usd) == (USD("18.30623456"),) * 2
    assert sonnet.provider_models == ("claude-sonnet-4-5-20250929",)
    assert day1[(D1, "Web Search Usage")].status == "provider_only"
    assert report.totals["provider_pico_usd"] == USD("47.982134560001")
    assert report.exact


def test_reimporting_the_same_file_is_the_same_reconciliation(engine: Engine) -> None:
    with engine.begin() as conn:
        first, created = _import(conn)
    with engine.begin() as conn:
        again, created_again = _import(conn)
        # The period the file implies is the stored one: naming it explicitly is no conflict.
        same, _ = _import(conn, period_from=D1, period_to=date(2026, 11, 3))
    assert created and not created_again
    assert first == again == same
    with engine.connect() as conn:
        counts = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM reconciliations),"
                " (SELECT count(*) FROM reconciliation_line_items)"
            )
        ).one()
        report = service.report_of(conn, again)
    assert tuple(counts) == (1, 10)
    assert report.totals["provider_pico_usd"] == USD("13.31567")


def test_the_same_file_for_another_period_is_a_conflict(conn: Connection) -> None:
    stored, _ = _import(conn)
    with pytest.raises(ReconciliationConflict) as refused:
        _import(conn, period_from=D2, period_to=D2)
    assert refused.value.fields == {
        "reconciliation_id": str(stored.reconciliation_id),
        "field": "from",
    }


def test_concurrent_imports_of_one_file_store_it_once(engine: Engine) -> None:
    outcome: list[tuple[service.Reconciliation, bool]] = []
    with engine.begin() as first:
        mine = _import(first)

        def second() -> None:
            with engine.begin() as conn:
                outcome.append(_import(conn))

        worker = threading.Thread(target=second)
        worker.start()
        worker.join(timeout=1)
        assert worker.is_alive(), "the second import must wait for the first to commit"
    worker.join(timeout=30)
    assert outcome == [(mine[0], False)]


def test_another_org_gets_its_own_reconciliation_and_cannot_read_this_one(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        acme, _ = _import(conn)
        globex, created = _import(conn, org="globex")
    assert created and globex.reconciliation_id != acme.reconciliation_id
    with engine.connect() as conn:
        with pytest.raises(ReconciliationNotFound):
            service.report(conn, org="globex", reconciliation_id=acme.reconciliation_id)
        assert (
            service.get_reconciliation(conn, org=None, reconciliation_id=acme.reconciliation_id)
            == acme
        )
        with pytest.raises(ReconciliationNotFound):
            service.get_reconciliation(conn, org="acme", reconciliation_id=UUID(int=1))


def test_line_items_are_stored_exactly_as_billed(conn: Connection) -> None:
    stored, _ = _import(conn)
    rows = conn.execute(
        text(
            "SELECT line_no, amount_text, amount_unit, amount_usd, model, line_item, attributes"
            " FROM reconciliation_line_items WHERE reconciliation_id = :id ORDER BY line_no"
        ),
        {"id": stored.reconciliation_id},
    ).all()
    assert len(rows) == 10
    assert rows[2].amount_text == "0.030000000000000002"
    assert rows[2].amount_usd == Decimal("0.030000000000000002")
    assert rows[4].amount_text == "7.5e-05"
    assert rows[4].amount_usd == Decimal("0.000075")
    assert (rows[5].model, rows[5].line_item) == (None, "web search tool calls")
    assert rows[8].attributes == {"project_id": "proj_Ve7wN1cY5hP0aZ", "service_tier": "priority"}
    assert stored.source_sha256 == hashlib.sha256(OPENAI_JSON.read_bytes()).hexdigest()


def test_a_narrower_period_excludes_the_other_days_and_says_so(engine: Engine) -> None:
    openai_scenario(engine)
    with engine.begin() as conn:
        reconciliation, _ = _import(conn, OPENAI_CSV, period_from=D2, period_to=D2)
        report = service.report_of(conn, reconciliation)
    assert (reconciliation.period_start, reconciliation.period_end) == (D2, date(2026, 11, 3))
    assert {r.day for r in report.rows} == {D2}
    assert (report.excluded_line_items, report.excluded_provider_pico_usd) == (
        4,
        USD("4.985175"),
    )
    assert report.totals == {
        "ledger_pico_usd": USD("7.9"),
        "provider_pico_usd": USD("3.3"),
        "difference_pico_usd": -USD("4.6"),
    }


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"period_from": date(2026, 11, 3), "period_to": D1}, "to"),
        ({"period_from": D1, "period_to": date(2028, 1, 1)}, "to"),
        ({"provider": "azure"}, "provider"),
    ],
)
def test_bad_periods_and_providers_are_refused(
    conn: Connection, kw: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        _import(conn, **kw)
    assert refused.value.fields["field"] == field
    assert conn.execute(text("SELECT count(*) FROM reconciliations")).scalar_one() == 0


def test_an_empty_export_needs_a_period(conn: Connection) -> None:
    empty = '{"object": "page", "data": [], "has_more": false, "next_page": null}'
    with pytest.raises(InvalidInput) as refused:
        service.import_export(conn, org="acme", provider="openai", content=empty)
    assert refused.value.fields["field"] == "from"
    stored, _ = service.import_export(
        conn, org="acme", provider="openai", content=empty, period_from=D1, period_to=D2
    )
    assert service.report_of(conn, stored).rows == []


def test_the_only_org_is_found_when_there_is_one(engine: Engine) -> None:
    with engine.connect() as conn:
        assert service.only_org(conn) is None
    spend(engine, request_id="x", model="gpt-4o", provider="openai", usd="1", when=at(1))
    with engine.connect() as conn:
        assert service.only_org(conn) == "acme"
    spend(engine, request_id="y", model="gpt-4o", provider="openai", usd="1", when=at(1), org="b")
    with engine.connect() as conn:
        assert service.only_org(conn) is None
