"""Budget and reservation conditions."""

from __future__ import annotations

from app.budgets.model import Budget
from app.errors import Conflict, LedgerError, NotFound
from app.money import format_usd


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

    @classmethod
    def of(
        cls, budget: Budget, *, remaining_pico_usd: int, requested_pico_usd: int
    ) -> BudgetExceeded:
        """The refusal by ``budget``; a negative remaining is shown as zero."""
        return cls(
            budget_id=str(budget.budget_id),
            subject=budget.subject.as_dict(),
            limit_usd=format_usd(budget.limit_pico_usd),
            remaining_usd=format_usd(max(remaining_pico_usd, 0)),
            requested_usd=format_usd(requested_pico_usd),
        )


class BudgetNotFound(NotFound):
    pass


class ReservationNotFound(NotFound):
    pass


class ReservationSettled(Conflict):
    """The reservation was already committed or cancelled."""

    title = "Reservation already settled"
