"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text

from app.db import migrate

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Database unreachable or not migrated"}})
def readyz(request: Request) -> JSONResponse:
    """The database is reachable and its migrations are at head."""
    engine: Engine = request.app.state.engine
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            at_head = migrate.is_at_head(conn)
    except Exception as error:
        return JSONResponse(
            {"status": "unavailable", "database": str(type(error).__name__)}, status_code=503
        )
    if not at_head:
        return JSONResponse({"status": "unavailable", "migrations": "behind head"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "reachable", "migrations": "at head"})
