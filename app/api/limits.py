"""Request body size limits: an oversize body is refused with 413 before it is read whole."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem_response
from app.errors import PROBLEM_BASE

MIB = 1 << 20
DEFAULT_MAX_BODY_BYTES = 1 * MIB
"""A budget, commit, usage or webhook body is a few kilobytes."""
LARGE_BODY_BYTES: Mapping[str, int] = {
    # Provider request bodies to estimate: long prompts, base64 media (docs/pricing.md).
    "/v1/reservations": 32 * MIB,
    "/v1/quotes": 32 * MIB,
    # Up to 1,000 usage bodies.
    "/v1/usage:batch": 32 * MIB,
    # A provider's cost export, up to 50 million characters (app/reconcile/schemas.py).
    "/v1/reconciliations": 128 * MIB,
}


class BodyTooLarge(HTTPException):
    """Raised inside the app's body read, which passes HTTPExceptions on to their handler."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body exceeds {max_bytes} bytes")
        self.max_bytes = max_bytes


def too_large(instance: str, max_bytes: int) -> dict[str, Any]:
    return {
        "type": PROBLEM_BASE + "payload-too-large",
        "title": "Payload too large",
        "status": 413,
        "detail": f"the request body exceeds {max_bytes} bytes",
        "instance": instance,
        "field": "body",
        "max_bytes": max_bytes,
    }


class BodySizeLimit:
    """ASGI middleware refusing request bodies above a per-path limit: at once when
    ``Content-Length`` says so, else as soon as the streamed body passes it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_bytes: int = DEFAULT_MAX_BODY_BYTES,
        per_path_bytes: Mapping[str, int] = LARGE_BODY_BYTES,
    ) -> None:
        self.app = app
        self.default_bytes = default_bytes
        self.per_path_bytes = dict(per_path_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path_bytes.get(scope["path"], self.default_bytes)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await problem_response(too_large(scope["path"], limit))(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)


def install(
    app: FastAPI,
    *,
    default_bytes: int = DEFAULT_MAX_BODY_BYTES,
    per_path_bytes: Mapping[str, int] = LARGE_BODY_BYTES,
) -> None:
    """Limit request bodies to ``default_bytes``, or ``per_path_bytes[path]``."""

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, error: BodyTooLarge) -> JSONResponse:
        return problem_response(too_large(request.url.path, error.max_bytes))

    app.add_middleware(BodySizeLimit, default_bytes=default_bytes, per_path_bytes=per_path_bytes)
