"""Worst-case cost of a request before it runs, for reservations (docs/pricing.md, "Estimates").

Input tokens are bounded without a tokenizer: every token of a byte-level BPE or
SentencePiece-with-byte-fallback tokenizer covers at least one UTF-8 byte of text, so the
UTF-8 byte count of the request's JSON (which contains every byte of every prompt text, plus
quotes and keys) bounds the text tokens. Added on top: chat-template tokens per message,
a fixed budget per image, audio or file part (whose base64 bytes are not counted), and the
tool-use system prompt providers inject. Output is bounded by the request's own cap, the
model's maximum, or 128,000.

Every input token is then priced at the highest input-side rate that could apply (input,
cache read, 5-minute and 1-hour cache write, audio) and every output token at the highest of
output, reasoning and audio output, over every threshold, tier and off-peak state a prompt of
at most that many tokens could fall in. The estimate is therefore at least the actual cost of
any usage within those bounds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any

from app.pricing.cost import TokenRates, token_rates
from app.pricing.errors import InvalidUsage
from app.pricing.resolve import Resolution, resolve
from app.pricing.table import PriceEntry, PriceTable, Rate

DEFAULT_MAX_OUTPUT_TOKENS = 128_000
BASE_OVERHEAD_TOKENS = 64
"""Reply priming and request framing tokens, once per request."""
MESSAGE_OVERHEAD_TOKENS = 16
"""Chat-template tokens around each message (role markers, separators)."""
MEDIA_PART_TOKENS = 6_000
"""Budget per image, audio or file part: above OpenAI's (<= 2,500 for a high-detail image),
Anthropic's (~1,600) and Gemini's (<= 1,120 at high media resolution) per-image counts."""
TOOLS_OVERHEAD_TOKENS = 1_024
"""The tool-use system prompt a provider injects when tools are offered (Anthropic: <= 346)."""
BUILTIN_TOOL_TOKENS = 2_048
"""Per provider-defined tool (computer, bash, text editor...), whose schema is not in the body."""
_MEDIA_TYPES = frozenset(
    {
        "image",
        "image_url",
        "input_image",
        "document",
        "file",
        "input_file",
        "input_audio",
        "audio",
        "video",
        "image_file",
    }
)
_MEDIA_KEYS = frozenset(
    {"image_url", "inline_data", "inlineData", "file_data", "fileData", "input_audio"}
)
_MESSAGE_LISTS = ("messages", "contents", "input")
_OUTPUT_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


@dataclass(frozen=True, slots=True)
class Estimate:
    """The most a request can cost, and the bounds that price it."""

    amount_pico_usd: int
    input_tokens_bound: int
    max_output_tokens: int
    model_key: str
    provider: str
    priced_by: str
    input_rate: Rate
    """The highest input-side rate, pico-USD per token, applied to every input token."""
    output_rate: Rate
    """The highest output-side rate, pico-USD per token, applied to every output token."""


def _is_media(part: Mapping[str, Any]) -> bool:
    kind = part.get("type")
    return (isinstance(kind, str) and kind in _MEDIA_TYPES) or bool(_MEDIA_KEYS & set(part))


def _text_source(part: Mapping[str, Any]) -> str:
    source = part.get("source")
    if isinstance(source, Mapping) and source.get("type") == "text":
        data = source.get("data")
        return data if isinstance(data, str) else ""
    return ""


def _strip_media(node: Any) -> tuple[Any, int]:
    """The node with media parts removed, and how many media parts there were."""
    if isinstance(node, Mapping):
        if _is_media(node):
            text = _text_source(node)
            return ({"text": text} if text else None), 1
        out: dict[str, Any] = {}
        count = 0
        for key, value in node.items():
            out[key], found = _strip_media(value)
            count += found
        return out, count
    if isinstance(node, list):
        items = [_strip_media(item) for item in node]
        return [item for item, _ in items], sum(found for _, found in items)
    return node, 0


def input_tokens_bound(request: Mapping[str, Any]) -> int:
    """An upper bound on the input tokens of an OpenAI-, Anthropic- or Gemini-style request."""
    if not isinstance(request, Mapping):
        raise InvalidUsage("request must be a JSON object", field="request")
    stripped, media_parts = _strip_media(request)
    text_bytes = len(json.dumps(stripped, ensure_ascii=False, default=str).encode("utf-8"))
    messages = sum(
        len(request[key]) for key in _MESSAGE_LISTS if isinstance(request.get(key), list)
    )
    tools = request.get("tools")
    tool_tokens = 0
    if isinstance(tools, list) and tools:
        tool_tokens = TOOLS_OVERHEAD_TOKENS + BUILTIN_TOOL_TOKENS * sum(
            1 for tool in tools if isinstance(tool, Mapping) and _is_builtin_tool(tool)
        )
    return (
        BASE_OVERHEAD_TOKENS
        + text_bytes
        + MESSAGE_OVERHEAD_TOKENS * (messages + 1)
        + MEDIA_PART_TOKENS * media_parts
        + tool_tokens
    )


def _is_builtin_tool(tool: Mapping[str, Any]) -> bool:
    kind = tool.get("type")
    return isinstance(kind, str) and kind not in ("function", "custom")


def _positive_int(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidUsage(f"{field} must be a positive integer", field=f"request.{field}")
    return value


def output_tokens_bound(request: Mapping[str, Any], entry: PriceEntry) -> int:
    """The request's output cap (at most the model's maximum), else the model's, else 128,000."""
    caps = [_positive_int(request.get(name), name) for name in _OUTPUT_CAPS]
    config = request.get("generationConfig", request.get("generation_config"))
    if isinstance(config, Mapping):
        caps.append(
            _positive_int(
                config.get("maxOutputTokens", config.get("max_output_tokens")),
                "generationConfig.maxOutputTokens",
            )
        )
    requested = [cap for cap in caps if cap is not None]
    model_max = entry.max_output_tokens
    if requested:
        cap = min(requested)
        return min(cap, model_max) if model_max else cap
    return model_max or DEFAULT_MAX_OUTPUT_TOKENS


def _regime_prompts(entry: PriceEntry, bound: int, suffix: str) -> Iterator[int]:
    """Prompt sizes <= bound that reach every threshold and tier a real prompt could hit."""
    yield bound
    yield 0
    for threshold in entry.thresholds(suffix):
        if threshold.tokens <= bound:
            yield threshold.tokens
            if threshold.tokens + 1 <= bound:
                yield threshold.tokens + 1
    for tier in entry.tiers:
        for edge in (int(tier.low) + 1, int(tier.high)):
            if 0 < edge <= bound:
                yield edge


def _suffixes(request: Mapping[str, Any]) -> set[str]:
    tier = request.get("service_tier")
    suffixes = {""}
    if tier in ("priority", "fast"):
        suffixes.add("_priority")
    elif tier == "flex":
        suffixes.add("_flex")
    elif tier == "auto":
        suffixes.add("_priority")
    return suffixes


def _all_rates(
    resolution: Resolution, request: Mapping[str, Any], bound: int, at: datetime
) -> list[TokenRates]:
    entry = resolution.entry
    found: list[TokenRates] = []
    for suffix in _suffixes(request):
        for prompt in set(_regime_prompts(entry, bound, suffix)):
            for moment in (at, None):
                found.append(
                    token_rates(
                        entry,
                        family=resolution.family,
                        prompt_tokens=prompt,
                        suffix=suffix,
                        at=moment,
                    )
                )
    return found


def _max_rate(values: list[Rate]) -> Rate:
    return max(values, key=lambda value: (value, isinstance(value, int)))


def _side_rates(
    resolution: Resolution, request: Mapping[str, Any], bound: int, at: datetime
) -> tuple[Rate, Rate]:
    entry = resolution.entry
    rates = entry.rates
    regimes = _all_rates(resolution, request, bound, at)
    inputs: list[Rate] = [0]
    outputs: list[Rate] = [0]
    for regime in regimes:
        inputs += [regime.input, regime.cache_read, regime.cache_write_5m, regime.cache_write_1h]
        outputs += [regime.output, regime.reasoning]
    for key, value in rates.items():
        if key.startswith(("input_cost_per_audio_token", "input_cost_per_image_token")):
            inputs.append(value)
        if key.startswith(("output_cost_per_audio_token", "output_cost_per_image_token")):
            outputs.append(value)
        if key.endswith("_batches") and key.startswith(
            (
                "input_cost_per_token",
                "cache_read_input_token_cost",
                "cache_creation_input_token_cost",
            )
        ):
            inputs.append(value)
        if key.endswith("_batches") and key.startswith("output_cost_per_token"):
            outputs.append(value)
    return _max_rate(inputs), _max_rate(outputs)


def _cost(input_tokens: int, input_rate: Rate, output_tokens: int, output_rate: Rate) -> int:
    exact = input_tokens * input_rate + output_tokens * output_rate
    return exact if isinstance(exact, int) else math.ceil(exact)


def worst_case(
    table: PriceTable,
    *,
    model: str,
    provider: str | None,
    request: Mapping[str, Any],
    billing_time: datetime,
) -> Estimate:
    """The most ``request`` can cost on ``model`` (see the module docstring for the bound)."""
    resolution = resolve(table, model=model, provider=provider, at=billing_time)
    entry = resolution.entry
    bound_in = input_tokens_bound(request)
    bound_out = output_tokens_bound(request, entry)
    input_rate, output_rate = _side_rates(resolution, request, bound_in, billing_time)
    return Estimate(
        amount_pico_usd=_cost(bound_in, input_rate, bound_out, output_rate),
        input_tokens_bound=bound_in,
        max_output_tokens=bound_out,
        model_key=entry.key,
        provider=entry.provider or resolution.family,
        priced_by=entry.source_id,
        input_rate=input_rate,
        output_rate=output_rate,
    )


def clamp_output(
    table: PriceTable,
    *,
    model: str,
    provider: str | None,
    request: Mapping[str, Any],
    billing_time: datetime,
    available_pico_usd: int,
) -> int | None:
    """The largest output cap N (<= the request's or model's) whose worst case fits, or None."""
    estimate = worst_case(
        table, model=model, provider=provider, request=request, billing_time=billing_time
    )
    input_exact = estimate.input_tokens_bound * estimate.input_rate
    room = available_pico_usd - input_exact
    if room < 0:
        return None
    if estimate.output_rate == 0:
        cap = estimate.max_output_tokens
    else:
        cap = min(
            math.floor(Fraction(room) / Fraction(estimate.output_rate)), estimate.max_output_tokens
        )
    return cap if cap >= 1 else None
