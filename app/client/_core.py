"""What the sync and async clients share: request bodies, the retry policy, error mapping.

Each public method builds a :class:`Call` once (including its generated ``request_id``), so
every retry of a logical request sends the very same body and is idempotent on the server.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar

import httpx

from app.client.errors import ConnectionFailed, LedgerError, Unavailable, error_class
from app.client.models import Budget, Quote, Reservation, Settlement, Subject, UsageBatch

T = TypeVar("T")

Money = Decimal | str | int
SubjectLike = tuple[str, str] | Mapping[str, str] | Subject
RETRY_STATUSES = frozenset({503, 504})
BATCH_RECORD_KEYS = frozenset(
    {
        "subjects",
        "usage",
        "request_id",
        "messages",
        "model",
        "provider",
        "call_type",
        "ttft_ms",
        "duration_ms",
        "billing_time",
        "metadata",
    }
)
DEFAULT_TIMEOUT = 10.0


def new_request_id() -> str:
    """A fresh idempotency key for one logical request."""
    return str(uuid.uuid4())


def money(value: Money) -> str:
    """An exact USD string for the server: Decimals in plain notation; floats are refused."""
    if isinstance(value, bool | float):  # money-safe: refuses floats
        raise TypeError("money must be a Decimal, str or int, never a float")  # money-safe
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"not an amount: {value}")
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"money must be a Decimal, str or int, not {type(value).__name__}")


def fraction(value: Money) -> str:
    return money(value)


def subjects_json(subjects: Iterable[SubjectLike]) -> list[dict[str, str]]:
    """``[("team", "a"), {"type": "user", "id": "b"}]`` as the API's subject objects."""
    result = []
    for subject in subjects:
        if isinstance(subject, Subject):
            result.append({"type": subject.type, "id": subject.id})
        elif isinstance(subject, Mapping):
            result.append({"type": str(subject["type"]), "id": str(subject["id"])})
        else:
            kind, ident = subject
            result.append({"type": str(kind), "id": str(ident)})
    if not result:
        raise ValueError("at least one subject is required")
    return result


def _drop_none(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


@dataclass(frozen=True)
class Call(Generic[T]):
    """One logical request: built once, sent (and retried) as is, then parsed."""

    method: str
    path: str
    parse: Callable[[Any], T]
    body: Mapping[str, Any] | None = None
    params: Mapping[str, str] | None = None

    def content(self) -> bytes | None:
        if self.body is None:
            return None
        return json.dumps(self.body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter, honouring the server's Retry-After.

    ``max_retries`` retries after the first attempt; the n-th waits
    ``min(backoff_max, backoff_base * 2**n)`` scaled by a jitter in [0.5, 1], or Retry-After
    when the server sent one. A Retry-After above ``max_retry_after`` is not waited for: the
    error is raised with its ``retry_after``.
    """

    max_retries: int = 3
    backoff_base: float = 0.25  # money-safe: seconds
    backoff_max: float = 8.0  # money-safe: seconds
    max_retry_after: float = 30.0  # money-safe: seconds

    def delay(self, attempt: int, retry_after: float | None) -> float | None:  # money-safe: seconds
        """Seconds to wait before retry number ``attempt`` (0-based), or None to give up."""
        if attempt >= self.max_retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        backoff = min(self.backoff_max, self.backoff_base * (2.0**attempt))
        return backoff * random.uniform(0.5, 1.0)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (delta-seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)  # money-safe: a Retry-After delay
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def retryable_exception(error: BaseException) -> bool:
    """Connection errors and timeouts: nothing or an unknown outcome, safe to resend."""
    if isinstance(error, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return False
    return isinstance(error, httpx.TransportError)


def connection_failed(error: httpx.HTTPError, call: Call[Any]) -> ConnectionFailed:
    failure = ConnectionFailed(
        {
            "type": "about:blank",
            "title": "No response from the ledger",
            "detail": f"{call.method} {call.path}: {type(error).__name__}: {error}",
        }
    )
    failure.__cause__ = error
    return failure


def error_from_response(response: httpx.Response) -> LedgerError:
    """The typed error of a non-2xx response (problem+json or not)."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {
            "type": "about:blank",
            "title": response.reason_phrase or "HTTP error",
            "status": response.status_code,
            "detail": response.text[:500],
        }
    cls = error_class(response.status_code, problem)
    if issubclass(cls, Unavailable):
        return cls(problem, status=response.status_code, retry_after=retry_after_seconds(response))
    return cls(problem, status=response.status_code)


def result(call: Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        raise error_from_response(response)
    return call.parse(response.json() if response.content else None)


def headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    values = {
        "Accept": "application/json, application/problem+json",
        "User-Agent": "usage-ledger-client/0.1",
    }
    if api_key:
        values["Authorization"] = f"Bearer {api_key}"
    values.update(extra or {})
    return values


def timeout(value: float | httpx.Timeout | None) -> httpx.Timeout:  # money-safe: seconds
    if isinstance(value, httpx.Timeout):
        return value
    return httpx.Timeout(DEFAULT_TIMEOUT if value is None else value)


class Calls:
    """Builders of every call; ``org`` is the client's default org for writes."""

    def __init__(self, org: str | None) -> None:
        self.org = org

    def _org(self, org: str | None) -> str | None:
        return org if org is not None else self.org

    def create_budget(
        self,
        subject_type: str,
        subject_id: str,
        limit_usd: Money,
        period: str,
        *,
        org: str | None,
        timezone: str,
        mode: str,
        alert_thresholds: Sequence[Money] | None,
        request_id: str | None,
    ) -> Call[Budget]:
        body = _drop_none(
            {
                "org": self._org(org),
                "request_id": request_id or new_request_id(),
                "subject": {"type": subject_type, "id": subject_id},
                "limit_usd": money(limit_usd),
                "period": period,
                "timezone": timezone,
                "mode": mode,
                "alert_thresholds": None
                if alert_thresholds is None
                else [fraction(t) for t in alert_thresholds],
            }
        )
        return Call("POST", "/v1/budgets", Budget.from_json, body=body)

    def get_budget(self, budget_id: str | uuid.UUID) -> Call[Budget]:
        return Call("GET", f"/v1/budgets/{budget_id}", Budget.from_json)

    def list_budgets(
        self, subject_type: str | None, subject_id: str | None, org: str | None
    ) -> Call[list[Budget]]:
        params = _drop_none({"org": org, "subject_type": subject_type, "subject_id": subject_id})
        return Call(
            "GET",
            "/v1/budgets",
            lambda body: [Budget.from_json(b) for b in body["budgets"]],
            params=params,
        )

    def change_budget(
        self,
        budget_id: str | uuid.UUID,
        *,
        limit_usd: Money | None,
        mode: str | None,
        alert_thresholds: Sequence[Money] | None,
    ) -> Call[Budget]:
        body = _drop_none(
            {
                "limit_usd": None if limit_usd is None else money(limit_usd),
                "mode": mode,
                "alert_thresholds": None
                if alert_thresholds is None
                else [fraction(t) for t in alert_thresholds],
            }
        )
        return Call("PATCH", f"/v1/budgets/{budget_id}", Budget.from_json, body=body)

    def reserve(
        self,
        subjects: Iterable[SubjectLike],
        *,
        amount_usd: Money | None,
        request: Mapping[str, Any] | None,
        model: str | None,
        provider: str | None,
        fit: str,
        ttl_seconds: int | None,
        metadata: Mapping[str, Any] | None,
        org: str | None,
        request_id: str | None,
    ) -> Call[Reservation]:
        body = _drop_none(
            {
                "org": self._org(org),
                "request_id": request_id or new_request_id(),
                "subjects": subjects_json(subjects),
                "model": model,
                "provider": provider,
                "amount_usd": None if amount_usd is None else money(amount_usd),
                "request": None if request is None else dict(request),
                "fit": fit,
                "ttl_seconds": ttl_seconds,
                "metadata": None if metadata is None else dict(metadata),
            }
        )
        return Call("POST", "/v1/reservations", Reservation.from_json, body=body)

    def get_reservation(self, reservation_id: str | uuid.UUID) -> Call[Reservation]:
        return Call("GET", f"/v1/reservations/{reservation_id}", Reservation.from_json)

    def _usage_body(
        self,
        usage: Mapping[str, Any] | None,
        *,
        messages: Sequence[Mapping[str, Any]] | None,
        model: str | None,
        provider: str | None,
        call_type: str | None,
        ttft_ms: int | None,
        duration_ms: int | None,
        billing_time: str | datetime | None,
        metadata: Mapping[str, Any] | None,
        org: str | None,
    ) -> dict[str, Any]:
        return _drop_none(
            {
                "org": self._org(org),
                "usage": None if usage is None else dict(usage),
                "messages": None if messages is None else [dict(m) for m in messages],
                "model": model,
                "provider": provider,
                "call_type": call_type,
                "ttft_ms": ttft_ms,
                "duration_ms": duration_ms,
                "billing_time": billing_time.isoformat()
                if isinstance(billing_time, datetime)
                else billing_time,
                "metadata": None if metadata is None else dict(metadata),
            }
        )

    def commit(
        self,
        reservation_id: str | uuid.UUID,
        usage: Mapping[str, Any] | None,
        *,
        messages: Sequence[Mapping[str, Any]] | None,
        model: str | None,
        provider: str | None,
        call_type: str | None,
        ttft_ms: int | None,
        duration_ms: int | None,
        billing_time: str | datetime | None,
        metadata: Mapping[str, Any] | None,
        org: str | None,
    ) -> Call[Settlement]:
        body = self._usage_body(
            usage,
            messages=messages,
            model=model,
            provider=provider,
            call_type=call_type,
            ttft_ms=ttft_ms,
            duration_ms=duration_ms,
            billing_time=billing_time,
            metadata=metadata,
            org=org,
        )
        return Call(
            "POST", f"/v1/reservations/{reservation_id}/commit", Settlement.from_json, body=body
        )

    def cancel(self, reservation_id: str | uuid.UUID, org: str | None) -> Call[Reservation]:
        return Call(
            "POST",
            f"/v1/reservations/{reservation_id}/cancel",
            Reservation.from_json,
            body=_drop_none({"org": self._org(org)}),
        )

    def extend(
        self,
        reservation_id: str | uuid.UUID,
        *,
        amount_usd: Money | None,
        ttl_seconds: int | None,
        org: str | None,
    ) -> Call[Reservation]:
        if amount_usd is None and ttl_seconds is None:
            raise ValueError("give amount_usd and/or ttl_seconds")
        body = _drop_none(
            {
                "org": self._org(org),
                "amount_usd": None if amount_usd is None else money(amount_usd),
                "ttl_seconds": ttl_seconds,
            }
        )
        return Call(
            "POST", f"/v1/reservations/{reservation_id}/extend", Reservation.from_json, body=body
        )

    def record_usage(
        self,
        subjects: Iterable[SubjectLike],
        usage: Mapping[str, Any] | None,
        *,
        request_id: str | None,
        messages: Sequence[Mapping[str, Any]] | None,
        model: str | None,
        provider: str | None,
        call_type: str | None,
        ttft_ms: int | None,
        duration_ms: int | None,
        billing_time: str | datetime | None,
        metadata: Mapping[str, Any] | None,
        org: str | None,
    ) -> Call[Settlement]:
        body = self._usage_body(
            usage,
            messages=messages,
            model=model,
            provider=provider,
            call_type=call_type,
            ttft_ms=ttft_ms,
            duration_ms=duration_ms,
            billing_time=billing_time,
            metadata=metadata,
            org=org,
        )
        body["request_id"] = request_id or new_request_id()
        body["subjects"] = subjects_json(subjects)
        return Call("POST", "/v1/usage", Settlement.from_json, body=body)

    def record_usage_batch(
        self, records: Iterable[Mapping[str, Any]], *, org: str | None
    ) -> Call[UsageBatch]:
        bodies = []
        for record in records:
            unknown = set(record) - BATCH_RECORD_KEYS
            if unknown:
                raise TypeError(f"unknown usage record fields: {', '.join(sorted(unknown))}")
            if "subjects" not in record:
                raise TypeError("every usage record needs subjects")
            body = self._usage_body(
                record.get("usage"),
                messages=record.get("messages"),
                model=record.get("model"),
                provider=record.get("provider"),
                call_type=record.get("call_type"),
                ttft_ms=record.get("ttft_ms"),
                duration_ms=record.get("duration_ms"),
                billing_time=record.get("billing_time"),
                metadata=record.get("metadata"),
                org=None,
            )
            body.pop("org", None)
            body["request_id"] = record.get("request_id") or new_request_id()
            body["subjects"] = subjects_json(record["subjects"])
            bodies.append(body)
        batch = _drop_none({"org": self._org(org), "records": bodies})
        return Call("POST", "/v1/usage:batch", UsageBatch.from_json, body=batch)

    def quote(
        self,
        model: str,
        usage: Mapping[str, Any] | None,
        *,
        provider: str | None,
        request: Mapping[str, Any] | None,
        billing_time: str | datetime | None,
    ) -> Call[Quote]:
        body = _drop_none(
            {
                "model": model,
                "provider": provider,
                "usage": None if usage is None else dict(usage),
                "request": None if request is None else dict(request),
                "billing_time": billing_time.isoformat()
                if isinstance(billing_time, datetime)
                else billing_time,
            }
        )
        return Call("POST", "/v1/quotes", Quote.from_json, body=body)
