"""SQL of reconciliations: statements only, no rules."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, RowMapping, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.reconcile.formats import LineItem
from app.reconcile.tables import reconciliation_line_items, reconciliations


def insert_reconciliation(
    conn: Connection,
    *,
    org: str,
    reconciliation_id: UUID,
    provider: str,
    format: str,
    source_sha256: str,
    period_start: date,
    period_end: date,
    line_item_count: int,
    warnings: list[str],
    imported_at: datetime,
) -> bool:
    """Insert unless this org already imported a file with this sha256; True when inserted.

    A concurrent import of the same file waits on the unique key until the first commits, then
    inserts nothing: the file is counted once whatever the timing.
    """
    statement = (
        pg_insert(reconciliations)
        .values(
            org=org,
            reconciliation_id=reconciliation_id,
            provider=provider,
            format=format,
            source_sha256=source_sha256,
            period_start=period_start,
            period_end=period_end,
            line_item_count=line_item_count,
            warnings=warnings,
            imported_at=imported_at,
        )
        .on_conflict_do_nothing(index_elements=["org", "source_sha256"])
        .returning(reconciliations.c.reconciliation_id)
    )
    return conn.execute(statement).first() is not None


def insert_line_items(
    conn: Connection, *, org: str, reconciliation_id: UUID, items: Sequence[LineItem]
) -> None:
    if not items:
        return
    conn.execute(
        insert(reconciliation_line_items),
        [
            {
                "org": org,
                "reconciliation_id": reconciliation_id,
                "line_no": item.line_no,
                "bucket_start": item.bucket_start,
                "bucket_end": item.bucket_end,
                "day": item.day,
                "amount_text": item.amount_text,
                "amount_unit": item.amount_unit,
                "amount_usd": item.amount_usd,
                "currency": item.currency,
                "line_item": item.line_item,
                "model": item.model,
                "attributes": item.attributes,
            }
            for item in items
        ],
    )


def find_by_sha256(conn: Connection, *, org: str, source_sha256: str) -> RowMapping | None:
    return (
        conn.execute(
            select(reconciliations).where(
                reconciliations.c.org == org, reconciliations.c.source_sha256 == source_sha256
            )
        )
        .mappings()
        .first()
    )


def find(conn: Connection, *, org: str | None, reconciliation_id: UUID) -> RowMapping | None:
    statement = select(reconciliations).where(
        reconciliations.c.reconciliation_id == reconciliation_id
    )
    if org is not None:
        statement = statement.where(reconciliations.c.org == org)
    return conn.execute(statement).mappings().first()


def line_items(conn: Connection, *, org: str, reconciliation_id: UUID) -> Sequence[RowMapping]:
    columns = reconciliation_line_items.c
    return (
        conn.execute(
            select(columns.day, columns.amount_usd, columns.model, columns.line_item)
            .where(columns.org == org, columns.reconciliation_id == reconciliation_id)
            .order_by(columns.line_no)
        )
        .mappings()
        .all()
    )


def ledger_orgs(conn: Connection, *, limit: int) -> list[str]:
    """Up to ``limit`` orgs that have events, by a skip scan of the (org, seq) index."""
    rows: Any = conn.execute(
        text(
            "WITH RECURSIVE orgs AS ("
            " SELECT min(org) AS org FROM ledger_events"
            " UNION ALL"
            " SELECT (SELECT min(e.org) FROM ledger_events e WHERE e.org > orgs.org)"
            " FROM orgs WHERE orgs.org IS NOT NULL"
            ") SELECT org FROM orgs WHERE org IS NOT NULL LIMIT :limit"
        ),
        {"limit": limit},
    )
    return [str(org) for org in rows.scalars()]
