"""A live server with a realistic org for the dashboard tests, and headless Chromium.

The server is uvicorn in a background thread over a database of this module's own (as in
tests/client/conftest.py), with API keys on. Everything the page will show is written through
the HTTP API, as a gateway and an operator would.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from app.auth.service import create_key
from app.config import Settings
from app.db.engine import make_engine
from app.main import create_app
from tests.client.conftest import free_port
from tests.conftest import Server

ORG = "acme"
# Debian's chromium, found by scripts/ensure-chromium; Playwright never downloads a browser here.
CHROMIUM = Path(os.environ.get("USAGE_LEDGER_CHROMIUM", "/usr/bin/chromium"))

# (request id, subjects, model, usage): 0.35 USD per gpt-4o request, 0.45 for the
# claude request, 0.225 and 0.0225 for the gemini ones, so the subjects rank
# search 0.7 > ml 0.675 > ann 0.35 > bob 0.0225 (no ties).
USAGE: list[tuple[str, list[tuple[str, str]], str, dict[str, int]]] = [
    (
        "s1",
        [("team", "search"), ("user", "ann")],
        "gpt-4o",
        {"prompt_tokens": 100_000, "completion_tokens": 10_000},
    ),
    ("s2", [("team", "search")], "gpt-4o", {"prompt_tokens": 100_000, "completion_tokens": 10_000}),
    (
        "m1",
        [("team", "ml")],
        "claude-sonnet-4-5-20250929",
        {"input_tokens": 100_000, "output_tokens": 10_000},
    ),
    (
        "m2",
        [("team", "ml")],
        "gemini-2.5-pro",
        {"prompt_tokens": 100_000, "completion_tokens": 10_000},
    ),
    (
        "b1",
        [("user", "bob")],
        "gemini-2.5-pro",
        {"prompt_tokens": 10_000, "completion_tokens": 1_000},
    ),
]
MODELS = {"gpt-4o", "claude-sonnet-4-5-20250929", "gemini-2.5-pro"}
# search spends 0.7 of 0.8 (87.5 %: past the 0.8 threshold, short of 0.95), ml 0.675 of 5.
BUDGETS = {"search": ("0.8", "warning"), "ml": ("5", "ok")}


@dataclass(frozen=True)
class Dashboard:
    url: str
    reader_key: str
    budget_ids: dict[str, str]

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.reader_key}"}


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code in (200, 201), response.text
    result: dict[str, Any] = response.json()
    return result


def _seed(url: str, admin_key: str) -> dict[str, str]:
    """The org's budgets, then its usage, over HTTP; returns the budget ids by team."""
    budget_ids = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}) as client:
        for team, (limit, _) in BUDGETS.items():
            budget = _post(
                client,
                "/v1/budgets",
                {
                    "org": ORG,
                    "subject": {"type": "team", "id": team},
                    "limit_usd": limit,
                    "period": "month",
                    "mode": "soft",
                },
            )
            budget_ids[team] = budget["budget_id"]
        for request_id, subjects, model, usage in USAGE:
            _post(
                client,
                "/v1/usage",
                {
                    "org": ORG,
                    "request_id": request_id,
                    "subjects": [{"type": t, "id": i} for t, i in subjects],
                    "model": model,
                    "usage": usage,
                },
            )
        # Another org's spend, which the acme reader key must never see.
        _post(
            client,
            "/v1/usage",
            {
                "org": "globex",
                "request_id": "g1",
                "subjects": [{"type": "team", "id": "rival"}],
                "model": "gpt-4o",
                "usage": {"prompt_tokens": 900_000, "completion_tokens": 90_000},
            },
        )
    return budget_ids


@pytest.fixture(scope="module")
def dashboard(pg_server: Server, template_db: str) -> Iterator[Dashboard]:
    # One database and server for the module: the tests only read what _seed wrote.
    name = f"ul_dash_{uuid.uuid4().hex[:12]}"
    janitor = pg_server.janitor(name, template=template_db)
    janitor.init()
    engine = make_engine(pg_server.url(name), settings=Settings(pool_size=8))
    with engine.begin() as conn:
        _, admin = create_key(conn, scope="admin", name="dashboard-tests")
        _, reader = create_key(conn, scope="reader", org=ORG, name="dashboard-tests")
    app = create_app(engine, Settings(insecure_no_auth=False), sweep=False)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="uvicorn-dashboard", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("the dashboard test server did not start")
            time.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        yield Dashboard(url, reader, _seed(url, admin))
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        engine.dispose()
        janitor.drop()


@pytest.fixture(scope="module")
def driver() -> Iterator[Playwright]:
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser(driver: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/ensure-chromium (as root)")
    chromium = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True)
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (fresh sessionStorage) at 1280x900; a script error anywhere fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    context.set_default_timeout(10_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield tab
        assert errors == [], f"script errors in the page: {errors}"
    finally:
        context.close()
