"""Budget and reservation conditions."""

from __future__ import annotations

from app.errors import Conflict, LedgerError, NotFound


class BudgetExceeded(LedgerError):
    """A hard budget cannot hold the amount asked for."""

    status = 402
    title = "Budget exceeded"

    def __init__(
        self,
        *,
        budget_id: str,
        subject: dict[str, str],
        limit_usd: str,
        remaining_usd: str,
        requested_usd: str,
    ) -> None:
        super().__init__(
            f"budget {budget_id} of {subject['type']} {subject['id']!r} has {remaining_usd} USD"
            f" of {limit_usd} USD left; {requested_usd} USD was asked for",
            budget_id=budget_id,
            subject=subject,
            limit_usd=limit_usd,
            remaining_usd=remaining_usd,
            requested_usd=requested_usd,
        )


class BudgetNotFound(NotFound):
    pass


class ReservationNotFound(NotFound):
    pass


class ReservationSettled(Conflict):
    """The reservation was already committed or cancelled."""

    title = "Reservation already settled"
