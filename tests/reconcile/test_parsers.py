"""Provider exports are read exactly, in every documented shape, and refused when odd."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from app.errors import InvalidInput
from app.reconcile.errors import InvalidExport
from app.reconcile.formats import ProviderExport
from app.reconcile.parsers import parse_export
from tests.reconcile.helpers import (
    ANTHROPIC_CSV,
    ANTHROPIC_JSON,
    OPENAI_CSV,
    OPENAI_JSON,
    OPENAI_PAGES,
)


def _parse(provider: str, path: Path) -> ProviderExport:
    return parse_export(provider, path.read_text(encoding="utf-8"))


def _total(exported: ProviderExport) -> Decimal:
    total = Decimal(0)
    for item in exported.items:
        total = total + item.amount_usd
    return total


def _by_day(exported: ProviderExport) -> dict[date, Decimal]:
    days: dict[date, Decimal] = {}
    for item in exported.items:
        days[item.day] = days.get(item.day, Decimal(0)) + item.amount_usd
    return days


def test_openai_costs_page_is_read_exactly() -> None:
    exported = _parse("openai", OPENAI_JSON)
    assert exported.format == "openai-costs-json"
    assert len(exported.items) == 10
    assert _total(exported) == Decimal("13.315670000000000002")
    assert _by_day(exported) == {
        date(2026, 11, 1): Decimal("5.015250000000000002"),
        date(2026, 11, 2): Decimal("8.30042"),
    }
    # The third bucket billed nothing and still belongs to the period.
    assert (exported.start, exported.end) == (date(2026, 11, 1), date(2026, 11, 4))
    noisy = exported.items[2]
    assert noisy.amount_text == "0.030000000000000002"
    assert noisy.amount_usd == Decimal("0.030000000000000002")
    assert exported.items[4].amount_text == "7.5e-05"
    assert exported.items[4].amount_usd == Decimal("0.000075")
    assert exported.items[0].bucket_start == datetime(2026, 11, 1, tzinfo=UTC)
    assert exported.items[0].attributes == {"project_id": "proj_Qm3bS9x2LrT8vK"}
    assert exported.warnings == []


def test_openai_line_items_name_models_tiers_and_non_model_charges() -> None:
    items = _parse("openai", OPENAI_JSON).items
    assert [(i.model, i.line_item) for i in items[:6]] == [
        ("gpt-4o-2024-08-06", "gpt-4o-2024-08-06, input"),
        ("gpt-4o-2024-08-06", "gpt-4o-2024-08-06, output"),
        ("gpt-4o-2024-08-06", "gpt-4o-2024-08-06, cached input"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18, input"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18, output"),
        (None, "web search tool calls"),
    ]
    priority = items[8]
    assert priority.model == "gpt-4.1-2025-04-14"
    assert priority.attributes["service_tier"] == "priority"


def test_an_array_of_pages_is_one_export() -> None:
    exported = _parse("openai", OPENAI_PAGES)
    assert len(exported.items) == 3
    assert _total(exported) == Decimal("12.2945")
    assert (exported.start, exported.end) == (date(2026, 11, 1), date(2026, 11, 3))
    assert exported.warnings == []


def test_a_missing_last_page_is_warned_about() -> None:
    pages = json.loads(OPENAI_PAGES.read_text())
    exported = parse_export("openai", json.dumps(pages[0]))
    assert exported.warnings == [
        "the last page says has_more: later pages are missing from this file"
    ]


def test_openai_dashboard_csv_is_read_exactly() -> None:
    exported = _parse("openai", OPENAI_CSV)
    assert exported.format == "openai-costs-csv"
    assert len(exported.items) == 6
    assert _total(exported) == Decimal("8.285175")
    assert exported.items[0].amount_text == "1.234500000000000000000000000000"
    assert (exported.start, exported.end) == (date(2026, 11, 1), date(2026, 11, 4))
    assert exported.items[3].model is None
    assert exported.items[5].model == "gpt-4.1-2025-04-14"
    assert exported.items[0].attributes["quantity"] == "493800"


def test_openai_csv_times_without_offset_are_utc() -> None:
    text = (
        "start_time_iso,end_time_iso,amount_value,amount_currency,line_item\n"
        '2026-11-05T00:00:00,2026-11-06T00:00:00,0.5,usd,"gpt-4o, input"\n'
    )
    (item,) = parse_export("openai", text).items
    assert item.bucket_start == datetime(2026, 11, 5, tzinfo=UTC)
    assert item.model == "gpt-4o"


def test_anthropic_cost_report_amounts_are_cents() -> None:
    exported = _parse("anthropic", ANTHROPIC_JSON)
    assert exported.format == "anthropic-cost-report-json"
    assert len(exported.items) == 10
    assert _total(exported) == Decimal("47.982134560001")
    first = exported.items[0]
    assert (first.amount_text, first.amount_unit, first.amount_usd) == (
        "600.0",
        "usd_cents",
        Decimal("6.000"),
    )
    assert first.model == "claude-sonnet-4-5-20250929"
    assert first.line_item == "Claude Sonnet 4.5 Usage - Input Tokens"
    assert first.attributes["token_type"] == "uncached_input_tokens"
    web = exported.items[5]
    assert (web.model, web.line_item, web.amount_usd) == (None, "Web Search Usage", Decimal("1.00"))
    assert exported.items[9].amount_usd == Decimal("0.050000000001")
    assert (exported.start, exported.end) == (date(2026, 11, 1), date(2026, 11, 4))


def test_anthropic_console_csv_maps_display_names() -> None:
    exported = _parse("anthropic", ANTHROPIC_CSV)
    assert exported.format == "anthropic-cost-csv"
    assert _total(exported) == Decimal("20.8784")
    assert [i.model for i in exported.items] == [
        "claude-sonnet-4-5",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        None,
        "claude-3-7-sonnet",
    ]
    assert exported.items[3].line_item == "web_search"
    assert exported.items[0].attributes["model_display_name"] == "Claude Sonnet 4.5"
    assert (exported.start, exported.end) == (date(2026, 11, 1), date(2026, 11, 3))


def test_a_byte_order_mark_is_ignored() -> None:
    exported = parse_export("anthropic", "\ufeff" + ANTHROPIC_CSV.read_text(encoding="utf-8"))
    assert len(exported.items) == 5


def test_an_empty_page_needs_the_provider_only() -> None:
    exported = parse_export("anthropic", '{"data": [], "has_more": false, "next_page": null}')
    assert (exported.format, exported.items, exported.start) == (
        "anthropic-cost-report-json",
        [],
        None,
    )


def test_a_file_of_the_other_provider_is_refused_naming_provider() -> None:
    with pytest.raises(InvalidInput) as refused:
        _parse("anthropic", OPENAI_JSON)
    assert refused.value.fields["field"] == "provider"
    assert "OpenAI" in refused.value.detail


def _bucket(result: dict[str, object]) -> str:
    return json.dumps(
        {
            "object": "page",
            "data": [
                {
                    "object": "bucket",
                    "start_time": 1793491200,
                    "end_time": 1793577600,
                    "results": [result],
                }
            ],
        }
    )


@pytest.mark.parametrize(
    ("content", "location"),
    [
        ("", ""),
        ("{", "line 1 column 2"),
        (
            '{"data": [{"start_time": 1793491200, "end_time": 1793577600, "results": '
            '[{"amount": {"value": NaN, "currency": "usd"}}]}]}',
            "",
        ),
        (
            _bucket({"amount": {"value": "1,000", "currency": "usd"}}),
            "data[0].results[0].amount.value",
        ),
        (
            _bucket({"amount": {"value": True, "currency": "usd"}}),
            "data[0].results[0].amount.value",
        ),
        (
            _bucket({"amount": {"value": "1e400", "currency": "usd"}}),
            "data[0].results[0].amount.value",
        ),
        (
            _bucket({"amount": {"value": 1, "currency": "eur"}}),
            "data[0].results[0].amount.currency",
        ),
        (
            _bucket({"object": "organization.usage.completions.result", "input_tokens": 5}),
            "data[0].results[0].object",
        ),
        (
            '{"data": [{"start_time": 1793491200, "end_time": 1793664000, "results": []}]}',
            "data[0]",
        ),
        ('{"data": [{"start": 1}]}', "data[0]"),
        ("[1, 2]", "[0]"),
        ("foo,bar\n1,2\n", "line 1"),
        ("amount_value,start_time\n0.5,yesterday\n", "line 2: start_time"),
    ],
)
def test_odd_openai_files_are_refused_naming_where(content: str, location: str) -> None:
    with pytest.raises(InvalidExport) as refused:
        parse_export("openai", content)
    assert refused.value.fields["field"] == "content"
    assert refused.value.location == location


@pytest.mark.parametrize(
    ("result", "location"),
    [
        ({"amount": "12.5", "currency": "EUR"}, "data[0].results[0].currency"),
        ({"amount": None, "currency": "USD"}, "data[0].results[0].amount"),
        ({"amount": "Infinity", "currency": "USD"}, "data[0].results[0].amount"),
        ({"uncached_input_tokens": 10, "output_tokens": 2, "model": "x"}, "data[0].results[0]"),
    ],
)
def test_odd_anthropic_files_are_refused_naming_where(
    result: dict[str, object], location: str
) -> None:
    content = json.dumps(
        {
            "data": [
                {
                    "starting_at": "2026-11-01T00:00:00Z",
                    "ending_at": "2026-11-02T00:00:00Z",
                    "results": [result],
                }
            ]
        }
    )
    with pytest.raises(InvalidExport) as refused:
        parse_export("anthropic", content)
    assert refused.value.location == location


def test_a_usage_csv_is_told_apart_from_a_cost_csv() -> None:
    usage = "usage_date_utc,model_version,usage_input_tokens_no_cache\n2026-11-01,x,5\n"
    with pytest.raises(InvalidExport) as refused:
        parse_export("anthropic", usage)
    assert "usage export" in refused.value.detail


def test_a_json_number_is_taken_from_its_literal_not_a_binary_float() -> None:
    # 0.1 as a float is 0.1000000000000000055511151231257827...; the literal is what counts.
    exported = parse_export("openai", _bucket({"amount": {"value": 0.1, "currency": "usd"}}))
    assert exported.items[0].amount_usd == Decimal("0.1")
    long = "0.1000000000000000055511151231257827021181583404541015625"
    exported = parse_export(
        "openai", _bucket({"amount": {"value": "X", "currency": "usd"}}).replace('"X"', long)
    )
    assert exported.items[0].amount_usd == Decimal(long)
