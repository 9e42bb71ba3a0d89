"""Time-windowed prices: DeepSeek's off-peak block, read at the billing time (UTC windows)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from app.pricing.table import default_table
from tests.pricing.helpers import make_table, price

WINDOWS = [
    {"hours_utc": ["00:00-01:00", "04:00-06:00", "10:00-00:00"], "weekdays": [1, 2, 3, 4, 5]},
    {"hours_utc": "00:00-00:00", "weekdays": [6, 7]},
]
OFF_PEAK = {
    "input_cost_per_token": "1.5e-07",
    "output_cost_per_token": "6e-07",
    "cache_read_input_token_cost": "3e-09",
    "windows": WINDOWS,
}
TABLE = make_table(
    {
        "deepseek/test": {
            "litellm_provider": "deepseek",
            "input_cost_per_token": "3e-07",
            "output_cost_per_token": "1.2e-06",
            "cache_read_input_token_cost": "6e-09",
            "off_peak_pricing": OFF_PEAK,
        },
        "deepseek/flat": {
            "litellm_provider": "deepseek",
            "input_cost_per_token": "4e-07",
            "output_cost_per_token": "1e-06",
            "off_peak_pricing": {"hours_utc": "16:30-00:30", "input_cost_per_token": "2e-07"},
        },
        "tencent/test": {
            "litellm_provider": "tencent",
            "input_cost_per_token": "3e-07",
            "output_cost_per_token": "1.2e-06",
            "off_peak_pricing": {**OFF_PEAK, "weekday_timezone": "Asia/Shanghai"},
        },
    }
)


@pytest.mark.parametrize(
    ("moment", "off_peak"),
    [
        ("2026-11-18T00:00:00+00:00", True),
        ("2026-11-18T00:59:59+00:00", True),
        ("2026-11-18T01:00:00+00:00", False),
        ("2026-11-18T03:59:00+00:00", False),
        ("2026-11-18T04:00:00+00:00", True),
        ("2026-11-18T06:00:00+00:00", False),
        ("2026-11-18T09:59:59+00:00", False),
        ("2026-11-18T10:00:00+00:00", True),
        ("2026-11-18T23:59:59+00:00", True),
        ("2026-11-21T08:00:00+00:00", True),
        ("2026-11-22T23:59:00+00:00", True),
        ("2026-11-23T08:00:00+00:00", False),
        ("2026-11-18T18:00:00+08:00", True),
        ("2026-11-18T08:00:00Z", False),
    ],
)
def test_weekday_windows(moment: str, off_peak: bool) -> None:
    quote = price(
        TABLE,
        "deepseek/test",
        billing_time=moment,
        prompt_tokens=1000,
        completion_tokens=1000,
        cache_read_tokens=500,
    )
    assert quote["off_peak"] is off_peak
    if off_peak:
        expected = 500 * Decimal("1.5e-7") + 500 * Decimal("3e-9") + 1000 * Decimal("6e-7")
    else:
        expected = 500 * Decimal("3e-7") + 500 * Decimal("6e-9") + 1000 * Decimal("1.2e-6")
    assert Decimal(quote["total_usd"]) == expected


@pytest.mark.parametrize(
    ("moment", "off_peak"),
    [
        ("2026-11-18T16:29:59+00:00", False),
        ("2026-11-18T16:30:00+00:00", True),
        ("2026-11-19T00:29:00+00:00", True),
        ("2026-11-19T00:30:00+00:00", False),
    ],
)
def test_daily_window_wrapping_midnight(moment: str, off_peak: bool) -> None:
    quote = price(
        TABLE, "deepseek/flat", billing_time=moment, prompt_tokens=10, completion_tokens=10
    )
    assert quote["off_peak"] is off_peak
    rate = Decimal("2e-7") if off_peak else Decimal("4e-7")
    assert Decimal(quote["prompt_usd"]) == 10 * rate
    assert quote["completion_usd"] == "0.00001"  # no off-peak output rate: the standard one


def test_weekday_read_in_the_named_time_zone() -> None:
    # Friday 20:00 UTC is Saturday 04:00 in Shanghai: the weekend rule (all day) applies there.
    friday_evening = "2026-11-20T20:00:00+00:00"
    tencent = price(TABLE, "tencent/test", billing_time=friday_evening, prompt_tokens=1)
    assert tencent["off_peak"] is True
    monday_early = "2026-11-22T20:00:00+00:00"  # Sunday 20:00 UTC = Monday 04:00 Shanghai
    assert (
        price(TABLE, "tencent/test", billing_time=monday_early, prompt_tokens=1)["off_peak"] is True
    )
    sunday_late = "2026-11-22T02:00:00+00:00"  # Sunday 02:00 UTC, Sunday 10:00 Shanghai
    assert (
        price(TABLE, "deepseek/test", billing_time=sunday_late, prompt_tokens=1)["off_peak"] is True
    )


def test_off_peak_input_rate_backs_missing_cache_prices() -> None:
    table = make_table(
        {
            "m": {
                "input_cost_per_token": "4e-07",
                "output_cost_per_token": "1e-06",
                "off_peak_pricing": {"hours_utc": "00:00-00:00", "input_cost_per_token": "2e-07"},
            }
        }
    )
    quote = price(table, "m", prompt_tokens=100, cache_read_tokens=100)
    assert Decimal(quote["prompt_usd"]) == 100 * Decimal("2e-7")


def test_snapshot_deepseek_v4_off_peak() -> None:
    peak = price(default_table(), "deepseek/deepseek-v4-flash", prompt_tokens=1_000_000)
    night = price(
        default_table(),
        "deepseek/deepseek-v4-flash",
        prompt_tokens=1_000_000,
        billing_time="2026-11-18T12:00:00+00:00",
    )
    assert (peak["prompt_usd"], night["prompt_usd"]) == ("0.3", "0.15")


def test_naive_billing_time_is_utc() -> None:
    naive = price(TABLE, "deepseek/test", billing_time="2026-11-18T10:00:00", prompt_tokens=1)
    assert naive["off_peak"] is True
    assert naive["billing_time"] == datetime(2026, 11, 18, 10, tzinfo=UTC).isoformat()
