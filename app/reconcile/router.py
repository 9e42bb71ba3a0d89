"""Reconciliation routes: import a provider's cost export, read a reconciliation again."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Response, status

from app.api.deps import Admin, Db, Reader, read_org, write_org
from app.budgets.router import ERRORS
from app.reconcile import service
from app.reconcile.schemas import ReconciliationIn, ReconciliationOut

router = APIRouter(prefix="/v1/reconciliations", tags=["reconciliations"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ReconciliationOut,
    response_model_by_alias=True,
    responses={
        **ERRORS,
        200: {"description": "This file was imported for this org before: the same one"},
        409: {"description": "This file was imported before as another provider or period"},
    },
)
def create_reconciliation(
    body: ReconciliationIn, caller: Admin, engine: Db, response: Response
) -> dict[str, Any]:
    """Import a provider's cost export and compare it with the ledger per day and model."""
    org = write_org(caller, body.org)
    with engine.begin() as conn:
        reconciliation, created = service.import_export(
            conn,
            org=org,
            provider=body.provider,
            content=body.content,
            period_from=body.period_from,
            period_to=body.period_to,
        )
        report = service.report_of(conn, reconciliation)
    if not created:
        response.status_code = status.HTTP_200_OK
    return service.report_to_json(report)


@router.get(
    "/{reconciliation_id}",
    response_model=ReconciliationOut,
    response_model_by_alias=True,
    responses={**ERRORS, 404: {"description": "No such reconciliation (for this key)"}},
)
def get_reconciliation(reconciliation_id: UUID, caller: Reader, engine: Db) -> dict[str, Any]:
    """A stored reconciliation, compared with the ledger as it is now."""
    with engine.connect() as conn:
        report = service.report(conn, org=read_org(caller), reconciliation_id=reconciliation_id)
    return service.report_to_json(report)
