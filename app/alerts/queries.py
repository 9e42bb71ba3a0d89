"""SQL of the alerts domain: no business rules here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, and_, any_, func, literal, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert

from app.alerts.model import Attempt, Delivery, Webhook
from app.alerts.tables import budget_alerts, webhook_attempts, webhook_outbox, webhooks


def insert_alerts(conn: Connection, rows: Sequence[dict[str, Any]]) -> set[tuple[UUID, str]]:
    """Insert alert rows, skipping levels already raised in their period; returns the
    (budget_id, level) of the rows inserted. The primary key is the once-only guarantee."""
    if not rows:
        return set()
    statement = insert(budget_alerts).values(list(rows))
    result = conn.execute(
        statement.on_conflict_do_nothing(
            index_elements=["org", "budget_id", "period_start", "level"]
        ).returning(budget_alerts.c.budget_id, budget_alerts.c.level)
    )
    return {(row.budget_id, row.level) for row in result}


def raised_alerts(
    conn: Connection, *, org: str, budget_id: UUID, period_start: datetime
) -> list[Row[Any]]:
    query = (
        select(budget_alerts)
        .where(
            budget_alerts.c.org == org,
            budget_alerts.c.budget_id == budget_id,
            budget_alerts.c.period_start == period_start,
        )
        .order_by(budget_alerts.c.raised_at, budget_alerts.c.level)
    )
    return list(conn.execute(query))


def subscribed_webhooks(conn: Connection, *, org: str, event_type: str) -> list[UUID]:
    """Active webhooks of ``org`` that asked for ``event_type``."""
    query = (
        select(webhooks.c.webhook_id)
        .where(
            webhooks.c.org == org,
            webhooks.c.revoked_at.is_(None),
            literal(event_type) == any_(webhooks.c.event_types),
        )
        .order_by(webhooks.c.webhook_id)
    )
    return [row.webhook_id for row in conn.execute(query)]


def insert_outbox(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Pending deliveries, due at once (the database's clock: the worker compares with it)."""
    if rows:
        now = func.now()
        pending = {"state": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now}
        conn.execute(insert(webhook_outbox).values([{**row, **pending} for row in rows]))


def to_webhook(row: Row[Any]) -> Webhook:
    return Webhook(
        org=row.org,
        webhook_id=row.webhook_id,
        url=row.url,
        event_types=tuple(row.event_types),
        description=row.description,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def insert_webhook(conn: Connection, values: dict[str, Any]) -> Webhook:
    return to_webhook(conn.execute(insert(webhooks).values(**values).returning(webhooks)).one())


def find_webhooks(
    conn: Connection, *, org: str | None, webhook_id: UUID | None = None
) -> list[Webhook]:
    conditions = []
    if org is not None:
        conditions.append(webhooks.c.org == org)
    if webhook_id is not None:
        conditions.append(webhooks.c.webhook_id == webhook_id)
    query = (
        select(webhooks)
        .where(and_(True, *conditions))
        .order_by(webhooks.c.org, webhooks.c.created_at, webhooks.c.webhook_id)
    )
    return [to_webhook(row) for row in conn.execute(query)]


def revoke_webhook(conn: Connection, *, org: str, webhook_id: UUID, at: datetime) -> None:
    conn.execute(
        update(webhooks)
        .where(
            webhooks.c.org == org,
            webhooks.c.webhook_id == webhook_id,
            webhooks.c.revoked_at.is_(None),
        )
        .values(revoked_at=at)
    )


def deliveries_of(
    conn: Connection, *, org: str, webhook_id: UUID, limit: int, state: str | None
) -> list[Delivery]:
    """A webhook's newest deliveries first, each with its attempts in order."""
    conditions = [webhook_outbox.c.org == org, webhook_outbox.c.webhook_id == webhook_id]
    if state is not None:
        conditions.append(webhook_outbox.c.state == state)
    rows = list(
        conn.execute(
            select(webhook_outbox)
            .where(*conditions)
            .order_by(webhook_outbox.c.created_at.desc(), webhook_outbox.c.delivery_id)
            .limit(limit)
        )
    )
    if not rows:
        return []
    log: dict[UUID, list[Attempt]] = {}
    attempts = conn.execute(
        select(webhook_attempts)
        .where(
            webhook_attempts.c.org == org,
            webhook_attempts.c.delivery_id.in_([r.delivery_id for r in rows]),
        )
        .order_by(webhook_attempts.c.delivery_id, webhook_attempts.c.attempt)
    )
    for a in attempts:
        log.setdefault(a.delivery_id, []).append(
            Attempt(a.attempt, a.attempted_at, a.status_code, a.error, a.duration_ms)
        )
    return [
        Delivery(
            org=r.org,
            delivery_id=r.delivery_id,
            webhook_id=r.webhook_id,
            event_type=r.event_type,
            payload=dict(r.payload),
            state=r.state,
            attempts=r.attempts,
            next_attempt_at=r.next_attempt_at,
            last_error=r.last_error,
            created_at=r.created_at,
            delivered_at=r.delivered_at,
            log=tuple(log.get(r.delivery_id, ())),
        )
        for r in rows
    ]


def claim_due(conn: Connection, *, limit: int, lease: timedelta) -> list[Row[Any]]:
    """Claim due pending deliveries: count the attempt and push them a lease into the future,
    so that no other worker takes them while this one posts; returns them with their
    webhook's url, secret and revocation.

    SKIP LOCKED lets concurrent workers claim disjoint rows without waiting for each other.
    """
    due = (
        select(webhook_outbox.c.org, webhook_outbox.c.delivery_id)
        .where(webhook_outbox.c.state == "pending", webhook_outbox.c.next_attempt_at <= func.now())
        .order_by(webhook_outbox.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    statement = (
        update(webhook_outbox)
        .where(
            tuple_(webhook_outbox.c.org, webhook_outbox.c.delivery_id).in_(due),
            webhooks.c.org == webhook_outbox.c.org,
            webhooks.c.webhook_id == webhook_outbox.c.webhook_id,
        )
        .values(attempts=webhook_outbox.c.attempts + 1, next_attempt_at=func.now() + lease)
        .returning(
            webhook_outbox.c.org,
            webhook_outbox.c.delivery_id,
            webhook_outbox.c.webhook_id,
            webhook_outbox.c.event_type,
            webhook_outbox.c.payload,
            webhook_outbox.c.attempts,
            webhooks.c.url,
            webhooks.c.secret,
            webhooks.c.revoked_at,
        )
    )
    return list(conn.execute(statement))


def insert_attempt(
    conn: Connection, *, org: str, delivery_id: UUID, webhook_id: UUID, attempt: Attempt
) -> None:
    conn.execute(
        insert(webhook_attempts).values(
            org=org,
            delivery_id=delivery_id,
            webhook_id=webhook_id,
            attempt=attempt.attempt,
            attempted_at=attempt.attempted_at,
            status_code=attempt.status_code,
            error=attempt.error,
            duration_ms=attempt.duration_ms,
        )
    )


def finish_delivery(conn: Connection, *, org: str, delivery_id: UUID) -> None:
    """Delivered: whichever claim succeeded, the receiver has it."""
    conn.execute(
        update(webhook_outbox)
        .where(
            webhook_outbox.c.org == org,
            webhook_outbox.c.delivery_id == delivery_id,
            webhook_outbox.c.state == "pending",
        )
        .values(state="delivered", delivered_at=func.now(), last_error=None)
    )


def fail_attempt(
    conn: Connection,
    *,
    org: str,
    delivery_id: UUID,
    attempt: int,
    error: str,
    retry_in: timedelta | None,
) -> None:
    """Schedule the next attempt after ``retry_in``, or give up (state ``failed``) when None.

    Only the latest claim decides: a worker whose lease ran out while it posted must not
    reschedule a delivery that another worker has claimed since.
    """
    values: dict[str, Any] = {"last_error": error}
    if retry_in is None:
        values["state"] = "failed"
    else:
        values["next_attempt_at"] = func.now() + retry_in
    conn.execute(
        update(webhook_outbox)
        .where(
            webhook_outbox.c.org == org,
            webhook_outbox.c.delivery_id == delivery_id,
            webhook_outbox.c.state == "pending",
            webhook_outbox.c.attempts == attempt,
        )
        .values(**values)
    )
