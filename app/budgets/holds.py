"""Reserve, extend, commit, cancel and expire holds; charge usage without a hold.

Every function here runs inside the caller's transaction and changes the projections and the
event stream together. Lock order everywhere: idempotency key, reservation, budgets by id (a
sliced budget's row, then its slices; app/budgets/escrow.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row

from app.alerts import service as alerts
from app.budgets import escrow, queries
from app.budgets.errors import ReservationNotFound, ReservationSettled
from app.budgets.model import (
    BudgetRemaining,
    Hold,
    Reservation,
    Settlement,
    Subject,
)
from app.errors import InvalidInput
from app.ledger import events, idempotency
from app.ledger import service as ledger
from app.ledger.records import UsageRecord

Delta = tuple[Hold, int, int]


def _delta_payload(deltas: Sequence[Delta]) -> list[dict[str, Any]]:
    return [
        {
            **escrow.hold_json(hold),
            "spent_pico_usd": spent,
            "held_pico_usd": held,
        }
        for hold, spent, held in deltas
    ]


def _holds_payload(holds: Sequence[Hold]) -> list[dict[str, Any]]:
    return [escrow.hold_json(h) for h in holds]


def _holds_from_payload(payload: Sequence[dict[str, Any]]) -> list[Hold]:
    return [escrow.hold_from_json(h) for h in payload]


def _remaining(applied: Sequence[escrow.Applied]) -> list[BudgetRemaining]:
    return [
        BudgetRemaining(
            a.budget.budget_id,
            a.budget.subject,
            a.budget.mode,
            a.budget.limit_pico_usd,
            a.remaining_pico_usd,
        )
        for a in applied
    ]


def _deltas(applied: Sequence[escrow.Applied]) -> list[Delta]:
    return [(a.hold, a.spent_pico_usd, a.held_pico_usd) for a in applied]


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
    subject_json = [s.as_dict() for s in unique]
    content = {
        "subjects": subject_json,
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
    applied = escrow.charge_subjects(
        conn,
        org=org,
        subjects=unique,
        at=now,
        spent=0,
        held=amount_pico_usd,
        check=escrow.check_take,
    )
    holds = [a.hold for a in applied]
    holds_json = _holds_payload(holds)
    deltas = _deltas(applied)
    remaining = _remaining(applied)
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
    # The reservation row, its event and the idempotency response: one round trip.
    ledger.append_many(
        conn,
        [
            {
                "org": org,
                "event_type": events.RESERVED,
                "occurred_at": now,
                "request_id": request_id,
                "reservation_id": reservation.reservation_id,
                "budget_ids": [h.budget_id for h in holds],
                "amount_pico_usd": amount_pico_usd,
                "payload": {
                    "subjects": subject_json,
                    "holds": holds_json,
                    "deltas": _delta_payload(deltas),
                    "expires_at": reservation.expires_at.isoformat(),
                    "model": model,
                    "provider": provider,
                    "metadata": metadata,
                    "version": 1,
                },
            }
        ],
        alongside=[
            queries.inserting_reservation(
                org=org,
                reservation_id=reservation.reservation_id,
                request_id=request_id,
                amount_pico_usd=amount_pico_usd,
                subjects=subject_json,
                holds=holds_json,
                model=model,
                provider=provider,
                metadata=metadata,
                reserved_at=now,
                expires_at=reservation.expires_at,
            ),
            idempotency.storing(
                org=org,
                operation="reserve",
                key=request_id,
                response=reservation_json(reservation),
            ),
        ],
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
    applied = escrow.settle_holds(
        conn,
        org=org,
        holds=_holds_from_payload(row.holds),
        spent=0,
        held=increase,
        check=escrow.check_take,
    )
    live_holds = [a.hold for a in applied]
    remaining = _remaining(applied)
    deltas = _deltas(applied) if increase else []
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


def claim_commit(
    conn: Connection, *, org: str, reservation_id: UUID, content: Any
) -> Settlement | Row[Any]:
    """Claim the commit's idempotency key, then lock the reservation (the lock order).

    Returns the first commit's settlement when ``content`` repeats it, else the reservation's
    row, locked, still held or expired; raises when it is missing, committed or cancelled."""
    previous = idempotency.claim(
        conn,
        org=org,
        operation="commit",
        key=str(reservation_id),
        content_fingerprint=idempotency.fingerprint(content),
    )
    if previous is not None:
        return settlement_from_json(previous)
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
    return row


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
    claimed: Row[Any] | None = None,
) -> Settlement:
    """Release the hold and charge the actual cost, with one usage event per message.

    A cost above the hold is charged in full and flagged as an overrun; a commit after the
    hold expired is charged all the same and flagged as late. ``claimed``: the row that
    ``claim_commit`` returned in this transaction (the key claimed and the row locked).
    """
    _check_records(cost_pico_usd, records)
    if claimed is None:
        content = {"cost": cost_pico_usd, "records": [r.to_payload() for r in records]}
        found = claim_commit(
            conn, org=org, reservation_id=reservation_id, content=idempotency_content or content
        )
        if isinstance(found, Settlement):
            return found
        claimed = found
    row = claimed
    now = now or datetime.now(UTC)
    still_held = row.state == "held"
    late = not still_held or now > row.expires_at
    release = row.amount_pico_usd if still_held else 0
    applied = escrow.settle_holds(
        conn, org=org, holds=_holds_from_payload(row.holds), spent=cost_pico_usd, held=-release
    )
    live_holds = [a.hold for a in applied]
    deltas = _deltas(applied)
    overrun = cost_pico_usd > row.amount_pico_usd
    flagged = _over_limit(conn, org=org, applied=applied)
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
    # The reservation's new state, its events and the idempotency response: one round trip.
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
        alongside=[
            queries.committing_reservation(
                org=org,
                reservation_id=reservation_id,
                cost_pico_usd=cost_pico_usd,
                settled_at=now,
                overrun=overrun,
                late=late,
                version=row.version + 1,
            ),
            idempotency.storing(
                org=org,
                operation="commit",
                key=str(reservation_id),
                response=settlement_json(settlement),
            ),
        ],
    )
    # After the charge's own events, so the stream shows the cause before the alert.
    _raise_alerts(
        conn,
        org=org,
        applied=applied,
        charged_pico_usd=cost_pico_usd,
        now=now,
        request_id=row.request_id,
        reservation_id=reservation_id,
    )
    return settlement


def _over_limit(conn: Connection, *, org: str, applied: Sequence[escrow.Applied]) -> list[str]:
    """Budgets whose period is now past its limit (soft budgets, overruns, late commits).

    A change made on one slice only (the fast path) knows the period's totals only when the
    slice is an open slice of a hard budget: then no slice is negative, so the period is within
    its limit. Otherwise its totals are read without the budget's lock: exact but for charges
    that commit concurrently (docs/ledger.md, "Hot budgets: escrow slices")."""
    unknown = [
        a.hold
        for a in applied
        if a.totals is None and not (a.budget.mode == "hard" and a.slice_open)
    ]
    read = queries.period_balances(conn, org=org, holds=unknown) if unknown else {}
    flagged = []
    for a in applied:
        totals = a.totals or read.get((a.hold.budget_id, a.hold.period_start))
        if totals is not None and sum(totals) > a.budget.limit_pico_usd:
            flagged.append(str(a.budget.budget_id))
    return flagged


def _raise_alerts(
    conn: Connection,
    *,
    org: str,
    applied: Sequence[escrow.Applied],
    charged_pico_usd: int,
    now: datetime,
    request_id: str,
    reservation_id: UUID | None = None,
) -> None:
    """Alert levels the charge crossed, where the period's totals are exact (its budget was
    locked). A charge on one slice cannot know them; the sweeper raises its levels
    (app/budgets/sweeper.py, raise_sliced_alerts)."""
    exact = [a for a in applied if a.totals is not None]
    if not exact:
        return
    alerts.raise_for_charge(
        conn,
        org=org,
        budgets=[a.budget for a in exact],
        holds=[a.hold for a in exact],
        after={(a.hold.budget_id, a.hold.period_start): a.totals for a in exact if a.totals},
        charged_pico_usd=charged_pico_usd,
        now=now,
        request_id=request_id,
        reservation_id=reservation_id,
    )


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
    applied = escrow.settle_holds(
        conn, org=row.org, holds=_holds_from_payload(row.holds), spent=0, held=-row.amount_pico_usd
    )
    deltas = _deltas(applied)
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
    applied = escrow.charge_subjects(
        conn,
        org=org,
        subjects=unique,
        at=now,
        spent=cost_pico_usd,
        held=0,
        check=escrow.check_usage,
    )
    holds = [a.hold for a in applied]
    deltas = _deltas(applied)
    flagged = _over_limit(conn, org=org, applied=applied)
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
    _raise_alerts(
        conn,
        org=org,
        applied=applied,
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
