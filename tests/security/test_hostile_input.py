"""Hostile input: oversize and deeply nested bodies, absurd token counts, money strings that
are not plain decimals, and identifiers with unicode, NUL or SQL in them are each refused with
a 4xx problem+json whose ``field`` names the offending field; never a 500.

One database for the module: every case is refused and has its own request_id and hold, so none
changes what another sees.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api import limits
from app.config import Settings
from app.db.engine import make_engine
from app.main import create_app
from tests.conftest import Server
from tests.security.world import A, Answer, create_key, headers

SUBJECTS = [{"type": "team", "id": "ml"}]
USAGE = {"prompt_tokens": 10, "completion_tokens": 5}
RESERVE = "/v1/reservations"
COMMIT = "/v1/reservations/{reservation_id}/commit"
EXTEND = "/v1/reservations/{reservation_id}/extend"
USAGE_PATH = "/v1/usage"
BUDGETS = "/v1/budgets"
QUOTES = "/v1/quotes"
BASE: dict[str, dict[str, Any]] = {
    RESERVE: {"request_id": "hostile-1", "subjects": SUBJECTS, "amount_usd": "0.01"},
    COMMIT: {"usage": USAGE},
    EXTEND: {"ttl_seconds": 60},
    USAGE_PATH: {
        "request_id": "hostile-2",
        "subjects": SUBJECTS,
        "model": "gpt-4o",
        "usage": USAGE,
    },
    BUDGETS: {"subject": SUBJECTS[0], "limit_usd": "5", "period": "month"},
    QUOTES: {"model": "gpt-4o", "usage": USAGE},
}
MB = 1_100_000
DEEP = 10_000


@dataclass(frozen=True)
class Target:
    api: TestClient
    keys: dict[str, str]


@pytest.fixture(scope="module")
def target(pg_server: Server, template_db: str) -> Iterator[Target]:
    name = f"ul_test_{uuid.uuid4().hex[:12]}"
    janitor = pg_server.janitor(name, template=template_db)
    janitor.init()
    engine = make_engine(pg_server.url(name), settings=Settings(pool_size=4))
    try:
        app = create_app(engine, Settings(), sweep=False)
        with TestClient(app, raise_server_exceptions=False) as api:
            keys = {scope: create_key(engine, scope, A) for scope in ("gateway", "admin")}
            yield Target(api, keys)
    finally:
        engine.dispose()
        janitor.drop()


def _post(target: Target, path: str, content: bytes | Iterator[bytes]) -> Answer:
    key = target.keys["admin" if path == BUDGETS else "gateway"]
    if "{reservation_id}" in path:
        # A hold of its own: should a case be wrongly accepted, the next still finds one held.
        held = target.api.post(
            RESERVE, json={**_base(RESERVE), "model": "gpt-4o"}, headers=headers(key)
        )
        assert held.status_code == 201, held.text
        path = path.replace("{reservation_id}", held.json()["reservation_id"])
    return target.api.post(
        path, content=content, headers={**headers(key), "Content-Type": "application/json"}
    )


def _base(path: str) -> dict[str, Any]:
    """The valid body of ``path``, with a request_id of its own where it takes one."""
    body = dict(BASE[path])
    if "request_id" in body:
        body["request_id"] = f"hostile-{uuid.uuid4().hex}"
    return body


def _assert_refused(response: Answer, field: str) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json().get("field") == field, response.text


def _with(path: str, **changes: Any) -> bytes:
    return json.dumps({**_base(path), **changes}).encode()


def _deep(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def _limit(path: str) -> int:
    return limits.LARGE_BODY_BYTES.get(path, limits.DEFAULT_MAX_BODY_BYTES)


# --- bodies -----------------------------------------------------------------------------------

BODY_PATHS = [RESERVE, COMMIT, USAGE_PATH, BUDGETS, QUOTES]


@pytest.mark.parametrize("path", BODY_PATHS)
def test_a_body_over_the_limit_is_413(target: Target, path: str) -> None:
    valid = _with(path)
    padded = valid + b" " * (_limit(path) + 1 - len(valid))  # still valid JSON
    _assert_refused(_post(target, path, padded), "body")
    if _limit(path) < 2 * MB:
        # A streamed body (no Content-Length) is cut off as it passes the limit.
        _assert_refused(_post(target, path, iter([padded[:MB], padded[MB:]])), "body")


@pytest.mark.parametrize(
    ("path", "field"),
    [(RESERVE, "metadata"), (COMMIT, "body"), (USAGE_PATH, "body")],
)
def test_a_megabyte_of_metadata_is_refused(target: Target, path: str, field: str) -> None:
    # Reservations take 32 MiB (a prompt to estimate); their metadata takes 64 KiB.
    _assert_refused(_post(target, path, _with(path, metadata={"pad": "x" * MB})), field)


@pytest.mark.parametrize("path", BODY_PATHS)
def test_json_nested_ten_thousand_deep_is_refused(target: Target, path: str) -> None:
    body = _with(path)[:-1] + f', "x": {_deep(DEEP)}}}'.encode()
    _assert_refused(_post(target, path, body), "body")


@pytest.mark.parametrize(
    ("path", "field"),
    [(RESERVE, "metadata"), (COMMIT, "metadata"), (USAGE_PATH, "metadata"), (QUOTES, "usage")],
)
def test_free_form_json_nested_a_hundred_deep_is_refused(
    target: Target, path: str, field: str
) -> None:
    body = _with(path)[:-1] + f', "{field}": {_deep(100)}}}'.encode()
    _assert_refused(_post(target, path, body), field)


@pytest.mark.parametrize(
    "content", [b'{"usage": ', b"\xff\xfe", b"[" * 5 + b"]" * 4], ids=["cut", "not-utf8", "array"]
)
def test_malformed_json_names_the_body(target: Target, content: bytes) -> None:
    _assert_refused(_post(target, USAGE_PATH, content), "body")


# --- token counts -----------------------------------------------------------------------------

TOKENS = [2**63, 10**30, -1, 1.5, "12", True]


@pytest.mark.parametrize("tokens", TOKENS, ids=repr)
@pytest.mark.parametrize(
    ("path", "place", "field"),
    [
        (COMMIT, "usage", "usage.prompt_tokens"),
        (USAGE_PATH, "usage", "usage.prompt_tokens"),
        (QUOTES, "usage", "usage.prompt_tokens"),
        (COMMIT, "messages", "messages[0].usage.prompt_tokens"),
        (USAGE_PATH, "messages", "messages[0].usage.prompt_tokens"),
    ],
)
def test_tokens_that_are_not_a_sane_count_are_refused(
    target: Target, path: str, place: str, field: str, tokens: object
) -> None:
    usage = {"prompt_tokens": tokens}
    changes: dict[str, Any] = (
        {"usage": usage} if place == "usage" else {"usage": None, "messages": [{"usage": usage}]}
    )
    body = {k: v for k, v in {**_base(path), **changes}.items() if v is not None}
    _assert_refused(_post(target, path, json.dumps(body).encode()), field)


@pytest.mark.parametrize("cap", [-1, 0, 1.5, "12", True], ids=repr)
@pytest.mark.parametrize("path", [RESERVE, QUOTES])
def test_an_output_cap_that_is_not_a_count_is_refused(
    target: Target, path: str, cap: object
) -> None:
    request = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": cap}
    body = {k: v for k, v in _base(path).items() if k not in ("amount_usd", "usage")}
    body |= {"model": "gpt-4o", "request": request}
    _assert_refused(_post(target, path, json.dumps(body).encode()), "request.max_tokens")


# --- money ------------------------------------------------------------------------------------

MONEY = ["NaN", "Infinity", "1e3", "-0", "-1", "0x10", "١٢", " 1", "1\n", "", "1.0000000000001"]


@pytest.mark.parametrize("amount", [*MONEY, 12, 1.5], ids=repr)
@pytest.mark.parametrize(
    ("path", "field"),
    [(BUDGETS, "limit_usd"), (RESERVE, "amount_usd"), (EXTEND, "amount_usd")],
)
def test_money_that_is_not_a_plain_decimal_string_is_refused(
    target: Target, path: str, field: str, amount: object
) -> None:
    _assert_refused(_post(target, path, _with(path, **{field: amount})), field)


def test_a_budget_needs_its_limit(target: Target) -> None:
    # amount_usd is optional on reservations and extends (the estimate fills it); a limit is not.
    _assert_refused(_post(target, BUDGETS, _with(BUDGETS, limit_usd=None)), "limit_usd")


def test_nan_and_infinity_literals_are_refused(target: Target) -> None:
    for literal in ("NaN", "Infinity", "-Infinity", "1e400"):
        body = _with(USAGE_PATH)[:-1] + f', "metadata": {{"x": {literal}}}}}'.encode()
        _assert_refused(_post(target, USAGE_PATH, body), "metadata")
        body = _with(BUDGETS)[:-1] + f', "request_id": {literal}}}'.encode()
        _assert_refused(_post(target, BUDGETS, body), "request_id")


# --- identifiers and text ---------------------------------------------------------------------

SUBJECT_IDS = ["ünïcødé", "a\x00b", "' OR 1=1 --", "a" * 10_000, "ml\n", "", "\ud800"]


@pytest.mark.parametrize("subject_id", SUBJECT_IDS, ids=lambda s: repr(s[:12]))
@pytest.mark.parametrize(
    ("path", "field"),
    [(RESERVE, "subjects[0].id"), (USAGE_PATH, "subjects[0].id"), (BUDGETS, "subject.id")],
)
def test_subject_ids_outside_the_identifier_alphabet_are_refused(
    target: Target, path: str, field: str, subject_id: str
) -> None:
    subject = {"type": "team", "id": subject_id}
    changes = {"subject": subject} if path == BUDGETS else {"subjects": [subject]}
    _assert_refused(_post(target, path, _with(path, **changes)), field)


Change = Callable[[dict[str, Any]], dict[str, Any]]


@pytest.mark.parametrize(
    ("path", "changes", "field"),
    [
        (USAGE_PATH, {"metadata": {"k": "a\x00b"}}, "metadata"),
        (USAGE_PATH, {"metadata": {"k\x00": 1}}, "metadata"),
        (USAGE_PATH, {"metadata": {"k": "\ud800"}}, "metadata"),
        (USAGE_PATH, {"call_type": "chat\x00"}, "call_type"),
        (COMMIT, {"model": "gpt-4o\x00"}, "model"),
        (RESERVE, {"model": "gpt-4o", "amount_usd": None, "request": {"x": "\ud800"}}, "request"),
        (QUOTES, {"usage": {"prompt_tokens\x00": 1}}, "usage"),
        (BUDGETS, {"timezone": "UTC\x00"}, "timezone"),
        (BUDGETS, {"request_id": "' OR 1=1 --"}, "request_id"),
        (RESERVE, {"org": "' OR 1=1 --"}, "org"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_text_postgresql_cannot_store_is_refused_by_field(
    target: Target, path: str, changes: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in {**_base(path), **changes}.items() if v is not None}
    _assert_refused(_post(target, path, json.dumps(body).encode()), field)


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/budgets", {"subject_id": "a\x00"}, "subject_id"),
        ("/v1/events", {"request_id": "a\x00"}, "request_id"),
        ("/v1/events", {"after": "9" * 19}, "after"),
        ("/v1/reports/spend", {"model": "gpt\x00"}, "model"),
        ("/v1/reports/spend", {"tz": "UTC\x00"}, "tz"),
        ("/v1/requests/a%00b", {}, "request_id"),
        ("/v1/requests/' OR 1=1 --", {}, None),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_hostile_query_and_path_parameters_are_refused(
    target: Target, path: str, params: dict[str, str], field: str | None
) -> None:
    response = target.api.get(path, params=params, headers=headers(target.keys["admin"]))
    if field is None:  # SQL text in an identifier is only text: no such request
        assert response.status_code == 404, response.text
    else:
        _assert_refused(response, field)


def test_reports_honour_to_and_reconciliations_refuse_the_last_day(target: Target) -> None:
    admin = headers(target.keys["admin"])
    window = {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}
    _assert_refused(target.api.get("/v1/reports/spend", params=window, headers=admin), "to")
    export = {"provider": "openai", "content": "x", "to": "9999-12-31"}
    _assert_refused(target.api.post("/v1/reconciliations", json=export, headers=admin), "to")


@pytest.mark.parametrize(
    "key", ["ulk_ab\x00cd_secret", "ulk_abé_secret", "ulk_" + "f" * 10_000 + "_x"], ids=repr
)
def test_a_malformed_key_is_401(target: Target, key: str) -> None:
    response = target.api.get("/v1/budgets", headers={b"Authorization": f"Bearer {key}".encode()})
    assert response.status_code == 401, response.text
