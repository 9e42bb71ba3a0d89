"""OpenAI's organization costs: the Costs API response and the usage dashboard's CSV export.

- ``GET /v1/organization/costs`` (https://platform.openai.com/docs/api-reference/usage/costs):
  pages ``{"object": "page", "data": [bucket...], "has_more", "next_page"}``, each bucket
  ``{"object": "bucket", "start_time", "end_time", "results": [...]}`` (Unix seconds, 1-day
  buckets), each result ``{"object": "organization.costs.result", "amount": {"value",
  "currency"}, "line_item", "project_id", ...}``. ``amount.value`` is a JSON number in USD.
- The dashboard's Cost export (https://help.openai.com/en/articles/8554956) is the same
  result flattened into CSV columns: ``start_time, end_time, start_time_iso, end_time_iso,
  amount_value, amount_currency, line_item, project_id, ...``; columns are found by name.

Line items name the billed snapshot and the kind of charge: ``gpt-4o-2024-08-06, input``,
``gpt-4o-mini-2024-07-18, cached input``, ``priority | gpt-5, output``. The model is the first
word before the first comma; items without a comma (``web search tool calls``) have no model.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from app.reconcile.errors import InvalidExport
from app.reconcile.formats import (
    DAY,
    LineItem,
    ProviderExport,
    check_bucket,
    coverage,
    exact_amount,
    iso_time,
    pages_of,
    unix_time,
)

JSON_FORMAT = "openai-costs-json"
CSV_FORMAT = "openai-costs-csv"
_RESULT = "organization.costs.result"
_TIER = re.compile(r"^\s*([a-z][a-z_]*)\s*\|\s*(.*)$", re.DOTALL)
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]*$")
_ATTRIBUTES = ("project_id", "api_key_id", "user_id", "quantity", "quantity_unit", "api_source")


def model_of(line_item: str | None) -> tuple[str | None, str | None]:
    """The model a line item bills (or None) and its service tier prefix (or None)."""
    if not line_item:
        return None, None
    tier = None
    text = line_item
    prefixed = _TIER.match(text)
    if prefixed:
        tier, text = prefixed.group(1), prefixed.group(2)
    head, comma, _ = text.partition(",")
    words = head.split()
    if not comma or not words or not _MODEL.match(words[0]):
        return None, tier
    return words[0], tier


def is_costs_json(document: Any) -> bool:
    buckets = _first_buckets(document)
    return any(isinstance(b, dict) and "start_time" in b for b in buckets)


def is_costs_csv(header: list[str]) -> bool:
    return "amount_value" in header and ("start_time" in header or "start_time_iso" in header)


def _first_buckets(document: Any) -> list[Any]:
    pages = document if isinstance(document, list) else [document]
    for page in pages:
        if isinstance(page, dict) and isinstance(page.get("data"), list) and page["data"]:
            data: list[Any] = page["data"]
            return data
    return []


def _item(
    *,
    line_no: int,
    start: Any,
    end: Any,
    value: Any,
    currency: Any,
    line_item: Any,
    attributes: dict[str, Any],
    at: dict[str, str],
) -> LineItem:
    text, amount = exact_amount(value, location=at["value"])
    if not isinstance(currency, str) or currency.strip().lower() != "usd":
        raise InvalidExport(
            f"currency {currency!r} is not USD; the ledger keeps USD only", location=at["currency"]
        )
    if line_item is not None and not isinstance(line_item, str):
        raise InvalidExport("line_item must be a string or null", location=at["line_item"])
    model, tier = model_of(line_item)
    if tier:
        attributes = {**attributes, "service_tier": tier}
    return LineItem(
        line_no=line_no,
        bucket_start=start,
        bucket_end=end,
        amount_text=text,
        amount_unit="usd",
        amount_usd=amount,
        currency="usd",
        line_item=line_item or None,
        model=model,
        attributes=attributes,
    )


def parse_json(document: Any) -> ProviderExport:
    """Items of a Costs API response (one page or an array of pages)."""
    pages = pages_of(document)
    items: list[LineItem] = []
    buckets: list[tuple[Any, Any]] = []
    warnings: list[str] = []
    for p, page in enumerate(pages):
        prefix = f"[{p}]." if isinstance(document, list) else ""
        for b, bucket in enumerate(page["data"]):
            where = f"{prefix}data[{b}]"
            if not isinstance(bucket, dict):
                raise InvalidExport("a bucket must be an object", location=where)
            start = unix_time(bucket.get("start_time"), location=f"{where}.start_time")
            end = unix_time(bucket.get("end_time"), location=f"{where}.end_time")
            check_bucket(start, end, location=where)
            buckets.append((start, end))
            # The reference names the list "results"; one published example says "result".
            results = bucket.get("results", bucket.get("result", []))
            if not isinstance(results, list):
                raise InvalidExport("results must be a list", location=f"{where}.results")
            for r, result in enumerate(results):
                at = f"{where}.results[{r}]"
                if not isinstance(result, dict):
                    raise InvalidExport("a result must be an object", location=at)
                kind = result.get("object", _RESULT)
                if kind != _RESULT:
                    raise InvalidExport(
                        f"{kind!r} is not a cost: export GET /v1/organization/costs "
                        "(a usage report has token counts, not the bill)",
                        location=f"{at}.object",
                    )
                amount = result.get("amount")
                if not isinstance(amount, dict):
                    raise InvalidExport("amount must be {value, currency}", location=at)
                items.append(
                    _item(
                        line_no=len(items) + 1,
                        start=start,
                        end=end,
                        value=amount.get("value"),
                        currency=amount.get("currency"),
                        line_item=result.get("line_item"),
                        attributes={k: result[k] for k in _ATTRIBUTES if result.get(k) is not None},
                        at={
                            "value": f"{at}.amount.value",
                            "currency": f"{at}.amount.currency",
                            "line_item": f"{at}.line_item",
                        },
                    )
                )
    if pages and pages[-1].get("has_more") is True:
        warnings.append("the last page says has_more: later pages are missing from this file")
    start_day, end_day = coverage(buckets)
    return ProviderExport("openai", JSON_FORMAT, items, start_day, end_day, warnings)


def parse_csv(content: str) -> ProviderExport:
    """Items of the dashboard's cost CSV: one row per bucket and line item."""
    reader = csv.DictReader(io.StringIO(content, newline=""))
    items: list[LineItem] = []
    buckets: list[tuple[Any, Any]] = []
    for row in reader:
        where = f"line {reader.line_num}"
        if None in row:
            raise InvalidExport("more fields than the header names", location=where)
        values = {k: (v or "").strip() for k, v in row.items()}
        if not any(values.values()):
            continue
        if values.get("start_time"):
            start = unix_time(values["start_time"], location=f"{where}: start_time")
        else:
            start = iso_time(
                values.get("start_time_iso"),
                location=f"{where}: start_time_iso",
                naive_is_utc=True,  # "All timestamps are based on UTC" (the help article)
            )
        if values.get("end_time"):
            end = unix_time(values["end_time"], location=f"{where}: end_time")
        elif values.get("end_time_iso"):
            end = iso_time(
                values["end_time_iso"], location=f"{where}: end_time_iso", naive_is_utc=True
            )
        else:
            end = start + DAY
        check_bucket(start, end, location=where)
        buckets.append((start, end))
        if not values.get("amount_value"):
            continue  # an empty bucket: the day is covered and nothing was billed
        items.append(
            _item(
                line_no=len(items) + 1,
                start=start,
                end=end,
                value=values["amount_value"],
                currency=values.get("amount_currency") or "usd",
                line_item=values.get("line_item") or None,
                attributes={k: values[k] for k in _ATTRIBUTES if values.get(k)},
                at={
                    "value": f"{where}: amount_value",
                    "currency": f"{where}: amount_currency",
                    "line_item": f"{where}: line_item",
                },
            )
        )
    start_day, end_day = coverage(buckets)
    return ProviderExport("openai", CSV_FORMAT, items, start_day, end_day, [])
