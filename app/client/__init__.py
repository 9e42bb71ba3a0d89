"""Python client of the usage-ledger HTTP API (depends on httpx and the standard library only).

    from decimal import Decimal
    from app.client import LedgerClient

    with LedgerClient("http://127.0.0.1:8000", api_key) as ledger:
        with ledger.reserve([("team", "search")], model="gpt-4o", request=body,
                            fit="clamp") as r:
            ...  # call the model with max_tokens=r.max_output_tokens
            r.commit({"prompt_tokens": 1000, "completion_tokens": 500})

``AsyncLedgerClient`` has the same methods as coroutines; its ``reserve`` is awaitable and an
async context manager (``async with ledger.reserve(...) as r: ... await r.commit(usage)``).
"""

from app.client.aio import AsyncLedgerClient, AsyncReservationHandle, PendingReservation
from app.client.errors import (
    BudgetExceeded,
    Conflict,
    ConnectionFailed,
    Forbidden,
    IdempotencyConflict,
    InvalidInput,
    LedgerError,
    NotFound,
    ReservationSettled,
    Unauthorized,
    Unavailable,
    UnknownModel,
)
from app.client.models import (
    Budget,
    BudgetRemaining,
    Quote,
    Reservation,
    Settlement,
    Subject,
    UsageBatch,
    UsageBatchResult,
)
from app.client.sync import LedgerClient, ReservationHandle

__all__ = [
    "AsyncLedgerClient",
    "AsyncReservationHandle",
    "Budget",
    "BudgetExceeded",
    "BudgetRemaining",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "IdempotencyConflict",
    "InvalidInput",
    "LedgerClient",
    "LedgerError",
    "NotFound",
    "PendingReservation",
    "Quote",
    "Reservation",
    "ReservationHandle",
    "ReservationSettled",
    "Settlement",
    "Subject",
    "Unauthorized",
    "Unavailable",
    "UnknownModel",
    "UsageBatch",
    "UsageBatchResult",
]
