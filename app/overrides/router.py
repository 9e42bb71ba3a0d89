"""Price override routes (deployment-wide: admin keys not confined to an org)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import Field

from app.api.deps import Admin, Db, Reader
from app.api.schemas import Strict
from app.auth.service import Forbidden
from app.budgets.router import ERRORS
from app.overrides import service
from app.overrides.service import PriceBook

router = APIRouter(prefix="/v1/prices", tags=["prices"])


class OverrideIn(Strict):
    model_key: str = Field(min_length=1, max_length=300, examples=["ft:gpt-4o:acme:v1"])
    fields: dict[str, Any] = Field(
        description="A partial LiteLLM entry; rates as decimal strings",
        examples=[{"input_cost_per_token": "0.0000025", "output_cost_per_token": "0.00001"}],
    )
    effective_at: datetime | None = Field(None, description="Default: now (timezone required)")
    override_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,100}$")


@router.post("/overrides", status_code=status.HTTP_201_CREATED, responses=ERRORS)
def create_override(
    body: OverrideIn, caller: Admin, engine: Db, request: Request
) -> dict[str, Any]:
    """Price a model (or reprice one) from `effective_at` on; history keeps its old rate."""
    if caller.org is not None:
        raise Forbidden("price overrides apply to every org: use an unconfined admin key")
    book: PriceBook = request.app.state.prices
    with engine.begin() as conn:
        stored = service.add_override(
            conn,
            book.base,
            model_key=body.model_key,
            fields=body.fields,
            effective_at=body.effective_at,
            override_id=body.override_id,
        )
    book.refresh()
    return stored.as_json()


@router.get("/overrides", responses=ERRORS)
def list_overrides(caller: Reader, engine: Db) -> dict[str, Any]:
    """Every override in the order recorded."""
    with engine.connect() as conn:
        return {"overrides": [s.as_json() for s in service.list_overrides(conn)]}
