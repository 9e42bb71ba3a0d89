"""Budget request and response models with the escrow slice count (the edge only).

They extend the API's budget models (app/api/schemas.py) by ``escrow_slices``, the number of
escrow slices a hot budget's headroom is split into (docs/ledger.md, "Hot budgets: escrow
slices"); 1, the default, is no escrow.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from app.api import schemas

EscrowSlices = Annotated[
    int,
    Field(
        ge=1,
        le=64,
        strict=True,
        description="Escrow slices of the headroom, for a budget that every request shares"
        " (docs/ledger.md, 'Hot budgets: escrow slices'); 1 is no escrow",
    ),
]


class BudgetCreate(schemas.BudgetCreate):
    escrow_slices: EscrowSlices = 1


class BudgetChange(schemas.BudgetChange):
    escrow_slices: EscrowSlices | None = None


class BudgetOut(schemas.BudgetOut):
    escrow_slices: int = 1
