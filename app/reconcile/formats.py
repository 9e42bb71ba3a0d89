"""Provider cost exports: what a parsed file is, how its format is told from its content, and
the exact readings of amounts and times that every format shares.

Amounts are never read through binary floating point: JSON numbers are kept as the literal
text of the file (``parse_float``) and turned into ``Decimal`` from that text, exactly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from app.reconcile.errors import InvalidExport

PROVIDERS = ("openai", "anthropic")
AmountUnit = Literal["usd", "usd_cents"]
DAY = timedelta(days=1)

_NUMBER = re.compile(r"^-?[0-9]{1,40}(?:\.[0-9]{1,60})?(?:[eE][+-]?[0-9]{1,3})?$")
# Far above any provider's bill, low enough that an absurd literal cannot blow up exact sums.
_LARGEST_USD = Decimal(10) ** 15


class JsonNumber(str):
    """The literal text of a JSON number with a fraction or exponent, as written in the file."""


@dataclass(frozen=True)
class LineItem:
    """One amount the provider billed, in one time bucket, exactly as the file states it."""

    line_no: int
    bucket_start: datetime
    bucket_end: datetime
    amount_text: str
    amount_unit: AmountUnit
    amount_usd: Decimal
    currency: str
    line_item: str | None
    model: str | None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def day(self) -> date:
        return self.bucket_start.date()


@dataclass(frozen=True)
class ProviderExport:
    """A parsed file: its items and the UTC days its buckets cover (``end`` exclusive)."""

    provider: str
    format: str
    items: list[LineItem]
    start: date | None
    end: date | None
    warnings: list[str] = field(default_factory=list)


def load_json(content: str) -> Any:
    """Parse JSON keeping every non-integer number as its literal text; NaN is refused."""

    def refuse(name: str) -> Any:
        raise InvalidExport(f"{name} is not a number a bill can hold", location="")

    try:
        return json.loads(content, parse_float=JsonNumber, parse_constant=refuse)
    except json.JSONDecodeError as error:
        raise InvalidExport(
            f"not valid JSON: {error.msg}", location=f"line {error.lineno} column {error.colno}"
        ) from error
    except RecursionError as error:
        raise InvalidExport("JSON nested too deeply", location="") from error


def exact_amount(value: Any, *, location: str) -> tuple[str, Decimal]:
    """The literal text of an amount and its exact value; anything inexact is refused."""
    if isinstance(value, bool) or value is None:
        raise InvalidExport("an amount must be a number or a decimal string", location=location)
    text = str(value).strip() if isinstance(value, int | str) else ""
    if not _NUMBER.match(text):
        raise InvalidExport(
            f"{value!r} is not a plain decimal amount (no NaN, Infinity, separators)",
            location=location,
        )
    try:
        amount = Decimal(text)
    except InvalidOperation as error:  # pragma: no cover - the pattern admits only decimals
        raise InvalidExport(f"{text!r} is not a decimal", location=location) from error
    if abs(amount) >= _LARGEST_USD:
        raise InvalidExport(f"{text} is beyond any plausible bill", location=location)
    return text, amount


def cents_to_usd(amount: Decimal) -> Decimal:
    """Cents as USD, exactly: only the exponent moves, no digit is rounded."""
    sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)
    return Decimal((sign, digits, exponent - 2))


def unix_time(value: Any, *, location: str) -> datetime:
    """Unix seconds (an integer, or a string of one) as an aware UTC datetime."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,12}", value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 10**11:
        raise InvalidExport(f"{value!r} is not a time in Unix seconds", location=location)
    return datetime.fromtimestamp(value, UTC)


def iso_time(value: Any, *, location: str, naive_is_utc: bool = False) -> datetime:
    """An RFC 3339 time as an aware UTC datetime (a time without offset only when allowed)."""
    if not isinstance(value, str):
        raise InvalidExport(f"{value!r} is not an RFC 3339 time", location=location)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as error:
        raise InvalidExport(f"{value!r} is not an RFC 3339 time", location=location) from error
    if parsed.tzinfo is None:
        if not naive_is_utc:
            raise InvalidExport(f"{value!r} has no UTC offset", location=location)
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def check_bucket(start: datetime, end: datetime, *, location: str) -> None:
    """A bucket must lie within one UTC day: a day's cost is all the report compares."""
    if end <= start:
        raise InvalidExport("the bucket ends before it starts", location=location)
    midnight = datetime.combine(start.date(), datetime.min.time(), UTC) + DAY
    if end > midnight:
        raise InvalidExport(
            f"the bucket {start.isoformat()} .. {end.isoformat()} spans more than one UTC day; "
            "export daily buckets (bucket_width=1d) starting at midnight UTC",
            location=location,
        )


def coverage(buckets: list[tuple[datetime, datetime]]) -> tuple[date | None, date | None]:
    """The UTC days the buckets cover: first day, and the day after the last (exclusive)."""
    if not buckets:
        return None, None
    start = min(b[0] for b in buckets).date()
    last_end = max(b[1] for b in buckets)
    end = last_end.date() if last_end.time() == datetime.min.time() else last_end.date() + DAY
    return start, end


def pages_of(document: Any) -> list[dict[str, Any]]:
    """A paged list response as a list of pages: one page object, or a JSON array of pages."""
    pages = document if isinstance(document, list) else [document]
    for index, page in enumerate(pages):
        where = f"[{index}]" if isinstance(document, list) else ""
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise InvalidExport(
                "expected a page object with a 'data' list (or a JSON array of them)",
                location=where or "$",
            )
    return pages
