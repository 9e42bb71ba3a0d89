"""Reconciliation tables (DDL in migrations/versions/0008_reconciliations.py)."""

from sqlalchemy import Column, Date, DateTime, Integer, Numeric, Table, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB

from app.db.metadata import metadata

reconciliations = Table(
    "reconciliations",
    metadata,
    Column("org", Text, primary_key=True),
    Column("reconciliation_id", Uuid, primary_key=True),
    Column("provider", Text, nullable=False),
    Column("format", Text, nullable=False),
    Column("source_sha256", Text, nullable=False),
    Column("period_start", Date, nullable=False),
    Column("period_end", Date, nullable=False),
    Column("line_item_count", Integer, nullable=False),
    Column("warnings", JSONB, nullable=False),
    Column("imported_at", DateTime(timezone=True), nullable=False),
)

reconciliation_line_items = Table(
    "reconciliation_line_items",
    metadata,
    Column("org", Text, primary_key=True),
    Column("reconciliation_id", Uuid, primary_key=True),
    Column("line_no", Integer, primary_key=True),
    Column("bucket_start", DateTime(timezone=True), nullable=False),
    Column("bucket_end", DateTime(timezone=True), nullable=False),
    Column("day", Date, nullable=False),
    Column("amount_text", Text, nullable=False),
    Column("amount_unit", Text, nullable=False),
    # Unconstrained numeric: the provider's figure with every digit it has.
    Column("amount_usd", Numeric(asdecimal=True), nullable=False),
    Column("currency", Text, nullable=False),
    Column("line_item", Text),
    Column("model", Text),
    Column("attributes", JSONB, nullable=False),
)
