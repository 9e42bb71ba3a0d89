"""Budget routes: define, change, read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field

from app.api.deps import Admin, Db, Reader, read_org, write_org
from app.budgets import service
from app.budgets.model import Subject
from app.budgets.schemas import BudgetChange, BudgetCreate, BudgetOut
from app.money import parse_usd

router = APIRouter(prefix="/v1/budgets", tags=["budgets"])

Level = Literal["ok", "warning", "critical", "exceeded"]


class ForecastOut(BaseModel):
    """Projected spend at the period end; the fields after ``description`` are null when
    ``method`` is ``none`` (a total budget)."""

    method: Literal["run_rate", "none"]
    description: str
    window_start: str | None = None
    window_end: str | None = None
    window_spent_usd: str | None = None
    rate_usd_per_hour: str | None = None
    projected_at: str | None = Field(None, description="The period end")
    projected_spent_usd: str | None = None
    projected_alert_level: Level | None = None
    exceeds_limit: bool | None = None
    limit_reached_at: str | None = Field(
        None, description="When the limit is reached at this rate, if within the period"
    )


class BudgetWithForecastOut(BudgetOut):
    forecast: ForecastOut
    as_of: str


class BudgetWithForecastList(BaseModel):
    budgets: list[BudgetWithForecastOut]


class AlertOut(BaseModel):
    level: Literal["warning", "critical", "exceeded"]
    threshold: str
    alert_id: str
    raised_at: str


class BudgetStatusOut(BudgetWithForecastOut):
    alerts: list[AlertOut] = Field(description="Levels raised so far in this period")


ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "Missing, unknown or revoked API key (problem+json)"},
    403: {"description": "Wrong scope, or another org than the key's (problem+json)"},
    422: {"description": "Invalid input; `field` names it (problem+json)"},
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BudgetOut,
    responses={**ERRORS, 409: {"description": "request_id reused with other content"}},
)
def create_budget(body: BudgetCreate, caller: Admin, engine: Db) -> BudgetOut:
    """Define a budget for a subject of an org."""
    org = write_org(caller, body.org)
    with engine.begin() as conn:
        budget = service.define_budget(
            conn,
            org=org,
            subject=Subject(body.subject.type, body.subject.id),
            limit_pico_usd=parse_usd(body.limit_usd),
            period=body.period,
            timezone=body.timezone,
            mode=body.mode,
            alert_thresholds=body.alert_thresholds,
            request_id=body.request_id,
            escrow_slices=body.escrow_slices,
        )
        return BudgetOut(**service.describe(service.status_of(conn, budget)))


@router.get("", response_model=BudgetWithForecastList, responses=ERRORS)
def list_budgets(
    caller: Reader,
    engine: Db,
    org: Annotated[str | None, Query(max_length=200)] = None,
    subject_type: Annotated[str | None, Query(max_length=200)] = None,
    subject_id: Annotated[str | None, Query(max_length=200)] = None,
) -> BudgetWithForecastList:
    """Budgets with their current status and forecast, optionally of one subject."""
    now = datetime.now(UTC)
    with engine.connect() as conn:
        statuses = service.list_budget_statuses(
            conn,
            org=read_org(caller, org),
            subject_type=subject_type,
            subject_id=subject_id,
            at=now,
        )
        return BudgetWithForecastList(
            budgets=[
                BudgetWithForecastOut(**service.describe_status(conn, s, at=now)) for s in statuses
            ]
        )


@router.get(
    "/{budget_id}",
    response_model=BudgetWithForecastOut,
    responses={**ERRORS, 404: {"description": "No such budget (for this key)"}},
)
def get_budget(budget_id: UUID, caller: Reader, engine: Db) -> BudgetWithForecastOut:
    """One budget: limit, spent, held, remaining, alert level and forecast in the current
    period."""
    now = datetime.now(UTC)
    with engine.connect() as conn:
        current = service.budget_status(conn, budget_id=budget_id, org=read_org(caller), at=now)
        return BudgetWithForecastOut(**service.describe_status(conn, current, at=now))


@router.get(
    "/{budget_id}/status",
    response_model=BudgetStatusOut,
    responses={**ERRORS, 404: {"description": "No such budget (for this key)"}},
)
def get_budget_status(budget_id: UUID, caller: Reader, engine: Db) -> BudgetStatusOut:
    """Spent, held, remaining, alert level, the alerts raised this period, and the
    period-end forecast with its method (docs/alerts.md)."""
    now = datetime.now(UTC)
    with engine.connect() as conn:
        current = service.budget_status(conn, budget_id=budget_id, org=read_org(caller), at=now)
        return BudgetStatusOut(
            **service.describe_status(conn, current, at=now),
            alerts=[AlertOut(**a) for a in service.alerts_raised(conn, current)],
        )


@router.patch(
    "/{budget_id}",
    response_model=BudgetOut,
    responses={**ERRORS, 404: {"description": "No such budget (for this key)"}},
)
def change_budget(budget_id: UUID, body: BudgetChange, caller: Admin, engine: Db) -> BudgetOut:
    """Change a budget's limit, mode, alert thresholds or escrow slices from now on (an
    event)."""
    with engine.begin() as conn:
        budget = service.get_budget(conn, budget_id=budget_id, org=read_org(caller))
        changed = service.change_budget(
            conn,
            org=budget.org,
            budget_id=budget_id,
            limit_pico_usd=parse_usd(body.limit_usd) if body.limit_usd is not None else None,
            mode=body.mode,
            alert_thresholds=body.alert_thresholds,
            escrow_slices=body.escrow_slices,
        )
        return BudgetOut(**service.describe(service.status_of(conn, changed)))
