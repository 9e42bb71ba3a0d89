"""The pricing rules, each on a small table built for it (docs/pricing.md, "Rules")."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from app.pricing.errors import UnknownModel
from app.pricing.table import default_table
from tests.pricing.helpers import make_table, price

ENTRIES: dict[str, dict[str, Any]] = {
    "plain": {
        "litellm_provider": "openai",
        "input_cost_per_token": "1e-06",
        "output_cost_per_token": "2e-06",
    },
    "cached": {
        "litellm_provider": "anthropic",
        "input_cost_per_token": "3e-06",
        "output_cost_per_token": "1.5e-05",
        "cache_read_input_token_cost": "3e-07",
        "cache_creation_input_token_cost": "3.75e-06",
        "cache_creation_input_token_cost_above_1hr": "6e-06",
    },
    "reasoner": {
        "litellm_provider": "openai",
        "input_cost_per_token": "1e-06",
        "output_cost_per_token": "2e-06",
        "output_cost_per_reasoning_token": "5e-06",
    },
    "long": {
        "litellm_provider": "gemini",
        "input_cost_per_token": "1e-06",
        "output_cost_per_token": "1e-05",
        "cache_read_input_token_cost": "1e-07",
        "input_cost_per_token_above_200k_tokens": "2e-06",
        "output_cost_per_token_above_200k_tokens": "1.5e-05",
        "cache_read_input_token_cost_above_200k_tokens": "2e-07",
    },
    "stepped": {
        "litellm_provider": "gemini",
        "input_cost_per_token": "1e-06",
        "output_cost_per_token": "1e-06",
        "input_cost_per_token_above_128k_tokens": "2e-06",
        "input_cost_per_token_above_256k_tokens": "4e-06",
        "output_cost_per_token_above_256k_tokens": "8e-06",
    },
    "xai/grok-test": {
        "litellm_provider": "xai",
        "input_cost_per_token": "2e-06",
        "output_cost_per_token": "1e-05",
        "input_cost_per_token_above_128k_tokens": "4e-06",
        "output_cost_per_token_above_128k_tokens": "2e-05",
    },
    "dashscope/qwen-test": {
        "litellm_provider": "dashscope",
        "tiered_pricing": [
            {
                "input_cost_per_token": "1e-07",
                "output_cost_per_token": "1e-06",
                "output_cost_per_reasoning_token": "3e-06",
                "range": [0, 32000.0],
            },
            {
                "input_cost_per_token": "2e-07",
                "output_cost_per_token": "2e-06",
                "cache_read_input_token_cost": "5e-08",
                "range": [32000.0, 128000.0],
            },
            {"input_cost_per_token": "4e-07", "range": [128000.0, 256000.0]},
        ],
        "output_cost_per_token": "9e-06",
    },
    "fireworks_ai/accounts/fireworks/models/test": {
        "litellm_provider": "fireworks_ai",
        "input_cost_per_token": "9e-07",
        "output_cost_per_token": "9e-07",
    },
    "fireworks_ai/accounts/fireworks/models/test-cached": {
        "litellm_provider": "fireworks_ai",
        "input_cost_per_token": "9e-07",
        "output_cost_per_token": "9e-07",
        "cache_read_input_token_cost": "1e-07",
    },
    "tiers": {
        "litellm_provider": "openai",
        "input_cost_per_token": "2e-06",
        "output_cost_per_token": "8e-06",
        "cache_read_input_token_cost": "5e-07",
        "input_cost_per_token_priority": "4e-06",
        "output_cost_per_token_priority": "1.6e-05",
        "input_cost_per_token_flex": "1e-06",
        "output_cost_per_token_flex": "4e-06",
        "cache_read_input_token_cost_flex": "2.5e-07",
        "input_cost_per_token_batches": "1e-06",
        "output_cost_per_token_batches": "4e-06",
        "output_cost_per_reasoning_token": "9e-06",
    },
    "half-batch": {
        "litellm_provider": "openai",
        "input_cost_per_token": "3e-06",
        "output_cost_per_token": "5e-06",
    },
    "free": {"litellm_provider": "ollama", "input_cost_per_token": 0, "output_cost_per_token": 0},
    "no-prices": {"litellm_provider": "openai", "mode": "chat", "max_tokens": 1000},
    "input-only": {
        "litellm_provider": "openai",
        "mode": "embedding",
        "input_cost_per_token": "1e-07",
    },
}
TABLE = make_table(ENTRIES)


def usd(text: str) -> Decimal:
    return Decimal(text)


def test_plain_tokens() -> None:
    quote = price(TABLE, "plain", prompt_tokens=1000, completion_tokens=500)
    assert (quote["prompt_usd"], quote["completion_usd"], quote["total_usd"]) == (
        "0.001",
        "0.001",
        "0.002",
    )


def test_cache_reads_and_5m_and_1h_writes_use_their_rates() -> None:
    quote = price(
        TABLE,
        "cached",
        prompt_tokens=10_000,
        completion_tokens=0,
        cache_read_tokens=4000,
        cache_creation_tokens=3000,
        cache_creation_1h_tokens=1000,
    )
    # 3000 input x 3e-6 + 4000 x 3e-7 + 2000 x 3.75e-6 + 1000 x 6e-6
    assert usd(quote["prompt_usd"]) == usd("0.009") + usd("0.0012") + usd("0.0075") + usd("0.006")


def test_missing_cache_rates_fall_back_to_input_and_1h_to_5m() -> None:
    quote = price(
        TABLE,
        "plain",
        prompt_tokens=1000,
        cache_read_tokens=300,
        cache_creation_tokens=200,
        cache_creation_1h_tokens=100,
    )
    assert quote["prompt_usd"] == "0.001"
    rates = quote["breakdown"]["rates_usd_per_unit"]
    assert rates["cache_read"] == rates["cache_write_5m"] == rates["cache_write_1h"] == "0.000001"


def test_1h_write_falls_back_to_the_5m_write_rate() -> None:
    entry = {
        "x": {
            "input_cost_per_token": "1e-06",
            "output_cost_per_token": "1e-06",
            "cache_creation_input_token_cost": "2e-06",
        }
    }
    quote = price(
        make_table(entry),
        "x",
        prompt_tokens=100,
        cache_creation_tokens=100,
        cache_creation_1h_tokens=60,
    )
    assert quote["prompt_usd"] == "0.0002"


def test_reasoning_rate_applies_to_reasoning_tokens_only() -> None:
    quote = price(TABLE, "reasoner", completion_tokens=1000, reasoning_tokens=600)
    assert usd(quote["completion_usd"]) == 400 * usd("2e-6") + 600 * usd("5e-6")


def test_threshold_switches_every_token_type_strictly_above() -> None:
    at = price(
        TABLE, "long", prompt_tokens=200_000, completion_tokens=10, cache_read_tokens=100_000
    )
    assert at["threshold_tokens"] is None
    assert usd(at["prompt_usd"]) == 100_000 * usd("1e-6") + 100_000 * usd("1e-7")
    above = price(
        TABLE, "long", prompt_tokens=200_001, completion_tokens=10, cache_read_tokens=100_000
    )
    assert above["threshold_tokens"] == 200_000
    assert usd(above["prompt_usd"]) == 100_001 * usd("2e-6") + 100_000 * usd("2e-7")
    assert usd(above["completion_usd"]) == 10 * usd("1.5e-5")


def test_highest_crossed_threshold_wins_with_lower_rates_as_fallback() -> None:
    mid = price(TABLE, "stepped", prompt_tokens=200_000, completion_tokens=1)
    assert usd(mid["prompt_usd"]) == 200_000 * usd("2e-6")
    assert usd(mid["completion_usd"]) == usd("1e-6")
    high = price(TABLE, "stepped", prompt_tokens=300_000, completion_tokens=1)
    assert usd(high["prompt_usd"]) == 300_000 * usd("4e-6")
    assert usd(high["completion_usd"]) == usd("8e-6")


def test_xai_threshold_is_inclusive() -> None:
    below = price(TABLE, "xai/grok-test", prompt_tokens=127_999, completion_tokens=1)
    at = price(TABLE, "xai/grok-test", prompt_tokens=128_000, completion_tokens=1)
    assert usd(below["prompt_usd"]) == 127_999 * usd("2e-6")
    assert usd(at["prompt_usd"]) == 128_000 * usd("4e-6")
    assert usd(at["completion_usd"]) == usd("2e-5")


@pytest.mark.parametrize(
    ("prompt", "tier", "input_rate"),
    [
        (1, 0, "1e-7"),
        (32_000, 0, "1e-7"),
        (32_001, 1, "2e-7"),
        (128_000, 1, "2e-7"),
        (128_001, 2, "4e-7"),
        (256_000, 2, "4e-7"),
        (900_000, 2, "4e-7"),
    ],
)
def test_tiered_pricing_picks_one_tier_for_everything(
    prompt: int, tier: int, input_rate: str
) -> None:
    quote = price(TABLE, "dashscope/qwen-test", prompt_tokens=prompt, completion_tokens=0)
    assert quote["tier_index"] == tier
    assert usd(quote["prompt_usd"]) == prompt * usd(input_rate)


def test_tier_rates_fall_back_within_the_tier() -> None:
    low = price(
        TABLE,
        "dashscope/qwen-test",
        prompt_tokens=1000,
        completion_tokens=100,
        reasoning_tokens=40,
        cache_read_tokens=500,
    )
    assert usd(low["prompt_usd"]) == 1000 * usd("1e-7")  # no cache price: tier input
    assert usd(low["completion_usd"]) == 60 * usd("1e-6") + 40 * usd("3e-6")
    mid = price(
        TABLE,
        "dashscope/qwen-test",
        prompt_tokens=40_000,
        completion_tokens=10,
        cache_read_tokens=10_000,
        reasoning_tokens=5,
    )
    assert usd(mid["prompt_usd"]) == 30_000 * usd("2e-7") + 10_000 * usd("5e-8")
    assert usd(mid["completion_usd"]) == 10 * usd("2e-6")  # reasoning: the tier's output
    top = price(TABLE, "dashscope/qwen-test", prompt_tokens=200_000, completion_tokens=10)
    assert usd(top["completion_usd"]) == 10 * usd("9e-6")  # tier without output: the model's


def test_fireworks_cache_read_defaults_to_half_input() -> None:
    quote = price(TABLE, "fireworks_ai/test", prompt_tokens=1000, cache_read_tokens=1000)
    assert usd(quote["prompt_usd"]) == 1000 * usd("4.5e-7")
    stated = price(TABLE, "fireworks_ai/test-cached", prompt_tokens=1000, cache_read_tokens=1000)
    assert usd(stated["prompt_usd"]) == 1000 * usd("1e-7")


def test_other_providers_cache_read_falls_back_to_full_input() -> None:
    quote = price(TABLE, "plain", prompt_tokens=1000, cache_read_tokens=1000)
    assert quote["prompt_usd"] == "0.001"


@pytest.mark.parametrize(
    ("tier", "prompt_usd", "completion_usd"),
    [
        (None, "0.0021", "0.0008"),
        ("default", "0.0021", "0.0008"),
        ("priority", "0.0041", "0.0016"),
        ("fast", "0.0041", "0.0016"),
        ("flex", "0.00105", "0.0004"),
    ],
)
def test_service_tiers(tier: str | None, prompt_usd: str, completion_usd: str) -> None:
    quote = price(
        TABLE,
        "tiers",
        prompt_tokens=1200,
        completion_tokens=100,
        cache_read_tokens=200,
        service_tier=tier,
    )
    assert (quote["prompt_usd"], quote["completion_usd"]) == (prompt_usd, completion_usd)


def test_priority_without_a_tier_rate_uses_the_standard_one() -> None:
    quote = price(
        TABLE, "tiers", prompt_tokens=1000, cache_read_tokens=1000, service_tier="priority"
    )
    assert quote["prompt_usd"] == "0.0005"


def test_batch_uses_batch_rates_and_bills_cache_as_batch_input_without_a_batch_cache_rate() -> None:
    quote = price(
        TABLE,
        "tiers",
        prompt_tokens=1000,
        completion_tokens=100,
        cache_read_tokens=400,
        reasoning_tokens=50,
        service_tier="batch",
    )
    assert quote["service_tier"] == "batches"
    assert (quote["prompt_usd"], quote["completion_usd"]) == ("0.001", "0.0004")


def test_batch_without_batch_rates_is_half_the_standard_rates() -> None:
    quote = price(
        TABLE, "half-batch", prompt_tokens=1001, completion_tokens=3, service_tier="batch"
    )
    assert usd(quote["prompt_usd"]) == 1001 * usd("1.5e-6")
    assert usd(quote["completion_usd"]) == 3 * usd("2.5e-6")


def test_zero_priced_model_says_so() -> None:
    quote = price(TABLE, "free", prompt_tokens=10, completion_tokens=10)
    assert quote["total_usd"] == "0"
    assert quote["zero_priced"] is True
    assert price(TABLE, "plain", prompt_tokens=0)["zero_priced"] is False


def test_an_entry_without_prices_is_unknown_not_free() -> None:
    with pytest.raises(UnknownModel) as raised:
        price(TABLE, "no-prices", prompt_tokens=10)
    assert raised.value.problem()["type"].endswith("/unknown-model")
    assert raised.value.status == 422


def test_output_tokens_on_an_input_only_entry_are_an_error() -> None:
    assert price(TABLE, "input-only", prompt_tokens=1000)["total_usd"] == "0.0001"
    with pytest.raises(UnknownModel):
        price(TABLE, "input-only", prompt_tokens=1000, completion_tokens=1)


def test_quote_states_its_source_and_breakdown() -> None:
    quote = price(default_table(), "gpt-4o", prompt_tokens=1000, completion_tokens=10)
    assert quote["priced_by"]["source"] == (
        "66970be01c88f94618f9f69c1a1d29e400474f2d7b89973de7e373c110f455c2"
    )
    lines = {line["name"]: line for line in quote["breakdown"]["lines"]}
    assert lines["input"]["amount_usd"] == "0.0025"
    assert sum(usd(line["amount_usd"]) for line in lines.values()) == usd(quote["total_usd"])


def test_huge_but_valid_usage_is_exact() -> None:
    quote = price(default_table(), "gpt-4o", prompt_tokens=2**53 - 1, completion_tokens=2**53 - 1)
    assert usd(quote["total_usd"]) == (2**53 - 1) * (usd("2.5e-6") + usd("1e-5"))


def test_tier_edges_follow_the_rule_literally() -> None:
    from app.pricing.cost import select_tier
    from app.pricing.table import Tier

    tiers = (
        Tier(Decimal(0), Decimal(32000), {}),
        Tier(Decimal(32000), Decimal(128000), {}),
        Tier(Decimal(128000), Decimal(256000), {}),
    )
    assert select_tier(tiers, 1) == 0
    assert select_tier(tiers, 32000) == 0  # upper bound inclusive
    assert select_tier(tiers, 32001) == 1
    assert select_tier(tiers, 256001) == 2  # beyond every range: the last tier
    assert select_tier(tiers, 0) == 2  # 0 is in no (low, high] range: the last tier
