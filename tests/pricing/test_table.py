"""Loading the price table: exact rates, the embedded snapshot, overrides layered over it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from fractions import Fraction

import pytest

from app.pricing.errors import InvalidPriceTable
from app.pricing.resolve import resolve
from app.pricing.table import (
    Override,
    PriceTable,
    default_table,
    format_rate_usd,
    snapshot_bytes,
    snapshot_info,
    to_rate,
)
from tests.pricing.helpers import make_table

SNAPSHOT_SHA = "66970be01c88f94618f9f69c1a1d29e400474f2d7b89973de7e373c110f455c2"


def test_embedded_snapshot_is_the_pinned_one() -> None:
    assert hashlib.sha256(snapshot_bytes()).hexdigest() == SNAPSHOT_SHA
    assert snapshot_info()["sha256"] == SNAPSHOT_SHA
    assert snapshot_info()["litellm_version"] == "1.106.2"
    assert default_table().source_id == SNAPSHOT_SHA
    assert default_table() is default_table()


def test_every_token_rate_in_the_snapshot_is_an_integer_pico_usd() -> None:
    for entry in default_table().base_entries().values():
        for name, rate in entry.rates.items():
            if "per_token" in name or "token_cost" in name:
                assert isinstance(rate, int), (entry.key, name)


def test_float_noise_is_rounded_to_12_significant_digits() -> None:
    from decimal import Decimal

    assert to_rate(Decimal("5.9999999999999995e-07"), where="t") == 600_000
    assert to_rate(Decimal("3e-06"), where="t") == 3_000_000
    assert to_rate(0, where="t") == 0
    assert to_rate("2.5e-06", where="t") == 2_500_000
    assert to_rate(Decimal("0.0002833333333333333"), where="t") == Fraction(283333333333, 1000)


@pytest.mark.parametrize("bad", [True, None, "abc", "-1e-6", "NaN", [1]])
def test_bad_rates_are_refused(bad: object) -> None:
    with pytest.raises(InvalidPriceTable):
        to_rate(bad, where="t")


@pytest.mark.parametrize(
    "data", [b"", b"not json", b"[1, 2]", b"{}", b'{"m": {"mode": "chat"}}', b'{"m": NaN}']
)
def test_unusable_tables_are_errors_not_empty_tables(data: bytes) -> None:
    with pytest.raises(InvalidPriceTable):
        PriceTable.from_json(data, label="t")


def test_format_rate_usd_is_exact() -> None:
    assert format_rate_usd(2_500_000) == "0.0000025"
    assert format_rate_usd(Fraction(283333333333, 1000)) == "0.000283333333333"
    assert format_rate_usd(Fraction(9, 2)) == "0.0000000000045"


def test_overrides_apply_from_their_effective_time() -> None:
    base = make_table(
        {
            "m": {
                "litellm_provider": "openai",
                "input_cost_per_token": "1e-06",
                "output_cost_per_token": "2e-06",
            }
        }
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    table = base.with_overrides(
        [
            Override("ovr-1", "m", start, {"input_cost_per_token": "5e-07"}),
            Override("ovr-2", "m", start.replace(month=6), {"input_cost_per_token": "4e-07"}),
            Override("ovr-3", "new-model", start, {"input_cost_per_token": "1e-06"}),
        ]
    )
    before = table.get("m", at=start.replace(year=2025))
    january = table.get("m", at=start)
    july = table.get("m", at=start.replace(month=7))
    assert before is not None and before.rates["input_cost_per_token"] == 1_000_000
    assert before.source_id == base.source_id
    assert january is not None and january.rates["input_cost_per_token"] == 500_000
    assert january.rates["output_cost_per_token"] == 2_000_000  # partial override keeps the rest
    assert january.source_id == "ovr-1"
    assert july is not None and july.source_id == "ovr-2"
    assert resolve(table, model="new-model", provider=None, at=start).entry.source_id == "ovr-3"
    assert base.get("m") is not None and base.get("m").source_id == base.source_id  # type: ignore[union-attr]
