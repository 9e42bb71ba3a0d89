"""The cost of one usage record under one price entry, exact, with the rates that priced it.

The formula and its fallbacks are LiteLLM's (docs/pricing.md, "Rules"). Amounts are exact
(pico-USD, ``int`` or a ``Fraction`` when a non-token rate is finer than a pico-USD); each
side (prompt, completion) is rounded up to whole pico-USD once, at the end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from fractions import Fraction
from typing import NamedTuple

from app.pricing.table import PriceEntry, Rate, Tier
from app.pricing.units import Line, Side, line, unit_lines, unpriced
from app.pricing.usage import SERVICE_TIERS, Usage

_INCLUSIVE_THRESHOLD_FAMILIES = frozenset({"xai"})
_TIER_NAMES = {"": "default", "_batches": "batches", "_priority": "priority", "_flex": "flex"}


class TokenRates(NamedTuple):
    """Per-token rates (pico-USD) one request bills at, after tiers, thresholds and off-peak."""

    input: Rate
    output: Rate
    cache_read: Rate
    cache_write_5m: Rate
    cache_write_1h: Rate
    reasoning: Rate
    threshold_tokens: int | None = None
    tier_index: int | None = None
    off_peak: bool = False


class Cost(NamedTuple):
    """What a usage record costs under an entry, side by side, with its lines."""

    entry: PriceEntry
    family: str
    prompt_pico_usd: int
    completion_pico_usd: int
    lines: tuple[Line, ...]
    rates: TokenRates | None
    service_tier: str
    exact: bool
    """False when a side was rounded up to a whole pico-USD (a rate finer than 1e-12 USD)."""

    @property
    def total_pico_usd(self) -> int:
        return self.prompt_pico_usd + self.completion_pico_usd


def half(rate: Rate) -> Rate:
    """Half a rate, exact."""
    if isinstance(rate, int) and rate % 2 == 0:
        return rate // 2
    value = Fraction(rate) / 2
    return value.numerator if value.denominator == 1 else value


def _rate(rates: Mapping[str, Rate], key: str, suffix: str, default: Rate | None) -> Rate | None:
    if suffix:
        value = rates.get(key + suffix)
        if value is not None:
            return value
    value = rates.get(key)
    return default if value is None else value


def select_tier(tiers: tuple[Tier, ...], prompt_tokens: int) -> int | None:
    """The tier pricing a prompt: ``low < prompt <= high``, else the last (the README's rule,
    applied literally: a 0-token prompt lies in no range and takes the last tier)."""
    if not tiers:
        return None
    for index, tier in enumerate(tiers):
        if tier.low < prompt_tokens <= tier.high:
            return index
    return len(tiers) - 1


def _entry_rates(entry: PriceEntry, family: str) -> Mapping[str, Rate]:
    rates = entry.rates
    if family == "fireworks_ai" and "cache_read_input_token_cost" not in rates:
        standard_input = rates.get("input_cost_per_token")
        if standard_input is not None:
            # Fireworks bills cached input at half the input rate when it publishes no cache price.
            return {**rates, "cache_read_input_token_cost": half(standard_input)}
    return rates


def _off_peak_rates(entry: PriceEntry, family: str) -> Mapping[str, Rate] | None:
    off_peak = entry.off_peak
    if off_peak is None:
        return None
    rates = off_peak.rates
    if (
        family == "fireworks_ai"
        and "cache_read_input_token_cost" not in rates
        and "cache_read_input_token_cost" not in entry.rates
        and "input_cost_per_token" in rates
    ):
        return {**rates, "cache_read_input_token_cost": half(rates["input_cost_per_token"])}
    return rates


def token_rates(
    entry: PriceEntry,
    *,
    family: str,
    prompt_tokens: int,
    suffix: str,
    at: datetime | None,
) -> TokenRates:
    """The per-token rates for a request of ``prompt_tokens`` on a non-batch service tier.

    ``at=None`` gives the standard (peak) rates whatever the entry's off-peak windows.
    Rates depend only on the regime a request falls in (tier, thresholds crossed, off-peak),
    so each regime's rates are computed once per entry and memoised on it.
    """
    tier_index = select_tier(entry.tiers, prompt_tokens)
    crossed = 0
    if tier_index is None:
        inclusive = family in _INCLUSIVE_THRESHOLD_FAMILIES
        for threshold in entry.thresholds(suffix):
            if prompt_tokens > threshold.tokens or (
                inclusive and prompt_tokens == threshold.tokens
            ):
                crossed += 1
            else:
                break  # ascending thresholds: none above this one is crossed either
    off_peak_open = at is not None and entry.off_peak is not None and entry.off_peak.is_open(at)
    regime = (family, suffix, tier_index, crossed, off_peak_open)
    found = entry.rate_memo.get(regime)
    if found is None:
        found = _regime_rates(entry, family, suffix, tier_index, crossed, off_peak_open)
        entry.rate_memo[regime] = found
    return found


def _regime_rates(
    entry: PriceEntry,
    family: str,
    suffix: str,
    tier_index: int | None,
    crossed: int,
    off_peak_open: bool,
) -> TokenRates:
    rates = _entry_rates(entry, family)
    off_peak = _off_peak_rates(entry, family) if off_peak_open else None
    threshold_tokens: int | None = None
    if tier_index is not None:
        tier = entry.tiers[tier_index].rates
        input_rate: Rate = tier["input_cost_per_token"]
        write: Rate | None = tier.get("cache_creation_input_token_cost", input_rate)
        output = tier.get("output_cost_per_token", rates.get("output_cost_per_token", 0))
        write_1h: Rate | None = (
            tier.get(
                "cache_creation_input_token_cost_above_1hr",
                tier.get("cache_creation_input_token_cost", 0),
            )
            or write
        )
        read: Rate | None = tier.get("cache_read_input_token_cost", input_rate)
    else:
        input_rate = _rate(rates, "input_cost_per_token", suffix, 0) or 0
        output = _rate(rates, "output_cost_per_token", suffix, 0) or 0
        if output == 0:
            output = rates.get("output_cost_per_image_token", output)
        write = _rate(rates, "cache_creation_input_token_cost", suffix, None)
        write_1h = rates.get("cache_creation_input_token_cost_above_1hr")
        read = _rate(rates, "cache_read_input_token_cost", suffix, None)
        for threshold in entry.thresholds(suffix)[:crossed]:
            above = f"_above_{threshold.label}_tokens"
            input_rate = _rate(rates, f"input_cost_per_token{above}", suffix, input_rate) or 0
            output = _rate(rates, f"output_cost_per_token{above}", suffix, output) or 0
            write = _rate(rates, f"cache_creation_input_token_cost{above}", suffix, write)
            write_1h = _rate(
                rates, f"cache_creation_input_token_cost_above_1hr{above}", suffix, write_1h
            )
            read = _rate(rates, f"cache_read_input_token_cost{above}", suffix, read)
            threshold_tokens = threshold.tokens
    # A missing cache price bills cached tokens as ordinary input (off-peak input when open).
    fallback = input_rate if off_peak is None else off_peak.get("input_cost_per_token", input_rate)
    read = fallback if read is None else read
    write = fallback if write is None else write
    if off_peak is not None:
        input_rate = off_peak.get("input_cost_per_token", input_rate)
        output = off_peak.get("output_cost_per_token", output)
        read = off_peak.get("cache_read_input_token_cost", read)
        write = off_peak.get("cache_creation_input_token_cost", write)
    write_1h = write if write_1h is None else write_1h
    reasoning = _reasoning_rate(entry, rates, off_peak, tier_index, suffix, output)
    return TokenRates(
        input_rate,
        output,
        read,
        write,
        write_1h,
        reasoning,
        threshold_tokens,
        tier_index,
        off_peak is not None,
    )


def _reasoning_rate(
    entry: PriceEntry,
    rates: Mapping[str, Rate],
    off_peak: Mapping[str, Rate] | None,
    tier_index: int | None,
    suffix: str,
    output: Rate,
) -> Rate:
    if off_peak is not None and "output_cost_per_reasoning_token" in off_peak:
        return off_peak["output_cost_per_reasoning_token"]
    if tier_index is not None:
        tier = entry.tiers[tier_index].rates
        if "output_cost_per_reasoning_token" in tier:
            return tier["output_cost_per_reasoning_token"]
        if "output_cost_per_token" in tier:
            return tier["output_cost_per_token"]
    tier_reasoning = rates.get("output_cost_per_reasoning_token" + suffix)
    if tier_reasoning is not None:
        return tier_reasoning
    if suffix and rates.get("output_cost_per_token" + suffix) is not None:
        return output
    return rates.get("output_cost_per_reasoning_token", output)


def _round_up(amount: Rate) -> int:
    return amount if isinstance(amount, int) else math.ceil(amount)


def price_usage(entry: PriceEntry, *, family: str, usage: Usage, at: datetime) -> Cost:
    """The exact cost of ``usage`` under ``entry`` billed at ``at`` (aware)."""
    rates = _entry_rates(entry, family)
    if usage.prompt_tokens and not entry.prices_input_tokens:
        raise unpriced(entry, "input tokens")
    if usage.completion_tokens and not entry.prices_output_tokens:
        raise unpriced(entry, "output tokens")
    suffix = SERVICE_TIERS[usage.service_tier]
    lines: list[Line] = []
    token_rate_set: TokenRates | None = None
    if usage.prompt_tokens or usage.completion_tokens:
        if suffix == "_batches":
            lines.extend(_batch_lines(entry, family, usage, rates))
        else:
            token_rate_set = token_rates(
                entry, family=family, prompt_tokens=usage.prompt_tokens, suffix=suffix, at=at
            )
            lines.extend(_token_lines(usage, rates, token_rate_set, suffix))
    lines.extend(unit_lines(entry, usage, rates))
    prompt_exact: Rate = 0
    completion_exact: Rate = 0
    for item in lines:
        if item.side == "prompt":
            prompt_exact += item.amount
        else:
            completion_exact += item.amount
    return Cost(
        entry,
        family,
        _round_up(prompt_exact),
        _round_up(completion_exact),
        tuple(lines),
        token_rate_set,
        _TIER_NAMES[suffix],
        isinstance(prompt_exact, int) and isinstance(completion_exact, int),
    )


def _token_lines(
    usage: Usage, rates: Mapping[str, Rate], token_rate_set: TokenRates, suffix: str
) -> list[Line]:
    writes_1h = usage.cache_creation_1h_tokens
    writes_5m = usage.cache_creation_tokens - writes_1h
    text_in = (
        usage.prompt_tokens
        - usage.cache_read_tokens
        - usage.cache_creation_tokens
        - usage.audio_input_tokens
    )
    text_out = usage.completion_tokens - usage.reasoning_tokens - usage.audio_output_tokens
    counted: tuple[tuple[str, Side, int, Rate], ...] = (
        ("input", "prompt", text_in, token_rate_set.input),
        ("cache_read", "prompt", usage.cache_read_tokens, token_rate_set.cache_read),
        ("cache_write_5m", "prompt", writes_5m, token_rate_set.cache_write_5m),
        ("cache_write_1h", "prompt", writes_1h, token_rate_set.cache_write_1h),
        ("output", "completion", text_out, token_rate_set.output),
        ("reasoning", "completion", usage.reasoning_tokens, token_rate_set.reasoning),
    )
    lines = [
        Line(name, side, units, rate, units * rate) for name, side, units, rate in counted if units
    ]
    if usage.audio_input_tokens:
        audio_in = _rate(rates, "input_cost_per_audio_token", suffix, token_rate_set.input)
        lines.append(line("audio_input", "prompt", usage.audio_input_tokens, audio_in or 0))
    if usage.audio_output_tokens:
        audio_out = rates.get("output_cost_per_audio_token", token_rate_set.output)
        lines.append(line("audio_output", "completion", usage.audio_output_tokens, audio_out))
    return lines


def _batch_rate(
    entry: PriceEntry, rates: Mapping[str, Rate], prefix: str, prompt: int, inclusive: bool
) -> Rate | None:
    flat = rates.get(f"{prefix}_batches")
    for threshold in reversed(entry.thresholds("_batches")):
        crossed = prompt > threshold.tokens or (inclusive and prompt == threshold.tokens)
        key = f"{prefix}_above_{threshold.label}_tokens_batches"
        if crossed and key in rates:
            return rates[key]
    return flat


def _batch_lines(
    entry: PriceEntry, family: str, usage: Usage, rates: Mapping[str, Rate]
) -> list[Line]:
    """Batch tier: ``*_batches`` rates, else half the standard ones (LiteLLM's convention)."""
    inclusive = family in _INCLUSIVE_THRESHOLD_FAMILIES
    prompt = usage.prompt_tokens
    batch_input = _batch_rate(entry, rates, "input_cost_per_token", prompt, inclusive)
    batch_read = _batch_rate(entry, rates, "cache_read_input_token_cost", prompt, inclusive)
    batch_write = _batch_rate(entry, rates, "cache_creation_input_token_cost", prompt, inclusive)
    batch_output = _batch_rate(entry, rates, "output_cost_per_token", prompt, inclusive)
    standard_input = rates.get("input_cost_per_token", 0)
    lines: list[Line] = []
    if batch_input is not None:
        # Without a batch cache price, cached and written tokens are plain batch input.
        read_tokens = usage.cache_read_tokens if batch_read is not None else 0
        written = usage.cache_creation_tokens if batch_write is not None else 0
        audio = usage.audio_input_tokens
        text_in = prompt - read_tokens - written - audio
        audio_rate = rates.get("input_cost_per_audio_token_batches", batch_input)
        lines += [
            line("input", "prompt", text_in, batch_input),
            line("cache_read", "prompt", read_tokens, batch_read or 0),
            line("cache_write", "prompt", written, batch_write or 0),
            line("audio_input", "prompt", audio, audio_rate),
        ]
    else:
        read_rate = rates.get("cache_read_input_token_cost", standard_input)
        write_rate = rates.get("cache_creation_input_token_cost", standard_input)
        text_in = prompt - usage.cache_read_tokens - usage.cache_creation_tokens
        lines += [
            line("input", "prompt", text_in, half(standard_input)),
            line("cache_read", "prompt", usage.cache_read_tokens, half(read_rate)),
            line("cache_write", "prompt", usage.cache_creation_tokens, half(write_rate)),
        ]
    output_rate = (
        batch_output if batch_output is not None else half(rates.get("output_cost_per_token", 0))
    )
    lines.append(line("output", "completion", usage.completion_tokens, output_rate))
    return lines
