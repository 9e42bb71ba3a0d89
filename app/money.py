"""Exact money: integer pico-USD (1e-12 USD) everywhere inside the ledger.

The unit is chosen so that every token rate in LiteLLM's price map is an integer (see
docs/pricing.md); amounts cross the API as decimal strings of USD. No binary floating point, ever.
"""

from __future__ import annotations

import re
from decimal import Decimal

PICO_PER_USD = 10**12
_USD_PATTERN = re.compile(r"^(?P<sign>-?)(?P<whole>[0-9]{1,15})(?:\.(?P<frac>[0-9]{1,12}))?$")


class InvalidAmount(ValueError):
    """A money string that is not a plain decimal of USD with at most 12 decimals."""


def parse_usd(text: str, *, allow_negative: bool = False) -> int:
    """Parse a decimal USD string (``"12.50"``) into pico-USD, refusing anything inexact.

    Exponents, NaN, Infinity, thousands separators and more than 12 decimals are refused: a
    value the ledger would have to round is an error, not a guess.
    """
    if not isinstance(text, str):
        raise InvalidAmount('must be a decimal string of USD, e.g. "12.50"')
    # fullmatch: with match, "$" would also accept a trailing newline ("1\n").
    match = _USD_PATTERN.fullmatch(text)
    if match is None:
        raise InvalidAmount(
            'must be a plain decimal string of USD with at most 12 decimals, e.g. "12.50"'
        )
    whole = int(match["whole"])
    frac = (match["frac"] or "").ljust(12, "0")
    amount = whole * PICO_PER_USD + int(frac)
    if match["sign"] and not allow_negative:
        raise InvalidAmount("must not be negative")  # "-0" included: no sign where none may be
    if match["sign"]:
        amount = -amount
    return amount


def format_usd(pico_usd: int) -> str:
    """Format pico-USD as the shortest exact decimal string of USD (10**12 -> ``"1"``)."""
    sign = "-" if pico_usd < 0 else ""
    whole, frac = divmod(abs(pico_usd), PICO_PER_USD)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{str(frac).rjust(12, '0').rstrip('0')}"


def usd_decimal(pico_usd: int) -> Decimal:
    """The exact Decimal value of an amount in pico-USD."""
    return Decimal(pico_usd).scaleb(-12)


def checked_pico(value: object) -> int:
    """``value`` if it is int pico-USD, the only type money has here; any other type, bool
    included, is refused (TypeError), before it can reach the database."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"money must be int pico-USD, got {type(value).__name__}")
    return value


def pico_text(pico_usd: int) -> str:
    """An amount as its exact decimal string for SQL (``CAST(... AS numeric)``)."""
    return str(checked_pico(pico_usd))
