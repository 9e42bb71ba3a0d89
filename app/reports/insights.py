"""Recommendations from the spend data: cache use, where the money goes, cheaper siblings.

Every figure is exact: shares and rates are decimal fractions of exact integer sums, and the
what-if costs are token counts times the price table's exact rates, shown line by line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import Connection

from app.money import format_usd
from app.pricing.errors import UnknownModel
from app.pricing.resolve import resolve
from app.pricing.table import PriceEntry, PriceTable, Rate, format_rate_usd
from app.reports.service import SpendQuery, SpendRow, spend

ASSUMPTION = (
    "Priced at each model's base per-token rates (no long-context tiers, batch or off-peak"
    " discounts), as if every request of the window had gone to the other model. Whether it"
    " would answer as well is for you to judge; the arithmetic is below."
)
_LOW_CACHE = Decimal("0.10")
_MIN_PROMPT_TOKENS = 100_000
_PLACES = Decimal("0.0001")


def _ratio(part: int, whole: int) -> Decimal | None:
    if whole <= 0:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(_PLACES, rounding=ROUND_HALF_EVEN)


def _percent(part: int, whole: int) -> str | None:
    ratio = _ratio(part * 100, whole)
    return None if ratio is None else str(ratio.quantize(Decimal("0.01")))


_SPECIAL = re.compile(
    r"audio|search|realtime|preview|tts|transcribe|image|computer-use|codex|latest|"
    r"-\d{4}-\d{2}-\d{2}$|-\d{4}$|-\d{8}$"
)


def family_of(key: str) -> str:
    """The leading name segment of a model id: gpt, claude, gemini, llama, mistral, ..."""
    name = key.rsplit("/", 1)[-1].lower()
    return name.split("-", 1)[0].split(".", 1)[0]


@dataclass(frozen=True)
class _Tokens:
    fresh_input: int
    cache_read: int
    cache_write: int
    output: int


def _tokens(row: SpendRow) -> _Tokens:
    sums = row.sums
    cache_read = sums["cache_read_tokens"]
    cache_write = sums["cache_write_tokens"]
    # Prompt tokens include cached and cache-writing ones (docs/pricing.md); completion tokens
    # include reasoning ones, billed at the output rate by the base rates.
    fresh = max(sums["prompt_tokens"] - cache_read - cache_write, 0)
    return _Tokens(fresh, cache_read, cache_write, sums["completion_tokens"])


def _base_rates(entry: PriceEntry) -> dict[str, Rate] | None:
    rates = entry.rates
    if "input_cost_per_token" not in rates or "output_cost_per_token" not in rates:
        return None
    input_rate = rates["input_cost_per_token"]
    return {
        "input": input_rate,
        "cache_read": rates.get("cache_read_input_token_cost", input_rate),
        "cache_write": rates.get("cache_creation_input_token_cost", input_rate),
        "output": rates["output_cost_per_token"],
    }


def _what_if(tokens: _Tokens, rates: dict[str, Rate]) -> tuple[int, list[str]]:
    """Pico-USD (rounded up once, at the end) and the lines that add up to it."""
    lines = []
    total = Fraction(0)
    for name, units in (
        ("input", tokens.fresh_input),
        ("cache_read", tokens.cache_read),
        ("cache_write", tokens.cache_write),
        ("output", tokens.output),
    ):
        if not units:
            continue
        amount = Fraction(rates[name]) * units
        total += amount
        lines.append(
            f"{units:,} {name.replace('_', ' ')} tokens x ${format_rate_usd(rates[name])}"
            f" = ${format_rate_usd(amount)}"
        )
    pico = math.ceil(total)
    lines.append(f"total ${format_usd(pico)}")
    return pico, lines


def _entry(table: PriceTable, model: str, provider: str | None) -> PriceEntry | None:
    try:
        return resolve(table, model=model, provider=provider or None).entry
    except UnknownModel:
        return None


def _siblings(table: PriceTable, entry: PriceEntry) -> list[PriceEntry]:
    """Chat models of the same provider and family whose base rates are no higher on either
    side and lower on one."""
    mine = _base_rates(entry)
    if mine is None:
        return []
    family = family_of(entry.key)
    found = []
    for key in table:
        other = table.get(key)
        if other is None or other.key == entry.key or other.provider != entry.provider:
            continue
        if other.mode != entry.mode or family_of(other.key) != family:
            continue
        if _SPECIAL.search(other.key.rsplit("/", 1)[-1]):
            continue  # dated snapshots and special-purpose variants repeat a general model
        theirs = _base_rates(other)
        if theirs is None or (theirs["input"] == 0 and theirs["output"] == 0):
            continue  # a zero-priced entry is a gap in the table, not a bargain
        no_higher = theirs["input"] <= mine["input"] and theirs["output"] <= mine["output"]
        if no_higher and (theirs["input"], theirs["output"]) != (mine["input"], mine["output"]):
            found.append(other)
    return found


def insights(
    conn: Connection, table: PriceTable, *, org: str | None, start: datetime, end: datetime
) -> dict[str, Any]:
    report = spend(
        conn,
        SpendQuery(
            org=org, start=start, end=end, granularity="all", group_by=("model", "provider")
        ),
    )
    rows = sorted(report.rows, key=lambda r: -r.cost_pico_usd)
    total = report.totals["cost_pico_usd"]
    recommendations: list[str] = []

    cache = []
    for row in rows:
        prompt = row.sums["prompt_tokens"]
        if not prompt:
            continue
        rate = _ratio(row.sums["cache_read_tokens"], prompt)
        cache.append(
            {
                "model": row.groups["model"],
                "provider": row.groups["provider"],
                "prompt_tokens": prompt,
                "cache_read_tokens": row.sums["cache_read_tokens"],
                "cache_write_tokens": row.sums["cache_write_tokens"],
                "hit_rate": str(rate),
            }
        )
        if rate is not None and rate < _LOW_CACHE and prompt >= _MIN_PROMPT_TOKENS:
            recommendations.append(
                f"{row.groups['model']}: only {_percent(row.sums['cache_read_tokens'], prompt)}%"
                f" of {prompt:,} prompt tokens were cache reads; a stable prompt prefix"
                " (system prompt, tools) would let the provider's prompt cache bill them lower."
            )

    share = []
    cumulative = 0
    for row in rows[:10]:
        cumulative += row.cost_pico_usd
        share.append(
            {
                "model": row.groups["model"],
                "provider": row.groups["provider"],
                "cost_usd": format_usd(row.cost_pico_usd),
                "requests": row.requests,
                "share_percent": _percent(row.cost_pico_usd, total),
                "cumulative_percent": _percent(cumulative, total),
            }
        )
    if len(rows) > 1 and total:
        top = rows[: min(3, len(rows))]
        recommendations.append(
            f"{len(top)} models make {_percent(sum(r.cost_pico_usd for r in top), total)}%"
            f" of spend: {', '.join(str(r.groups['model']) for r in top)}."
        )

    cheaper = []
    for row in rows:
        model = row.groups["model"]
        if not model or not row.cost_pico_usd:
            continue
        entry = _entry(table, model, row.groups["provider"])
        mine = None if entry is None else _base_rates(entry)
        if entry is None or mine is None:
            continue
        tokens = _tokens(row)
        list_cost, list_lines = _what_if(tokens, mine)
        options = []
        for sibling in _siblings(table, entry):
            rates = _base_rates(sibling)
            assert rates is not None
            cost, lines = _what_if(tokens, rates)
            options.append((cost, sibling.key, lines))
        if not options:
            continue
        # The dearest of the cheaper siblings is the closest in capability, a smaller variant
        # of the same line (gpt-4o -> gpt-4o-mini) the most natural swap, and the cheapest
        # shows how far the savings go.
        options.sort()
        line = [o for o in options if o[1].startswith(entry.key + "-")]
        picks = []
        for option in [options[-1], *line[-1:], options[0]]:
            if option not in picks:
                picks.append(option)
        best: tuple[int, str] | None = None
        for cost, key, lines in picks:
            saving = list_cost - cost
            if saving <= 0:
                continue
            if best is None or saving > best[0]:
                best = (saving, key)
            cheaper.append(
                {
                    "model": model,
                    "model_key": entry.key,
                    "provider": row.groups["provider"],
                    "requests": row.requests,
                    "messages": row.messages,
                    "ledger_cost_usd": format_usd(row.cost_pico_usd),
                    "candidate": key,
                    "list_cost_usd": format_usd(list_cost),
                    "candidate_cost_usd": format_usd(cost),
                    "saving_usd": format_usd(saving),
                    "saving_percent": _percent(saving, list_cost),
                    "arithmetic": {
                        entry.key: list_lines,
                        key: lines,
                        "saving": [
                            f"${format_usd(list_cost)} - ${format_usd(cost)}"
                            f" = ${format_usd(saving)}"
                        ],
                    },
                }
            )
        if best is not None:
            recommendations.append(
                f"{row.requests:,} requests to {model} would have cost ${format_usd(best[0])}"
                f" less on {best[1]} ({_percent(best[0], list_cost)}% of"
                f" ${format_usd(list_cost)} at list prices)."
            )

    return {
        "org": org,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "total_cost_usd": format_usd(total),
        "cache": cache,
        "spend_share": share,
        "cheaper_models": cheaper,
        "assumption": ASSUMPTION,
        "recommendations": recommendations,
    }
