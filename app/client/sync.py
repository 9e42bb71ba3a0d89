"""The synchronous client: ``LedgerClient`` and its reservation handle."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar

import httpx

from app.client import _core
from app.client._core import Call, Money, RetryPolicy, SubjectLike
from app.client.errors import LedgerError, Unavailable
from app.client.models import (
    Budget,
    BudgetRemaining,
    Quote,
    Reservation,
    Settlement,
    UsageBatch,
)

T = TypeVar("T")
log = logging.getLogger("app.client")


class ReservationHandle:
    """A live reservation: ``commit``, ``cancel`` or ``extend`` it.

    As a context manager, leaving the block without a commit or cancel (normally or by an
    exception) cancels the hold::

        with ledger.reserve([("team", "search")], amount_usd=Decimal("0.05")) as r:
            response = call_the_model(max_tokens=r.max_output_tokens)
            r.commit(response.usage, model="gpt-4o")
    """

    def __init__(self, client: LedgerClient, reservation: Reservation) -> None:
        self._client = client
        self.reservation = reservation
        self.settlement: Settlement | None = None
        self.settled = False

    @property
    def reservation_id(self) -> str:
        return self.reservation.reservation_id

    @property
    def request_id(self) -> str:
        return self.reservation.request_id

    @property
    def org(self) -> str:
        return self.reservation.org

    @property
    def state(self) -> str:
        return self.reservation.state

    @property
    def amount_usd(self) -> Decimal:
        return self.reservation.amount_usd

    @property
    def expires_at(self) -> datetime:
        return self.reservation.expires_at

    @property
    def budgets(self) -> tuple[BudgetRemaining, ...]:
        return self.reservation.budgets

    @property
    def max_output_tokens(self) -> int | None:
        return self.reservation.max_output_tokens

    def commit(
        self,
        usage: Mapping[str, Any] | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        model: str | None = None,
        provider: str | None = None,
        call_type: str | None = None,
        ttft_ms: int | None = None,
        duration_ms: int | None = None,
        billing_time: str | datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Settlement:
        """Charge the exact cost of ``usage`` (or of each of ``messages``); releases the hold."""
        self.settlement = self._client.commit(
            self.reservation_id,
            usage,
            messages=messages,
            model=model,
            provider=provider,
            call_type=call_type,
            ttft_ms=ttft_ms,
            duration_ms=duration_ms,
            billing_time=billing_time,
            metadata=metadata,
        )
        self.settled = True
        return self.settlement

    def cancel(self) -> Reservation:
        """Release the hold without charging."""
        self.reservation = self._client.cancel(self.reservation_id)
        self.settled = True
        return self.reservation

    def extend(
        self, *, amount_usd: Money | None = None, ttl_seconds: int | None = None
    ) -> Reservation:
        """Raise the hold to ``amount_usd`` and/or push its expiry to now + ``ttl_seconds``."""
        self.reservation = self._client.extend(
            self.reservation_id, amount_usd=amount_usd, ttl_seconds=ttl_seconds
        )
        return self.reservation

    def __enter__(self) -> ReservationHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.settled:
            return
        try:
            self.cancel()
        except LedgerError:
            if exc_type is None:
                raise
            # The block's own exception matters more; an uncancelled hold expires on its own.
            log.warning("could not cancel reservation %s", self.reservation_id, exc_info=True)

    def __repr__(self) -> str:
        return f"ReservationHandle({self.reservation!r}, settled={self.settled})"


class LedgerClient:
    """Synchronous client of the usage-ledger HTTP API.

    Every write carries an idempotency key generated once per call (or given as
    ``request_id``), so retries — on connection errors, timeouts, 503 and 504, with bounded
    exponential backoff honouring Retry-After — can never double-charge. ``org`` is the default
    org of writes (a key confined to one org implies it).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        org: str | None = None,
        timeout: float | httpx.Timeout | None = _core.DEFAULT_TIMEOUT,  # money-safe: seconds
        max_retries: int = 3,
        backoff_base: float = 0.25,  # money-safe: seconds
        backoff_max: float = 8.0,  # money-safe: seconds
        max_retry_after: float = 30.0,  # money-safe: seconds
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = RetryPolicy(max_retries, backoff_base, backoff_max, max_retry_after)
        self._calls = _core.Calls(org)
        self._http = httpx.Client(
            base_url=base_url,
            headers=_core.headers(api_key, headers),
            timeout=_core.timeout(timeout),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _send(self, call: Call[T]) -> T:
        content = call.content()
        request_headers = {"Content-Type": "application/json"} if content is not None else {}
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    content=content,
                    params=call.params,
                    headers=request_headers,
                )
            except httpx.TransportError as error:
                delay = (
                    self.retry.delay(attempt, None) if _core.retryable_exception(error) else None
                )
                if delay is None:
                    raise _core.connection_failed(error, call) from error
                log.info("retrying %s %s after %s", call.method, call.path, type(error).__name__)
            else:
                if response.status_code not in _core.RETRY_STATUSES:
                    return _core.result(call, response)
                failure = _core.error_from_response(response)
                retry_after = failure.retry_after if isinstance(failure, Unavailable) else None
                delay = self.retry.delay(attempt, retry_after)
                if delay is None:
                    raise failure
                log.info("retrying %s %s after %d", call.method, call.path, response.status_code)
            self._sleep(delay)
            attempt += 1

    # Budgets

    def create_budget(
        self,
        subject_type: str,
        subject_id: str,
        limit_usd: Money,
        period: str,
        *,
        org: str | None = None,
        timezone: str = "UTC",
        mode: str = "hard",
        alert_thresholds: Sequence[Money] | None = None,
        request_id: str | None = None,
    ) -> Budget:
        """Define a budget (admin key); ``period`` is day, week, month or total."""
        return self._send(
            self._calls.create_budget(
                subject_type,
                subject_id,
                limit_usd,
                period,
                org=org,
                timezone=timezone,
                mode=mode,
                alert_thresholds=alert_thresholds,
                request_id=request_id,
            )
        )

    def get_budget(self, budget_id: str | uuid.UUID) -> Budget:
        return self._send(self._calls.get_budget(budget_id))

    def list_budgets(
        self,
        subject_type: str | None = None,
        subject_id: str | None = None,
        *,
        org: str | None = None,
    ) -> list[Budget]:
        return self._send(self._calls.list_budgets(subject_type, subject_id, org))

    def change_budget(
        self,
        budget_id: str | uuid.UUID,
        *,
        limit_usd: Money | None = None,
        mode: str | None = None,
        alert_thresholds: Sequence[Money] | None = None,
    ) -> Budget:
        return self._send(
            self._calls.change_budget(
                budget_id,
                limit_usd=limit_usd,
                mode=mode,
                alert_thresholds=alert_thresholds,
            )
        )

    # Reservations

    def reserve(
        self,
        subjects: Iterable[SubjectLike],
        *,
        amount_usd: Money | None = None,
        request: Mapping[str, Any] | None = None,
        model: str | None = None,
        provider: str | None = None,
        fit: str = "refuse",
        ttl_seconds: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        org: str | None = None,
        request_id: str | None = None,
    ) -> ReservationHandle:
        """Hold ``amount_usd``, or the worst case of ``request`` for ``model``, against every
        budget of ``subjects``. ``fit="clamp"`` reserves what fits and caps the output."""
        reservation = self._send(
            self._calls.reserve(
                subjects,
                amount_usd=amount_usd,
                request=request,
                model=model,
                provider=provider,
                fit=fit,
                ttl_seconds=ttl_seconds,
                metadata=metadata,
                org=org,
                request_id=request_id,
            )
        )
        return ReservationHandle(self, reservation)

    def get_reservation(self, reservation_id: str | uuid.UUID) -> Reservation:
        return self._send(self._calls.get_reservation(reservation_id))

    def commit(
        self,
        reservation_id: str | uuid.UUID,
        usage: Mapping[str, Any] | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        model: str | None = None,
        provider: str | None = None,
        call_type: str | None = None,
        ttft_ms: int | None = None,
        duration_ms: int | None = None,
        billing_time: str | datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        org: str | None = None,
    ) -> Settlement:
        return self._send(
            self._calls.commit(
                reservation_id,
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
        )

    def cancel(self, reservation_id: str | uuid.UUID, *, org: str | None = None) -> Reservation:
        return self._send(self._calls.cancel(reservation_id, org))

    def extend(
        self,
        reservation_id: str | uuid.UUID,
        *,
        amount_usd: Money | None = None,
        ttl_seconds: int | None = None,
        org: str | None = None,
    ) -> Reservation:
        return self._send(
            self._calls.extend(
                reservation_id, amount_usd=amount_usd, ttl_seconds=ttl_seconds, org=org
            )
        )

    # Usage and quotes

    def record_usage(
        self,
        subjects: Iterable[SubjectLike],
        usage: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        model: str | None = None,
        provider: str | None = None,
        call_type: str | None = None,
        ttft_ms: int | None = None,
        duration_ms: int | None = None,
        billing_time: str | datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        org: str | None = None,
    ) -> Settlement:
        """Charge a completed request that had no reservation."""
        return self._send(
            self._calls.record_usage(
                subjects,
                usage,
                request_id=request_id,
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
        )

    def record_usage_batch(
        self, records: Iterable[Mapping[str, Any]], *, org: str | None = None
    ) -> UsageBatch:
        """Charge up to 1,000 completed requests without reservations in one call.

        Each record is a mapping of :meth:`record_usage`'s arguments (``subjects``, ``usage``
        or ``messages``, ``model``, ``request_id``, ...); a ``request_id`` is generated for a
        record without one, once, so a retried batch is answered, never charged twice. Each
        record is accepted or refused on its own: the result lists, in order, each record's
        ``settlement`` or its refusal (``status``, ``problem`` and the typed ``error``).
        """
        return self._send(self._calls.record_usage_batch(records, org=org))

    def quote(
        self,
        model: str,
        usage: Mapping[str, Any] | None = None,
        *,
        provider: str | None = None,
        request: Mapping[str, Any] | None = None,
        billing_time: str | datetime | None = None,
    ) -> Quote:
        """The exact cost of ``usage`` (or the worst case of ``request``); no budget touched."""
        return self._send(
            self._calls.quote(
                model, usage, provider=provider, request=request, billing_time=billing_time
            )
        )
