"""The client's return values: small frozen dataclasses with money as ``Decimal``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from app.client.errors import LedgerError, error_class


def usd(value: Any) -> Decimal:
    """A server money string as an exact Decimal."""
    return Decimal(str(value))


def _time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))


@dataclass(frozen=True)
class Subject:
    """Who a budget belongs to: ``(type, id)``, e.g. ``("team", "search")``."""

    type: str
    id: str


@dataclass(frozen=True)
class Budget:
    """A budget's definition and its status in the current period."""

    budget_id: str
    org: str
    subject: Subject
    limit_usd: Decimal
    spent_usd: Decimal
    held_usd: Decimal
    remaining_usd: Decimal
    period: str
    timezone: str
    mode: str
    alert_thresholds: tuple[Decimal, ...]
    alert_level: str
    period_start: datetime
    period_end: datetime
    version: int

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Budget:
        subject = body["subject"]
        return cls(
            budget_id=str(body["budget_id"]),
            org=str(body["org"]),
            subject=Subject(str(subject["type"]), str(subject["id"])),
            limit_usd=usd(body["limit_usd"]),
            spent_usd=usd(body["spent_usd"]),
            held_usd=usd(body["held_usd"]),
            remaining_usd=usd(body["remaining_usd"]),
            period=str(body["period"]),
            timezone=str(body["timezone"]),
            mode=str(body["mode"]),
            alert_thresholds=tuple(Decimal(str(t)) for t in body.get("alert_thresholds", ())),
            alert_level=str(body["alert_level"]),
            period_start=_time(body["period_start"]),
            period_end=_time(body["period_end"]),
            version=int(body["version"]),
        )


@dataclass(frozen=True)
class BudgetRemaining:
    """One budget a reservation holds against, and what it had left after the hold."""

    budget_id: str
    subject: Subject
    mode: str
    limit_usd: Decimal
    remaining_usd: Decimal

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> BudgetRemaining:
        subject = body["subject"]
        return cls(
            budget_id=str(body["budget_id"]),
            subject=Subject(str(subject["type"]), str(subject["id"])),
            mode=str(body["mode"]),
            limit_usd=usd(body["limit_usd"]),
            remaining_usd=usd(body["remaining_usd"]),
        )


@dataclass(frozen=True)
class Reservation:
    """A hold: its amount, expiry and, for a clamped request, the output cap to enforce."""

    reservation_id: str
    request_id: str
    org: str
    state: str
    amount_usd: Decimal
    expires_at: datetime
    budgets: tuple[BudgetRemaining, ...] = ()
    max_output_tokens: int | None = None
    estimate: Mapping[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Reservation:
        cap = body.get("max_output_tokens")
        return cls(
            reservation_id=str(body["reservation_id"]),
            request_id=str(body["request_id"]),
            org=str(body["org"]),
            state=str(body["state"]),
            amount_usd=usd(body["amount_usd"]),
            expires_at=_time(body["expires_at"]),
            budgets=tuple(BudgetRemaining.from_json(b) for b in body.get("budgets") or ()),
            max_output_tokens=int(cap) if cap is not None else None,
            estimate=body.get("estimate"),
        )


@dataclass(frozen=True)
class Settlement:
    """The outcome of a commit or of direct usage: the exact cost charged."""

    request_id: str
    reservation_id: str | None
    org: str
    cost_usd: Decimal
    held_usd: Decimal
    overrun: bool
    late: bool
    flagged_budgets: tuple[str, ...] = ()
    breakdown: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Settlement:
        reservation_id = body.get("reservation_id")
        return cls(
            request_id=str(body["request_id"]),
            reservation_id=None if reservation_id is None else str(reservation_id),
            org=str(body["org"]),
            cost_usd=usd(body["cost_usd"]),
            held_usd=usd(body["held_usd"]),
            overrun=bool(body["overrun"]),
            late=bool(body["late"]),
            flagged_budgets=tuple(str(b) for b in body.get("flagged_budgets") or ()),
            breakdown=dict(body.get("breakdown") or {}),
        )


@dataclass(frozen=True)
class Quote:
    """A price without touching any budget: the exact cost of a usage record, or (for a request
    body) its worst case, with the output cap the estimate assumed."""

    cost_usd: Decimal
    model_key: str | None
    provider: str | None
    max_output_tokens: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Quote:
        amount = body.get("total_usd", body.get("amount_usd"))
        cap = body.get("max_output_tokens")
        return cls(
            cost_usd=usd(amount),
            model_key=None if body.get("model_key") is None else str(body["model_key"]),
            provider=None if body.get("provider") is None else str(body["provider"]),
            max_output_tokens=int(cap) if cap is not None else None,
            details=dict(body),
        )


__all__ = [
    "Budget",
    "BudgetRemaining",
    "Quote",
    "Reservation",
    "Settlement",
    "Subject",
    "usd",
]


@dataclass(frozen=True)
class UsageBatchResult:
    """The outcome of one record of a batch: its ``settlement`` when charged (``status`` 201,
    also for a replay of an earlier charge), else the refusal's ``status`` and ``problem``."""

    index: int
    request_id: str | None
    status: int
    settlement: Settlement | None = None
    problem: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.settlement is not None

    @property
    def error(self) -> LedgerError | None:
        """The refusal as the typed error a single call would raise (None when charged)."""
        if self.problem is None:
            return None
        return error_class(self.status, self.problem)(self.problem, status=self.status)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> UsageBatchResult:
        settlement = body.get("settlement")
        problem = body.get("problem")
        request_id = body.get("request_id")
        return cls(
            index=int(body["index"]),
            request_id=None if request_id is None else str(request_id),
            status=int(body["status"]),
            settlement=None if settlement is None else Settlement.from_json(settlement),
            problem=None if problem is None else dict(problem),
        )


@dataclass(frozen=True)
class UsageBatch:
    """The outcomes of a batch of direct usage records, in the order they were sent."""

    results: tuple[UsageBatchResult, ...]
    accepted: int
    refused: int

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> UsageBatch:
        return cls(
            results=tuple(UsageBatchResult.from_json(r) for r in body["results"]),
            accepted=int(body["accepted"]),
            refused=int(body["refused"]),
        )
