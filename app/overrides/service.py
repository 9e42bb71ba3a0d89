"""Operator price overrides: a fine-tune, a negotiated discount, an internal model.

Each override is a ``price_overridden`` event (deployment-wide, org ``*``) carrying a partial
LiteLLM entry for one model key and the moment it takes effect. Overrides win over the
snapshot from that moment on, so history keeps the rate in force when it happened, and every
cost they price names the override id as its price source.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from app.errors import InvalidInput
from app.ledger import events
from app.ledger import service as ledger
from app.ledger.tables import ledger_events
from app.pricing.table import Override, PriceTable

DEPLOYMENT_ORG = "*"


@dataclass(frozen=True)
class StoredOverride:
    override: Override
    recorded_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "override_id": self.override.override_id,
            "model_key": self.override.model_key,
            "effective_at": self.override.effective_at.isoformat(),
            "fields": dict(self.override.fields),
            "recorded_at": self.recorded_at.isoformat(),
        }


def _parse_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Rates as exact decimals (strings in JSON); other entry fields as given."""
    parsed: dict[str, Any] = {}
    for name, value in fields.items():
        if "cost" in name and not isinstance(value, dict | list):
            try:
                number = Decimal(str(value))
            except InvalidOperation as error:
                raise InvalidInput(
                    "a rate must be a decimal string", field=f"fields.{name}"
                ) from error
            if not number.is_finite() or number < 0:
                raise InvalidInput(
                    "a rate must be a finite, non-negative decimal", field=f"fields.{name}"
                )
            parsed[name] = number
        else:
            parsed[name] = value
    return parsed


def add_override(
    conn: Connection,
    table: PriceTable,
    *,
    model_key: str,
    fields: Mapping[str, Any],
    effective_at: datetime | None = None,
    override_id: str | None = None,
) -> StoredOverride:
    """Record an override; refused when the resulting entry would price nothing."""
    if not fields:
        raise InvalidInput("an override needs at least one field", field="fields")
    effective_at = effective_at or datetime.now(UTC)
    if effective_at.tzinfo is None:
        raise InvalidInput("effective_at needs a time zone", field="effective_at")
    override = Override(
        override_id or f"override-{uuid.uuid4().hex[:12]}",
        model_key,
        effective_at,
        _parse_fields(fields),
    )
    entry = table.with_overrides([override]).get(model_key, at=effective_at)
    if entry is None or not entry.is_priced:
        raise InvalidInput(f"the override leaves {model_key!r} without any price", field="fields")
    now = datetime.now(UTC)
    ledger.append(
        conn,
        org=DEPLOYMENT_ORG,
        event_type=events.PRICE_OVERRIDDEN,
        occurred_at=now,
        request_id=override.override_id,
        payload={
            "override_id": override.override_id,
            "model_key": model_key,
            "effective_at": effective_at.isoformat(),
            "fields": {
                k: str(v) if isinstance(v, Decimal) else v for k, v in override.fields.items()
            },
        },
    )
    return StoredOverride(override, now)


def _price_events() -> Any:
    return ledger_events.c.event_type == events.PRICE_OVERRIDDEN


def list_overrides(conn: Connection) -> list[StoredOverride]:
    """Every override, in the order they were recorded."""
    rows = conn.execute(
        select(ledger_events.c.payload, ledger_events.c.recorded_at)
        .where(_price_events())
        .order_by(ledger_events.c.seq)
    )
    return [
        StoredOverride(
            Override(
                row.payload["override_id"],
                row.payload["model_key"],
                datetime.fromisoformat(row.payload["effective_at"]),
                _parse_fields(row.payload["fields"]),
            ),
            row.recorded_at,
        )
        for row in rows
    ]


class PriceBook:
    """The snapshot with the database's overrides on top, refreshed when they change.

    Every server process checks for new overrides at most every ``refresh_seconds`` (one
    index lookup), so an override recorded through any process prices everywhere shortly.
    """

    def __init__(self, base: PriceTable, engine: Engine | None, refresh_seconds: int = 5) -> None:
        self.base = base
        self.engine = engine
        self.refresh_seconds = refresh_seconds
        self._table = base
        self._marker: int | None = None
        self._checked_seconds = 0.0
        self._lock = threading.Lock()

    def table(self) -> PriceTable:
        if (
            self.engine is not None
            and time.monotonic() - self._checked_seconds > self.refresh_seconds
        ):
            self.refresh()
        return self._table

    def refresh(self) -> None:
        assert self.engine is not None
        with self._lock, self.engine.connect() as conn:
            marker = conn.execute(select(func.max(ledger_events.c.seq)).where(_price_events()))
            latest = marker.scalar_one_or_none()
            if latest != self._marker:
                stored = list_overrides(conn)
                self._table = self.base.with_overrides(s.override for s in stored)
                self._marker = latest
            self._checked_seconds = time.monotonic()
