"""Event types, their payload schema versions, and the upcasters that read old versions.

A payload is written at the current version of its type. When a payload's shape changes, the
version goes up and an upcaster from the previous version is added here, so that events written
by any earlier release still parse and replay (docs/ledger.md, "Event versions").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

BUDGET_DEFINED = "budget_defined"
BUDGET_CHANGED = "budget_changed"
RESERVED = "reserved"
EXTENDED = "extended"
COMMITTED = "committed"
CANCELLED = "cancelled"
EXPIRED = "expired"
USAGE_RECORDED = "usage_recorded"
PRICE_OVERRIDDEN = "price_overridden"
ALERT_RAISED = "alert_raised"

CURRENT_VERSIONS: dict[str, int] = {
    BUDGET_DEFINED: 1,
    BUDGET_CHANGED: 1,
    RESERVED: 1,
    EXTENDED: 1,
    COMMITTED: 1,
    CANCELLED: 1,
    EXPIRED: 1,
    USAGE_RECORDED: 2,
    PRICE_OVERRIDDEN: 1,
    ALERT_RAISED: 1,
}

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]


def _usage_recorded_v1_to_v2(payload: Payload) -> Payload:
    """v1 (before cache writes were split by TTL) had one ``cache_write_tokens`` count and
    ``cost_usd`` as a decimal string; v2 has ``cache_creation_tokens`` with its 1-hour share
    and ``cost_pico_usd`` as an integer."""
    from app.money import parse_usd

    upgraded = {k: v for k, v in payload.items() if k not in {"cache_write_tokens", "cost_usd"}}
    upgraded["cache_creation_tokens"] = int(payload.get("cache_write_tokens", 0))
    upgraded["cache_creation_1h_tokens"] = 0
    upgraded["cost_pico_usd"] = parse_usd(str(payload.get("cost_usd", "0")))
    upgraded.setdefault("call_type", "chat")
    upgraded.setdefault("metadata", {})
    return upgraded


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    (USAGE_RECORDED, 1): _usage_recorded_v1_to_v2,
}


class UnknownEventVersion(RuntimeError):
    """An event newer than this release, or an old version without an upcaster."""


def upcast(event_type: str, version: int, payload: Payload) -> Payload:
    """Bring a stored payload up to the current version of its event type."""
    current = CURRENT_VERSIONS.get(event_type)
    if current is None:
        raise UnknownEventVersion(f"unknown event type {event_type!r}")
    if version > current:
        raise UnknownEventVersion(
            f"{event_type} v{version} is newer than this release (v{current})"
        )
    while version < current:
        upcaster = UPCASTERS.get((event_type, version))
        if upcaster is None:
            raise UnknownEventVersion(f"no upcaster for {event_type} v{version}")
        payload = upcaster(payload)
        version += 1
    return payload


@dataclass(frozen=True)
class Event:
    """One stored event, its payload already at the current version."""

    seq: int
    org: str
    event_type: str
    request_id: str | None
    reservation_id: UUID | None
    budget_id: UUID | None
    budget_ids: tuple[UUID, ...]
    amount_pico_usd: int | None
    payload: Payload
    occurred_at: datetime
    recorded_at: datetime
