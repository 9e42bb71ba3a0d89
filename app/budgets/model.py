"""Plain values the budgets domain hands out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from app.money import format_usd


@dataclass(frozen=True, order=True)
class Subject:
    """Who spends: an org, team, user, key, project or any other type, scoped by its org."""

    type: str
    id: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "id": self.id}


@dataclass(frozen=True)
class Budget:
    org: str
    budget_id: UUID
    subject: Subject
    limit_pico_usd: int
    period: str
    timezone: str
    mode: str
    alert_thresholds: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    version: int
    escrow_slices: int = 1


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    period_start: datetime
    period_end: datetime
    spent_pico_usd: int
    held_pico_usd: int

    @property
    def remaining_pico_usd(self) -> int:
        """What is left to reserve; negative once a soft budget or an overrun went past it."""
        return self.budget.limit_pico_usd - self.spent_pico_usd - self.held_pico_usd

    @property
    def alert_level(self) -> str:
        return alert_level(
            self.spent_pico_usd, self.budget.limit_pico_usd, self.budget.alert_thresholds
        )


LEVELS = ("ok", "warning", "critical", "exceeded")


def alert_level(spent_pico_usd: int, limit_pico_usd: int, thresholds: tuple[str, ...]) -> str:
    """``exceeded`` at thresholds >= 1, ``critical`` at the highest below 1, else ``warning``."""
    crossed = [Decimal(t) for t in thresholds if spent_pico_usd >= Decimal(t) * limit_pico_usd]
    if not crossed:
        return "ok"
    top = max(crossed)
    if top >= 1:
        return "exceeded"
    below_one = sorted(Decimal(t) for t in thresholds if Decimal(t) < 1)
    return "critical" if len(below_one) > 1 and top == below_one[-1] else "warning"


@dataclass(frozen=True)
class Hold:
    """One budget period a reservation holds money in."""

    budget_id: UUID
    period_start: datetime
    period_end: datetime
    slice: int | None = None  # the escrow slice holding it, for a sliced budget


@dataclass(frozen=True)
class BudgetRemaining:
    budget_id: UUID
    subject: Subject
    mode: str
    limit_pico_usd: int
    remaining_pico_usd: int

    def as_json(self) -> dict[str, Any]:
        return {
            "budget_id": str(self.budget_id),
            "subject": self.subject.as_dict(),
            "mode": self.mode,
            "limit_usd": format_usd(self.limit_pico_usd),
            "remaining_usd": format_usd(self.remaining_pico_usd),
        }


@dataclass(frozen=True)
class Reservation:
    org: str
    reservation_id: UUID
    request_id: str
    state: str
    amount_pico_usd: int
    expires_at: datetime
    budgets: tuple[BudgetRemaining, ...] = field(default_factory=tuple)
    details: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Settlement:
    """The outcome of committing a reservation (or of recording usage directly)."""

    org: str
    request_id: str
    reservation_id: UUID | None
    cost_pico_usd: int
    held_pico_usd: int
    overrun: bool
    late: bool
    flagged_budgets: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
