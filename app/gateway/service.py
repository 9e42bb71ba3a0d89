"""What a gateway calls: reservations priced from a request body, commits and direct usage
priced from the provider's usage. Composes the pricing engine with the budgets' holds."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from app.budgets import holds
from app.budgets import service as budgets
from app.budgets.errors import BudgetExceeded
from app.budgets.model import BudgetStatus, Reservation, Settlement, Subject
from app.errors import InvalidInput, LedgerError
from app.ledger import idempotency
from app.ledger.records import UsageRecord
from app.pricing import service as pricing
from app.pricing.table import PriceTable
from app.pricing.usage import usage_to_fields

_TOKEN_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "cache_creation_1h_tokens",
    "reasoning_tokens",
)
_OUTPUT_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


@dataclass(frozen=True)
class Message:
    """One message's usage as the gateway reports it (canonical or provider-native)."""

    usage: Mapping[str, Any]
    model: str | None = None
    provider: str | None = None
    call_type: str = "chat"
    ttft_ms: int | None = None
    duration_ms: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _with_output_cap(request: Mapping[str, Any], cap: int) -> dict[str, Any]:
    """The request with its output capped at ``cap`` tokens, in the field its style uses."""
    capped = copy.deepcopy(dict(request))
    present = [key for key in _OUTPUT_CAPS if isinstance(capped.get(key), int)]
    config = capped.get("generationConfig")
    if isinstance(config, dict) and isinstance(config.get("maxOutputTokens"), int):
        config["maxOutputTokens"] = min(config["maxOutputTokens"], cap)
        present.append("generationConfig")
    for key in present:
        if key != "generationConfig":
            capped[key] = min(capped[key], cap)
    if not present:
        if "contents" in capped:
            capped.setdefault("generationConfig", {})["maxOutputTokens"] = cap
        else:
            capped["max_tokens"] = cap
    return capped


def _tightest_hard_budget(
    conn: Connection, *, org: str, subjects: Sequence[Subject], at: datetime
) -> BudgetStatus | None:
    """The hard budget of ``subjects`` with the least room, or None without one."""
    hard = [
        status
        for subject in subjects
        for status in budgets.list_budget_statuses(
            conn, org=org, subject_type=subject.type, subject_id=subject.id, at=at
        )
        if status.budget.mode == "hard"
    ]
    return min(hard, key=lambda status: status.remaining_pico_usd, default=None)


def _previous(conn: Connection, *, org: str, operation: str, key: str, content: Any) -> Any:
    """The stored response of an earlier call with ``key`` and the same content, if any.

    Looked up only when pricing a call failed: a retry whose pricing succeeds is answered by
    the claim of its idempotency key in ``app.budgets.holds`` (its conflict path returns the
    stored response), so the usual call saves this round trip; a retry whose pricing fails
    (a price or an override removed since) still gets the first result back.
    """
    if content is None:
        return None
    return idempotency.lookup(
        conn,
        org=org,
        operation=operation,
        key=key,
        content_fingerprint=idempotency.fingerprint(content),
    )


def _clamped_estimate(
    table: PriceTable,
    *,
    model: str,
    provider: str | None,
    request: Mapping[str, Any],
    at: datetime,
    available: int,
    status: BudgetStatus,
    wanted: pricing.Estimate,
) -> pricing.Estimate:
    """The worst case of ``request`` with its output capped so that it fits ``available``.

    Writing the cap into the body changes the body's own size, hence its input bound, so the
    cap is recomputed on the capped body until the estimate fits (two rounds in practice).
    """
    candidate: Mapping[str, Any] = request
    for _ in range(5):
        cap = pricing.clamp_output(
            table,
            model=model,
            provider=provider,
            request=candidate,
            billing_time=at,
            available_pico_usd=available,
        )
        if cap is None:
            break
        candidate = _with_output_cap(request, cap)
        estimate = pricing.worst_case(
            table, model=model, provider=provider, request=candidate, billing_time=at
        )
        if estimate.amount_pico_usd <= available:
            return estimate
    raise BudgetExceeded.of(
        status.budget, remaining_pico_usd=available, requested_pico_usd=wanted.amount_pico_usd
    )


def _estimate(
    conn: Connection,
    table: PriceTable,
    *,
    org: str,
    subjects: Sequence[Subject],
    request: Mapping[str, Any] | None,
    model: str | None,
    provider: str | None,
    fit: str,
    now: datetime,
) -> tuple[int, dict[str, Any]]:
    """The amount to hold for ``request``'s worst case (clamped with ``fit="clamp"``), and
    the details returned with the reservation."""
    if request is None:
        raise InvalidInput("give amount_usd, or a request body to estimate", field="amount_usd")
    if not model:
        raise InvalidInput("model is required to estimate a request", field="model")
    estimate = pricing.worst_case(
        table, model=model, provider=provider, request=request, billing_time=now
    )
    if fit == "clamp":
        tightest = _tightest_hard_budget(conn, org=org, subjects=subjects, at=now)
        if tightest is not None and estimate.amount_pico_usd > tightest.remaining_pico_usd:
            estimate = _clamped_estimate(
                table,
                model=model,
                provider=provider,
                request=request,
                at=now,
                available=max(tightest.remaining_pico_usd, 0),
                status=tightest,
                wanted=estimate,
            )
    details = {
        "max_output_tokens": estimate.max_output_tokens,
        "estimate": pricing.estimate_to_json(estimate),
    }
    return estimate.amount_pico_usd, details


def reserve(
    conn: Connection,
    table: PriceTable,
    *,
    org: str,
    request_id: str,
    subjects: Sequence[Subject],
    ttl_seconds: int,
    amount_pico_usd: int | None = None,
    request: Mapping[str, Any] | None = None,
    model: str | None = None,
    provider: str | None = None,
    fit: str = "refuse",
    metadata: dict[str, Any] | None = None,
    idempotency_content: Any = None,
) -> Reservation:
    """Reserve a stated amount, or the worst case of ``request``; with ``fit="clamp"`` reserve
    what fits a hard budget and return the output cap that keeps the request within it."""
    content = idempotency_content
    now = datetime.now(UTC)
    details: dict[str, Any] = {}
    if amount_pico_usd is None:
        try:
            amount_pico_usd, details = _estimate(
                conn,
                table,
                org=org,
                subjects=subjects,
                request=request,
                model=model,
                provider=provider,
                fit=fit,
                now=now,
            )
        except LedgerError:
            previous = _previous(
                conn, org=org, operation="reserve", key=request_id, content=content
            )
            if previous is not None:
                return holds.reservation_from_json(previous)
            raise
    return holds.reserve(
        conn,
        org=org,
        request_id=request_id,
        subjects=subjects,
        amount_pico_usd=amount_pico_usd,
        ttl_seconds=ttl_seconds,
        model=model,
        provider=provider,
        metadata=metadata,
        now=now,
        idempotency_content=content,
        details=details,
    )


def _price_messages(
    table: PriceTable,
    messages: Sequence[Message],
    *,
    model: str | None,
    provider: str | None,
    billing_time: str | None,
    metadata: dict[str, Any],
) -> tuple[list[UsageRecord], list[dict[str, Any]]]:
    records, quotes = [], []
    for index, message in enumerate(messages):
        message_model = message.model or model
        if not message_model:
            raise InvalidInput(
                "model is required to price usage",
                field=f"messages[{index}].model" if len(messages) > 1 else "model",
            )
        try:
            quote = pricing.quote(
                table,
                model=message_model,
                provider=message.provider or provider,
                usage=message.usage,
                billing_time=billing_time,
            )
        except InvalidInput as error:
            # Name the message, as for a missing model: `messages[1].usage.input_tokens`.
            if len(messages) > 1:
                error.fields["field"] = f"messages[{index}].{error.fields['field']}"
            raise
        fields = usage_to_fields(quote.usage)
        records.append(
            UsageRecord(
                cost_pico_usd=quote.total_pico_usd,
                model=message_model,
                provider=quote.provider,
                call_type=message.call_type,
                **{name: getattr(quote.usage, name) for name in _TOKEN_FIELDS},
                ttft_ms=message.ttft_ms,
                duration_ms=message.duration_ms,
                model_key=quote.model_key,
                priced_by=quote.priced_by,
                units={k: v for k, v in fields.items() if k not in _TOKEN_FIELDS},
                metadata={**metadata, **message.metadata},
            )
        )
        quotes.append(pricing.quote_to_json(quote))
    return records, quotes


def commit(
    conn: Connection,
    table: PriceTable,
    *,
    org: str,
    reservation_id: UUID,
    messages: Sequence[Message],
    model: str | None = None,
    provider: str | None = None,
    billing_time: str | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_content: Any = None,
) -> Settlement:
    """Price each message's usage and commit the reservation with the exact total.

    The idempotency key is claimed and the reservation locked before pricing: a retry gets
    the first settlement back without being priced again (prices may have changed since), and
    the reservation's model and metadata are read once, under its lock. ``idempotency_content``
    (the API passes the request body) defaults to these arguments."""
    if idempotency_content is None:
        idempotency_content = {
            "messages": [dataclasses.asdict(m) for m in messages],
            "model": model,
            "provider": provider,
            "billing_time": billing_time,
            "metadata": metadata,
        }
    claimed = holds.claim_commit(
        conn, org=org, reservation_id=reservation_id, content=idempotency_content
    )
    if isinstance(claimed, Settlement):
        return claimed
    records, quotes = _price_messages(
        table,
        messages,
        model=model or claimed.model,
        provider=provider or claimed.provider,
        billing_time=billing_time,
        metadata={**claimed.metadata, **(metadata or {})},
    )
    return holds.commit_reservation(
        conn,
        org=org,
        reservation_id=reservation_id,
        cost_pico_usd=sum(r.cost_pico_usd for r in records),
        records=records,
        idempotency_content=idempotency_content,
        details={"messages": quotes},
        claimed=claimed,
    )


def record_usage(
    conn: Connection,
    table: PriceTable,
    *,
    org: str,
    request_id: str,
    subjects: Sequence[Subject],
    messages: Sequence[Message],
    model: str | None = None,
    provider: str | None = None,
    billing_time: str | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_content: Any = None,
) -> Settlement:
    """Price a completed request's usage and charge it without a reservation."""
    try:
        records, quotes = _price_messages(
            table,
            messages,
            model=model,
            provider=provider,
            billing_time=billing_time,
            metadata=metadata or {},
        )
    except LedgerError:
        previous = _previous(
            conn, org=org, operation="usage", key=request_id, content=idempotency_content
        )
        if previous is not None:
            return holds.settlement_from_json(previous)
        raise
    return holds.record_usage(
        conn,
        org=org,
        request_id=request_id,
        subjects=subjects,
        cost_pico_usd=sum(r.cost_pico_usd for r in records),
        records=records,
        model=model,
        provider=provider,
        idempotency_content=idempotency_content,
        details={"messages": quotes},
    )
