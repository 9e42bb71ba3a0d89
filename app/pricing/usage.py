"""The canonical usage record: what one request consumed, in the units prices are stated in.

Token fields follow OpenAI's inclusive convention (docs/pricing.md, "Usage record"):
``prompt_tokens`` counts every input token, cache reads and writes included;
``completion_tokens`` counts every output token, reasoning included. The other fields are
subsets or separate units, each validated against the whole it belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from typing import Any

from app.pricing.errors import InvalidUsage

MAX_TOKENS = 2**53 - 1
"""Largest token (or unit) count accepted: anything at or above 2**53 is refused as absurd."""
MAX_SECONDS = Decimal(10**9)

SERVICE_TIERS = {
    None: "",
    "": "",
    "default": "",
    "standard": "",
    "auto": "",
    "on_demand": "",
    "batch": "_batches",
    "batches": "_batches",
    "priority": "_priority",
    "fast": "_priority",
    "flex": "_flex",
}
"""Service tier named by a usage record -> the suffix of the price keys that bill it."""
SEARCH_CONTEXT_SIZES = ("low", "medium", "high")
_NO_SECONDS = Decimal(0)
_INT_ONLY = {int}


@dataclass(frozen=True, slots=True)
class Usage:
    """One request's consumption. Integers are counts; seconds are exact decimals."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    reasoning_tokens: int = 0
    audio_input_tokens: int = 0
    """Part of prompt_tokens (not cached) that is audio, billed at the audio input rate."""
    audio_output_tokens: int = 0
    """Part of completion_tokens (not reasoning) that is audio, billed at the audio output rate."""
    images: int = 0
    """Images generated: per image (by size and quality where the entry says) or per pixel."""
    image_size: str | None = None
    """Size of each generated image, ``"1024x1024"``; needed for per-pixel and per-size prices."""
    image_quality: str | None = None
    """Quality of the generated images (``low``, ``medium``, ``high``, ``standard``, ``hd``)."""
    input_seconds: Decimal = _NO_SECONDS
    """Seconds of audio or video input (transcription, video understanding)."""
    output_seconds: Decimal = _NO_SECONDS
    """Seconds of audio or video generated (speech, video generation)."""
    video_resolution: str | None = None
    """Resolution of generated video (``720p``), for per-resolution per-second prices."""
    input_characters: int = 0
    """Characters of input, for entries priced per character (text to speech)."""
    web_search_queries: int = 0
    """Web searches run by the model, billed per query by search context size."""
    search_context_size: str | None = None
    """``low``, ``medium`` (default) or ``high``."""
    queries: int = 0
    """Queries of a search or rerank endpoint priced per query (``input_cost_per_query``)."""
    service_tier: str | None = None
    """Tier that served the request: default, batch, priority (alias fast) or flex."""

    def __post_init__(self) -> None:
        validate(self)

    @property
    def tier_suffix(self) -> str:
        """The price-key suffix of the serving tier ("" for the default tier)."""
        return SERVICE_TIERS[self.service_tier]

    @property
    def has_units(self) -> bool:
        """Whether the record bills anything at all."""
        return any(
            getattr(self, name) for name in (*_COUNT_FIELDS, "input_seconds", "output_seconds")
        )


_COUNT_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "cache_creation_1h_tokens",
    "reasoning_tokens",
    "audio_input_tokens",
    "audio_output_tokens",
    "images",
    "input_characters",
    "web_search_queries",
    "queries",
)
_TEXT_FIELDS = ("image_size", "image_quality", "video_resolution", "search_context_size")
_FIELD_NAMES = frozenset(field.name for field in fields(Usage))


def _fail(field: str, detail: str) -> InvalidUsage:
    return InvalidUsage(detail, field=f"usage.{field}")


def validate(usage: Usage) -> None:
    """Raise ``InvalidUsage`` naming the first field that makes the record impossible."""
    counts = (
        usage.prompt_tokens, usage.completion_tokens, usage.cache_read_tokens,
        usage.cache_creation_tokens, usage.cache_creation_1h_tokens, usage.reasoning_tokens,
        usage.audio_input_tokens, usage.audio_output_tokens, usage.images,
        usage.input_characters, usage.web_search_queries, usage.queries,
    )  # fmt: skip
    if (
        set(map(type, counts)) == _INT_ONLY
        and min(counts) >= 0
        and max(counts) <= MAX_TOKENS
        and usage.input_seconds is _NO_SECONDS
        and usage.output_seconds is _NO_SECONDS
        and usage.image_size is None
        and usage.image_quality is None
        and usage.video_resolution is None
        and usage.search_context_size is None
    ):
        _check_wholes(usage)  # the common case: token counts only
        return
    for name in _COUNT_FIELDS:
        value = getattr(usage, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(name, f"{name} must be an integer, got {value!r}")
        if value < 0:
            raise _fail(name, f"{name} must not be negative, got {value}")
        if value > MAX_TOKENS:
            raise _fail(name, f"{name} is absurdly large ({value} > 2**53 - 1)")
    for name in ("input_seconds", "output_seconds"):
        value = getattr(usage, name)
        if not isinstance(value, Decimal) or not value.is_finite():
            raise _fail(name, f"{name} must be a finite decimal number of seconds")
        if value < 0:
            raise _fail(name, f"{name} must not be negative")
        if value > MAX_SECONDS:
            raise _fail(name, f"{name} is absurdly large (> {MAX_SECONDS} s)")
    for name in _TEXT_FIELDS:
        value = getattr(usage, name)
        if value is not None and not isinstance(value, str):
            raise _fail(name, f"{name} must be a string or null")
    _check_wholes(usage)


def _check_wholes(usage: Usage) -> None:
    if usage.cache_read_tokens > usage.prompt_tokens:
        raise _fail(
            "cache_read_tokens", "cache_read_tokens exceeds prompt_tokens, which includes them"
        )
    if usage.cache_read_tokens + usage.cache_creation_tokens > usage.prompt_tokens:
        raise _fail(
            "cache_creation_tokens",
            "cache_read_tokens + cache_creation_tokens exceeds prompt_tokens, which includes both",
        )
    if usage.cache_creation_1h_tokens > usage.cache_creation_tokens:
        raise _fail(
            "cache_creation_1h_tokens", "cache_creation_1h_tokens exceeds cache_creation_tokens"
        )
    if usage.reasoning_tokens > usage.completion_tokens:
        raise _fail(
            "reasoning_tokens", "reasoning_tokens exceeds completion_tokens, which includes them"
        )
    uncached = usage.prompt_tokens - usage.cache_read_tokens - usage.cache_creation_tokens
    if usage.audio_input_tokens > uncached:
        raise _fail("audio_input_tokens", "audio_input_tokens exceeds the uncached prompt_tokens")
    if usage.audio_output_tokens > usage.completion_tokens - usage.reasoning_tokens:
        raise _fail(
            "audio_output_tokens",
            "audio_output_tokens exceeds completion_tokens - reasoning_tokens",
        )
    if usage.service_tier not in SERVICE_TIERS:
        raise _fail(
            "service_tier",
            f"unknown service tier {usage.service_tier!r}; use default, batch, priority or flex",
        )
    if usage.search_context_size not in (None, *SEARCH_CONTEXT_SIZES):
        raise _fail("search_context_size", "search_context_size must be low, medium or high")


def _seconds(name: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise _fail(name, f"{name} must be a number of seconds, got {value!r}")
    try:
        return Decimal(value)
    except InvalidOperation as error:
        raise _fail(name, f"{name} must be a number of seconds, got {value!r}") from error


def usage_from_fields(raw: Mapping[str, Any]) -> Usage:
    """A Usage from canonical field names; unknown names are refused, absent ones are zero."""
    unknown = sorted(set(raw) - _FIELD_NAMES)
    if unknown:
        raise _fail(unknown[0], f"unknown usage field {unknown[0]!r}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if value is None and name in _COUNT_FIELDS:
            continue
        if name in ("input_seconds", "output_seconds"):
            values[name] = _seconds(name, value)
        elif name == "service_tier" and isinstance(value, str):
            values[name] = value.strip().lower()
        else:
            values[name] = value
    return Usage(**values)


def usage_to_fields(usage: Usage) -> dict[str, Any]:
    """The record's non-default fields, JSON-ready (seconds as decimal strings)."""
    out: dict[str, Any] = {}
    for field in fields(Usage):
        value = getattr(usage, field.name)
        if value == field.default:
            continue
        out[field.name] = str(value) if isinstance(value, Decimal) else value
    return out
