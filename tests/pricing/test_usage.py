"""The canonical usage record: validation, and native shapes normalised into it."""

from __future__ import annotations

from typing import Any

import pytest

from app.pricing.errors import InvalidUsage
from app.pricing.normalise import detect_shape, normalise_usage
from app.pricing.usage import Usage, usage_from_fields


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt_tokens": -1}, "usage.prompt_tokens"),
        ({"prompt_tokens": 1.5}, "usage.prompt_tokens"),
        ({"prompt_tokens": "10"}, "usage.prompt_tokens"),
        ({"prompt_tokens": True}, "usage.prompt_tokens"),
        ({"completion_tokens": 2**53}, "usage.completion_tokens"),
        ({"prompt_tokens": 10, "cache_read_tokens": 11}, "usage.cache_read_tokens"),
        (
            {"prompt_tokens": 10, "cache_read_tokens": 6, "cache_creation_tokens": 5},
            "usage.cache_creation_tokens",
        ),
        (
            {"prompt_tokens": 10, "cache_creation_tokens": 5, "cache_creation_1h_tokens": 6},
            "usage.cache_creation_1h_tokens",
        ),
        ({"completion_tokens": 10, "reasoning_tokens": 11}, "usage.reasoning_tokens"),
        (
            {"prompt_tokens": 10, "cache_read_tokens": 5, "audio_input_tokens": 6},
            "usage.audio_input_tokens",
        ),
        ({"service_tier": "ludicrous"}, "usage.service_tier"),
        ({"input_seconds": "abc"}, "usage.input_seconds"),
        ({"input_seconds": "-1"}, "usage.input_seconds"),
        ({"input_seconds": "NaN"}, "usage.input_seconds"),
        ({"prompt_tokens": 1, "bogus_tokens": 2}, "usage.bogus_tokens"),
    ],
)
def test_invalid_usage_names_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidUsage) as raised:
        normalise_usage(fields, model="gpt-4o", provider=None)
    assert raised.value.fields["field"] == field
    assert raised.value.status == 422


def test_largest_accepted_count() -> None:
    assert Usage(prompt_tokens=2**53 - 1).prompt_tokens == 2**53 - 1


def test_canonical_fields_pass_through() -> None:
    raw = {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "cache_read_tokens": 10,
        "cache_creation_tokens": 20,
        "cache_creation_1h_tokens": 5,
        "reasoning_tokens": 7,
    }
    assert normalise_usage(raw, model="gpt-4o", provider=None) == usage_from_fields(raw)


def test_openai_chat_completions() -> None:
    raw = {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 192,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    assert detect_shape(raw) == "canonical"
    assert normalise_usage(raw, model="o3", provider="openai") == Usage(
        prompt_tokens=2006, completion_tokens=300, cache_read_tokens=1920, reasoning_tokens=192
    )


def test_xai_reasoning_reported_beside_completion_is_added_back() -> None:
    raw = {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 420,
        "completion_tokens_details": {"reasoning_tokens": 300},
    }
    usage = normalise_usage(raw, model="grok-4", provider="xai")
    assert (usage.completion_tokens, usage.reasoning_tokens) == (320, 300)


def test_deepseek_cache_hit_tokens() -> None:
    raw = {
        "prompt_tokens": 100,
        "completion_tokens": 5,
        "prompt_cache_hit_tokens": 60,
        "prompt_cache_miss_tokens": 40,
    }
    assert normalise_usage(raw, model="deepseek-chat", provider=None).cache_read_tokens == 60


def test_openai_responses() -> None:
    raw = {
        "input_tokens": 5000,
        "input_tokens_details": {"cached_tokens": 4096},
        "output_tokens": 900,
        "output_tokens_details": {"reasoning_tokens": 640},
        "total_tokens": 5900,
    }
    assert detect_shape(raw) == "openai_responses"
    assert normalise_usage(raw, model="gpt-5", provider="openai") == Usage(
        prompt_tokens=5000, completion_tokens=900, cache_read_tokens=4096, reasoning_tokens=640
    )


def test_anthropic_messages_are_additive() -> None:
    raw = {
        "input_tokens": 50,
        "cache_creation_input_tokens": 2048,
        "cache_read_input_tokens": 10000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1024, "ephemeral_1h_input_tokens": 1024},
        "output_tokens": 503,
        "service_tier": "standard",
        "server_tool_use": {"web_search_requests": 2},
    }
    usage = normalise_usage(raw, model="claude-sonnet-4-5", provider="anthropic")
    assert usage == Usage(
        prompt_tokens=12098,
        completion_tokens=503,
        cache_read_tokens=10000,
        cache_creation_tokens=2048,
        cache_creation_1h_tokens=1024,
        web_search_queries=2,
        service_tier="standard",
    )


def test_anthropic_on_vertex_without_cache_creation_total() -> None:
    raw = {
        "input_tokens": 10,
        "output_tokens": 1,
        "cache_creation": {"ephemeral_5m_input_tokens": 30, "ephemeral_1h_input_tokens": 20},
    }
    usage = normalise_usage(raw, model="claude-sonnet-4-5@20250929", provider="vertex_ai")
    assert (usage.prompt_tokens, usage.cache_creation_tokens, usage.cache_creation_1h_tokens) == (
        60,
        50,
        20,
    )


def test_gemini_candidates_exclude_thoughts() -> None:
    raw = {
        "promptTokenCount": 12000,
        "cachedContentTokenCount": 8000,
        "candidatesTokenCount": 400,
        "thoughtsTokenCount": 1200,
        "totalTokenCount": 13600,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 11000},
            {"modality": "AUDIO", "tokenCount": 1000},
        ],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 8000}],
    }
    assert detect_shape(raw) == "gemini"
    assert normalise_usage(raw, model="gemini-2.5-pro", provider="gemini") == Usage(
        prompt_tokens=12000,
        completion_tokens=1600,
        cache_read_tokens=8000,
        reasoning_tokens=1200,
        audio_input_tokens=1000,
    )


def test_gemini_snake_case_sdk_shape() -> None:
    raw = {"prompt_token_count": 10, "candidates_token_count": 5, "thoughts_token_count": 3}
    usage = normalise_usage(raw, model="gemini-2.5-flash", provider="vertex_ai")
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens) == (10, 8, 3)


@pytest.mark.parametrize(
    ("model", "prompt"),
    [
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", 1600),
        ("anthropic.claude-haiku-4-5-20251001-v1:0", 1600),
        ("amazon.nova-pro-v1:0", 1600),
        ("mistral.mistral-large-2407-v1:0", 100),
        ("meta.llama3-1-70b-instruct-v1:0", 100),
    ],
)
def test_bedrock_converse_additive_only_for_families_that_cache(model: str, prompt: int) -> None:
    raw = {
        "inputTokens": 100,
        "outputTokens": 200,
        "cacheReadInputTokens": 1000,
        "cacheWriteInputTokens": 500,
        "totalTokens": 1800,
    }
    if prompt == 100:
        raw = {
            "inputTokens": 100,
            "outputTokens": 200,
            "cacheReadInputTokens": 60,
            "cacheWriteInputTokens": 40,
            "totalTokens": 300,
        }
    usage = normalise_usage(raw, model=model, provider="bedrock")
    assert usage.prompt_tokens == prompt
    assert usage.completion_tokens == 200


def test_native_shape_with_canonical_extensions() -> None:
    raw = {"input_tokens": 10, "output_tokens": 2, "service_tier": "batch"}
    assert normalise_usage(raw, model="gpt-5", provider=None).service_tier == "batch"


def test_usage_must_be_an_object() -> None:
    with pytest.raises(InvalidUsage):
        normalise_usage([1, 2], model="gpt-4o", provider=None)  # type: ignore[arg-type]
