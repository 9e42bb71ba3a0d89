"""Providers' native usage shapes -> the canonical usage record.

Which counts include which (docs/pricing.md, "Native usage shapes"):

- OpenAI chat completions and the canonical record: ``prompt_tokens`` includes cached tokens,
  ``completion_tokens`` includes reasoning. xAI-style records whose ``total_tokens`` shows the
  reasoning tokens were left out of ``completion_tokens`` get them added back.
- OpenAI Responses: ``input_tokens`` / ``output_tokens`` are inclusive, like chat completions.
- Anthropic Messages (Anthropic, Vertex, Bedrock invoke): ``input_tokens`` excludes cache reads
  and writes, so the prompt is their sum (additive).
- Gemini: ``promptTokenCount`` includes ``cachedContentTokenCount``; ``candidatesTokenCount``
  excludes ``thoughtsTokenCount``, so the completion is their sum.
- Bedrock Converse: additive (``inputTokens`` excludes ``cacheRead/WriteInputTokens``) for the
  families that cache on Bedrock, Anthropic Claude and Amazon Nova; inclusive for the rest
  (Mistral, Llama, ...).

Canonical extension fields (``images``, ``service_tier``, ...) may sit beside native counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.pricing.errors import InvalidUsage
from app.pricing.usage import Usage, usage_from_fields

_TOKEN_FIELDS = frozenset(
    {
        "prompt_tokens",
        "completion_tokens",
        "cache_read_tokens",
        "cache_creation_tokens",
        "cache_creation_1h_tokens",
        "reasoning_tokens",
        "audio_input_tokens",
        "audio_output_tokens",
    }
)
_EXTENSION_FIELDS = frozenset(
    {
        "images",
        "image_size",
        "image_quality",
        "input_seconds",
        "output_seconds",
        "video_resolution",
        "input_characters",
        "web_search_queries",
        "search_context_size",
        "queries",
        "service_tier",
    }
)
_BEDROCK_ADDITIVE_MARKERS = ("anthropic.", "claude", "amazon.nova", "nova-")


def _count(raw: Mapping[str, Any] | None, key: str, where: str) -> int:
    if raw is None:
        return 0
    value = raw.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidUsage(f"{where} must be an integer, got {value!r}", field=f"usage.{where}")
    return value


def _object(raw: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidUsage(f"{key} must be an object", field=f"usage.{key}")
    return value


def _extensions(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {key: raw[key] for key in _EXTENSION_FIELDS if key in raw}


def _openai_chat(raw: Mapping[str, Any]) -> dict[str, Any]:
    prompt_details = _object(raw, "prompt_tokens_details")
    completion_details = _object(raw, "completion_tokens_details")
    prompt = _count(raw, "prompt_tokens", "prompt_tokens")
    completion = _count(raw, "completion_tokens", "completion_tokens")
    reasoning = _count(raw, "reasoning_tokens", "reasoning_tokens") or _count(
        completion_details, "reasoning_tokens", "completion_tokens_details.reasoning_tokens"
    )
    total = raw.get("total_tokens")
    if reasoning and isinstance(total, int) and total == prompt + completion + reasoning:
        completion += reasoning  # reported beside, not inside, completion_tokens (xAI)
    cache_read = (
        _count(raw, "cache_read_tokens", "cache_read_tokens")
        or _count(prompt_details, "cached_tokens", "prompt_tokens_details.cached_tokens")
        or _count(raw, "prompt_cache_hit_tokens", "prompt_cache_hit_tokens")
    )
    cache_creation = (
        _count(raw, "cache_creation_tokens", "cache_creation_tokens")
        or _count(
            prompt_details, "cache_creation_tokens", "prompt_tokens_details.cache_creation_tokens"
        )
        or _count(prompt_details, "cache_write_tokens", "prompt_tokens_details.cache_write_tokens")
    )
    audio_in = _count(raw, "audio_input_tokens", "audio_input_tokens") or _count(
        prompt_details, "audio_tokens", "prompt_tokens_details.audio_tokens"
    )
    audio_out = _count(raw, "audio_output_tokens", "audio_output_tokens") or _count(
        completion_details, "audio_tokens", "completion_tokens_details.audio_tokens"
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cache_read_tokens": cache_read,
        "cache_creation_tokens": cache_creation,
        "cache_creation_1h_tokens": _count(
            raw, "cache_creation_1h_tokens", "cache_creation_1h_tokens"
        ),
        "reasoning_tokens": reasoning,
        "audio_input_tokens": audio_in,
        "audio_output_tokens": audio_out,
    }


def _openai_responses(raw: Mapping[str, Any]) -> dict[str, Any]:
    input_details = _object(raw, "input_tokens_details")
    output_details = _object(raw, "output_tokens_details")
    return {
        "prompt_tokens": _count(raw, "input_tokens", "input_tokens"),
        "completion_tokens": _count(raw, "output_tokens", "output_tokens"),
        "cache_read_tokens": _count(
            input_details, "cached_tokens", "input_tokens_details.cached_tokens"
        ),
        "reasoning_tokens": _count(
            output_details, "reasoning_tokens", "output_tokens_details.reasoning_tokens"
        ),
    }


def _anthropic(raw: Mapping[str, Any]) -> dict[str, Any]:
    creation = _object(raw, "cache_creation")
    writes_5m = _count(
        creation, "ephemeral_5m_input_tokens", "cache_creation.ephemeral_5m_input_tokens"
    )
    writes_1h = _count(
        creation, "ephemeral_1h_input_tokens", "cache_creation.ephemeral_1h_input_tokens"
    )
    writes = (
        _count(raw, "cache_creation_input_tokens", "cache_creation_input_tokens")
        if raw.get("cache_creation_input_tokens") is not None
        else writes_5m + writes_1h
    )
    reads = _count(raw, "cache_read_input_tokens", "cache_read_input_tokens")
    fields: dict[str, Any] = {
        "prompt_tokens": _count(raw, "input_tokens", "input_tokens") + reads + writes,
        "completion_tokens": _count(raw, "output_tokens", "output_tokens"),
        "cache_read_tokens": reads,
        "cache_creation_tokens": writes,
        "cache_creation_1h_tokens": writes_1h,
    }
    tools = _object(raw, "server_tool_use")
    searches = _count(tools, "web_search_requests", "server_tool_use.web_search_requests")
    if searches:
        fields["web_search_queries"] = searches
    return fields


def _modality(details: object, modality: str, where: str) -> int:
    if not isinstance(details, list):
        return 0
    total = 0
    for item in details:
        if isinstance(item, Mapping) and str(item.get("modality", "")).upper() == modality:
            total += _count(item, "tokenCount", where) or _count(item, "token_count", where)
    return total


def _gemini(raw: Mapping[str, Any]) -> dict[str, Any]:
    def get(camel: str, snake: str) -> int:
        return _count(raw, camel, camel) if camel in raw else _count(raw, snake, snake)

    cached = get("cachedContentTokenCount", "cached_content_token_count")
    thoughts = get("thoughtsTokenCount", "thoughts_token_count")
    prompt = get("promptTokenCount", "prompt_token_count") + get(
        "toolUsePromptTokenCount", "tool_use_prompt_token_count"
    )
    prompt_details = raw.get("promptTokensDetails", raw.get("prompt_tokens_details"))
    cache_details = raw.get("cacheTokensDetails", raw.get("cache_tokens_details"))
    output_details = raw.get("candidatesTokensDetails", raw.get("candidates_tokens_details"))
    audio_in = max(
        _modality(prompt_details, "AUDIO", "promptTokensDetails")
        - _modality(cache_details, "AUDIO", "cacheTokensDetails"),
        0,
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": get("candidatesTokenCount", "candidates_token_count") + thoughts,
        "cache_read_tokens": cached,
        "reasoning_tokens": thoughts,
        "audio_input_tokens": audio_in,
        "audio_output_tokens": _modality(output_details, "AUDIO", "candidatesTokensDetails"),
    }


def bedrock_is_additive(model: str) -> bool:
    """Whether Bedrock Converse leaves cache tokens out of ``inputTokens`` for this model."""
    lowered = model.lower()
    return any(marker in lowered for marker in _BEDROCK_ADDITIVE_MARKERS)


def _bedrock_converse(raw: Mapping[str, Any], model: str) -> dict[str, Any]:
    reads = _count(raw, "cacheReadInputTokens", "cacheReadInputTokens")
    writes = _count(raw, "cacheWriteInputTokens", "cacheWriteInputTokens")
    prompt = _count(raw, "inputTokens", "inputTokens")
    if bedrock_is_additive(model):
        prompt += reads + writes
    return {
        "prompt_tokens": prompt,
        "completion_tokens": _count(raw, "outputTokens", "outputTokens"),
        "cache_read_tokens": reads,
        "cache_creation_tokens": writes,
    }


def detect_shape(raw: Mapping[str, Any]) -> str:
    """The name of the usage shape ``raw`` is in."""
    keys = set(raw)
    if keys & {
        "promptTokenCount",
        "candidatesTokenCount",
        "prompt_token_count",
        "candidates_token_count",
        "totalTokenCount",
    }:
        return "gemini"
    if keys & {"inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens"}:
        return "bedrock_converse"
    if keys & {"input_tokens", "output_tokens"}:
        if keys & {"input_tokens_details", "output_tokens_details"}:
            return "openai_responses"
        if keys & {
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "cache_creation",
            "server_tool_use",
        }:
            return "anthropic"
        return "openai_responses"
    if keys & {"cache_read_input_tokens", "cache_creation_input_tokens"}:
        return "anthropic"
    return "canonical"


def normalise_usage(raw: Mapping[str, Any], *, model: str, provider: str | None) -> Usage:
    """The canonical record for ``raw``, in any supported shape (detected from its keys)."""
    if isinstance(raw, Usage):
        return raw
    if not isinstance(raw, Mapping):
        raise InvalidUsage("usage must be a JSON object", field="usage")
    if _TOKEN_FIELDS.issuperset(raw) and None not in raw.values():
        return Usage(**raw)  # the canonical record itself: validated by Usage
    shape = detect_shape(raw)
    if shape == "canonical":
        unknown = (
            set(raw)
            - _TOKEN_FIELDS
            - _EXTENSION_FIELDS
            - {
                "total_tokens",
                "prompt_tokens_details",
                "completion_tokens_details",
                "prompt_cache_hit_tokens",
                "prompt_cache_miss_tokens",
            }
        )
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidUsage(f"unknown usage field {name!r}", field=f"usage.{name}")
        fields = _openai_chat(raw)
    elif shape == "openai_responses":
        fields = _openai_responses(raw)
    elif shape == "anthropic":
        fields = _anthropic(raw)
    elif shape == "gemini":
        fields = _gemini(raw)
    else:
        fields = _bedrock_converse(raw, model)
    return usage_from_fields({**fields, **_extensions(raw)})
