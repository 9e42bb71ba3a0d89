"""The built-in dashboard: one HTML page, its script and its style sheet, with no build step.

The page holds no data. Its script calls the JSON API (reports and budgets) with the reader key
the user pastes into it, so the page and its assets are served without a key
(docs/dashboard.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Header, Response

from app.errors import NotFound

router = APIRouter(tags=["dashboard"], include_in_schema=False)

_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# Everything the page runs or shows comes from this server: no inline script, no CDN. Drawing
# is done through the DOM (SVG elements and CSSOM styles), which this policy allows.
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate on every load (the ETag makes that a 304), so an upgraded server never pairs
    # a new page with a stale script.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class _File:
    body: bytes
    etag: str


@cache
def _load(path: str) -> _File:
    """A packaged file, read once per process; the files ship inside the wheel."""
    body = resources.files("app.dashboard").joinpath(path).read_bytes()
    return _File(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def _serve(file: _File, media_type: str, if_none_match: str | None) -> Response:
    headers = {**_HEADERS, "ETag": file.etag}
    if if_none_match is not None and file.etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(file.body, media_type=media_type, headers=headers)


IfNoneMatch = Annotated[str | None, Header()]


@router.get("/dashboard")
def page(if_none_match: IfNoneMatch = None) -> Response:
    """The dashboard page: spend by model, top subjects and budget gauges."""
    return _serve(_load("page.html"), "text/html; charset=utf-8", if_none_match)


@router.get("/dashboard/static/{name}")
def asset(name: str, if_none_match: IfNoneMatch = None) -> Response:
    """The page's script or style sheet; only the names listed are served, never a path."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no dashboard asset {name!r}")
    return _serve(_load(f"static/{name}"), media_type, if_none_match)
