"""RFC 9457 problem+json responses for every error the API can return."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from app.db.engine import database_fault
from app.errors import PROBLEM_BASE, DatabaseFault, LedgerError

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=body["status"], media_type=PROBLEM_JSON, headers=headers)


def _field_path(location: tuple[Any, ...]) -> str:
    parts = [str(p) for p in location if p not in ("body", "query", "path")]
    path = ""
    for part in parts:
        path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
    return path or "body"


def _error_field(error: Any) -> str:
    # Malformed JSON is located by character offset, ("body", 12): its field is the body.
    if error.get("type") == "json_invalid":
        return "body"
    return _field_path(tuple(error.get("loc", ("body",))))


def install(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into problem documents."""

    @app.exception_handler(LedgerError)
    async def ledger_error(request: Request, error: LedgerError) -> JSONResponse:
        return _ledger_problem(request, error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = error.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        field = _error_field(first)
        return problem_response(
            {
                "type": PROBLEM_BASE + "invalid-input",
                "title": "Invalid input",
                "status": 422,
                "detail": f"{field}: {first.get('msg', 'invalid')}",
                "field": field,
                "errors": [
                    {"field": _error_field(e), "message": str(e.get("msg"))} for e in errors
                ],
                "instance": request.url.path,
            }
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        slug = {
            404: "not-found",
            405: "method-not-allowed",
            401: "unauthorized",
            403: "forbidden",
            413: "payload-too-large",
        }.get(error.status_code, "http-error")
        return problem_response(
            {
                "type": PROBLEM_BASE + slug,
                "title": str(error.detail),
                "status": error.status_code,
                "detail": str(error.detail),
                "instance": request.url.path,
                # FastAPI's own 400 is a body it could not parse (not UTF-8, nested too deep).
                **({"field": "body"} if error.status_code == 400 else {}),
            },
            headers=getattr(error, "headers", None),
        )

    # Pool exhaustion, timeouts and lost connections: 503/504 naming the cause, with
    # Retry-After, never a 500 (docs/reliability.md, "Connection faults").
    @app.exception_handler(PoolTimeout)
    async def pool_exhausted(request: Request, error: PoolTimeout) -> JSONResponse:
        return _database_problem(request, error)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, error: DBAPIError) -> JSONResponse:
        return _database_problem(request, error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return _internal(request, error)


def _ledger_problem(request: Request, error: LedgerError) -> JSONResponse:
    headers = None
    if isinstance(error, DatabaseFault):
        headers = {"Retry-After": str(error.retry_after_seconds)}
    return problem_response(error.problem(instance=request.url.path), headers=headers)


def _database_problem(request: Request, error: Exception) -> JSONResponse:
    """A driver or pool error as the database fault it amounts to, else a 500."""
    fault = database_fault(error)
    if fault is None:
        return _internal(request, error)
    # The driver's message is logged (without bound values: hide_parameters), never returned.
    log.warning(
        "%s on %s %s: %s",
        fault.problem_type().rsplit("/", 1)[-1],
        request.method,
        request.url.path,
        getattr(error, "orig", None) or type(error).__name__,
    )
    return _ledger_problem(request, fault)


def _internal(request: Request, error: Exception) -> JSONResponse:
    incident = uuid.uuid4().hex
    log.error(
        "unexpected error %s on %s %s", incident, request.method, request.url.path, exc_info=error
    )
    return problem_response(
        {
            "type": PROBLEM_BASE + "internal-error",
            "title": "Internal error",
            "status": 500,
            "detail": f"an unexpected error occurred; incident {incident} is logged",
            "incident": incident,
            "instance": request.url.path,
        }
    )
