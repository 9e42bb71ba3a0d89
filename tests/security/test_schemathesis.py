"""Schemathesis against the app's own ``/openapi.json``, in process: every operation, with an
unconfined admin key and, for gateway and reader operations, a key of that scope confined to
one org, on generated valid and invalid input. No answer may be a 500, and none may break the
response schema the document declares.

Examples per operation are bounded (``EXAMPLES``) so the run stays near a minute; each run
draws new ones, and a failure prints the curl command that reproduces it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from app.config import Settings
from app.db.engine import make_engine
from app.main import create_app
from tests.conftest import Server
from tests.security.operations import operations
from tests.security.world import A, create_key, headers

EXAMPLES = 8
"""Generated cases per operation, key and generation mode."""
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture(scope="module")
def served(pg_server: Server, template_db: str) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    name = f"ul_test_{uuid.uuid4().hex[:12]}"
    janitor = pg_server.janitor(name, template=template_db)
    janitor.init()
    engine = make_engine(pg_server.url(name), settings=Settings(pool_size=4))
    try:
        keys = {
            "admin": create_key(engine, "admin"),
            "gateway": create_key(engine, "gateway", A),
            "reader": create_key(engine, "reader", A),
        }
        yield create_app(engine, Settings(), sweep=False), keys
    finally:
        engine.dispose()
        janitor.drop()


def _operations(app: FastAPI) -> list[APIOperation[Any, Any, Any, Any]]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    found = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"schemathesis cannot read an operation: {result.err()}"
        found.append(result.ok())
    return found


def _run(
    operation: APIOperation[Any, Any, Any, Any], mode: GenerationMode, key: str, failures: list[str]
) -> None:
    strategy = operation.as_strategy(generation_mode=mode)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # a failure is reported, not shrunk
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        case: Case[Any] = data.draw(strategy)
        try:
            case.call_and_validate(headers=headers(key), checks=CHECKS)
        except (FailureGroup, Exception) as failure:  # failed checks, or a 500's exception
            failures.append(
                f"{operation.label} ({mode.value}): {failure!r}\n{case.as_curl_command()}"
            )

    try:
        check()
    except Unsatisfiable:
        # Nothing to make invalid: an operation without parameters or body (GET /healthz).
        assert mode is GenerationMode.NEGATIVE, operation.label


def test_no_generated_request_gets_a_500_or_an_answer_off_its_schema(
    served: tuple[FastAPI, dict[str, str]],
) -> None:
    app, keys = served
    scopes = {o.key: o.scope for o in operations(app)}
    failures: list[str] = []
    found = _operations(app)
    assert set(scopes) == {o.label for o in found}
    for operation in found:
        # The admin key everywhere; and the confined key of the operation's own scope, which
        # reaches the confinement paths (another scope's key only meets a 403).
        callers = {keys["admin"], keys.get(scopes[operation.label] or "reader", keys["admin"])}
        for key in sorted(callers):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _run(operation, mode, key, failures)
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures[:20])
