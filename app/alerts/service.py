"""Alerts and webhooks: the domain's use cases. Every function runs in the caller's transaction.

A charge that takes a budget period to a higher alert level raises each level it crossed,
once per budget, period and level: ``budget_alerts``' primary key admits the first and drops
any other, and only an inserted row appends its ``alert_raised`` event and queues one outbox
row per subscribed webhook, all in the charge's own transaction (docs/alerts.md).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from sqlalchemy import Connection

from app.alerts import queries
from app.alerts.errors import WebhookNotFound
from app.alerts.model import Alert, Attempt, Delivery, Webhook
from app.budgets.model import LEVELS, Budget, Hold, alert_level
from app.errors import InvalidInput
from app.ledger import events
from app.ledger import service as ledger

WEBHOOK_EVENT_TYPES = (events.ALERT_RAISED,)
SECRET_PREFIX = "whsec_"
DELIVERY_STATES = ("pending", "delivered", "failed")


def levels_of(thresholds: Sequence[str]) -> dict[str, str]:
    """Each level the thresholds define, with the lowest threshold that starts it.

    A threshold's level is ``alert_level`` at a spend of exactly that fraction of the limit
    (spend ``numerator`` of a limit ``denominator``: exact), so ("0.5", "1.0") define no
    ``critical`` and ("0.5", "0.7", "0.9") start ``warning`` at 0.5 and ``critical`` at 0.9.
    """
    found: dict[str, str] = {}
    for text in sorted(thresholds, key=Decimal):
        numerator, denominator = Decimal(text).as_integer_ratio()
        found.setdefault(alert_level(numerator, denominator, tuple(thresholds)), text)
    found.pop("ok", None)
    return found


def _crossed(budget: Budget, *, spent_pico_usd: int, previous_level: str) -> list[tuple[str, str]]:
    """(level, threshold) of every level above ``previous_level`` up to the current one."""
    level = alert_level(spent_pico_usd, budget.limit_pico_usd, budget.alert_thresholds)
    low, high = LEVELS.index(previous_level), LEVELS.index(level)
    if high <= low:
        return []
    return [
        (name, threshold)
        for name, threshold in levels_of(budget.alert_thresholds).items()
        if low < LEVELS.index(name) <= high
    ]


@dataclass(frozen=True)
class _Charge:
    """Where a charge left one budget period."""

    budget: Budget
    hold: Hold
    spent_pico_usd: int
    held_pico_usd: int
    previous_level: str


def raise_for_charge(
    conn: Connection,
    *,
    org: str,
    budgets: Iterable[Budget],
    holds: Sequence[Hold],
    after: Mapping[tuple[UUID, datetime], tuple[int, int]],
    charged_pico_usd: int,
    now: datetime,
    request_id: str | None,
    reservation_id: UUID | None = None,
) -> list[Alert]:
    """Raise the levels a charge of ``charged_pico_usd`` crossed in each budget period.

    The caller holds the budget rows' locks (commit_reservation, record_usage), so the level
    before the charge, computed from ``after`` minus the charge, is exact.
    """
    by_id = {b.budget_id: b for b in budgets}
    charges = []
    for hold in holds:
        budget = by_id[hold.budget_id]
        spent, held = after[(hold.budget_id, hold.period_start)]
        previous = alert_level(
            spent - charged_pico_usd, budget.limit_pico_usd, budget.alert_thresholds
        )
        charges.append(_Charge(budget, hold, spent, held, previous))
    return _raise(
        conn,
        org=org,
        charges=charges,
        now=now,
        request_id=request_id,
        reservation_id=reservation_id,
    )


def raise_for_change(
    conn: Connection,
    *,
    before: Budget,
    after: Budget,
    hold: Hold,
    spent_pico_usd: int,
    held_pico_usd: int,
    now: datetime,
) -> list[Alert]:
    """Raise the levels a limit or threshold change put the current period at (for example a
    limit lowered below what was spent); the caller holds the budget's lock."""
    previous = alert_level(spent_pico_usd, before.limit_pico_usd, before.alert_thresholds)
    charge = _Charge(after, hold, spent_pico_usd, held_pico_usd, previous)
    return _raise(
        conn, org=after.org, charges=[charge], now=now, request_id=None, reservation_id=None
    )


def raise_reached(
    conn: Connection,
    *,
    budget: Budget,
    hold: Hold,
    spent_pico_usd: int,
    held_pico_usd: int,
    now: datetime,
) -> list[Alert]:
    """Raise the levels a period's spend has reached that were not raised yet, above the
    highest raised so far. For a budget with escrow slices, whose charges on one slice cannot
    see the period's totals (docs/ledger.md, "Hot budgets: escrow slices"): the sweeper calls
    it with totals read in one snapshot, and the primary key keeps each level once."""
    raised = [
        row.level
        for row in queries.raised_alerts(
            conn, org=budget.org, budget_id=budget.budget_id, period_start=hold.period_start
        )
    ]
    previous = max(raised, key=LEVELS.index, default="ok")
    charge = _Charge(budget, hold, spent_pico_usd, held_pico_usd, previous)
    return _raise(
        conn, org=budget.org, charges=[charge], now=now, request_id=None, reservation_id=None
    )


def _raise(
    conn: Connection,
    *,
    org: str,
    charges: Sequence[_Charge],
    now: datetime,
    request_id: str | None,
    reservation_id: UUID | None,
) -> list[Alert]:
    candidates = [
        Alert(
            org=org,
            alert_id=uuid.uuid4(),
            budget_id=c.budget.budget_id,
            subject=c.budget.subject,
            period=c.budget.period,
            period_start=c.hold.period_start,
            period_end=c.hold.period_end,
            level=level,
            previous_level=c.previous_level,
            threshold=threshold,
            limit_pico_usd=c.budget.limit_pico_usd,
            spent_pico_usd=c.spent_pico_usd,
            held_pico_usd=c.held_pico_usd,
            raised_at=now,
            request_id=request_id,
            reservation_id=reservation_id,
        )
        for c in charges
        for level, threshold in _crossed(
            c.budget, spent_pico_usd=c.spent_pico_usd, previous_level=c.previous_level
        )
    ]
    if not candidates:
        return []
    inserted = queries.insert_alerts(
        conn,
        [
            {
                "org": a.org,
                "budget_id": a.budget_id,
                "period_start": a.period_start,
                "level": a.level,
                "period_end": a.period_end,
                "threshold": a.threshold,
                "spent_pico_usd": a.spent_pico_usd,
                "limit_pico_usd": a.limit_pico_usd,
                "alert_id": a.alert_id,
                "raised_at": a.raised_at,
            }
            for a in candidates
        ],
    )
    raised = [a for a in candidates if (a.budget_id, a.level) in inserted]
    if not raised:
        return []
    ledger.append_many(
        conn,
        [
            {
                "org": org,
                "event_type": events.ALERT_RAISED,
                "occurred_at": a.raised_at,
                "request_id": a.request_id,
                "reservation_id": a.reservation_id,
                "budget_id": a.budget_id,
                "budget_ids": [a.budget_id],
                "amount_pico_usd": a.spent_pico_usd,
                "payload": a.event_payload(),
            }
            for a in raised
        ],
    )
    enqueue(
        conn, org=org, event_type=events.ALERT_RAISED, bodies=[a.webhook_body() for a in raised]
    )
    return raised


def enqueue(
    conn: Connection, *, org: str, event_type: str, bodies: Sequence[dict[str, Any]]
) -> int:
    """Queue each body for every active webhook of ``org`` subscribed to ``event_type``, in
    the caller's transaction: the delivery exists if and only if the event does."""
    targets = queries.subscribed_webhooks(conn, org=org, event_type=event_type)
    queries.insert_outbox(
        conn,
        [
            {
                "org": org,
                "delivery_id": uuid.uuid4(),
                "webhook_id": webhook_id,
                "event_type": event_type,
                "payload": body,
            }
            for body in bodies
            for webhook_id in targets
        ],
    )
    return len(targets) * len(bodies)


def alerts_in_period(
    conn: Connection, *, org: str, budget_id: UUID, period_start: datetime
) -> list[dict[str, Any]]:
    """The levels raised so far in one budget period, in the order raised."""
    return [
        {
            "level": row.level,
            "threshold": row.threshold,
            "alert_id": str(row.alert_id),
            "raised_at": row.raised_at.isoformat(),
        }
        for row in queries.raised_alerts(
            conn, org=org, budget_id=budget_id, period_start=period_start
        )
    ]


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() for c in url)
        or len(url) > 2000
    ):
        raise InvalidInput("url must be an absolute http or https URL", field="url")
    return url


def _check_event_types(event_types: Sequence[str]) -> tuple[str, ...]:
    if not event_types:
        raise InvalidInput("at least one event type is required", field="event_types")
    for index, name in enumerate(event_types):
        if name not in WEBHOOK_EVENT_TYPES:
            raise InvalidInput(
                f"unknown event type {name!r}; choose from {', '.join(WEBHOOK_EVENT_TYPES)}",
                field=f"event_types[{index}]",
            )
    return tuple(sorted(set(event_types)))


def register_webhook(
    conn: Connection,
    *,
    org: str,
    url: str,
    event_types: Sequence[str] = WEBHOOK_EVENT_TYPES,
    description: str = "",
    now: datetime | None = None,
) -> tuple[Webhook, str]:
    """Register a webhook; returns it with its signing secret, which is shown this once."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    webhook = queries.insert_webhook(
        conn,
        {
            "org": org,
            "webhook_id": uuid.uuid4(),
            "url": _check_url(url),
            "secret": secret,
            "event_types": list(_check_event_types(event_types)),
            "description": description,
            "created_at": now or datetime.now(UTC),
        },
    )
    return webhook, secret


def list_webhooks(conn: Connection, *, org: str | None) -> list[Webhook]:
    """Webhooks of an org (of every org for None), revoked ones included."""
    return queries.find_webhooks(conn, org=org)


def get_webhook(conn: Connection, *, webhook_id: UUID, org: str | None) -> Webhook:
    found = queries.find_webhooks(conn, org=org, webhook_id=webhook_id)
    if not found:
        raise WebhookNotFound(f"no webhook {webhook_id}", webhook_id=str(webhook_id))
    return found[0]


def revoke_webhook(
    conn: Connection, *, webhook_id: UUID, org: str | None, now: datetime | None = None
) -> Webhook:
    """Stop queueing events for a webhook; its pending deliveries fail at their next attempt.
    Revoking a revoked webhook changes nothing."""
    webhook = get_webhook(conn, webhook_id=webhook_id, org=org)
    queries.revoke_webhook(
        conn, org=webhook.org, webhook_id=webhook_id, at=now or datetime.now(UTC)
    )
    return get_webhook(conn, webhook_id=webhook_id, org=webhook.org)


def list_deliveries(
    conn: Connection,
    *,
    webhook_id: UUID,
    org: str | None,
    limit: int = 50,
    state: str | None = None,
) -> list[Delivery]:
    """A webhook's deliveries, newest first, each with its log of attempts."""
    if state is not None and state not in DELIVERY_STATES:
        raise InvalidInput(f"state must be one of {', '.join(DELIVERY_STATES)}", field="state")
    webhook = get_webhook(conn, webhook_id=webhook_id, org=org)
    return queries.deliveries_of(
        conn, org=webhook.org, webhook_id=webhook_id, limit=limit, state=state
    )


@dataclass(frozen=True)
class Claim:
    """A delivery claimed for one attempt, with what is needed to post it."""

    org: str
    delivery_id: UUID
    webhook_id: UUID
    event_type: str
    payload: dict[str, Any]
    attempt: int
    url: str
    secret: str
    webhook_revoked: bool


def claim_deliveries(conn: Connection, *, limit: int, lease: timedelta) -> list[Claim]:
    """Claim up to ``limit`` due deliveries for ``lease``; commit before posting them."""
    return [
        Claim(
            org=row.org,
            delivery_id=row.delivery_id,
            webhook_id=row.webhook_id,
            event_type=row.event_type,
            payload=dict(row.payload),
            attempt=row.attempts,
            url=row.url,
            secret=row.secret,
            webhook_revoked=row.revoked_at is not None,
        )
        for row in queries.claim_due(conn, limit=limit, lease=lease)
    ]


def record_attempt(
    conn: Connection,
    *,
    claim: Claim,
    attempt: Attempt | None,
    delivered: bool,
    error: str | None = None,
    retry_in: timedelta | None = None,
) -> None:
    """Log an attempt (None: nothing was posted) and settle the delivery: delivered, retried
    after ``retry_in``, or failed for good when ``retry_in`` is None."""
    if attempt is not None:
        queries.insert_attempt(
            conn,
            org=claim.org,
            delivery_id=claim.delivery_id,
            webhook_id=claim.webhook_id,
            attempt=attempt,
        )
    if delivered:
        queries.finish_delivery(conn, org=claim.org, delivery_id=claim.delivery_id)
    else:
        queries.fail_attempt(
            conn,
            org=claim.org,
            delivery_id=claim.delivery_id,
            attempt=claim.attempt,
            error=error or "failed",
            retry_in=retry_in,
        )
