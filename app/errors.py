"""The ledger's exceptions and their RFC 9457 problem+json form.

Each subclass names a condition and carries typed fields; ``status`` and the kebab-case
``type`` come from the class, the fields become extension members of the problem document.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

PROBLEM_BASE = "https://usage-ledger.dev/problems/"


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


class LedgerError(Exception):
    """Base of every error the ledger reports to a caller."""

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, **fields: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields

    @classmethod
    def problem_type(cls) -> str:
        return PROBLEM_BASE + _kebab(cls.__name__)

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 document for this error."""
        body: dict[str, Any] = {
            "type": self.problem_type(),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.fields)
        return body


class NotFound(LedgerError):
    status = 404
    title = "Not found"


class Conflict(LedgerError):
    status = 409
    title = "Conflict"


class IdempotencyConflict(Conflict):
    """The same idempotency key was used before with different content."""

    title = "Idempotency key reused with different content"


class InvalidInput(LedgerError):
    """Input that cannot be accepted; ``field`` names the offending field."""

    status = 422
    title = "Invalid input"

    def __init__(self, detail: str, *, field: str, **fields: Any) -> None:
        super().__init__(detail, field=field, **fields)


class Unavailable(LedgerError):
    """The database is busy (lock timeout, pool exhausted) or unreachable: retry later."""

    status = 503
    title = "Service unavailable"


class DatabaseFault(Unavailable):
    """A database fault a retry may clear; answered with ``Retry-After`` (docs/reliability.md,
    "Connection faults"). Nothing of the driver's message reaches the problem document."""

    retry_after_seconds: ClassVar[int] = 1


class PoolExhausted(DatabaseFault):
    """Every pooled connection stayed busy for the whole pool timeout; nothing was applied."""

    title = "All database connections are busy"


class LockTimeout(DatabaseFault):
    """A lock wait outlasted ``lock_timeout`` (SQLSTATE 55P03); the transaction rolled back."""

    title = "A lock wait timed out"


class DatabaseBusy(DatabaseFault):
    """A deadlock or serialization failure (SQLSTATE 40P01, 40001); the transaction rolled back."""

    title = "The database refused the transaction under contention"


class StatementTimeout(DatabaseFault):
    """A statement outlasted ``statement_timeout`` (SQLSTATE 57014); the transaction rolled
    back."""

    status = 504
    title = "A database statement timed out"


class DatabaseUnavailable(DatabaseFault):
    """The database could not be reached, or the connection was lost before COMMIT was sent:
    the transaction rolled back."""

    title = "The database is unavailable"


class OutcomeUnknown(DatabaseFault):
    """The connection was lost while COMMIT was in flight: the transaction may or may not have
    committed. A retry with the same request_id returns the first result if it did."""

    title = "Outcome unknown: the connection was lost during commit"
