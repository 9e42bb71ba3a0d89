"""Budget projections (DDL in migrations/versions/0001_ledger_core.py and 0012)."""

from sqlalchemy import Boolean, Column, DateTime, Integer, Table, Text, Uuid
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from app.db.metadata import PicoUSD, metadata

budgets = Table(
    "budgets",
    metadata,
    Column("org", Text, primary_key=True),
    Column("budget_id", Uuid, primary_key=True),
    Column("subject_type", Text, nullable=False),
    Column("subject_id", Text, nullable=False),
    Column("limit_pico_usd", PicoUSD, nullable=False),
    Column("period", Text, nullable=False),
    Column("timezone", Text, nullable=False),
    Column("mode", Text, nullable=False),
    Column("alert_thresholds", ARRAY(Text), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("version", Integer, nullable=False),
    Column("escrow_slices", Integer, nullable=False),
)

budget_periods = Table(
    "budget_periods",
    metadata,
    Column("org", Text, primary_key=True),
    Column("budget_id", Uuid, primary_key=True),
    Column("period_start", DateTime(timezone=True), primary_key=True),
    Column("period_end", DateTime(timezone=True), nullable=False),
    Column("spent_pico_usd", PicoUSD, nullable=False),
    Column("held_pico_usd", PicoUSD, nullable=False),
)

# Escrow slices of a hot budget's period (migrations/versions/0012_budget_escrow.py).
budget_slices = Table(
    "budget_slices",
    metadata,
    Column("org", Text, primary_key=True),
    Column("budget_id", Uuid, primary_key=True),
    Column("period_start", DateTime(timezone=True), primary_key=True),
    Column("slice", Integer, primary_key=True),
    Column("period_end", DateTime(timezone=True), nullable=False),
    Column("budget_version", Integer, nullable=False),
    Column("is_open", Boolean, nullable=False),
    Column("headroom_pico_usd", PicoUSD, nullable=False),
    Column("spent_pico_usd", PicoUSD, nullable=False),
    Column("held_pico_usd", PicoUSD, nullable=False),
)

reservations = Table(
    "reservations",
    metadata,
    Column("org", Text, primary_key=True),
    Column("reservation_id", Uuid, primary_key=True),
    Column("request_id", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("amount_pico_usd", PicoUSD, nullable=False),
    Column("cost_pico_usd", PicoUSD),
    Column("subjects", JSONB, nullable=False),
    Column("holds", JSONB, nullable=False),
    Column("model", Text),
    Column("provider", Text),
    Column("metadata", JSONB, nullable=False),
    Column("reserved_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("settled_at", DateTime(timezone=True)),
    Column("overrun", Boolean, nullable=False),
    Column("late", Boolean, nullable=False),
    Column("version", Integer, nullable=False),
)
