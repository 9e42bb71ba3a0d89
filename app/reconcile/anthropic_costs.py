"""Anthropic's cost report: the Admin API response and the Console's cost CSV export.

- ``GET /v1/organizations/cost_report``
  (https://platform.claude.com/docs/en/api/admin/cost_report): pages ``{"data": [bucket...],
  "has_more", "next_page"}``, each bucket ``{"starting_at", "ending_at", "results": [...]}``
  (RFC 3339, 1-day buckets), each result ``{"amount", "currency", "description", "model",
  "cost_type", "token_type", "service_tier", "context_window", "workspace_id", ...}``.
  ``amount`` is a decimal string in the currency's **lowest unit, cents**: ``"123.45"`` is
  $1.2345. ``model`` is null unless the report was grouped by description
  (``group_by[]=description``) and for non-token costs (web search, code execution).
- The Console's Cost page CSV export (https://support.anthropic.com/en/articles/9534590):
  columns ``usage_date_utc, model, workspace, api_key, usage_type, context_window,
  token_type, cost_usd, list_price_usd, cost_type, ...``, found by name. Here the amount is
  in USD and ``model`` is a display name (``Claude Sonnet 4.5``).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from typing import Any

from app.reconcile.errors import InvalidExport
from app.reconcile.formats import (
    DAY,
    LineItem,
    ProviderExport,
    cents_to_usd,
    check_bucket,
    coverage,
    exact_amount,
    iso_time,
    pages_of,
)
from app.reconcile.matching import from_display_name

JSON_FORMAT = "anthropic-cost-report-json"
CSV_FORMAT = "anthropic-cost-csv"
_JSON_ATTRIBUTES = (
    "cost_type",
    "token_type",
    "service_tier",
    "context_window",
    "workspace_id",
    "inference_geo",
    "speed",
)
_CSV_ATTRIBUTES = (
    "workspace",
    "api_key_id",
    "usage_type",
    "context_window",
    "token_type",
    "cost_type",
    "list_price_usd",
    "inference_geo",
    "speed",
)
_USAGE_ONLY = ("uncached_input_tokens", "output_tokens", "cache_read_input_tokens")


def is_cost_report_json(document: Any) -> bool:
    pages = document if isinstance(document, list) else [document]
    return any(
        isinstance(page, dict)
        and isinstance(page.get("data"), list)
        and any(isinstance(b, dict) and "starting_at" in b for b in page["data"])
        for page in pages
    )


def is_cost_csv(header: list[str]) -> bool:
    return "usage_date_utc" in header and "cost_usd" in header


def is_usage_csv(header: list[str]) -> bool:
    return "usage_date_utc" in header and "cost_usd" not in header


def parse_json(document: Any) -> ProviderExport:
    """Items of a cost report response (one page or an array of pages)."""
    pages = pages_of(document)
    items: list[LineItem] = []
    buckets: list[tuple[datetime, datetime]] = []
    warnings: list[str] = []
    for p, page in enumerate(pages):
        prefix = f"[{p}]." if isinstance(document, list) else ""
        for b, bucket in enumerate(page["data"]):
            where = f"{prefix}data[{b}]"
            if not isinstance(bucket, dict):
                raise InvalidExport("a bucket must be an object", location=where)
            start = iso_time(bucket.get("starting_at"), location=f"{where}.starting_at")
            end = iso_time(bucket.get("ending_at"), location=f"{where}.ending_at")
            check_bucket(start, end, location=where)
            buckets.append((start, end))
            results = bucket.get("results", [])
            if not isinstance(results, list):
                raise InvalidExport("results must be a list", location=f"{where}.results")
            for r, result in enumerate(results):
                at = f"{where}.results[{r}]"
                if not isinstance(result, dict):
                    raise InvalidExport("a result must be an object", location=at)
                if "amount" not in result and any(k in result for k in _USAGE_ONLY):
                    raise InvalidExport(
                        "this is the usage report (token counts, no cost): export "
                        "GET /v1/organizations/cost_report instead",
                        location=at,
                    )
                text, cents = exact_amount(result.get("amount"), location=f"{at}.amount")
                currency = result.get("currency")
                if not isinstance(currency, str) or currency.strip().upper() != "USD":
                    raise InvalidExport(
                        f"currency {currency!r} is not USD; the ledger keeps USD only",
                        location=f"{at}.currency",
                    )
                model = result.get("model")
                description = result.get("description")
                for name, value in (("model", model), ("description", description)):
                    if value is not None and not isinstance(value, str):
                        raise InvalidExport(f"{name} must be a string or null", location=at)
                items.append(
                    LineItem(
                        line_no=len(items) + 1,
                        bucket_start=start,
                        bucket_end=end,
                        amount_text=text,
                        amount_unit="usd_cents",
                        amount_usd=cents_to_usd(cents),
                        currency="USD",
                        line_item=description or None,
                        model=model or None,
                        attributes={
                            k: result[k] for k in _JSON_ATTRIBUTES if result.get(k) is not None
                        },
                    )
                )
    if pages and pages[-1].get("has_more") is True:
        warnings.append("the last page says has_more: later pages are missing from this file")
    if items and all(i.model is None and i.line_item is None for i in items):
        warnings.append(
            "no result names a model: export with group_by[]=description to compare per model"
        )
    start_day, end_day = coverage(buckets)
    return ProviderExport("anthropic", JSON_FORMAT, items, start_day, end_day, warnings)


def _day(text: str, *, location: str) -> date:
    try:
        return date.fromisoformat(text.strip()[:10])
    except ValueError as error:
        raise InvalidExport(f"{text!r} is not a date (YYYY-MM-DD)", location=location) from error


def parse_csv(content: str) -> ProviderExport:
    """Items of the Console's cost CSV: one row per day, model, key and kind of charge."""
    reader = csv.DictReader(io.StringIO(content, newline=""))
    items: list[LineItem] = []
    buckets: list[tuple[datetime, datetime]] = []
    for row in reader:
        where = f"line {reader.line_num}"
        if None in row:
            raise InvalidExport("more fields than the header names", location=where)
        values = {k: (v or "").strip() for k, v in row.items()}
        if not any(values.values()):
            continue
        day = _day(values.get("usage_date_utc", ""), location=f"{where}: usage_date_utc")
        start = datetime.combine(day, datetime.min.time(), UTC)
        buckets.append((start, start + DAY))
        if not values.get("cost_usd"):
            continue
        text, usd = exact_amount(values["cost_usd"], location=f"{where}: cost_usd")
        display = values.get("model") or None
        kind = values.get("token_type") or values.get("cost_type") or values.get("usage_type")
        label = ", ".join(part for part in (display, kind) if part) or None
        attributes = {k: values[k] for k in _CSV_ATTRIBUTES if values.get(k)}
        if display:
            attributes["model_display_name"] = display
        items.append(
            LineItem(
                line_no=len(items) + 1,
                bucket_start=start,
                bucket_end=start + DAY,
                amount_text=text,
                amount_unit="usd",
                amount_usd=usd,
                currency="USD",
                line_item=label,
                model=from_display_name(display) if display else None,
                attributes=attributes,
            )
        )
    start_day, end_day = coverage(buckets)
    return ProviderExport("anthropic", CSV_FORMAT, items, start_day, end_day, [])
