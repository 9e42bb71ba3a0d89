"""Billable units other than tokens: images, seconds, characters, web searches, queries.

Input-side units (input seconds, characters, searches, queries) add to the prompt side of a
quote, output-side units (images, generated seconds) to the completion side, so a quote's
total is always prompt + completion.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Literal, NamedTuple

from app.pricing.errors import UnknownModel
from app.pricing.table import PriceEntry, Rate
from app.pricing.usage import Usage

Side = Literal["prompt", "completion"]
_SIZE = re.compile(r"^\s*(\d+)\s*(?:x|-x-|\*)\s*(\d+)\s*$", re.IGNORECASE)


class Line(NamedTuple):
    """One priced quantity: ``units`` of ``name`` at ``rate`` pico-USD each, ``amount`` exact."""

    name: str
    side: Side
    units: int | Decimal
    rate: Rate
    amount: Rate


def line(name: str, side: Side, units: int | Decimal, rate: Rate) -> Line:
    """A line whose amount is units x rate, exact (seconds are exact decimals)."""
    if isinstance(units, Decimal):
        amount = Fraction(units) * rate
        exact: Rate = amount.numerator if amount.denominator == 1 else amount
        return Line(name, side, units, rate, exact)
    return Line(name, side, units, rate, units * rate)


def unpriced(entry: PriceEntry, what: str) -> UnknownModel:
    """The error for a usage unit the entry has no price for: never a silent $0."""
    return UnknownModel(
        f"model {entry.key!r} has no price for {what} in the price table", model=entry.key
    )


def parse_size(size: str) -> tuple[int, int] | None:
    """``"1024x1536"`` (or ``1024-x-1536``) -> (1024, 1536); None when not WxH."""
    match = _SIZE.match(size)
    return (int(match[1]), int(match[2])) if match else None


def size_key(size: str) -> str | None:
    """The table's spelling of a size in model keys: ``1024x1024`` -> ``1024-x-1024``."""
    parsed = parse_size(size)
    return f"{parsed[0]}-x-{parsed[1]}" if parsed else None


def _image_size_labels(size: str) -> list[str]:
    labels = [size.strip()]
    parsed = parse_size(size)
    if parsed is not None:
        longest = max(parsed)
        labels.append(str(longest))
        for limit, label in ((512, "0.5K"), (1024, "1K"), (2048, "2K"), (4096, "4K")):
            if longest <= limit:
                labels.append(label)
                break
    return labels


def _image_lines(entry: PriceEntry, usage: Usage, rates: Mapping[str, Rate]) -> list[Line]:
    if usage.image_size:
        for label in _image_size_labels(usage.image_size):
            rate = rates.get(f"output_cost_per_image_{label}")
            if rate is not None:
                return [line(f"image_{label}", "completion", usage.images, rate)]
    for key in ("output_cost_per_image", "input_cost_per_image"):
        rate = rates.get(key)
        if rate is not None:
            return [line("image", "completion", usage.images, rate)]
    pixel_rate = rates.get("output_cost_per_pixel") or rates.get("input_cost_per_pixel")
    if pixel_rate is not None:
        parsed = parse_size(usage.image_size) if usage.image_size else None
        if parsed is None:
            raise UnknownModel(
                f"model {entry.key!r} is priced per pixel: the usage must give image_size (WxH)",
                model=entry.key,
            )
        pixels = usage.images * parsed[0] * parsed[1]
        return [line("image_pixels", "completion", pixels, pixel_rate)]
    raise unpriced(entry, "generated images")


def _first(rates: Mapping[str, Rate], *keys: str) -> tuple[str, Rate] | None:
    for key in keys:
        rate = rates.get(key)
        if rate is not None:
            return key, rate
    return None


def unit_lines(entry: PriceEntry, usage: Usage, rates: Mapping[str, Rate]) -> list[Line]:
    """Lines for every non-token unit the usage reports; an unpriced unit is an error."""
    lines: list[Line] = []
    if usage.images:
        lines += _image_lines(entry, usage, rates)
    if usage.input_seconds:
        found = _first(
            rates,
            "input_cost_per_second",
            "input_cost_per_audio_per_second",
            "input_cost_per_video_per_second",
        )
        if found is None:
            raise unpriced(entry, "input seconds")
        lines.append(line("input_seconds", "prompt", usage.input_seconds, found[1]))
    if usage.output_seconds:
        keys = ["output_cost_per_second", "output_cost_per_video_per_second"]
        if usage.video_resolution:
            keys.insert(0, f"output_cost_per_second_{usage.video_resolution.strip().lower()}")
        found = _first(rates, *keys)
        if found is None:
            raise unpriced(entry, "output seconds")
        lines.append(line("output_seconds", "completion", usage.output_seconds, found[1]))
    if usage.input_characters:
        rate = rates.get("input_cost_per_character")
        if rate is None:
            raise unpriced(entry, "input characters")
        lines.append(line("input_characters", "prompt", usage.input_characters, rate))
    if usage.web_search_queries:
        size = usage.search_context_size or "medium"
        rate = entry.search_context_rates.get(size)
        if rate is None:
            raise unpriced(entry, f"web search queries (search context {size})")
        lines.append(line(f"web_search_{size}", "prompt", usage.web_search_queries, rate))
    if usage.queries:
        rate = rates.get("input_cost_per_query")
        if rate is None:
            raise unpriced(entry, "queries")
        lines.append(line("queries", "prompt", usage.queries, rate))
    return lines
