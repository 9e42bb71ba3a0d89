"""What the LiteLLM callback reads from and writes into a call, as plain data: the request body
to estimate, the output cap to enforce, the provider's usage, timings and metadata.

Nothing here imports litellm, so it can be tested without it; objects that LiteLLM passes
(pydantic models) are read through ``as_dict``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

# The call types whose worst case the ledger can estimate from the body, and the body field
# each uses for its output cap (docs/api.md, "Clamp mode").
CAP_FIELD = {
    "completion": "max_tokens",
    "acompletion": "max_tokens",
    "text_completion": "max_tokens",
    "atext_completion": "max_tokens",
    "anthropic_messages": "max_tokens",
    "responses": "max_output_tokens",
    "aresponses": "max_output_tokens",
}
# Only recorded after the fact: the ledger cannot bound an embedding before it runs, and an
# embedding has no output to cap.
RECORD_ONLY = frozenset({"embeddings", "aembedding"})
_CAP_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")

# Body fields that reach the provider and count towards the prompt or cap the output. The rest
# of LiteLLM's request dict (its metadata, auth objects, logging handles) is the proxy's own and
# would only inflate the estimate.
_ESTIMATED_FIELDS = (
    "model",
    "messages",
    "system",
    "prompt",
    "input",
    "instructions",
    "tools",
    "functions",
    "tool_choice",
    "response_format",
    "contents",
    "generationConfig",
    "service_tier",
    *_CAP_KEYS,
)
_OPENAI_USAGE_KEYS = frozenset(
    {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    }
)


def as_dict(value: Any) -> dict[str, Any]:
    """A LiteLLM object (pydantic model, dict or None) as a plain dict."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        result = dump()
        return dict(result) if isinstance(result, Mapping) else {}
    return {k: v for k, v in vars(value).items() if not k.startswith("_")}


def estimate_body(data: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a proxy request the ledger prices: JSON-safe, without proxy internals."""
    body = {key: data[key] for key in _ESTIMATED_FIELDS if data.get(key) is not None}
    safe: dict[str, Any] = json.loads(json.dumps(body, default=str))
    return safe


def choices(data: Mapping[str, Any]) -> int:
    value = data.get("n")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


def apply_output_cap(data: dict[str, Any], cap: int, call_type: str) -> int:
    """Write the ledger's output cap into the request, as the field its API uses; returns the
    per-choice cap written.

    A cap the client already set is lowered, never raised. With ``n`` choices the provider may
    produce ``n`` answers, so each gets ``cap // n`` and all of them together stay within the
    hold the ledger priced for one answer of ``cap`` tokens.
    """
    per_choice = max(cap // choices(data), 1)
    present = [key for key in _CAP_KEYS if isinstance(data.get(key), int)]
    for key in present:
        data[key] = min(int(data[key]), per_choice)
    if not present:
        data[CAP_FIELD.get(call_type, "max_tokens")] = per_choice
    return per_choice


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def canonical_usage(usage: Any) -> dict[str, int]:
    """LiteLLM's OpenAI-style ``Usage`` as the ledger's canonical fields.

    LiteLLM folds every provider into this shape: ``prompt_tokens`` includes cache reads and
    writes (Anthropic's are added in), reads are in ``prompt_tokens_details.cached_tokens`` or
    ``cache_read_input_tokens``, writes in ``cache_creation_input_tokens``.
    """
    raw = as_dict(usage)
    prompt_details = as_dict(raw.get("prompt_tokens_details"))
    completion_details = as_dict(raw.get("completion_tokens_details"))
    creation_details = as_dict(
        prompt_details.get("cache_creation_token_details")
        or raw.get("cache_creation_token_details")
    )
    fields = {
        "prompt_tokens": _count(raw.get("prompt_tokens")),
        "completion_tokens": _count(raw.get("completion_tokens")),
        "cache_read_tokens": _count(prompt_details.get("cached_tokens"))
        or _count(raw.get("cache_read_input_tokens")),
        "cache_creation_tokens": _count(raw.get("cache_creation_input_tokens"))
        or _count(prompt_details.get("cache_creation_tokens")),
        "cache_creation_1h_tokens": _count(creation_details.get("ephemeral_1h_input_tokens")),
        "reasoning_tokens": _count(completion_details.get("reasoning_tokens")),
        "audio_input_tokens": _count(prompt_details.get("audio_tokens")),
        "audio_output_tokens": _count(completion_details.get("audio_tokens")),
    }
    required = ("prompt_tokens", "completion_tokens")
    return {key: value for key, value in fields.items() if value or key in required}


def native_usage(original_response: Any) -> dict[str, Any] | None:
    """The usage object exactly as the provider returned it, when LiteLLM kept the raw body.

    OpenAI (``usage``), Anthropic (``usage`` with ``input_tokens`` and the cache fields, 1-hour
    writes included) and Gemini (``usageMetadata``) are priced natively by the ledger; this is
    preferred to LiteLLM's re-mapping, which can drop what it does not model.
    """
    document = original_response
    if isinstance(document, str | bytes):
        try:
            document = json.loads(document)
        except ValueError:
            return None
    if not isinstance(document, Mapping):
        return None
    usage = document.get("usage") or document.get("usageMetadata")
    if not isinstance(usage, Mapping):
        return None
    usage = json.loads(json.dumps(usage))
    if "prompt_tokens" in usage:
        # OpenAI style: the ledger refuses unknown top-level fields, so keep the known ones.
        usage = {k: v for k, v in usage.items() if k in _OPENAI_USAGE_KEYS}
    return usage if usage else None


def milliseconds_between(start: Any, end: Any) -> int | None:
    """Whole milliseconds from ``start`` to ``end`` (datetimes or epoch seconds), if both known."""
    if isinstance(start, datetime) and isinstance(end, datetime):
        seconds = (end - start).total_seconds()
    elif isinstance(start, int | float) and isinstance(end, int | float):  # money-safe: time
        seconds = end - start
    else:
        return None
    return max(round(seconds * 1000), 0)


def endpoint(data: Mapping[str, Any], auth: Any) -> str | None:
    """The proxy route the client called (``/v1/chat/completions``)."""
    route = getattr(auth, "request_route", None)
    if isinstance(route, str) and route:
        return route
    request = data.get("proxy_server_request")
    if isinstance(request, Mapping) and isinstance(request.get("url"), str):
        return urlsplit(request["url"]).path or None
    return None


def tags(data: Mapping[str, Any]) -> list[str]:
    """The request's own tags (body ``tags`` or ``metadata.tags``), not LiteLLM's automatic ones."""
    found: list[str] = []
    metadata = data.get("metadata")
    for source in (
        data.get("tags"),
        metadata.get("tags") if isinstance(metadata, Mapping) else None,
    ):
        if isinstance(source, list):
            found.extend(str(tag) for tag in source if str(tag) not in found)
    return found
