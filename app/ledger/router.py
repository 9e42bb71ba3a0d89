"""The audit trail: the event stream with cursor paging, and one request's whole story."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from app.api.deps import Db, Reader, read_org
from app.errors import InvalidInput, NotFound
from app.ledger import events as types
from app.ledger import service
from app.ledger.events import Event
from app.money import format_usd

router = APIRouter(prefix="/v1", tags=["audit"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown or revoked API key (problem+json)"},
    403: {"description": "Wrong scope, or another org than the key's (problem+json)"},
    422: {"description": "Invalid input; `field` names it (problem+json)"},
}
_PICO = "_pico_usd"
Name = Annotated[str | None, Query(max_length=200)]


def money_as_usd(value: Any) -> Any:
    """Payload money, stored as integer pico-USD under ``*_pico_usd`` keys, as ``*_usd``
    decimal strings: the API's one money format, and safe from JSON's 2**53 limit."""
    if isinstance(value, dict):
        converted = {}
        for key, item in value.items():
            if key.endswith(_PICO) and isinstance(item, int) and not isinstance(item, bool):
                converted[key[: -len(_PICO)] + "_usd"] = format_usd(item)
            else:
                converted[key] = money_as_usd(item)
        return converted
    if isinstance(value, list):
        return [money_as_usd(item) for item in value]
    return value


def event_json(event: Event) -> dict[str, Any]:
    return {
        "seq": str(event.seq),
        "org": event.org,
        "type": event.event_type,
        "request_id": event.request_id,
        "reservation_id": str(event.reservation_id) if event.reservation_id else None,
        "budget_id": str(event.budget_id) if event.budget_id else None,
        "budget_ids": [str(b) for b in event.budget_ids],
        "amount_usd": None if event.amount_pico_usd is None else format_usd(event.amount_pico_usd),
        "payload": money_as_usd(event.payload),
        "occurred_at": event.occurred_at.isoformat(),
        "recorded_at": event.recorded_at.isoformat(),
    }


def _json(data: dict[str, Any]) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), media_type="application/json")


def _seq(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) >= 2**63:  # seq is a bigint
        raise InvalidInput("after must be a seq from an earlier page (digits)", field="after")
    return int(text)


@router.get("/events", responses={**ERRORS, 200: {"content": {"application/json": {}}}})
def list_events(
    caller: Reader,
    engine: Db,
    after: Annotated[str, Query(max_length=19, description="The last seq already read")] = "0",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    org: Name = None,
    request_id: Name = None,
    subject_id: Name = None,
) -> Response:
    """Events after a cursor, in seq order. A page never skips an event that commits later:
    follow ``next_after`` until a page comes back empty, then poll."""
    position = _seq(after)
    with engine.connect() as conn:
        page = service.read_events(
            conn,
            after=position,
            limit=limit,
            org=read_org(caller, org),
            request_id=request_id,
            subject_id=subject_id,
        )
    return _json(
        {
            "events": [event_json(e) for e in page],
            "next_after": str(page[-1].seq) if page else str(position),
            "more": len(page) == limit,
        }
    )


def _message(event: Event) -> dict[str, Any]:
    payload = event.payload
    return {
        "index": payload.get("message_index"),
        **{
            key: payload.get(key)
            for key in (
                "model",
                "provider",
                "call_type",
                "model_key",
                "priced_by",
                "prompt_tokens",
                "completion_tokens",
                "cache_read_tokens",
                "cache_creation_tokens",
                "cache_creation_1h_tokens",
                "reasoning_tokens",
                "ttft_ms",
                "duration_ms",
                "metadata",
            )
        },
        "cost_usd": format_usd(int(payload.get("cost_pico_usd", 0))),
    }


_SETTLING = {types.COMMITTED: "committed", types.CANCELLED: "cancelled", types.EXPIRED: "expired"}


@router.get(
    "/requests/{request_id}",
    responses={
        **ERRORS,
        200: {"content": {"application/json": {}}},
        404: {"description": "No event of this request (for this key)"},
    },
)
def request_story(request_id: str, caller: Reader, engine: Db, org: Name = None) -> Response:
    """Everything that happened to one request: reserve, extends, the settlement, and each
    message's usage and cost, in order."""
    scope = read_org(caller, org)
    with engine.connect() as conn:
        found = service.read_events(
            conn, org=scope, request_id=request_id, limit=10_000, settled_only=False
        )
    if not found:
        raise NotFound(f"no events for request {request_id!r}", request_id=request_id)
    orgs = sorted({e.org for e in found})
    if len(orgs) > 1:
        raise InvalidInput(
            f"request {request_id!r} exists in several orgs ({', '.join(orgs)}): name one",
            field="org",
        )
    state = "held"
    reserved = None
    cost = None
    first = found[0].payload
    for event in found:
        if event.event_type in (types.RESERVED, types.EXTENDED):
            reserved = event.amount_pico_usd
        elif event.event_type in _SETTLING:
            state = _SETTLING[event.event_type]
            if event.event_type == types.COMMITTED:
                cost = event.amount_pico_usd
                if reserved is None:
                    state = "recorded"  # usage without a reservation
    return _json(
        {
            "org": orgs[0],
            "request_id": request_id,
            "reservation_id": next(
                (str(e.reservation_id) for e in found if e.reservation_id), None
            ),
            "state": state,
            "reserved_usd": None if reserved is None else format_usd(reserved),
            "cost_usd": None if cost is None else format_usd(cost),
            "subjects": first.get("subjects", []),
            "timeline": [event_json(e) for e in found],
            "messages": [_message(e) for e in found if e.event_type == types.USAGE_RECORDED],
        }
    )
