"""Alerts, webhooks, the outbox and the delivery log (DDL in migrations/versions/0007_alerts.py)."""

from sqlalchemy import Column, DateTime, Integer, Table, Text, Uuid
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from app.db.metadata import PicoUSD, metadata

budget_alerts = Table(
    "budget_alerts",
    metadata,
    Column("org", Text, primary_key=True),
    Column("budget_id", Uuid, primary_key=True),
    Column("period_start", DateTime(timezone=True), primary_key=True),
    Column("level", Text, primary_key=True),
    Column("period_end", DateTime(timezone=True), nullable=False),
    Column("threshold", Text, nullable=False),
    Column("spent_pico_usd", PicoUSD, nullable=False),
    Column("limit_pico_usd", PicoUSD, nullable=False),
    Column("alert_id", Uuid, nullable=False),
    Column("raised_at", DateTime(timezone=True), nullable=False),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("org", Text, primary_key=True),
    Column("webhook_id", Uuid, primary_key=True),
    Column("url", Text, nullable=False),
    Column("secret", Text, nullable=False),
    Column("event_types", ARRAY(Text), nullable=False),
    Column("description", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("org", Text, primary_key=True),
    Column("delivery_id", Uuid, primary_key=True),
    Column("webhook_id", Uuid, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("org", Text, primary_key=True),
    Column("delivery_id", Uuid, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("webhook_id", Uuid, nullable=False),
    Column("attempted_at", DateTime(timezone=True), nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    Column("duration_ms", Integer, nullable=False),
)
