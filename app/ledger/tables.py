"""The append-only event table (DDL in migrations/versions/0001_ledger_core.py)."""

from sqlalchemy import BigInteger, Column, DateTime, Integer, Table, Text, Uuid
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from app.db.metadata import PicoUSD, metadata

ledger_events = Table(
    "ledger_events",
    metadata,
    Column("seq", BigInteger, primary_key=True),  # with recorded_at, the partition key
    Column("org", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("request_id", Text),
    Column("reservation_id", Uuid),
    Column("budget_id", Uuid),
    Column("budget_ids", ARRAY(Uuid), nullable=False),
    Column("amount_pico_usd", PicoUSD),
    Column("payload", JSONB, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)
