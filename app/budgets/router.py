"""Budget routes: define, change, read."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, status

from app.api.deps import Admin, Db, Reader, read_org, write_org
from app.api.schemas import BudgetChange, BudgetCreate, BudgetList, BudgetOut
from app.budgets import service
from app.budgets.model import Subject
from app.money import parse_usd

router = APIRouter(prefix="/v1/budgets", tags=["budgets"])

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
        )
        return BudgetOut(**service.describe(service.status_of(conn, budget)))


@router.get("", response_model=BudgetList, responses=ERRORS)
def list_budgets(
    caller: Reader,
    engine: Db,
    org: Annotated[str | None, Query(max_length=200)] = None,
    subject_type: Annotated[str | None, Query(max_length=200)] = None,
    subject_id: Annotated[str | None, Query(max_length=200)] = None,
) -> BudgetList:
    """Budgets with their current status, optionally of one subject."""
    with engine.connect() as conn:
        statuses = service.list_budget_statuses(
            conn, org=read_org(caller, org), subject_type=subject_type, subject_id=subject_id
        )
    return BudgetList(budgets=[BudgetOut(**service.describe(s)) for s in statuses])


@router.get(
    "/{budget_id}",
    response_model=BudgetOut,
    responses={**ERRORS, 404: {"description": "No such budget (for this key)"}},
)
def get_budget(budget_id: UUID, caller: Reader, engine: Db) -> BudgetOut:
    """One budget: limit, spent, held, remaining and alert level in the current period."""
    with engine.connect() as conn:
        return BudgetOut(
            **service.describe(
                service.budget_status(conn, budget_id=budget_id, org=read_org(caller))
            )
        )


@router.patch(
    "/{budget_id}",
    response_model=BudgetOut,
    responses={**ERRORS, 404: {"description": "No such budget (for this key)"}},
)
def change_budget(budget_id: UUID, body: BudgetChange, caller: Admin, engine: Db) -> BudgetOut:
    """Change a budget's limit, mode or alert thresholds from now on (an event)."""
    with engine.begin() as conn:
        budget = service.get_budget(conn, budget_id=budget_id, org=read_org(caller))
        changed = service.change_budget(
            conn,
            org=budget.org,
            budget_id=budget_id,
            limit_pico_usd=parse_usd(body.limit_usd) if body.limit_usd is not None else None,
            mode=body.mode,
            alert_thresholds=body.alert_thresholds,
        )
        return BudgetOut(**service.describe(service.status_of(conn, changed)))
