"""Plain values the alerts domain hands out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from app.budgets.model import Subject
from app.money import format_usd


@dataclass(frozen=True)
class Alert:
    """One level of one budget period, raised once (docs/alerts.md)."""

    org: str
    alert_id: UUID
    budget_id: UUID
    subject: Subject
    period: str
    period_start: datetime
    period_end: datetime
    level: str
    previous_level: str
    threshold: str
    limit_pico_usd: int
    spent_pico_usd: int
    held_pico_usd: int
    raised_at: datetime
    request_id: str | None
    reservation_id: UUID | None

    def event_payload(self) -> dict[str, Any]:
        """The ``alert_raised`` event payload (v1): money as integer pico-USD."""
        return {
            "alert_id": str(self.alert_id),
            "level": self.level,
            "previous_level": self.previous_level,
            "threshold": self.threshold,
            "subject": self.subject.as_dict(),
            "period": self.period,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "limit_pico_usd": self.limit_pico_usd,
            "spent_pico_usd": self.spent_pico_usd,
            "held_pico_usd": self.held_pico_usd,
        }

    def webhook_body(self) -> dict[str, Any]:
        """What a webhook receives: money as exact decimal strings of USD, like the API."""
        return {
            "id": str(self.alert_id),
            "type": "alert_raised",
            "org": self.org,
            "occurred_at": self.raised_at.isoformat(),
            "data": {
                "budget_id": str(self.budget_id),
                "subject": self.subject.as_dict(),
                "period": self.period,
                "period_start": self.period_start.isoformat(),
                "period_end": self.period_end.isoformat(),
                "level": self.level,
                "previous_level": self.previous_level,
                "threshold": self.threshold,
                "limit_usd": format_usd(self.limit_pico_usd),
                "spent_usd": format_usd(self.spent_pico_usd),
                "held_usd": format_usd(self.held_pico_usd),
                "remaining_usd": format_usd(
                    self.limit_pico_usd - self.spent_pico_usd - self.held_pico_usd
                ),
                "request_id": self.request_id,
                "reservation_id": str(self.reservation_id) if self.reservation_id else None,
            },
        }


@dataclass(frozen=True)
class Webhook:
    org: str
    webhook_id: UUID
    url: str
    event_types: tuple[str, ...]
    description: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def as_json(self) -> dict[str, Any]:
        return {
            "webhook_id": str(self.webhook_id),
            "org": self.org,
            "url": self.url,
            "event_types": list(self.event_types),
            "description": self.description,
            "active": self.active,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True)
class Attempt:
    """One POST of a delivery, as the delivery log keeps it."""

    attempt: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int

    def as_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "attempted_at": self.attempted_at.isoformat(),
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }


@dataclass(frozen=True)
class Delivery:
    """One event for one webhook: an outbox row and its log."""

    org: str
    delivery_id: UUID
    webhook_id: UUID
    event_type: str
    payload: dict[str, Any]
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    log: tuple[Attempt, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "delivery_id": str(self.delivery_id),
            "webhook_id": str(self.webhook_id),
            "org": self.org,
            "event_type": self.event_type,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at.isoformat(),
            "last_error": self.last_error,
            "created_at": self.created_at.isoformat(),
            "delivered_at": self.delivered_at.isoformat() if self.delivered_at else None,
            "payload": self.payload,
            "log": [a.as_json() for a in self.log],
        }
