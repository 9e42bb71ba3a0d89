"""Request and response models of the webhook endpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.api.schemas import Identifier, Strict


class WebhookCreate(Strict):
    org: Identifier | None = Field(None, description="Implied by a tenant-confined key")
    url: str = Field(
        min_length=1, max_length=2000, examples=["https://alerts.example.com/usage-ledger"]
    )
    event_types: list[Annotated[str, Field(max_length=100)]] = Field(
        default_factory=lambda: ["alert_raised"],
        min_length=1,
        max_length=10,
        description="Event types to receive: alert_raised",
    )
    description: str = Field("", max_length=500)


class WebhookOut(BaseModel):
    webhook_id: str
    org: str
    url: str
    event_types: list[str]
    description: str
    active: bool
    created_at: str
    revoked_at: str | None


class WebhookCreated(WebhookOut):
    secret: str = Field(description="The signing secret: shown in this response only")


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class AttemptOut(BaseModel):
    attempt: int
    attempted_at: str
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryOut(BaseModel):
    delivery_id: str
    webhook_id: str
    org: str
    event_type: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: str
    last_error: str | None
    created_at: str
    delivered_at: str | None
    payload: dict[str, Any]
    log: list[AttemptOut]


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]
