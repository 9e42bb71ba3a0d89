"""Request and response models of the reconciliation routes."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, Field

from app.api.schemas import Identifier, Strict

# A month of a busy org's line items is a few megabytes; this bounds one request's memory.
MAX_CONTENT_CHARS = 50_000_000


class ReconciliationIn(Strict):
    org: Identifier | None = Field(None, description="Implied by a tenant-confined key")
    provider: Literal["openai", "anthropic"]
    content: str = Field(
        min_length=1,
        max_length=MAX_CONTENT_CHARS,
        description="The export file's text, as downloaded: a Costs API / cost report JSON "
        "response (one page or an array of pages) or the dashboard's CSV export",
    )
    period_from: date | None = Field(
        None, alias="from", description="First UTC day compared (default: the file's first)"
    )
    period_to: date | None = Field(
        None,
        alias="to",
        lt=date.max,  # the comparison runs to the day after
        description="Last UTC day compared, inclusive (default: the file's)",
    )


class PeriodOut(BaseModel):
    from_: str = Field(alias="from")
    to: str


class TotalsOut(BaseModel):
    ledger_usd: str
    provider_usd: str
    difference_usd: str


class ExcludedOut(BaseModel):
    line_items: int
    provider_usd: str


class RowOut(BaseModel):
    day: str
    model: str | None
    line_item: str | None
    status: Literal["matched", "ledger_only", "provider_only"]
    ledger_usd: str
    provider_usd: str
    difference_usd: str = Field(description="provider minus ledger")
    provider_exact: bool
    ledger_models: list[str]
    provider_models: list[str]
    provider_line_items: int


class ReconciliationOut(BaseModel):
    reconciliation_id: str
    org: str
    provider: str
    format: str
    source_sha256: str
    imported_at: str
    period: PeriodOut
    line_items: int
    warnings: list[str]
    ledger_as_of: str
    exact: bool
    totals: TotalsOut
    excluded: ExcludedOut
    rows: list[RowOut]
