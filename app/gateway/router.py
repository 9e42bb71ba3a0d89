"""Gateway routes: reservations, commit, cancel, extend, direct usage (one or a batch) and
quotes."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError

from app.api.deps import (
    Caller,
    Db,
    Gateway,
    Prices,
    book_of,
    engine_of,
    read_org,
    write_org,
)
from app.api.schemas import (
    CancelIn,
    CommitIn,
    ExtendIn,
    QuoteIn,
    ReservationCreate,
    ReservationOut,
    SettlementOut,
    UsageBatchIn,
    UsageBatchOut,
    UsageIn,
)
from app.auth.service import Principal
from app.budgets import holds, queries
from app.budgets.errors import ReservationNotFound
from app.budgets.model import Reservation, Settlement, Subject
from app.budgets.router import ERRORS
from app.errors import PROBLEM_BASE, InvalidInput, LedgerError
from app.gateway import service
from app.money import format_usd, parse_usd
from app.overrides.service import PriceBook
from app.pricing import service as pricing
from app.pricing.errors import UnknownModel
from app.pricing.table import PriceTable

router = APIRouter(prefix="/v1", tags=["gateway"])
_T = TypeVar("_T")

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


def _name_the_message(body: CommitIn, error: InvalidInput) -> None:
    """The service names a lone message's usage as the body's `usage`; a body that gave
    `messages` has none, so point into the message (several messages are named already)."""
    field = error.fields.get("field")
    if body.messages and isinstance(field, str) and field.startswith("usage"):
        error.fields["field"] = f"messages[0].{field}"


def _reservation_org(
    engine: Engine, caller: Principal, reservation_id: UUID, org: str | None
) -> str:
    """The org of the reservation a call names, as far as this key may see it.

    A confined key, or a body naming the org, says it without a query: the service's own read
    of the reservation in that org then answers 404 for one this key may not see. Only an
    unconfined key without ``org`` costs a lookup (404 when there is no such reservation).
    """
    known = read_org(caller, org)
    if known is not None:
        return known
    with engine.connect() as conn:
        row = queries.find_reservation(conn, reservation_id=reservation_id, org=None)
    if row is None:
        raise ReservationNotFound(
            f"no reservation {reservation_id}", reservation_id=str(reservation_id)
        )
    return str(row.org)


async def _in_transaction_thread(
    request: Request, function: Callable[..., _T], *arguments: Any
) -> _T:
    """``function(*arguments)`` on the app's transaction threads (blocking database work must
    not run on the event loop)."""
    executor: Executor = request.app.state.transactions
    return await asyncio.get_running_loop().run_in_executor(
        executor, functools.partial(function, *arguments)
    )


def _body(request_body: Any) -> Any:
    return request_body.model_dump(mode="json", exclude_none=True)


@router.post(
    "/reservations",
    status_code=status.HTTP_201_CREATED,
    response_model=ReservationOut,
    responses=BUDGET_ERRORS,
)
async def create_reservation(
    body: ReservationCreate, caller: Gateway, request: Request
) -> ReservationOut:
    """Hold a stated amount, or a request's worst case, against every budget of the subjects.

    With `"fit": "clamp"` and a `request` body, a worst case that does not fit a hard budget is
    clamped: what fits is reserved and `max_output_tokens` is the output cap to enforce.
    """
    org = write_org(caller, body.org)
    if body.amount_usd is not None and body.request is not None:
        raise InvalidInput("give amount_usd or request, not both", field="amount_usd")
    ttl = body.ttl_seconds or request.app.state.settings.default_hold_ttl_seconds
    # The route is async and hands the database work to a worker thread once: a sync route
    # would cost a second hand-off to validate the response model (docs/benchmarks.md).
    reservation = await _in_transaction_thread(
        request, _reserve, engine_of(request), book_of(request), org, body, ttl
    )
    return _reservation_out(reservation)


def _reserve(
    engine: Engine, book: PriceBook, org: str, body: ReservationCreate, ttl: int
) -> Reservation:
    table = book.table()
    with engine.begin() as conn:
        return service.reserve(
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
async def commit_reservation(
    reservation_id: UUID, body: CommitIn, caller: Gateway, request: Request
) -> SettlementOut:
    """Charge the actual cost of the request, priced exactly from its usage, and release the
    hold; one usage record per message. Over the hold: charged and `overrun`; after expiry:
    charged and `late`."""
    settlement = await _in_transaction_thread(
        request, _commit, engine_of(request), book_of(request), caller, reservation_id, body
    )
    return _settlement_out(settlement)


def _commit(
    engine: Engine, book: PriceBook, caller: Principal, reservation_id: UUID, body: CommitIn
) -> Settlement:
    org = _reservation_org(engine, caller, reservation_id, body.org)
    messages = _messages(body)
    table = book.table()
    try:
        with engine.begin() as conn:
            return service.commit(
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
    except InvalidInput as error:
        _name_the_message(body, error)
        raise


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


def _charge(
    conn: Connection, table: PriceTable, *, org: str, body: UsageIn, messages: list[service.Message]
) -> Settlement:
    """Charge one direct usage body; the same call, and idempotency content, for
    POST /v1/usage and for each record of POST /v1/usage:batch."""
    try:
        return service.record_usage(
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
    except InvalidInput as error:
        _name_the_message(body, error)
        raise


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
        settlement = _charge(conn, table, org=org, body=body, messages=messages)
    return _settlement_out(settlement)


# Errors a record's own transaction may hit that a retry with the same request_id can clear:
# lock_not_available (lock_timeout), deadlock_detected, serialization_failure, query_canceled
# (statement_timeout): the record is refused alone, the rest of the batch goes on.
_TRANSIENT_SQLSTATES = frozenset({"55P03", "40P01", "40001", "57014"})


@dataclass(frozen=True)
class _Record:
    """One record of a batch that passed validation, ready to charge."""

    body: UsageIn
    messages: list[service.Message]


def _loc_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


def _record_field(index: int, field: str) -> str:
    """A field of record ``index`` as seen from the batch's body: ``records[3].messages[0]``."""
    base = f"records[{index}]"
    if not field:
        return base
    return base + field if field.startswith("[") else f"{base}.{field}"


def _invalid_record(index: int, error: ValidationError, instance: str) -> dict[str, Any]:
    """The problem POST /v1/usage returns for a schema error, with fields seen from the batch."""
    errors = [
        {"field": _record_field(index, _loc_path(tuple(e["loc"]))), "message": str(e["msg"])}
        for e in error.errors()
    ]
    first = errors[0]
    return {
        "type": PROBLEM_BASE + "invalid-input",
        "title": "Invalid input",
        "status": 422,
        "detail": f"{first['field']}: {first['message']}",
        "field": first["field"],
        "errors": errors,
        "instance": instance,
    }


def _model_field(body: UsageIn, model: str) -> str:
    """Which field of a record named the model that has no price."""
    for position, message in enumerate(body.messages or ()):
        if message.model == model:
            return f"messages[{position}].model"
    return "model"


def _refusal(index: int, error: LedgerError, body: UsageIn | None, instance: str) -> dict[str, Any]:
    """The problem POST /v1/usage returns for ``error``, with its field seen from the batch."""
    problem = error.problem(instance=instance)
    if isinstance(error, UnknownModel) and body is not None:
        problem["field"] = _model_field(body, error.model)
    if isinstance(problem.get("field"), str):
        problem["field"] = _record_field(index, problem["field"])
    return problem


def _unavailable(instance: str) -> dict[str, Any]:
    return {
        "type": PROBLEM_BASE + "unavailable",
        "title": "Service unavailable",
        "status": 503,
        "detail": "the database is busy (a lock wait timed out); retry the record with the "
        "same request_id",
        "instance": instance,
    }


def _parse_record(index: int, raw: Any, instance: str) -> _Record | dict[str, Any]:
    """Record ``index`` validated as a POST /v1/usage body, or the problem refusing it."""
    if isinstance(raw, dict) and "org" in raw:
        error = InvalidInput("org is given once, for the whole batch", field="org")
        return _refusal(index, error, None, instance)
    try:
        body = UsageIn.model_validate(raw)
    except ValidationError as invalid:
        return _invalid_record(index, invalid, instance)
    try:
        return _Record(body, _messages(body))
    except InvalidInput as error:
        return _refusal(index, error, body, instance)


def _request_id(raw: Any) -> str | None:
    value = raw.get("request_id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


@router.post(
    "/usage:batch",
    response_model=UsageBatchOut,
    responses={
        **ERRORS,
        422: {"description": "The batch itself is invalid: not 1-1,000 `records`, or `org`"},
        503: {
            "description": "Database unreachable: retry the same body (records are "
            "idempotent, so those already charged are answered, not charged again)"
        },
    },
)
def record_usage_batch(
    body: UsageBatchIn, caller: Gateway, engine: Db, table: Prices, request: Request
) -> JSONResponse:
    """Charge up to 1,000 completed requests that had no reservation, each record accepted or
    refused on its own.

    Each record is the body of POST /v1/usage without `org`, validated, idempotent on its own
    `request_id` and charged in its own transaction, so one refusal never undoes another
    record. `results[i]` has `status` 201 and the `settlement` POST /v1/usage would return, or
    the refusal's `status` and its problem+json `problem` (fields named from the batch's body,
    e.g. `records[3].messages[0].usage`). Resend the same batch to retry it: charged records
    answer with their original settlement and are never charged twice.
    """
    org = write_org(caller, body.org)
    instance = request.url.path
    results: list[dict[str, Any]] = []
    accepted = 0
    # One pooled connection for the whole batch; one short transaction per record, each taking
    # its locks in the fixed order (docs/ledger.md, "Lock order"), so a batch waits like
    # consecutive single calls would and can never deadlock with them (docs/api.md).
    with engine.connect() as conn:
        for index, raw in enumerate(body.records):
            result: dict[str, Any] = {"index": index, "request_id": _request_id(raw)}
            record = _parse_record(index, raw, instance)
            if not isinstance(record, _Record):
                results.append({**result, "status": record["status"], "problem": record})
                continue
            try:
                with conn.begin():
                    settlement = _charge(
                        conn, table, org=org, body=record.body, messages=record.messages
                    )
            except LedgerError as error:
                problem = _refusal(index, error, record.body, instance)
            except OperationalError as error:
                if getattr(error.orig, "sqlstate", None) not in _TRANSIENT_SQLSTATES:
                    raise
                problem = _unavailable(instance)
            else:
                accepted += 1
                out = _settlement_out(settlement).model_dump(mode="json")
                results.append({**result, "status": 201, "settlement": out})
                continue
            results.append({**result, "status": problem["status"], "problem": problem})
    return JSONResponse(
        {"results": results, "accepted": accepted, "refused": len(results) - accepted}
    )


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
