"""Typed errors of the ledger client, built from the server's RFC 9457 problem documents.

Every error is a :class:`LedgerError` with the HTTP ``status`` (``None`` when no response was
received) and the ``problem`` document as a dict. The subclass is chosen from the problem's
``type`` (its kebab-case condition) and, failing that, from the status.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


class LedgerError(Exception):
    """Base of every error the client raises for a refused or failed call."""

    def __init__(self, problem: Mapping[str, Any], *, status: int | None = None) -> None:
        self.problem: dict[str, Any] = dict(problem)
        self.status: int | None = status if status is not None else _int(problem.get("status"))
        message = self.problem.get("detail") or self.problem.get("title") or "ledger error"
        super().__init__(f"{self.status}: {message}" if self.status else str(message))

    @property
    def type(self) -> str:
        """The problem type URI, e.g. ``https://usage-ledger.dev/problems/budget-exceeded``."""
        return str(self.problem.get("type", "about:blank"))

    @property
    def condition(self) -> str:
        """The last path segment of the problem type (``budget-exceeded``)."""
        return self.type.rstrip("/").rsplit("/", 1)[-1]

    @property
    def title(self) -> str | None:
        value = self.problem.get("title")
        return None if value is None else str(value)

    @property
    def detail(self) -> str | None:
        value = self.problem.get("detail")
        return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class BudgetExceeded(LedgerError):
    """402: a hard budget cannot take the amount asked for."""

    @property
    def budget_id(self) -> str | None:
        value = self.problem.get("budget_id")
        return None if value is None else str(value)

    @property
    def subject(self) -> dict[str, str] | None:
        value = self.problem.get("subject")
        return dict(value) if isinstance(value, dict) else None

    @property
    def limit_usd(self) -> Decimal | None:
        return _decimal(self.problem.get("limit_usd"))

    @property
    def remaining_usd(self) -> Decimal | None:
        return _decimal(self.problem.get("remaining_usd"))

    @property
    def requested_usd(self) -> Decimal | None:
        return _decimal(self.problem.get("requested_usd"))


class InvalidInput(LedgerError):
    """422: input the server cannot accept; ``field`` names the offending field."""

    @property
    def field(self) -> str | None:
        value = self.problem.get("field")
        return None if value is None else str(value)


class UnknownModel(InvalidInput):
    """422: the model resolves to no price (``suggestions`` lists close model names)."""

    @property
    def model(self) -> str | None:
        value = self.problem.get("model")
        return None if value is None else str(value)

    @property
    def suggestions(self) -> list[str]:
        value = self.problem.get("suggestions")
        return [str(v) for v in value] if isinstance(value, list) else []


class Conflict(LedgerError):
    """409: an idempotency key reused with other content, or a reservation already settled."""


class IdempotencyConflict(Conflict):
    """409: the request_id was used before with a different body."""


class ReservationSettled(Conflict):
    """409: the reservation was already committed or cancelled."""


class NotFound(LedgerError):
    """404: no such budget or reservation (for this key)."""


class Unauthorized(LedgerError):
    """401: missing, malformed, unknown or revoked API key."""


class Forbidden(LedgerError):
    """403: the key's scope does not allow the call, or it names another org than the key's."""


class Unavailable(LedgerError):
    """503/504, or no response at all: retry later with the same request_id.

    Raised once the client's own retries are exhausted. ``retry_after`` is the server's
    Retry-After in seconds, when it sent one.
    """

    def __init__(
        self,
        problem: Mapping[str, Any],
        *,
        status: int | None = None,
        retry_after: float | None = None,  # money-safe: seconds
    ) -> None:
        super().__init__(problem, status=status)
        self.retry_after = retry_after


class ConnectionFailed(Unavailable):
    """No response was received (connection refused or reset, or a timeout); ``status`` is None
    and the httpx exception is the ``__cause__``."""


_BY_CONDITION: dict[str, type[LedgerError]] = {
    "budget-exceeded": BudgetExceeded,
    "unknown-model": UnknownModel,
    "idempotency-conflict": IdempotencyConflict,
    "reservation-settled": ReservationSettled,
    "invalid-input": InvalidInput,
    "invalid-usage": InvalidInput,
    "unavailable": Unavailable,
    "pool-exhausted": Unavailable,
    "lock-timeout": Unavailable,
    "database-busy": Unavailable,
    "database-unavailable": Unavailable,
    "outcome-unknown": Unavailable,
    "statement-timeout": Unavailable,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
}

_BY_STATUS: dict[int, type[LedgerError]] = {
    401: Unauthorized,
    402: BudgetExceeded,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidInput,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def error_class(status: int, problem: Mapping[str, Any]) -> type[LedgerError]:
    """The error class for a response's status and problem document."""
    condition = str(problem.get("type", "")).rstrip("/").rsplit("/", 1)[-1]
    if condition in _BY_CONDITION:
        return _BY_CONDITION[condition]
    if condition.endswith("not-found"):
        return NotFound
    return _BY_STATUS.get(status, LedgerError)
