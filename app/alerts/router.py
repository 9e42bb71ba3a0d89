"""Webhook routes: register, list, revoke, and read the delivery log."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query, status

from app.alerts import service
from app.alerts.schemas import (
    DeliveryList,
    DeliveryOut,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookOut,
)
from app.api.deps import Admin, Db, Reader, read_org, write_org
from app.budgets.router import ERRORS

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

NOT_FOUND: dict[int | str, dict[str, str]] = {
    404: {"description": "No such webhook (for this key)"}
}


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=WebhookCreated, responses=ERRORS
)
def create_webhook(body: WebhookCreate, caller: Admin, engine: Db) -> WebhookCreated:
    """Register a URL to receive the org's events; the signing secret is returned only here."""
    org = write_org(caller, body.org)
    with engine.begin() as conn:
        webhook, secret = service.register_webhook(
            conn,
            org=org,
            url=body.url,
            event_types=list(body.event_types),
            description=body.description,
        )
    return WebhookCreated(**webhook.as_json(), secret=secret)


@router.get("", response_model=WebhookList, responses=ERRORS)
def list_webhooks(
    caller: Reader,
    engine: Db,
    org: Annotated[str | None, Query(max_length=200)] = None,
) -> WebhookList:
    """Webhooks, revoked ones included; never their secrets."""
    with engine.connect() as conn:
        found = service.list_webhooks(conn, org=read_org(caller, org))
    return WebhookList(webhooks=[WebhookOut(**w.as_json()) for w in found])


@router.get("/{webhook_id}", response_model=WebhookOut, responses={**ERRORS, **NOT_FOUND})
def get_webhook(webhook_id: UUID, caller: Reader, engine: Db) -> WebhookOut:
    """One webhook, without its secret."""
    with engine.connect() as conn:
        found = service.get_webhook(conn, webhook_id=webhook_id, org=read_org(caller))
    return WebhookOut(**found.as_json())


@router.delete("/{webhook_id}", response_model=WebhookOut, responses={**ERRORS, **NOT_FOUND})
def revoke_webhook(webhook_id: UUID, caller: Admin, engine: Db) -> WebhookOut:
    """Revoke a webhook: nothing more is queued for it and its pending deliveries fail."""
    with engine.begin() as conn:
        revoked = service.revoke_webhook(conn, webhook_id=webhook_id, org=read_org(caller))
    return WebhookOut(**revoked.as_json())


@router.get(
    "/{webhook_id}/deliveries", response_model=DeliveryList, responses={**ERRORS, **NOT_FOUND}
)
def list_deliveries(
    webhook_id: UUID,
    caller: Reader,
    engine: Db,
    state: Literal["pending", "delivered", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeliveryList:
    """The webhook's deliveries, newest first, each with its log of attempts."""
    with engine.connect() as conn:
        found = service.list_deliveries(
            conn, webhook_id=webhook_id, org=read_org(caller), limit=limit, state=state
        )
    return DeliveryList(deliveries=[DeliveryOut(**d.as_json()) for d in found])
