"""The model-matching rule, and the comparison of both sides without a database."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from app.money import parse_usd
from app.reconcile.matching import belongs_to, from_display_name, model_key
from app.reconcile.service import ProviderItem, compare

D1, D2, D3 = date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("openai/gpt-4o", "gpt-4o"),
        ("openai/openai/GPT-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("text-embedding-3-small", "text-embedding-3-small"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-sonnet-4-0", "claude-sonnet-4"),
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("chatgpt-4o-latest", "chatgpt-4o"),
        ("gpt-4", "gpt-4"),
        ("  ", None),
        (None, None),
    ],
)
def test_model_key(name: str | None, key: str | None) -> None:
    assert model_key(name) == key


def test_different_models_keep_different_keys() -> None:
    names = ["gpt-4o", "gpt-4o-mini", "gpt-4", "gpt-4.1", "claude-sonnet-4-5", "claude-sonnet-4"]
    assert len({model_key(n) for n in names}) == len(names)


@pytest.mark.parametrize(
    ("display", "api_id"),
    [
        ("Claude Sonnet 4.5", "claude-sonnet-4-5"),
        ("Claude Haiku 4.5", "claude-haiku-4-5"),
        ("Claude Opus 4.1", "claude-opus-4-1"),
        ("Claude Sonnet 3.7", "claude-3-7-sonnet"),
        ("Claude Haiku 3", "claude-3-haiku"),
        ("Claude 3.5 Sonnet", "claude-3-5-sonnet"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929"),
    ],
)
def test_console_display_names(display: str, api_id: str) -> None:
    assert from_display_name(display) == api_id


@pytest.mark.parametrize(
    ("recorded", "model", "openai", "anthropic"),
    [
        ("openai", "gpt-4o", True, False),
        ("OpenAI", "whatever", True, False),
        ("azure", "gpt-4o", False, False),
        ("anthropic", "claude-sonnet-4-5", False, True),
        ("bedrock", "claude-sonnet-4-5", False, False),
        (None, "openai/gpt-4o", True, False),
        (None, "anthropic/claude-sonnet-4-5", False, True),
        (None, "azure/gpt-4o", False, False),
        (None, "gpt-4o-mini", True, False),
        (None, "o3-mini", True, False),
        (None, "claude-haiku-4-5", False, True),
        (None, "gemini-2.5-flash", False, False),
        (None, None, False, False),
    ],
)
def test_which_ledger_rows_belong_to_a_provider(
    recorded: str | None, model: str | None, openai: bool, anthropic: bool
) -> None:
    assert belongs_to("openai", recorded_provider=recorded, model=model) is openai
    assert belongs_to("anthropic", recorded_provider=recorded, model=model) is anthropic


def _item(day: date, usd: str, model: str | None, line_item: str | None = None) -> ProviderItem:
    return ProviderItem(day=day, amount_usd=Decimal(usd), model=model, line_item=line_item)


def test_every_amount_lands_in_one_row_and_unmatched_rows_stay() -> None:
    items = [
        _item(D1, "1.25", "gpt-4o-2024-08-06", "gpt-4o-2024-08-06, input"),
        _item(D1, "0.75", "gpt-4o-2024-08-06", "gpt-4o-2024-08-06, output"),
        _item(D1, "0.1", None, "web search tool calls"),
        _item(D1, "0.2", None, None),
        _item(D2, "3", "gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18, input"),
        _item(D3, "100", "gpt-4o", "gpt-4o, input"),
    ]
    ledger = {
        (D1, "gpt-4o"): parse_usd("1.5"),
        (D1, "openai/gpt-4o"): parse_usd("0.25"),
        (D2, "o1"): parse_usd("4"),
        (D2, None): parse_usd("0.01"),
    }
    rows, excluded, excluded_pico = compare(items, ledger, start=D1, end=D3)
    summary = [
        (r.day, r.model, r.line_item, r.status, r.ledger_pico_usd, r.provider_pico_usd)
        for r in rows
    ]
    assert summary == [
        (D2, "o1", None, "ledger_only", parse_usd("4"), 0),
        (D2, "gpt-4o-mini", None, "provider_only", 0, parse_usd("3")),
        (D1, "gpt-4o", None, "matched", parse_usd("1.75"), parse_usd("2")),
        (D1, None, "(not itemised)", "provider_only", 0, parse_usd("0.2")),
        (D1, None, "web search tool calls", "provider_only", 0, parse_usd("0.1")),
        (D2, None, None, "ledger_only", parse_usd("0.01"), 0),
    ]
    assert rows[2].ledger_models == ("gpt-4o", "openai/gpt-4o")
    assert rows[2].provider_models == ("gpt-4o-2024-08-06",)
    assert rows[2].provider_line_items == 2
    assert rows[2].difference_pico_usd == parse_usd("0.25")
    assert (excluded, excluded_pico) == (1, parse_usd("100"))
    assert sum(r.ledger_pico_usd for r in rows) == sum(ledger.values())
    assert sum(r.provider_pico_usd for r in rows) == parse_usd("5.3")


def test_figures_finer_than_a_pico_dollar_are_rounded_once_per_row_and_flagged() -> None:
    items = [
        _item(D1, "0.030000000000000002", "gpt-4o", "a"),
        _item(D1, "0.0000000000005", "gpt-4o", "b"),
        _item(D1, "0.0000000000015", "gpt-4o-mini", "c"),
        _item(D1, "1.000000000001", "o1", "d"),
    ]
    rows, _, _ = compare(items, {}, start=D1, end=D2)
    by_model = {r.model: r for r in rows}
    # 0.0300000000005 + 2e-18: half to even would give ...000, but the exact sum is above half.
    assert by_model["gpt-4o"].provider_pico_usd == 30_000_000_001
    assert not by_model["gpt-4o"].provider_exact
    assert by_model["gpt-4o-mini"].provider_pico_usd == 2  # 1.5 pico, half to even
    assert by_model["o1"].provider_exact
    assert by_model["o1"].provider_pico_usd == 1_000_000_000_001
