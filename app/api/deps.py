"""Request-scoped dependencies: who is calling, for which org, and the shared resources."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from app.auth import service as auth
from app.auth.service import Forbidden, Principal, Unauthorized
from app.errors import InvalidInput
from app.overrides.service import PriceBook
from app.pricing.table import PriceTable

INSECURE = Principal(key_id="insecure-no-auth", scope="admin", org=None)


# The dependencies below are ``async`` and touch no database on their usual path, so FastAPI
# runs them on the event loop: a sync dependency costs a hand-off to a worker thread and back
# per call, which was a fifth of the server's CPU on the hot path (docs/benchmarks.md).


async def engine(request: Request) -> Engine:
    result: Engine = request.app.state.engine
    return result


def prices(request: Request) -> PriceTable:
    """The price table in force: the snapshot with the operators' overrides on top."""
    table: PriceTable = request.app.state.prices.table()
    return table


async def price_book(request: Request) -> PriceBook:
    """The price book; call ``.table()`` on it from a worker thread (it may query the
    database for new overrides)."""
    book: PriceBook = request.app.state.prices
    return book


async def principal(
    request: Request,
    authorization: Annotated[str | None, Header(description="Bearer API key")] = None,
) -> Principal:
    """The caller, from ``Authorization: Bearer <key>`` (or everyone with --insecure-no-auth).

    A key verified in the last few seconds is taken from the app's ``VerifiedKeys`` without a
    database round trip; otherwise it is looked up in a worker thread.
    """
    if request.app.state.settings.insecure_no_auth:
        caller = INSECURE
    else:
        if not authorization:
            raise Unauthorized("an API key is required: Authorization: Bearer <key>")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be: Bearer <key>")
        verified: auth.VerifiedKeys = request.app.state.verified_keys
        token_hash = verified.token_hash(token)
        cached = verified.get(token_hash)
        if cached is None:
            verified_at, generation = verified.now(), verified.generation
            caller = await run_in_threadpool(_authenticate, request.app.state.engine, token)
            verified.put(token_hash, caller, verified_at=verified_at, generation=generation)
        else:
            caller = cached
    _refuse_unstorable_parameters(request)
    return caller


def _authenticate(engine: Engine, token: str) -> Principal:
    with engine.connect() as conn:
        return auth.authenticate(conn, token)


def _refuse_unstorable_parameters(request: Request) -> None:
    """Refuse a query or path parameter holding a NUL (``%00``), which PostgreSQL cannot
    compare: every route of the API depends on ``principal``, so this sees them all."""
    for name, value in (*request.query_params.multi_items(), *request.path_params.items()):
        if isinstance(value, str) and "\x00" in value:
            raise InvalidInput(f"{name} must not contain a NUL character", field=name)


def require(scope: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency admitting keys of ``scope`` (admin keys are admitted everywhere).

    One dependency with ``principal``'s own parameters rather than one depending on it:
    FastAPI solves each dependency of every request, which was 17% of the server's GIL samples
    on the hot routes (docs/benchmarks.md, "Run of 08:38 UTC (23 Nov)")."""

    async def check(
        request: Request,
        authorization: Annotated[str | None, Header(description="Bearer API key")] = None,
    ) -> Principal:
        caller = await principal(request, authorization)
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
Book = Annotated[PriceBook, Depends(price_book)]


def engine_of(request: Request) -> Engine:
    """The app's engine, for async routes that take it without a dependency of its own."""
    result: Engine = request.app.state.engine
    return result


def book_of(request: Request) -> PriceBook:
    """The app's price book (see ``price_book``), without a dependency of its own."""
    book: PriceBook = request.app.state.prices
    return book


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
