"""Reserve, extend, commit, cancel and expire holds; charge usage without a hold.

Every function here runs inside the caller's transaction and changes the projections and the
event stream together. Lock order everywhere: idempotency key, reservation, budgets by id.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from app.alerts import service as alerts
from app.budgets import queries
from app.budgets.errors import BudgetExceeded, ReservationNotFound, ReservationSettled
from app.budgets.model import (
    Budget,
    BudgetRemaining,
    Hold,
    Reservation,
    Settlement,
    Subject,
)
from app.budgets.periods import period_bounds
from app.errors import InvalidInput
from app.ledger import events, idempotency
from app.ledger import service as ledger
from app.ledger.records import UsageRecord

Delta = tuple[Hold, int, int]


def _holds_for(budgets: Sequence[Budget], at: datetime) -> list[Hold]:
    return [Hold(b.budget_id, *period_bounds(b.period, b.timezone, at)) for b in budgets]


def _delta_payload(deltas: Sequence[Delta]) -> list[dict[str, Any]]:
    return [
        {
            "budget_id": str(hold.budget_id),
            "period_start": hold.period_start.isoformat(),
            "period_end": hold.period_end.isoformat(),
            "spent_pico_usd": spent,
            "held_pico_usd": held,
        }
        for hold, spent, held in deltas
    ]


def _holds_payload(holds: Sequence[Hold]) -> list[dict[str, str]]:
    return [
        {
            "budget_id": str(h.budget_id),
            "period_start": h.period_start.isoformat(),
            "period_end": h.period_end.isoformat(),
        }
        for h in holds
    ]


def _holds_from_payload(payload: Sequence[dict[str, str]]) -> list[Hold]:
    return [
        Hold(
            UUID(h["budget_id"]),
            datetime.fromisoformat(h["period_start"]),
            datetime.fromisoformat(h["period_end"]),
        )
        for h in payload
    ]


def _lock_held_budgets(conn: Connection, row: Any) -> tuple[dict[UUID, Budget], list[Hold]]:
    """Lock the budgets a reservation holds money in (in budget_id order, after the
    reservation's own lock) and return them with the holds, in that order, that they back."""
    holds = _holds_from_payload(row.holds)
    locked = queries.lock_budgets_by_id(conn, org=row.org, budget_ids=[h.budget_id for h in holds])
    by_id = {b.budget_id: b for b in locked}
    return by_id, [h for h in sorted(holds, key=lambda h: h.budget_id) if h.budget_id in by_id]


def _check_hard_limits(
    budgets: Sequence[Budget],
    after: dict[tuple[UUID, datetime], tuple[int, int]],
    holds: Sequence[Hold],
    amount: int,
) -> list[BudgetRemaining]:
    """Refuse when a hard budget went past its limit by taking ``amount`` (the caller's
    transaction then rolls the change back); else each budget's remaining after it."""
    remaining = []
    for budget, hold in zip(budgets, holds, strict=True):
        spent, held = after[(hold.budget_id, hold.period_start)]
        left = budget.limit_pico_usd - spent - held
        if budget.mode == "hard" and amount > 0 and left < 0:
            raise BudgetExceeded.of(
                budget, remaining_pico_usd=left + amount, requested_pico_usd=amount
            )
        remaining.append(
            BudgetRemaining(
                budget.budget_id, budget.subject, budget.mode, budget.limit_pico_usd, left
            )
        )
    return remaining


def reservation_json(reservation: Reservation) -> dict[str, Any]:
    return {
        "org": reservation.org,
        "reservation_id": str(reservation.reservation_id),
        "request_id": reservation.request_id,
        "state": reservation.state,
        "amount_pico_usd": reservation.amount_pico_usd,
        "expires_at": reservation.expires_at.isoformat(),
        "budgets": [
            {
                "budget_id": str(b.budget_id),
                "subject": b.subject.as_dict(),
                "mode": b.mode,
                "limit_pico_usd": b.limit_pico_usd,
                "remaining_pico_usd": b.remaining_pico_usd,
            }
            for b in reservation.budgets
        ],
        "details": reservation.details,
    }


def reservation_from_json(data: dict[str, Any]) -> Reservation:
    return Reservation(
        org=data["org"],
        reservation_id=UUID(data["reservation_id"]),
        request_id=data["request_id"],
        state=data["state"],
        amount_pico_usd=data["amount_pico_usd"],
        expires_at=datetime.fromisoformat(data["expires_at"]),
        budgets=tuple(
            BudgetRemaining(
                UUID(b["budget_id"]),
                Subject(**b["subject"]),
                b["mode"],
                b["limit_pico_usd"],
                b["remaining_pico_usd"],
            )
            for b in data["budgets"]
        ),
        details=data.get("details", {}),
    )


def settlement_json(settlement: Settlement) -> dict[str, Any]:
    return {
        "org": settlement.org,
        "request_id": settlement.request_id,
        "reservation_id": str(settlement.reservation_id) if settlement.reservation_id else None,
        "cost_pico_usd": settlement.cost_pico_usd,
        "held_pico_usd": settlement.held_pico_usd,
        "overrun": settlement.overrun,
        "late": settlement.late,
        "flagged_budgets": list(settlement.flagged_budgets),
        "details": settlement.details,
    }


def settlement_from_json(data: dict[str, Any]) -> Settlement:
    return Settlement(
        org=data["org"],
        request_id=data["request_id"],
        reservation_id=UUID(data["reservation_id"]) if data["reservation_id"] else None,
        cost_pico_usd=data["cost_pico_usd"],
        held_pico_usd=data["held_pico_usd"],
        overrun=data["overrun"],
        late=data["late"],
        flagged_budgets=tuple(data["flagged_budgets"]),
        details=data.get("details", {}),
    )


def _unique_subjects(subjects: Sequence[Subject]) -> list[Subject]:
    if not subjects:
        raise InvalidInput("at least one subject is required", field="subjects")
    return sorted(set(subjects))


def _check_amount(amount: int, field: str) -> None:
    if amount < 0:
        raise InvalidInput("amount must not be negative", field=field)


def reserve(
    conn: Connection,
    *,
    org: str,
    request_id: str,
    subjects: Sequence[Subject],
    amount_pico_usd: int,
    ttl_seconds: int,
    model: str | None = None,
    provider: str | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
    idempotency_content: Any = None,
    details: dict[str, Any] | None = None,
) -> Reservation:
    """Hold ``amount`` against every budget of every subject, or against none.

    ``idempotency_content`` (default: the arguments) is what a retry must repeat to get the
    first result back; the API passes the request body, so an estimate priced again on a
    retry cannot turn into a conflict. ``details`` are returned with the reservation.
    """
    _check_amount(amount_pico_usd, "amount_usd")
    if ttl_seconds <= 0:
        raise InvalidInput("ttl must be positive", field="ttl_seconds")
    unique = _unique_subjects(subjects)
    metadata = metadata or {}
    content = {
        "subjects": [s.as_dict() for s in unique],
        "amount": amount_pico_usd,
        "ttl": ttl_seconds,
        "model": model,
        "provider": provider,
        "metadata": metadata,
    }
    previous = idempotency.claim(
        conn,
        org=org,
        operation="reserve",
        key=request_id,
        content_fingerprint=idempotency.fingerprint(idempotency_content or content),
    )
    if previous is not None:
        return reservation_from_json(previous)
    now = now or datetime.now(UTC)
    locked = queries.lock_budgets_of_subjects(conn, org=org, subjects=unique)
    holds = _holds_for(locked, now)
    deltas = [(hold, 0, amount_pico_usd) for hold in holds]
    after = queries.add_to_periods(conn, org=org, deltas=deltas)
    remaining = _check_hard_limits(locked, after, holds, amount_pico_usd)
    reservation = Reservation(
        org=org,
        reservation_id=uuid.uuid4(),
        request_id=request_id,
        state="held",
        amount_pico_usd=amount_pico_usd,
        expires_at=now + timedelta(seconds=ttl_seconds),
        budgets=tuple(remaining),
        details=details or {},
    )
    queries.insert_reservation(
        conn,
        {
            "org": org,
            "reservation_id": reservation.reservation_id,
            "request_id": request_id,
            "state": "held",
            "amount_pico_usd": amount_pico_usd,
            "subjects": content["subjects"],
            "holds": _holds_payload(holds),
            "model": model,
            "provider": provider,
            "metadata": metadata,
            "reserved_at": now,
            "expires_at": reservation.expires_at,
            "overrun": False,
            "late": False,
            "version": 1,
        },
    )
    ledger.append(
        conn,
        org=org,
        event_type=events.RESERVED,
        occurred_at=now,
        request_id=request_id,
        reservation_id=reservation.reservation_id,
        budget_ids=[h.budget_id for h in holds],
        amount_pico_usd=amount_pico_usd,
        payload={
            "subjects": content["subjects"],
            "holds": _holds_payload(holds),
            "deltas": _delta_payload(deltas),
            "expires_at": reservation.expires_at.isoformat(),
            "model": model,
            "provider": provider,
            "metadata": metadata,
            "version": 1,
        },
    )
    idempotency.store(
        conn, org=org, operation="reserve", key=request_id, response=reservation_json(reservation)
    )
    return reservation


def extend(
    conn: Connection,
    *,
    org: str,
    reservation_id: UUID,
    amount_pico_usd: int | None = None,
    ttl_seconds: int | None = None,
    now: datetime | None = None,
) -> Reservation:
    """Raise a live hold to ``amount`` and/or push its expiry to now + ttl (streaming)."""
    now = now or datetime.now(UTC)
    row = queries.lock_reservation(conn, org=org, reservation_id=reservation_id)
    if row is None:
        raise ReservationNotFound(
            f"no reservation {reservation_id}", reservation_id=str(reservation_id)
        )
    if row.state != "held":
        raise ReservationSettled(
            f"reservation {reservation_id} is {row.state}",
            reservation_id=str(reservation_id),
            state=row.state,
        )
    new_amount = row.amount_pico_usd if amount_pico_usd is None else amount_pico_usd
    if new_amount < row.amount_pico_usd:
        raise InvalidInput("a hold can only be raised", field="amount_usd")
    expires_at = now + timedelta(seconds=ttl_seconds) if ttl_seconds else row.expires_at
    if ttl_seconds is not None and ttl_seconds <= 0:
        raise InvalidInput("ttl must be positive", field="ttl_seconds")
    increase = new_amount - row.amount_pico_usd
    by_id, live_holds = _lock_held_budgets(conn, row)
    deltas = [(hold, 0, increase) for hold in live_holds]
    after = queries.add_to_periods(conn, org=org, deltas=deltas)
    remaining = _check_hard_limits(
        [by_id[h.budget_id] for h in live_holds], after, live_holds, increase
    )
    deltas = deltas if increase else []
    queries.update_reservation(
        conn,
        org=org,
        reservation_id=reservation_id,
        amount_pico_usd=new_amount,
        expires_at=expires_at,
        version=row.version + 1,
    )
    ledger.append(
        conn,
        org=org,
        event_type=events.EXTENDED,
        occurred_at=now,
        request_id=row.request_id,
        reservation_id=reservation_id,
        budget_ids=[h.budget_id for h in live_holds],
        amount_pico_usd=new_amount,
        payload={
            "previous_amount_pico_usd": row.amount_pico_usd,
            "deltas": _delta_payload(deltas),
            "expires_at": expires_at.isoformat(),
            "version": row.version + 1,
        },
    )
    return Reservation(
        org=org,
        reservation_id=reservation_id,
        request_id=row.request_id,
        state="held",
        amount_pico_usd=new_amount,
        expires_at=expires_at,
        budgets=tuple(remaining),
    )


def _check_records(cost_pico_usd: int, records: Sequence[UsageRecord]) -> None:
    _check_amount(cost_pico_usd, "cost_usd")
    if records and sum(r.cost_pico_usd for r in records) != cost_pico_usd:
        raise InvalidInput("the cost must equal the sum of the messages' costs", field="messages")


def _usage_events(
    *,
    org: str,
    request_id: str,
    reservation_id: UUID | None,
    subjects: list[dict[str, str]],
    records: Sequence[UsageRecord],
    occurred_at: datetime,
) -> list[dict[str, Any]]:
    return [
        {
            "org": org,
            "event_type": events.USAGE_RECORDED,
            "occurred_at": occurred_at,
            "request_id": request_id,
            "reservation_id": reservation_id,
            "amount_pico_usd": record.cost_pico_usd,
            "payload": {**record.to_payload(), "subjects": subjects, "message_index": index},
        }
        for index, record in enumerate(records)
    ]


def commit_reservation(
    conn: Connection,
    *,
    org: str,
    reservation_id: UUID,
    cost_pico_usd: int,
    records: Sequence[UsageRecord] = (),
    now: datetime | None = None,
    idempotency_content: Any = None,
    details: dict[str, Any] | None = None,
) -> Settlement:
    """Release the hold and charge the actual cost, with one usage event per message.

    A cost above the hold is charged in full and flagged as an overrun; a commit after the
    hold expired is charged all the same and flagged as late.
    """
    _check_records(cost_pico_usd, records)
    content = {"cost": cost_pico_usd, "records": [r.to_payload() for r in records]}
    previous = idempotency.claim(
        conn,
        org=org,
        operation="commit",
        key=str(reservation_id),
        content_fingerprint=idempotency.fingerprint(idempotency_content or content),
    )
    if previous is not None:
        return settlement_from_json(previous)
    now = now or datetime.now(UTC)
    row = queries.lock_reservation(conn, org=org, reservation_id=reservation_id)
    if row is None:
        raise ReservationNotFound(
            f"no reservation {reservation_id}", reservation_id=str(reservation_id)
        )
    if row.state in ("committed", "cancelled"):
        raise ReservationSettled(
            f"reservation {reservation_id} is already {row.state}",
            reservation_id=str(reservation_id),
            state=row.state,
        )
    still_held = row.state == "held"
    late = not still_held or now > row.expires_at
    by_id, live_holds = _lock_held_budgets(conn, row)
    release = row.amount_pico_usd if still_held else 0
    deltas = [(hold, cost_pico_usd, -release) for hold in live_holds]
    after = queries.add_to_periods(conn, org=org, deltas=deltas)
    overrun = cost_pico_usd > row.amount_pico_usd
    flagged = _over_limit(after, budgets=by_id, holds=live_holds)
    queries.update_reservation(
        conn,
        org=org,
        reservation_id=reservation_id,
        state="committed",
        cost_pico_usd=cost_pico_usd,
        settled_at=now,
        overrun=overrun,
        late=late,
        version=row.version + 1,
    )
    ledger.append_many(
        conn,
        [
            {
                "org": org,
                "event_type": events.COMMITTED,
                "occurred_at": now,
                "request_id": row.request_id,
                "reservation_id": reservation_id,
                "budget_ids": [h.budget_id for h in live_holds],
                "amount_pico_usd": cost_pico_usd,
                "payload": {
                    "held_pico_usd": row.amount_pico_usd,
                    "overrun": overrun,
                    "late": late,
                    "subjects": row.subjects,
                    "deltas": _delta_payload(deltas),
                    "messages": len(records),
                    "flagged_budgets": flagged,
                    "model": row.model,
                    "provider": row.provider,
                    "version": row.version + 1,
                },
            },
            *_usage_events(
                org=org,
                request_id=row.request_id,
                reservation_id=reservation_id,
                subjects=row.subjects,
                records=records,
                occurred_at=now,
            ),
        ],
    )
    # After the charge's own events, so the stream shows the cause before the alert.
    alerts.raise_for_charge(
        conn,
        org=org,
        budgets=by_id.values(),
        holds=live_holds,
        after=after,
        charged_pico_usd=cost_pico_usd,
        now=now,
        request_id=row.request_id,
        reservation_id=reservation_id,
    )
    settlement = Settlement(
        org=org,
        request_id=row.request_id,
        reservation_id=reservation_id,
        cost_pico_usd=cost_pico_usd,
        held_pico_usd=row.amount_pico_usd,
        overrun=overrun,
        late=late,
        flagged_budgets=tuple(flagged),
        details=details or {},
    )
    idempotency.store(
        conn,
        org=org,
        operation="commit",
        key=str(reservation_id),
        response=settlement_json(settlement),
    )
    return settlement


def _over_limit(
    after: dict[tuple[UUID, datetime], tuple[int, int]],
    *,
    budgets: dict[UUID, Budget],
    holds: Sequence[Hold],
) -> list[str]:
    """Budgets whose period is now past its limit (soft budgets, overruns, late commits)."""
    return [
        str(hold.budget_id)
        for hold in holds
        if sum(after[(hold.budget_id, hold.period_start)]) > budgets[hold.budget_id].limit_pico_usd
    ]


def cancel(
    conn: Connection, *, org: str, reservation_id: UUID, now: datetime | None = None
) -> Reservation:
    """Release a hold without charging. Cancelling an expired hold changes nothing."""
    previous = idempotency.claim(
        conn,
        org=org,
        operation="cancel",
        key=str(reservation_id),
        content_fingerprint=idempotency.fingerprint({}),
    )
    if previous is not None:
        return reservation_from_json(previous)
    now = now or datetime.now(UTC)
    row = queries.lock_reservation(conn, org=org, reservation_id=reservation_id)
    if row is None:
        raise ReservationNotFound(
            f"no reservation {reservation_id}", reservation_id=str(reservation_id)
        )
    if row.state == "committed":
        raise ReservationSettled(
            f"reservation {reservation_id} is already committed",
            reservation_id=str(reservation_id),
            state=row.state,
        )
    state = row.state
    if row.state == "held":
        _release(conn, row=row, now=now, event_type=events.CANCELLED)
        state = "cancelled"
    reservation = Reservation(
        org=org,
        reservation_id=reservation_id,
        request_id=row.request_id,
        state=state,
        amount_pico_usd=row.amount_pico_usd,
        expires_at=row.expires_at,
    )
    idempotency.store(
        conn,
        org=org,
        operation="cancel",
        key=str(reservation_id),
        response=reservation_json(reservation),
    )
    return reservation


def _release(conn: Connection, *, row: Any, now: datetime, event_type: str) -> None:
    _, live_holds = _lock_held_budgets(conn, row)
    deltas = [(hold, 0, -row.amount_pico_usd) for hold in live_holds]
    queries.add_to_periods(conn, org=row.org, deltas=deltas)
    state = "cancelled" if event_type == events.CANCELLED else "expired"
    queries.update_reservation(
        conn,
        org=row.org,
        reservation_id=row.reservation_id,
        state=state,
        settled_at=now,
        version=row.version + 1,
    )
    ledger.append(
        conn,
        org=row.org,
        event_type=event_type,
        occurred_at=now,
        request_id=row.request_id,
        reservation_id=row.reservation_id,
        budget_ids=[d[0].budget_id for d in deltas],
        amount_pico_usd=row.amount_pico_usd,
        payload={"deltas": _delta_payload(deltas), "version": row.version + 1},
    )


def expire_one(
    conn: Connection, *, org: str, reservation_id: UUID, now: datetime | None = None
) -> bool:
    """Expire one overdue hold; False when a commit or cancel settled it first."""
    now = now or datetime.now(UTC)
    row = queries.lock_reservation(conn, org=org, reservation_id=reservation_id)
    if row is None or row.state != "held" or row.expires_at > now:
        return False
    _release(conn, row=row, now=now, event_type=events.EXPIRED)
    return True


def record_usage(
    conn: Connection,
    *,
    org: str,
    request_id: str,
    subjects: Sequence[Subject],
    cost_pico_usd: int,
    records: Sequence[UsageRecord] = (),
    model: str | None = None,
    provider: str | None = None,
    now: datetime | None = None,
    idempotency_content: Any = None,
    details: dict[str, Any] | None = None,
) -> Settlement:
    """Charge a completed request that had no reservation.

    The money is already spent, so the charge is taken in full; only a hard budget that is
    already exhausted refuses it (docs/ledger.md, "Usage without a reservation").
    """
    _check_records(cost_pico_usd, records)
    unique = _unique_subjects(subjects)
    subject_json = [s.as_dict() for s in unique]
    content = {
        "subjects": subject_json,
        "cost": cost_pico_usd,
        "records": [r.to_payload() for r in records],
        "model": model,
        "provider": provider,
    }
    previous = idempotency.claim(
        conn,
        org=org,
        operation="usage",
        key=request_id,
        content_fingerprint=idempotency.fingerprint(idempotency_content or content),
    )
    if previous is not None:
        return settlement_from_json(previous)
    now = now or datetime.now(UTC)
    locked = queries.lock_budgets_of_subjects(conn, org=org, subjects=unique)
    holds = _holds_for(locked, now)
    deltas = [(hold, cost_pico_usd, 0) for hold in holds]
    after = queries.add_to_periods(conn, org=org, deltas=deltas)
    for budget, hold in zip(locked, holds, strict=True):
        spent, held = after[(hold.budget_id, hold.period_start)]
        left_before = budget.limit_pico_usd - (spent - cost_pico_usd) - held
        if budget.mode == "hard" and left_before <= 0 and cost_pico_usd > 0:
            raise BudgetExceeded.of(budget, remaining_pico_usd=0, requested_pico_usd=cost_pico_usd)
    flagged = _over_limit(after, budgets={b.budget_id: b for b in locked}, holds=holds)
    ledger.append_many(
        conn,
        [
            {
                "org": org,
                "event_type": events.COMMITTED,
                "occurred_at": now,
                "request_id": request_id,
                "budget_ids": [h.budget_id for h in holds],
                "amount_pico_usd": cost_pico_usd,
                "payload": {
                    "held_pico_usd": 0,
                    "overrun": bool(flagged),
                    "late": False,
                    "subjects": subject_json,
                    "deltas": _delta_payload(deltas),
                    "messages": len(records),
                    "flagged_budgets": flagged,
                    "model": model,
                    "provider": provider,
                    "direct": True,
                },
            },
            *_usage_events(
                org=org,
                request_id=request_id,
                reservation_id=None,
                subjects=subject_json,
                records=records,
                occurred_at=now,
            ),
        ],
    )
    alerts.raise_for_charge(
        conn,
        org=org,
        budgets=locked,
        holds=holds,
        after=after,
        charged_pico_usd=cost_pico_usd,
        now=now,
        request_id=request_id,
    )
    settlement = Settlement(
        org=org,
        request_id=request_id,
        reservation_id=None,
        cost_pico_usd=cost_pico_usd,
        held_pico_usd=0,
        overrun=bool(flagged),
        late=False,
        flagged_budgets=tuple(flagged),
        details=details or {},
    )
    idempotency.store(
        conn, org=org, operation="usage", key=request_id, response=settlement_json(settlement)
    )
    return settlement
