"""Plain factories over the public service API."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection

from app.budgets import service as budgets
from app.budgets.model import Budget, Subject

USD = 10**12


def make_budget(conn: Connection, **overrides: Any) -> Budget:
    values: dict[str, Any] = {
        "org": "acme",
        "subject": Subject("team", f"team-{uuid.uuid4().hex[:6]}"),
        "limit_pico_usd": 100 * USD,
        "period": "month",
        "timezone": "UTC",
        "mode": "hard",
    }
    values.update(overrides)
    return budgets.define_budget(conn, **values)
