"""Worst-case estimates: a true upper bound on any usage within the request's bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.pricing import service
from app.pricing.estimate import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    MEDIA_PART_TOKENS,
    input_tokens_bound,
)
from app.pricing.table import default_table
from app.pricing.usage import Usage
from tests.pricing.helpers import make_table

AT = datetime(2026, 11, 18, 8, tzinfo=UTC)
TABLE = default_table()
MODELS = [
    ("claude-sonnet-4-5", None),
    ("gemini-2.5-pro", "gemini"),
    ("gpt-5", "openai"),
    ("dashscope/qwen-plus-2025-09-11", None),
    ("deepseek/deepseek-v4-flash", None),
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "bedrock"),
    ("gpt-4o", None),
]


def test_input_bound_covers_utf8_text_and_media() -> None:
    text = "héllo wörld ✓ " * 100
    request = {"messages": [{"role": "user", "content": text}]}
    assert input_tokens_bound(request) >= len(text.encode("utf-8"))
    image = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + "A" * 100_000},
                    },
                ],
            }
        ]
    }
    bound = input_tokens_bound(image)
    assert MEDIA_PART_TOKENS <= bound < MEDIA_PART_TOKENS + 1000  # base64 bytes not counted


def test_output_bound_sources() -> None:
    entry_max = TABLE.get("claude-sonnet-4-5")
    assert entry_max is not None and entry_max.max_output_tokens

    def bound(request: dict[str, Any], model: str = "claude-sonnet-4-5") -> int:
        return service.worst_case(
            TABLE, model=model, provider=None, request=request, billing_time=AT
        ).max_output_tokens

    assert bound({"max_tokens": 100}) == 100
    assert bound({"max_completion_tokens": 50, "max_tokens": 100}) == 50
    assert bound({"max_output_tokens": 70}) == 70
    assert bound({"generationConfig": {"maxOutputTokens": 30}}) == 30
    assert bound({}) == entry_max.max_output_tokens
    assert bound({"max_tokens": 10**9}) == entry_max.max_output_tokens
    table = make_table({"m": {"input_cost_per_token": "1e-06", "output_cost_per_token": "1e-06"}})
    assert (
        service.worst_case(
            table, model="m", provider=None, request={}, billing_time=AT
        ).max_output_tokens
        == DEFAULT_MAX_OUTPUT_TOKENS
    )


def test_estimate_prices_input_at_the_highest_input_side_rate() -> None:
    estimate = service.worst_case(
        TABLE,
        model="claude-sonnet-4-5",
        provider=None,
        request={"messages": [], "max_tokens": 10},
        billing_time=AT,
    )
    assert estimate.input_rate == 6_000_000  # the 1-hour cache write rate, 6e-6 USD
    assert estimate.output_rate == 15_000_000


def test_estimate_reaches_the_threshold_the_prompt_could_cross() -> None:
    request = {"messages": [{"role": "user", "content": "x" * 250_000}], "max_tokens": 10}
    estimate = service.worst_case(
        TABLE, model="gemini-2.5-pro", provider="gemini", request=request, billing_time=AT
    )
    assert estimate.input_rate >= 2_500_000
    assert estimate.output_rate == 15_000_000


def test_off_peak_window_does_not_lower_the_bound() -> None:
    night = AT.replace(hour=12)
    estimate = service.worst_case(
        TABLE,
        model="deepseek/deepseek-v4-flash",
        provider=None,
        request={"max_tokens": 5},
        billing_time=night,
    )
    assert estimate.input_rate == 300_000 and estimate.output_rate == 1_200_000


usages = st.tuples(
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=st.sampled_from(MODELS),
    text_length=st.integers(0, 400_000),
    max_tokens=st.integers(1, 64_000),
    shares=usages,
    minutes=st.integers(0, 7 * 24 * 60),
)
def test_worst_case_bounds_every_usage_within_the_request(
    model: tuple[str, str | None],
    text_length: int,
    max_tokens: int,
    shares: tuple[int, ...],
    minutes: int,
) -> None:
    name, provider = model
    request = {
        "messages": [{"role": "user", "content": "a" * text_length}],
        "max_tokens": max_tokens,
    }
    estimate = service.worst_case(
        TABLE, model=name, provider=provider, request=request, billing_time=AT
    )
    prompt = shares[0] % (estimate.input_tokens_bound + 1)
    read = shares[1] % (prompt + 1)
    write = shares[2] % (prompt - read + 1)
    write_1h = shares[3] % (write + 1)
    completion = shares[4] % (estimate.max_output_tokens + 1)
    reasoning = shares[5] % (completion + 1)
    usage = Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cache_read_tokens=read,
        cache_creation_tokens=write,
        cache_creation_1h_tokens=write_1h,
        reasoning_tokens=reasoning,
    )
    actual = service.quote(
        TABLE,
        model=name,
        provider=provider,
        usage=usage,
        billing_time=AT + timedelta(minutes=minutes),
    )
    assert actual.total_pico_usd <= estimate.amount_pico_usd


@pytest.mark.parametrize(("model", "provider"), MODELS)
def test_clamp_output_is_the_largest_cap_that_fits(model: str, provider: str | None) -> None:
    request = {"messages": [{"role": "user", "content": "hello " * 50}], "max_tokens": 4000}
    full = service.worst_case(
        TABLE, model=model, provider=provider, request=request, billing_time=AT
    )
    available = full.amount_pico_usd // 2
    cap = service.clamp_output(
        TABLE,
        model=model,
        provider=provider,
        request=request,
        billing_time=AT,
        available_pico_usd=available,
    )
    assert cap is not None and 1 <= cap < 4000
    fits = service.worst_case(
        TABLE,
        model=model,
        provider=provider,
        request={**request, "max_tokens": cap},
        billing_time=AT,
    )
    assert fits.amount_pico_usd <= available
    over = service.worst_case(
        TABLE,
        model=model,
        provider=provider,
        request={**request, "max_tokens": cap + 1},
        billing_time=AT,
    )
    assert over.amount_pico_usd > available
    assert (
        service.clamp_output(
            TABLE,
            model=model,
            provider=provider,
            request=request,
            billing_time=AT,
            available_pico_usd=full.amount_pico_usd,
        )
        == 4000
    )
    assert (
        service.clamp_output(
            TABLE,
            model=model,
            provider=provider,
            request=request,
            billing_time=AT,
            available_pico_usd=0,
        )
        is None
    )
