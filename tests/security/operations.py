"""The API's operations, read from its OpenAPI document, each with the scope its route requires
(found in the route's dependencies, so a new endpoint is picked up without editing a table)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.api import deps

METHODS = ("get", "put", "post", "patch", "delete")
_CHECK = deps.require("reader")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    authenticated: bool
    scope: str | None
    """The scope its ``require()`` admits (admin keys are admitted everywhere); None when any
    valid key may call it."""
    path_params: tuple[str, ...]
    query_params: tuple[str, ...]
    body_properties: frozenset[str]
    """Top-level properties of its JSON body; empty when it takes none."""

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"


def _routes(routes: Sequence[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)  # FastAPI >= 0.16x nests routers
        if included is not None:
            yield from _routes(included.routes)


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _is_scope_check(call: Callable[..., Any]) -> bool:
    return (
        getattr(call, "__module__", None) == _CHECK.__module__
        and getattr(call, "__qualname__", None) == _CHECK.__qualname__
    )


def _required(route: APIRoute) -> tuple[bool, str | None]:
    calls = list(_calls(route.dependant))
    scopes = {inspect.getclosurevars(c).nonlocals["scope"] for c in calls if _is_scope_check(c)}
    assert len(scopes) <= 1, f"{route.path} requires several scopes: {scopes}"
    # A scope check takes principal's parameters and calls principal itself (deps.require).
    checks_call_principal = any(
        _is_scope_check(c) and inspect.getclosurevars(c).globals.get("principal") is deps.principal
        for c in calls
    )
    return deps.principal in calls or checks_call_principal, next(iter(scopes), None)


def _schema(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return _schema(document, document["components"]["schemas"][name])
    for option in schema.get("anyOf", ()):
        if option.get("type") != "null":
            return _schema(document, option)
    return schema


def _body_properties(document: dict[str, Any], operation: dict[str, Any]) -> frozenset[str]:
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" not in content:
        return frozenset()
    schema = _schema(document, content["application/json"].get("schema", {}))
    return frozenset(schema.get("properties", {}))


def operations(app: FastAPI) -> list[Operation]:
    """Every operation of the OpenAPI document, with what its route requires of a key."""
    document = app.openapi()
    routes = {(m, r.path): r for r in _routes(app.router.routes) for m in r.methods or ()}
    found = []
    for path, item in document["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            spec = item[method]
            route = routes.get((method.upper(), path))
            assert route is not None, f"no route serves {method.upper()} {path}"
            authenticated, scope = _required(route)
            parameters = spec.get("parameters", [])
            found.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    authenticated=authenticated,
                    scope=scope,
                    path_params=tuple(p["name"] for p in parameters if p["in"] == "path"),
                    query_params=tuple(p["name"] for p in parameters if p["in"] == "query"),
                    body_properties=_body_properties(document, spec),
                )
            )
    return found
