"""Gateway routes: reservations, commit, cancel, extend, direct usage and quotes."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request, status

from app.api.deps import Caller, Db, Gateway, Prices, read_org, write_org
from app.api.schemas import (
    CancelIn,
    CommitIn,
    ExtendIn,
    QuoteIn,
    ReservationCreate,
    ReservationOut,
    SettlementOut,
    UsageIn,
)
from app.auth.service import Principal
from app.budgets import holds, queries
from app.budgets.errors import ReservationNotFound
from app.budgets.model import Reservation, Settlement, Subject
from app.budgets.router import ERRORS
from app.errors import InvalidInput
from app.gateway import service
from app.money import format_usd, parse_usd
from app.pricing import service as pricing

router = APIRouter(prefix="/v1", tags=["gateway"])

BUDGET_ERRORS: dict[int | str, dict[str, str]] = {
    **ERRORS,
    402: {
        "description": "A hard budget cannot take it: type .../budget-exceeded, naming "
        "budget_id, limit_usd and remaining_usd (problem+json)"
    },
    409: {"description": "Idempotency key reused with other content, or already settled"},
    503: {"description": "Database busy (lock timeout, pool exhausted): retry with the same key"},
}


def _reservation_out(reservation: Reservation) -> ReservationOut:
    return ReservationOut(
        reservation_id=str(reservation.reservation_id),
        request_id=reservation.request_id,
        org=reservation.org,
        state=reservation.state,
        amount_usd=format_usd(reservation.amount_pico_usd),
        expires_at=reservation.expires_at.isoformat(),
        budgets=[b.as_json() for b in reservation.budgets],
        max_output_tokens=reservation.details.get("max_output_tokens"),
        estimate=reservation.details.get("estimate"),
    )


def _settlement_out(settlement: Settlement) -> SettlementOut:
    return SettlementOut(
        request_id=settlement.request_id,
        reservation_id=str(settlement.reservation_id) if settlement.reservation_id else None,
        org=settlement.org,
        cost_usd=format_usd(settlement.cost_pico_usd),
        held_usd=format_usd(settlement.held_pico_usd),
        overrun=settlement.overrun,
        late=settlement.late,
        flagged_budgets=list(settlement.flagged_budgets),
        breakdown=settlement.details,
    )


def _messages(body: CommitIn) -> list[service.Message]:
    if body.messages and body.usage is not None:
        raise InvalidInput("give either usage or messages, not both", field="usage")
    if body.messages:
        return [
            service.Message(
                usage=m.usage,
                model=m.model,
                provider=m.provider,
                call_type=m.call_type,
                ttft_ms=m.ttft_ms,
                duration_ms=m.duration_ms,
                metadata=m.metadata,
            )
            for m in body.messages
        ]
    if body.usage is None:
        raise InvalidInput("usage (or messages) is required", field="usage")
    return [
        service.Message(
            usage=body.usage,
            call_type=body.call_type,
            ttft_ms=body.ttft_ms,
            duration_ms=body.duration_ms,
        )
    ]


def _reservation_org(engine: Db, caller: Principal, reservation_id: UUID, org: str | None) -> str:
    """The reservation's org, as far as this key may see it (404 otherwise)."""
    with engine.connect() as conn:
        row = queries.find_reservation(
            conn, reservation_id=reservation_id, org=read_org(caller, org)
        )
    if row is None:
        raise ReservationNotFound(
            f"no reservation {reservation_id}", reservation_id=str(reservation_id)
        )
    return str(row.org)


def _body(request_body: Any) -> Any:
    return request_body.model_dump(mode="json", exclude_none=True)


@router.post(
    "/reservations",
    status_code=status.HTTP_201_CREATED,
    response_model=ReservationOut,
    responses=BUDGET_ERRORS,
)
def create_reservation(
    body: ReservationCreate, caller: Gateway, engine: Db, table: Prices, request: Request
) -> ReservationOut:
    """Hold a stated amount, or a request's worst case, against every budget of the subjects.

    With `"fit": "clamp"` and a `request` body, a worst case that does not fit a hard budget is
    clamped: what fits is reserved and `max_output_tokens` is the output cap to enforce.
    """
    org = write_org(caller, body.org)
    if body.amount_usd is not None and body.request is not None:
        raise InvalidInput("give amount_usd or request, not both", field="amount_usd")
    ttl = body.ttl_seconds or request.app.state.settings.default_hold_ttl_seconds
    with engine.begin() as conn:
        reservation = service.reserve(
            conn,
            table,
            org=org,
            request_id=body.request_id,
            subjects=[Subject(s.type, s.id) for s in body.subjects],
            ttl_seconds=ttl,
            amount_pico_usd=parse_usd(body.amount_usd) if body.amount_usd else None,
            request=body.request,
            model=body.model,
            provider=body.provider,
            fit=body.fit,
            metadata=body.metadata,
            idempotency_content=_body(body),
        )
    return _reservation_out(reservation)


@router.get(
    "/reservations/{reservation_id}",
    response_model=ReservationOut,
    responses={**ERRORS, 404: {"description": "No such reservation (for this key)"}},
)
def get_reservation(reservation_id: UUID, caller: Caller, engine: Db) -> ReservationOut:
    """A reservation's current state and hold."""
    with engine.connect() as conn:
        row = queries.find_reservation(conn, reservation_id=reservation_id, org=read_org(caller))
    if row is None:
        raise ReservationNotFound(
            f"no reservation {reservation_id}", reservation_id=str(reservation_id)
        )
    return ReservationOut(
        reservation_id=str(row.reservation_id),
        request_id=row.request_id,
        org=row.org,
        state=row.state,
        amount_usd=format_usd(row.amount_pico_usd),
        expires_at=row.expires_at.isoformat(),
        budgets=[],
    )


@router.post(
    "/reservations/{reservation_id}/commit",
    response_model=SettlementOut,
    responses={**BUDGET_ERRORS, 404: {"description": "No such reservation"}},
)
def commit_reservation(
    reservation_id: UUID, body: CommitIn, caller: Gateway, engine: Db, table: Prices
) -> SettlementOut:
    """Charge the actual cost of the request, priced exactly from its usage, and release the
    hold; one usage record per message. Over the hold: charged and `overrun`; after expiry:
    charged and `late`."""
    org = _reservation_org(engine, caller, reservation_id, body.org)
    messages = _messages(body)
    with engine.begin() as conn:
        settlement = service.commit(
            conn,
            table,
            org=org,
            reservation_id=reservation_id,
            messages=messages,
            model=body.model,
            provider=body.provider,
            billing_time=body.billing_time,
            metadata=body.metadata,
            idempotency_content=_body(body),
        )
    return _settlement_out(settlement)


@router.post(
    "/reservations/{reservation_id}/cancel",
    response_model=ReservationOut,
    responses={**BUDGET_ERRORS, 404: {"description": "No such reservation"}},
)
def cancel_reservation(
    reservation_id: UUID, caller: Gateway, engine: Db, body: CancelIn | None = None
) -> ReservationOut:
    """Release the hold without charging (a failed request)."""
    org = _reservation_org(engine, caller, reservation_id, body.org if body else None)
    with engine.begin() as conn:
        return _reservation_out(holds.cancel(conn, org=org, reservation_id=reservation_id))


@router.post(
    "/reservations/{reservation_id}/extend",
    response_model=ReservationOut,
    responses={**BUDGET_ERRORS, 404: {"description": "No such reservation"}},
)
def extend_reservation(
    reservation_id: UUID, body: ExtendIn, caller: Gateway, engine: Db
) -> ReservationOut:
    """Raise the hold to `amount_usd` and/or push the expiry to now + `ttl_seconds` while a
    response streams; refused like a reservation when a hard budget cannot take it."""
    org = _reservation_org(engine, caller, reservation_id, body.org)
    with engine.begin() as conn:
        return _reservation_out(
            holds.extend(
                conn,
                org=org,
                reservation_id=reservation_id,
                amount_pico_usd=parse_usd(body.amount_usd) if body.amount_usd else None,
                ttl_seconds=body.ttl_seconds,
            )
        )


@router.post(
    "/usage",
    status_code=status.HTTP_201_CREATED,
    response_model=SettlementOut,
    responses=BUDGET_ERRORS,
)
def record_usage(body: UsageIn, caller: Gateway, engine: Db, table: Prices) -> SettlementOut:
    """Charge a completed request that had no reservation (same body as commit, plus
    `request_id` and `subjects`)."""
    org = write_org(caller, body.org)
    messages = _messages(body)
    with engine.begin() as conn:
        settlement = service.record_usage(
            conn,
            table,
            org=org,
            request_id=body.request_id,
            subjects=[Subject(s.type, s.id) for s in body.subjects],
            messages=messages,
            model=body.model,
            provider=body.provider,
            billing_time=body.billing_time,
            metadata=body.metadata,
            idempotency_content=_body(body),
        )
    return _settlement_out(settlement)


@router.post("/quotes", responses=ERRORS)
def quote(body: QuoteIn, caller: Gateway, table: Prices) -> dict[str, Any]:
    """The exact cost of a usage record (or, with `request`, a request's worst case), without
    touching any budget."""
    if (body.usage is None) == (body.request is None):
        raise InvalidInput("give exactly one of usage or request", field="usage")
    if body.request is not None:
        at = pricing.parse_billing_time(body.billing_time)
        return pricing.estimate_to_json(
            pricing.worst_case(
                table,
                model=body.model,
                provider=body.provider,
                request=body.request,
                billing_time=at,
            )
        )
    assert body.usage is not None
    return pricing.quote_to_json(
        pricing.quote(
            table,
            model=body.model,
            provider=body.provider,
            usage=body.usage,
            billing_time=body.billing_time,
        )
    )
