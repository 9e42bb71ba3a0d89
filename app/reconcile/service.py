"""Reconciliation with the provider's bill: import a cost export, compare it with the ledger.

An import is stored once per org and file (sha256) with every line item exact; the report is
computed when asked, from those items and the ledger's spend at that moment, per UTC day and
model key (app/reconcile/matching.py). See docs/reconciliation.md.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, RowMapping

from app.errors import InvalidInput
from app.money import PICO_PER_USD, format_usd
from app.reconcile import ledger, matching, queries
from app.reconcile.errors import ReconciliationConflict, ReconciliationNotFound
from app.reconcile.formats import ProviderExport
from app.reconcile.parsers import parse_export

DAY = timedelta(days=1)
LONGEST_PERIOD_DAYS = 400
NOT_ITEMISED = "(not itemised)"


@dataclass(frozen=True)
class Reconciliation:
    reconciliation_id: UUID
    org: str
    provider: str
    format: str
    source_sha256: str
    period_start: date
    period_end: date  # exclusive
    line_item_count: int
    warnings: list[str]
    imported_at: datetime

    @staticmethod
    def of(row: RowMapping) -> Reconciliation:
        return Reconciliation(**{name: row[name] for name in Reconciliation.__dataclass_fields__})


@dataclass(frozen=True)
class ProviderItem:
    """A stored line item, as the comparison needs it."""

    day: date
    amount_usd: Decimal
    model: str | None
    line_item: str | None


@dataclass(frozen=True)
class ReportRow:
    """One UTC day and model (or, for a provider charge naming no model, one line item)."""

    day: date
    model: str | None
    line_item: str | None
    ledger_pico_usd: int
    provider_pico_usd: int
    provider_exact: bool
    ledger_models: tuple[str, ...]
    provider_models: tuple[str, ...]
    provider_line_items: int
    in_ledger: bool

    @property
    def difference_pico_usd(self) -> int:
        """Provider minus ledger: positive when the bill is higher than the ledger's record."""
        return self.provider_pico_usd - self.ledger_pico_usd

    @property
    def status(self) -> str:
        if self.provider_line_items == 0:
            return "ledger_only"
        return "matched" if self.in_ledger else "provider_only"


@dataclass(frozen=True)
class Report:
    reconciliation: Reconciliation
    rows: list[ReportRow]
    ledger_as_of: datetime
    excluded_line_items: int = 0
    excluded_provider_pico_usd: int = 0
    totals: dict[str, int] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return all(row.provider_exact for row in self.rows)


def _to_pico(amount: Fraction) -> tuple[int, bool]:
    """Exact USD as pico-USD, and whether that was exact. Provider figures finer than 1e-12
    USD (OpenAI's binary noise such as 0.030000000000000002) are rounded half to even, once
    per row, and the row says so; the stored line items keep every digit."""
    scaled = amount * PICO_PER_USD
    return round(scaled), scaled.denominator == 1


@dataclass
class _Billed:
    usd: Fraction = Fraction(0)
    models: set[str] = field(default_factory=set)
    line_items: int = 0


@dataclass
class _Recorded:
    pico_usd: int = 0
    models: set[str] = field(default_factory=set)


_Key = tuple[date, str | None, str | None]


def compare(
    items: Iterable[ProviderItem],
    ledger_costs: Mapping[tuple[date, str | None], int],
    *,
    start: date,
    end: date,
) -> tuple[list[ReportRow], int, int]:
    """Rows of the report, largest absolute difference first, and the provider items outside
    [start, end) (count, pico-USD). Every ledger and provider amount lands in exactly one row."""
    billed: dict[_Key, _Billed] = {}
    excluded_count = 0
    excluded_usd = Fraction(0)
    for item in items:
        if not start <= item.day < end:
            excluded_count += 1
            excluded_usd += Fraction(item.amount_usd)
            continue
        key_model = matching.model_key(item.model)
        # A charge naming no model stays a row of its own per line item, never dropped.
        label = None if key_model else (item.line_item or NOT_ITEMISED)
        entry = billed.setdefault((item.day, key_model, label), _Billed())
        entry.usd += Fraction(item.amount_usd)
        entry.line_items += 1
        if item.model:
            entry.models.add(item.model)
    recorded: dict[_Key, _Recorded] = {}
    for (day, name), cost in ledger_costs.items():
        ledger_entry = recorded.setdefault((day, matching.model_key(name), None), _Recorded())
        ledger_entry.pico_usd += cost
        if name:
            ledger_entry.models.add(name)
    rows = []
    for key in billed.keys() | recorded.keys():
        bill = billed.get(key, _Billed())
        record = recorded.get(key, _Recorded())
        provider_pico, exact = _to_pico(bill.usd)
        rows.append(
            ReportRow(
                day=key[0],
                model=key[1],
                line_item=key[2],
                ledger_pico_usd=record.pico_usd,
                provider_pico_usd=provider_pico,
                provider_exact=exact,
                ledger_models=tuple(sorted(record.models)),
                provider_models=tuple(sorted(bill.models)),
                provider_line_items=bill.line_items,
                in_ledger=key in recorded,
            )
        )
    rows.sort(key=lambda r: (-abs(r.difference_pico_usd), r.day, r.model or "~", r.line_item or ""))
    return rows, excluded_count, _to_pico(excluded_usd)[0]


def _period(
    exported: ProviderExport, period_from: date | None, period_to: date | None
) -> tuple[date, date]:
    start = period_from or exported.start
    end = period_to + DAY if period_to is not None else exported.end
    if start is None or end is None:
        raise InvalidInput(
            "the file has no time buckets, so it names no period: give from and to",
            field="from" if start is None else "to",
        )
    if start >= end:
        raise InvalidInput("to must not be before from", field="to")
    if (end - start).days > LONGEST_PERIOD_DAYS:
        raise InvalidInput(
            f"a reconciliation covers at most {LONGEST_PERIOD_DAYS} days", field="to"
        )
    return start, end


def import_export(
    conn: Connection,
    *,
    org: str,
    provider: str,
    content: str,
    period_from: date | None = None,
    period_to: date | None = None,
    now: datetime | None = None,
) -> tuple[Reconciliation, bool]:
    """Store a provider's cost export for ``org``; returns it and whether it is new.

    The same file for the same org is the same reconciliation (nothing is counted twice); the
    same file named as another provider or for another explicit period is a conflict.
    """
    exported = parse_export(provider, content)
    start, end = _period(exported, period_from, period_to)
    sha256 = hashlib.sha256(content.encode("utf-8")).hexdigest()
    reconciliation_id = uuid.uuid4()
    created = queries.insert_reconciliation(
        conn,
        org=org,
        reconciliation_id=reconciliation_id,
        provider=provider,
        format=exported.format,
        source_sha256=sha256,
        period_start=start,
        period_end=end,
        line_item_count=len(exported.items),
        warnings=exported.warnings,
        imported_at=now or datetime.now(UTC),
    )
    if created:
        queries.insert_line_items(
            conn, org=org, reconciliation_id=reconciliation_id, items=exported.items
        )
    row = queries.find_by_sha256(conn, org=org, source_sha256=sha256)
    assert row is not None
    stored = Reconciliation.of(row)
    if not created:
        if stored.provider != provider:
            raise ReconciliationConflict(
                f"this file was imported as reconciliation {stored.reconciliation_id} "
                f"of provider {stored.provider}",
                reconciliation_id=stored.reconciliation_id,
                field="provider",
            )
        explicit = period_from is not None or period_to is not None
        if explicit and (stored.period_start, stored.period_end) != (start, end):
            raise ReconciliationConflict(
                f"this file was imported as reconciliation {stored.reconciliation_id} for "
                f"{stored.period_start} to {stored.period_end - DAY}",
                reconciliation_id=stored.reconciliation_id,
                field="from",
            )
    return stored, created


def get_reconciliation(
    conn: Connection, *, org: str | None, reconciliation_id: UUID
) -> Reconciliation:
    """One import; a confined caller (``org`` given) finds only its own org's."""
    row = queries.find(conn, org=org, reconciliation_id=reconciliation_id)
    if row is None:
        raise ReconciliationNotFound(reconciliation_id)
    return Reconciliation.of(row)


def report_of(
    conn: Connection, reconciliation: Reconciliation, *, now: datetime | None = None
) -> Report:
    """Compare the import with the ledger as it is now."""
    items = [
        ProviderItem(
            day=r["day"], amount_usd=r["amount_usd"], model=r["model"], line_item=r["line_item"]
        )
        for r in queries.line_items(
            conn, org=reconciliation.org, reconciliation_id=reconciliation.reconciliation_id
        )
    ]
    ledger_costs = ledger.ledger_cost_by_day_and_model(
        conn,
        org=reconciliation.org,
        provider=reconciliation.provider,
        start=reconciliation.period_start,
        end=reconciliation.period_end,
    )
    rows, excluded, excluded_pico = compare(
        items, ledger_costs, start=reconciliation.period_start, end=reconciliation.period_end
    )
    ledger_total = sum(r.ledger_pico_usd for r in rows)
    provider_total = sum(r.provider_pico_usd for r in rows)
    return Report(
        reconciliation=reconciliation,
        rows=rows,
        ledger_as_of=now or datetime.now(UTC),
        excluded_line_items=excluded,
        excluded_provider_pico_usd=excluded_pico,
        totals={
            "ledger_pico_usd": ledger_total,
            "provider_pico_usd": provider_total,
            "difference_pico_usd": provider_total - ledger_total,
        },
    )


def report(conn: Connection, *, org: str | None, reconciliation_id: UUID) -> Report:
    """The report of a stored reconciliation."""
    return report_of(conn, get_reconciliation(conn, org=org, reconciliation_id=reconciliation_id))


def row_to_json(row: ReportRow) -> dict[str, Any]:
    return {
        "day": row.day.isoformat(),
        "model": row.model,
        "line_item": row.line_item,
        "status": row.status,
        "ledger_usd": format_usd(row.ledger_pico_usd),
        "provider_usd": format_usd(row.provider_pico_usd),
        "difference_usd": format_usd(row.difference_pico_usd),
        "provider_exact": row.provider_exact,
        "ledger_models": list(row.ledger_models),
        "provider_models": list(row.provider_models),
        "provider_line_items": row.provider_line_items,
    }


def report_to_json(report: Report) -> dict[str, Any]:
    """The document the API returns and ``reconcile --format json`` prints."""
    r = report.reconciliation
    return {
        "reconciliation_id": str(r.reconciliation_id),
        "org": r.org,
        "provider": r.provider,
        "format": r.format,
        "source_sha256": r.source_sha256,
        "imported_at": r.imported_at.isoformat(),
        "period": {"from": r.period_start.isoformat(), "to": (r.period_end - DAY).isoformat()},
        "line_items": r.line_item_count,
        "warnings": list(r.warnings),
        "ledger_as_of": report.ledger_as_of.isoformat(),
        "exact": report.exact,
        "totals": {
            "ledger_usd": format_usd(report.totals["ledger_pico_usd"]),
            "provider_usd": format_usd(report.totals["provider_pico_usd"]),
            "difference_usd": format_usd(report.totals["difference_pico_usd"]),
        },
        "excluded": {
            "line_items": report.excluded_line_items,
            "provider_usd": format_usd(report.excluded_provider_pico_usd),
        },
        "rows": [row_to_json(row) for row in report.rows],
    }


def only_org(conn: Connection) -> str | None:
    """The org of a ledger holding events of exactly one org, else None."""
    orgs = queries.ledger_orgs(conn, limit=2)
    return orgs[0] if len(orgs) == 1 else None
