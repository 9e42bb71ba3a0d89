"""Pricing use cases: quote a usage record, estimate a request's worst case, load a table.

This module is the domain's public API (the CLI and the HTTP API call only these).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.money import format_usd
from app.pricing.cost import Cost, price_usage
from app.pricing.errors import InvalidUsage, UnknownModel
from app.pricing.estimate import Estimate, clamp_output, worst_case
from app.pricing.normalise import normalise_usage
from app.pricing.resolve import resolve
from app.pricing.sources import load_table
from app.pricing.table import PriceTable, Rate, format_rate_usd
from app.pricing.units import Line
from app.pricing.usage import Usage, usage_to_fields

__all__ = [
    "Estimate",
    "Quote",
    "clamp_output",
    "estimate_to_json",
    "format_rate_usd",
    "load_table",
    "normalise_usage",
    "parse_billing_time",
    "quote",
    "quote_to_json",
    "worst_case",
]


@dataclass(frozen=True, slots=True)
class Quote:
    """The price of one usage record, and everything that priced it (see the properties)."""

    model: str
    """The model id as the caller gave it."""
    table_label: str
    billing_time: datetime
    usage: Usage
    cost: Cost

    @property
    def model_key(self) -> str:
        return self.cost.entry.key

    @property
    def provider(self) -> str:
        """The resolved entry's LiteLLM provider (its family when the entry names none)."""
        return self.cost.entry.provider or self.cost.family

    @property
    def priced_by(self) -> str:
        """The sha256 of the price table the entry came from, or the operator override's id."""
        return self.cost.entry.source_id

    @property
    def prompt_pico_usd(self) -> int:
        return self.cost.prompt_pico_usd

    @property
    def completion_pico_usd(self) -> int:
        return self.cost.completion_pico_usd

    @property
    def total_pico_usd(self) -> int:
        return self.cost.prompt_pico_usd + self.cost.completion_pico_usd

    @property
    def zero_priced(self) -> bool:
        """True when the entry prices this usage at zero on purpose (it states zero rates)."""
        return self.total_pico_usd == 0 and self.usage.has_units

    @property
    def exact(self) -> bool:
        """False when a side was rounded up to whole pico-USD (rates finer than 1e-12 USD)."""
        return self.cost.exact

    @property
    def service_tier(self) -> str:
        return self.cost.service_tier

    @property
    def off_peak(self) -> bool:
        return self.cost.rates.off_peak if self.cost.rates else False

    @property
    def threshold_tokens(self) -> int | None:
        return self.cost.rates.threshold_tokens if self.cost.rates else None

    @property
    def tier_index(self) -> int | None:
        return self.cost.rates.tier_index if self.cost.rates else None

    @property
    def lines(self) -> tuple[Line, ...]:
        return self.cost.lines

    @property
    def rates(self) -> dict[str, Rate]:
        """The per-unit rates applied, pico-USD, by token class and unit name."""
        applied = self.cost.rates
        rates: dict[str, Rate] = {}
        if applied is not None:
            rates = {
                "input": applied.input,
                "output": applied.output,
                "cache_read": applied.cache_read,
                "cache_write_5m": applied.cache_write_5m,
                "cache_write_1h": applied.cache_write_1h,
                "reasoning": applied.reasoning,
            }
        for item in self.cost.lines:
            rates.setdefault(item.name, item.rate)
        return rates


def parse_billing_time(value: object) -> datetime:
    """An aware billing time from ISO-8601 text, a datetime or None (now); naive means UTC."""
    if value is None:
        return datetime.now(UTC)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as error:
            raise InvalidUsage(
                f"billing_time must be ISO-8601, got {value!r}", field="billing_time"
            ) from error
    else:
        raise InvalidUsage("billing_time must be an ISO-8601 string or null", field="billing_time")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def quote(
    table: PriceTable,
    *,
    model: str,
    provider: str | None,
    usage: Usage | Mapping[str, Any],
    billing_time: datetime | str | None = None,
) -> Quote:
    """Price one usage record (canonical or a provider's native usage shape)."""
    if not isinstance(model, str) or not model.strip():
        raise UnknownModel("model must be a non-empty string", model=str(model))
    if provider is not None and not isinstance(provider, str):
        raise InvalidUsage("provider must be a string or null", field="provider")
    at = parse_billing_time(billing_time)
    record = (
        usage
        if isinstance(usage, Usage)
        else normalise_usage(usage, model=model, provider=provider)
    )
    resolution = resolve(
        table,
        model=model,
        provider=provider,
        at=at,
        image_size=record.image_size if record.images else None,
        image_quality=record.image_quality if record.images else None,
    )
    cost = price_usage(resolution.entry, family=resolution.family, usage=record, at=at)
    return Quote(model, table.label, at, record, cost)


def quote_to_json(result: Quote) -> dict[str, Any]:
    """The JSON document of a quote, as `usage-ledger quote` prints it and the API returns it."""
    return {
        "total_usd": format_usd(result.total_pico_usd),
        "prompt_usd": format_usd(result.prompt_pico_usd),
        "completion_usd": format_usd(result.completion_pico_usd),
        "model_key": result.model_key,
        "provider": result.provider,
        "zero_priced": result.zero_priced,
        "priced_by": {"source": result.priced_by, "table": result.table_label},
        "billing_time": result.billing_time.isoformat(),
        "service_tier": result.service_tier,
        "off_peak": result.off_peak,
        "threshold_tokens": result.threshold_tokens,
        "tier_index": result.tier_index,
        "exact": result.exact,
        "breakdown": {
            "model_key": result.model_key,
            "provider": result.provider,
            "rates_usd_per_unit": {
                name: format_rate_usd(rate) for name, rate in result.rates.items()
            },
            "lines": [
                {
                    "name": item.name,
                    "side": item.side,
                    "units": str(item.units),
                    "rate_usd": format_rate_usd(item.rate),
                    "amount_usd": format_rate_usd(item.amount),
                }
                for item in result.lines
                if item.units
            ],
            "total_usd": format_usd(result.total_pico_usd),
        },
        "usage": usage_to_fields(result.usage),
    }


def estimate_to_json(result: Estimate) -> dict[str, Any]:
    """The JSON document of a worst-case estimate."""
    return {
        "amount_usd": format_usd(result.amount_pico_usd),
        "amount_pico_usd": result.amount_pico_usd,
        "input_tokens_bound": result.input_tokens_bound,
        "max_output_tokens": result.max_output_tokens,
        "model_key": result.model_key,
        "provider": result.provider,
        "priced_by": result.priced_by,
        "input_rate_usd": format_rate_usd(result.input_rate),
        "output_rate_usd": format_rate_usd(result.output_rate),
    }
