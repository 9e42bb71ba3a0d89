"""Factories for pricing tests: small price tables and quotes over the public service API."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from app.pricing import service
from app.pricing.table import PriceTable

BILLING_TIME = "2026-11-18T08:00:00+00:00"  # a Wednesday, peak hours everywhere


def make_table(entries: Mapping[str, Mapping[str, Any]], *, label: str = "test") -> PriceTable:
    """A table from LiteLLM-format entries; rates may be given as numeric strings."""
    return PriceTable.from_json(json.dumps(entries).encode(), label=label)


def price(
    table: PriceTable,
    model: str,
    provider: str | None = None,
    billing_time: str | None = BILLING_TIME,
    **usage: Any,
) -> dict[str, Any]:
    """The quote document for a canonical usage record."""
    result = service.quote(
        table, model=model, provider=provider, usage=usage, billing_time=billing_time
    )
    return service.quote_to_json(result)
