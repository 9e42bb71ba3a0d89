"""Money is exact: parsing and formatting, and no float anywhere in a money path."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app.money import InvalidAmount, format_usd, parse_usd

APP = Path(__file__).resolve().parents[1] / "app"
# Timing values (milliseconds, seconds) and similarity cut-offs may be floats; money never.
TIMING_WORDS = (
    "ttft",
    "duration",
    "latency",
    "_ms",
    "seconds",
    "interval",
    "timeout",
    "sleep",
    "cutoff",
    "backoff",
    "retry_after",
)


@pytest.mark.parametrize(
    ("text", "pico"),
    [
        ("0", 0),
        ("1", 10**12),
        ("0.01", 10**10),
        ("12.50", 12_500_000_000_000),
        ("0.000000000001", 1),
        ("999999999999999.999999999999", 10**27 - 1),
    ],
)
def test_parse_and_format_round_trip(text: str, pico: int) -> None:
    assert parse_usd(text) == pico
    assert parse_usd(format_usd(pico)) == pico


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e3",
        "1E-2",
        "0.0000000000001",
        "1,000",
        "",
        " ",
        "0x10",
        "--1",
        "+-1",
        "1.",
        ".5",
        "١٢",
    ],
)
def test_inexact_or_odd_money_strings_are_refused(text: str) -> None:
    with pytest.raises(InvalidAmount):
        parse_usd(text)


def test_negative_needs_permission() -> None:
    with pytest.raises(InvalidAmount):
        parse_usd("-1")
    assert parse_usd("-1.5", allow_negative=True) == -1_500_000_000_000


def test_a_float_is_refused() -> None:
    with pytest.raises(InvalidAmount):
        parse_usd(0.1)  # type: ignore[arg-type]


def _float_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    lines = path.read_text().splitlines()
    for node in ast.walk(tree):
        is_float_name = isinstance(node, ast.Name) and node.id == "float"
        is_float_literal = isinstance(node, ast.Constant) and isinstance(node.value, float)
        if is_float_name or is_float_literal:
            line = lines[node.lineno - 1]  # type: ignore[attr-defined]
            if "# money-safe" in line or any(word in line.lower() for word in TIMING_WORDS):
                continue
            found.append(f"{path.relative_to(APP.parent)}:{node.lineno}: {line.strip()}")  # type: ignore[attr-defined]
    return found


def test_no_float_in_the_application() -> None:
    """A float in app/ outside timing code fails the build (mark deliberate ones money-safe)."""
    offenders = [hit for path in sorted(APP.rglob("*.py")) for hit in _float_uses(path)]
    assert not offenders, "\n".join(offenders)
