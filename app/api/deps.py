"""Request-scoped dependencies: who is calling, for which org, and the shared resources."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import Engine

from app.auth import service as auth
from app.auth.service import Forbidden, Principal, Unauthorized
from app.errors import InvalidInput
from app.pricing.table import PriceTable

INSECURE = Principal(key_id="insecure-no-auth", scope="admin", org=None)


def engine(request: Request) -> Engine:
    result: Engine = request.app.state.engine
    return result


def prices(request: Request) -> PriceTable:
    """The price table in force: the snapshot with the operators' overrides on top."""
    table: PriceTable = request.app.state.prices.table()
    return table


def principal(
    request: Request,
    authorization: Annotated[str | None, Header(description="Bearer API key")] = None,
) -> Principal:
    """The caller, from ``Authorization: Bearer <key>`` (or everyone with --insecure-no-auth)."""
    if request.app.state.settings.insecure_no_auth:
        caller = INSECURE
    else:
        if not authorization:
            raise Unauthorized("an API key is required: Authorization: Bearer <key>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be: Bearer <key>")
        with engine(request).connect() as conn:
            caller = auth.authenticate(conn, token.strip())
    _refuse_unstorable_parameters(request)
    return caller


def _refuse_unstorable_parameters(request: Request) -> None:
    """Refuse a query or path parameter holding a NUL (``%00``), which PostgreSQL cannot
    compare: every route of the API depends on ``principal``, so this sees them all."""
    for name, value in (*request.query_params.multi_items(), *request.path_params.items()):
        if isinstance(value, str) and "\x00" in value:
            raise InvalidInput(f"{name} must not contain a NUL character", field=name)


def require(scope: str) -> Callable[[Principal], Principal]:
    """A dependency admitting keys of ``scope`` (admin keys are admitted everywhere)."""

    def check(caller: Annotated[Principal, Depends(principal)]) -> Principal:
        if not caller.allows(scope):
            raise Forbidden(
                f"this endpoint needs a {scope} key; this key's scope is {caller.scope}",
                required_scope=scope,
            )
        return caller

    return check


Gateway = Annotated[Principal, Depends(require("gateway"))]
Reader = Annotated[Principal, Depends(require("reader"))]
Admin = Annotated[Principal, Depends(require("admin"))]
Caller = Annotated[Principal, Depends(principal)]
Db = Annotated[Engine, Depends(engine)]
Prices = Annotated[PriceTable, Depends(prices)]


def write_org(caller: Principal, org: str | None) -> str:
    """The org a write is for: implied by a confined key, refused when it names another."""
    if caller.org is not None:
        if org is not None and org != caller.org:
            raise Forbidden(f"this key is confined to org {caller.org!r}", field="org")
        return caller.org
    if org is None:
        raise InvalidInput("org is required for a key that is not confined to one org", field="org")
    return org


def read_org(caller: Principal, org: str | None = None) -> str | None:
    """The org filter of a read: a confined key sees only its own org."""
    if caller.org is not None:
        if org is not None and org != caller.org:
            raise Forbidden(f"this key is confined to org {caller.org!r}", field="org")
        return caller.org
    return org
