"""The price table: LiteLLM's price map with every rate turned into an exact number once, on load.

A rate is USD per unit scaled by 10**12, i.e. pico-USD per token (or per image, second, pixel,
query...). Every JSON number is parsed as a ``Decimal``, so each rate is read as its literal
is written, rounded to 12 significant digits (the snapshot carries binary noise such as
``5.9999999999999995e-07``), then kept as an ``int`` when it is integral in pico-USD, which every
token rate of the embedded snapshot is. A rate that is not (a few per-pixel and per-second
rates) is kept as an exact ``Fraction`` whose denominator is a power of ten: a finer decimal
scale for that one rate. Amounts are rounded to whole pico-USD only at the end of a quote, up
(ceil); see docs/pricing.md. No inexact number is involved anywhere.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from fractions import Fraction
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.money import format_usd
from app.pricing.errors import InvalidPriceTable

Rate = int | Fraction
"""USD per unit times 10**12: pico-USD per unit, exact."""

SNAPSHOT_LITELLM_VERSION = "1.106.2"
_RATE_CONTEXT = Context(prec=12, rounding=ROUND_HALF_EVEN)
_THRESHOLD_PREFIXES = tuple(
    f"{prefix}_above_"
    for prefix in (
        "input_cost_per_token",
        "output_cost_per_token",
        "cache_read_input_token_cost",
        "cache_creation_input_token_cost",
    )
)
_THRESHOLD_KEY = re.compile(r"_above_(\d+)(k?)_tokens")
_FIXED_ZONES = {"Asia/Shanghai": timezone(timedelta(hours=8), "Asia/Shanghai")}
_WEEKDAYS = {
    "mon": 1,
    "monday": 1,
    "tue": 2,
    "tues": 2,
    "tuesday": 2,
    "wed": 3,
    "wednesday": 3,
    "thu": 4,
    "thur": 4,
    "thurs": 4,
    "thursday": 4,
    "fri": 5,
    "friday": 5,
    "sat": 6,
    "saturday": 6,
    "sun": 7,
    "sunday": 7,
}


def to_rate(value: object, *, where: str) -> Rate:
    """An exact rate in pico-USD per unit from a JSON number (or numeric string) in USD per unit."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise InvalidPriceTable(f"{where}: a rate must be a number, got {value!r}")
    try:
        number = _RATE_CONTEXT.plus(Decimal(value))
    except InvalidOperation as error:
        raise InvalidPriceTable(f"{where}: a rate must be a number, got {value!r}") from error
    if not number.is_finite() or number < 0:
        raise InvalidPriceTable(f"{where}: a rate must be a finite non-negative number")
    scaled = number.scaleb(12)
    if scaled == scaled.to_integral_value():
        return int(scaled)
    return Fraction(scaled)


def format_rate_usd(value: Rate) -> str:
    """An exact pico-USD amount or rate (int or Fraction) as a plain decimal string of USD."""
    if isinstance(value, int):
        return format_usd(value)
    fraction = Fraction(value)
    digits = 0
    while (fraction * 10**digits).denominator != 1:
        digits += 1
        if digits > 60:
            raise ValueError(f"{fraction} has no finite decimal expansion")
    scaled = (fraction * 10**digits).numerator
    sign = "-" if scaled < 0 else ""
    text = str(abs(scaled)).rjust(12 + digits + 1, "0")
    whole, frac = text[: -(12 + digits)], text[-(12 + digits) :].rstrip("0")
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def _is_rate_key(key: str) -> bool:
    return "cost" in key and key != "search_context_cost_per_query"


def _number(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    return None


@dataclass(frozen=True, slots=True)
class Tier:
    """One row of ``tiered_pricing``: it prices a request whose prompt is in (low, high]."""

    low: Decimal
    high: Decimal
    rates: Mapping[str, Rate]


@dataclass(frozen=True, slots=True)
class OffPeakRule:
    """Windows of [start, end) minutes after midnight UTC, on the given ISO weekdays (None: all)."""

    windows: tuple[tuple[int, int], ...]
    weekdays: frozenset[int] | None


@dataclass(frozen=True, slots=True)
class OffPeak:
    """An ``off_peak_pricing`` block: the rates that replace the standard ones while open."""

    rules: tuple[OffPeakRule, ...]
    weekday_zone: tzinfo
    rates: Mapping[str, Rate]

    def is_open(self, at: datetime) -> bool:
        """Whether ``at`` (aware) falls in a window: start inclusive, end exclusive, may wrap."""
        utc = at.astimezone(UTC)
        minute = utc.hour * 60 + utc.minute
        weekday: int | None = None
        for rule in self.rules:
            if rule.weekdays is not None:
                if weekday is None:
                    weekday = at.astimezone(self.weekday_zone).isoweekday()
                if weekday not in rule.weekdays:
                    continue
            for start, end in rule.windows:
                if start < end:
                    if start <= minute < end:
                        return True
                elif minute >= start or minute < end:
                    return True
        return False


@dataclass(frozen=True, slots=True)
class Threshold:
    """An ``_above_<N>k_tokens`` price level of an entry (N*1000 tokens), with its label."""

    tokens: int
    label: str


class PriceEntry:
    """One model's prices, exact and read-only."""

    __slots__ = (
        "_threshold_cache",
        "key",
        "max_input_tokens",
        "max_output_tokens",
        "mode",
        "off_peak",
        "prices_input_tokens",
        "prices_output_tokens",
        "provider",
        "rate_memo",
        "rates",
        "raw",
        "search_context_rates",
        "source_id",
        "tiers",
    )

    def __init__(self, key: str, raw: Mapping[str, Any], *, source_id: str) -> None:
        self.key = key
        self.raw = MappingProxyType(dict(raw))
        self.source_id = source_id
        provider = raw.get("litellm_provider")
        self.provider = provider if isinstance(provider, str) else ""
        mode = raw.get("mode")
        self.mode = mode if isinstance(mode, str) else "chat"
        self.rates: Mapping[str, Rate] = MappingProxyType(
            {
                name: to_rate(value, where=f"{key}.{name}")
                for name, value in raw.items()
                if _is_rate_key(name) and value is not None and not isinstance(value, dict | list)
            }
        )
        self.tiers = _parse_tiers(key, raw.get("tiered_pricing"))
        self.off_peak = _parse_off_peak(key, raw.get("off_peak_pricing"))
        search = raw.get("search_context_cost_per_query")
        self.search_context_rates: Mapping[str, Rate] = MappingProxyType(
            {
                name.removeprefix("search_context_size_"): to_rate(value, where=f"{key}.{name}")
                for name, value in (search.items() if isinstance(search, dict) else ())
                if value is not None
            }
        )
        self.max_output_tokens = _number(raw.get("max_output_tokens")) or _number(
            raw.get("max_tokens")
        )
        self.max_input_tokens = _number(raw.get("max_input_tokens"))
        self._threshold_cache: dict[str, tuple[Threshold, ...]] = {}
        self.rate_memo: dict[tuple[str, str, int | None, int, bool], Any] = {}
        """Per-regime token rates, filled by app.pricing.cost (a cache, not state)."""
        self.prices_input_tokens = bool(self.tiers) or any(
            name.startswith("input_cost_per_token") for name in self.rates
        )
        self.prices_output_tokens = (
            bool(self.tiers)
            or "output_cost_per_image_token" in self.rates
            or any(name.startswith("output_cost_per_token") for name in self.rates)
        )

    def __repr__(self) -> str:
        return f"PriceEntry({self.key!r}, provider={self.provider!r})"

    @property
    def is_priced(self) -> bool:
        """Whether the entry states any price at all (a stated zero counts)."""
        return bool(self.rates or self.tiers or self.search_context_rates)

    def thresholds(self, suffix: str) -> tuple[Threshold, ...]:
        """Ascending ``_above_`` levels for a service-tier key suffix ("" for standard)."""
        found = self._threshold_cache.get(suffix)
        if found is None:
            levels: dict[int, str] = {}
            for name in self.rates:
                if not name.startswith(_THRESHOLD_PREFIXES) or "_tokens" not in name:
                    continue
                tail = name.rsplit("_tokens", 1)[1]
                if tail and tail != suffix:
                    continue
                match = _THRESHOLD_KEY.search(name)
                if match is None:
                    continue
                tokens = int(match[1]) * (1000 if match[2] else 1)
                levels[tokens] = match[1] + match[2]
            found = tuple(Threshold(tokens, label) for tokens, label in sorted(levels.items()))
            self._threshold_cache[suffix] = found
        return found


def _parse_tiers(key: str, value: object) -> tuple[Tier, ...]:
    if not isinstance(value, list):
        return ()
    tiers: list[Tier] = []
    for index, row in enumerate(value):
        if not isinstance(row, dict):
            continue
        bounds = row.get("range")
        if not isinstance(bounds, list) or len(bounds) != 2 or "input_cost_per_token" not in row:
            continue
        low, high = (Decimal(bound) for bound in bounds)
        rates = {
            name: to_rate(rate, where=f"{key}.tiered_pricing[{index}].{name}")
            for name, rate in row.items()
            if _is_rate_key(name) and rate is not None
        }
        tiers.append(Tier(low, high, MappingProxyType(rates)))
    tiers.sort(key=lambda tier: tier.low)
    return tuple(tiers)


def _minutes(text: str) -> int:
    hours, minutes = text.strip().split(":")
    value = int(hours) * 60 + int(minutes)
    if not 0 <= value <= 24 * 60:
        raise ValueError(text)
    return value % (24 * 60)


def _windows(key: str, value: object) -> tuple[tuple[int, int], ...]:
    texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    windows: list[tuple[int, int]] = []
    for text in texts:
        try:
            start, end = str(text).split("-")
            windows.append((_minutes(start), _minutes(end)))
        except ValueError as error:
            raise InvalidPriceTable(f"{key}.off_peak_pricing: bad window {text!r}") from error
    return tuple(windows)


def _zone(key: str, name: object) -> tzinfo:
    if not isinstance(name, str) or not name.strip():
        return UTC
    try:
        return ZoneInfo(name.strip())
    except (ValueError, ZoneInfoNotFoundError):
        fixed = _FIXED_ZONES.get(name.strip())
        if fixed is None:
            raise InvalidPriceTable(f"{key}.off_peak_pricing: unknown zone {name!r}") from None
        return fixed


def _weekdays(value: object) -> frozenset[int] | None:
    if value is None:
        return None
    days: set[int] = set()
    for day in value if isinstance(value, list) else []:
        if isinstance(day, int) and not isinstance(day, bool) and 1 <= day <= 7:
            days.add(day)
        elif isinstance(day, str) and day.strip().lower() in _WEEKDAYS:
            days.add(_WEEKDAYS[day.strip().lower()])
    return frozenset(days)


def _parse_off_peak(key: str, value: object) -> OffPeak | None:
    if not isinstance(value, dict):
        return None
    rules: list[OffPeakRule] = []
    flat = _windows(key, value.get("hours_utc"))
    if flat:
        rules.append(OffPeakRule(flat, None))
    for rule in value.get("windows") or []:
        if isinstance(rule, dict):
            windows = _windows(key, rule.get("hours_utc"))
            if windows:
                rules.append(OffPeakRule(windows, _weekdays(rule.get("weekdays"))))
    rates = {
        name: to_rate(rate, where=f"{key}.off_peak_pricing.{name}")
        for name, rate in value.items()
        if _is_rate_key(name) and rate is not None
    }
    return OffPeak(tuple(rules), _zone(key, value.get("weekday_timezone")), MappingProxyType(rates))


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's price for one model key, in LiteLLM's entry format, from a moment on.

    ``fields`` are laid over the base entry's fields (a partial override keeps the rest).
    """

    override_id: str
    model_key: str
    effective_at: datetime
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Layer:
    starts: list[datetime] = field(default_factory=list)
    entries: list[PriceEntry] = field(default_factory=list)


class PriceTable:
    """Model key -> PriceEntry, read-only, with optional time-effective overrides on top."""

    def __init__(
        self,
        entries: Mapping[str, PriceEntry],
        *,
        source_id: str,
        label: str,
        overrides: Mapping[str, _Layer] | None = None,
    ) -> None:
        self._entries = MappingProxyType(dict(entries))
        self._overrides: Mapping[str, _Layer] = MappingProxyType(dict(overrides or {}))
        self.source_id = source_id
        self.label = label
        keys = set(self._entries) | set(self._overrides)
        self.providers = frozenset(entry.provider for entry in self._entries.values())
        self._lower = {key.lower(): key for key in sorted(keys, reverse=True)}
        self.resolutions: dict[tuple[str, str | None, str | None, str | None], tuple[str, str]] = {}
        """Memo of model resolution: (model, provider, size, quality) -> (key, family)."""

    @classmethod
    def from_json(cls, data: bytes, *, label: str) -> PriceTable:
        """Parse LiteLLM's price map; the table's ``source_id`` is the sha256 of ``data``."""
        digest = hashlib.sha256(data).hexdigest()
        try:
            parsed = json.loads(data, parse_float=Decimal, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as error:
            raise InvalidPriceTable(f"{label}: not a JSON price map: {error}") from error
        if not isinstance(parsed, dict):
            raise InvalidPriceTable(f"{label}: the price map must be a JSON object")
        entries = {
            key: PriceEntry(key, raw, source_id=digest)
            for key, raw in parsed.items()
            if isinstance(raw, dict) and key != "sample_spec"
        }
        if not any(entry.is_priced for entry in entries.values()):
            raise InvalidPriceTable(f"{label}: the price map prices no model")
        return cls(entries, source_id=digest, label=label)

    def with_overrides(self, overrides: Iterable[Override]) -> PriceTable:
        """A table whose entries are replaced by ``overrides`` from their effective time on."""
        layers: dict[str, _Layer] = {
            key: _Layer(list(layer.starts), list(layer.entries))
            for key, layer in self._overrides.items()
        }
        for override in sorted(overrides, key=lambda item: item.effective_at):
            if override.effective_at.tzinfo is None:
                raise ValueError("an override's effective_at must be timezone-aware")
            base = self._entries.get(override.model_key)
            fields = {**(dict(base.raw) if base is not None else {}), **override.fields}
            entry = PriceEntry(override.model_key, fields, source_id=override.override_id)
            layer = layers.setdefault(override.model_key, _Layer())
            position = bisect.bisect_right(layer.starts, override.effective_at)
            layer.starts.insert(position, override.effective_at)
            layer.entries.insert(position, entry)
        return PriceTable(
            self._entries, source_id=self.source_id, label=self.label, overrides=layers
        )

    def get(self, key: str, *, at: datetime | None = None) -> PriceEntry | None:
        """The entry for an exact key, as priced at ``at`` (overrides apply from their start)."""
        layer = self._overrides.get(key)
        if layer is not None:
            moment = at if at is not None else datetime.now(UTC)
            position = bisect.bisect_right(layer.starts, moment)
            if position:
                return layer.entries[position - 1]
        return self._entries.get(key)

    def canonical_key(self, key: str) -> str | None:
        """The stored key equal to ``key``, or equal ignoring case."""
        if key in self._entries or key in self._overrides:
            return key
        return self._lower.get(key.lower())

    def __contains__(self, key: object) -> bool:
        return key in self._entries or key in self._overrides

    def __iter__(self) -> Iterator[str]:
        yield from self._entries
        yield from (key for key in self._overrides if key not in self._entries)

    def __len__(self) -> int:
        return len(self._entries) + sum(1 for key in self._overrides if key not in self._entries)

    def base_entries(self) -> Mapping[str, PriceEntry]:
        """The entries without overrides (for diffs and listings)."""
        return self._entries


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number")


def snapshot_bytes() -> bytes:
    """The embedded LiteLLM snapshot, byte for byte."""
    return (resources.files("app.pricing") / "data" / "model_prices.json").read_bytes()


def snapshot_info() -> Mapping[str, str]:
    """SNAPSHOT.json: the embedded snapshot's sha256 and LiteLLM version."""
    text = (resources.files("app.pricing") / "data" / "SNAPSHOT.json").read_text("utf-8")
    info: dict[str, str] = json.loads(text)
    return MappingProxyType(info)


@cache
def default_table() -> PriceTable:
    """The embedded snapshot, loaded once and shared read-only."""
    data = snapshot_bytes()
    expected = snapshot_info()["sha256"]
    table = PriceTable.from_json(data, label=f"embedded LiteLLM {SNAPSHOT_LITELLM_VERSION}")
    if table.source_id != expected:
        raise InvalidPriceTable(
            f"embedded snapshot sha256 {table.source_id} does not match SNAPSHOT.json {expected}"
        )
    return table
