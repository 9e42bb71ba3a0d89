"""The real thing, end to end: LiteLLM's proxy as a process (``litellm --config``) with the
usage-ledger callback enabled from its config.yaml, a real usage-ledger server (uvicorn on a
socket, over its own PostgreSQL database, API keys on) and a mock OpenAI provider that answers
as many tokens as allowed.

One proxy serves the whole session (it takes seconds to import): tests keep apart by using
their own team ids. The ledger can be stopped and started again on the same port, to test
the proxy while the ledger is down.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine

from app import main as app_main
from app.auth.service import create_key
from app.client import Budget, LedgerClient
from app.config import Settings
from app.db.engine import make_engine
from app.ledger import service as ledger_service
from app.pricing.sources import load_table
from tests.client.conftest import free_port
from tests.conftest import Server
from tests.litellm import mock_provider

ROOT = Path(__file__).resolve().parents[2]
ORG = "acme"
MASTER_KEY = "sk-master-usage-ledger-tests-0123456789"
PROXY_START_SECONDS = 300  # importing the proxy takes 10-30 s, more on a busy 2-core machine


class LedgerServer:
    """usage-ledger's HTTP API in a background thread; ``stop()`` and ``start()`` again keep
    the port, as a restarted service would."""

    def __init__(self, engine: Engine, port: int) -> None:
        self.engine = engine
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        app = app_main.create_app(self.engine, Settings(insecure_no_auth=False), sweep=False)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="ledger", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the ledger server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
        self._server = self._thread = None


@dataclass(frozen=True)
class Proxy:
    url: str
    spool: Path
    log: Path

    def chat(
        self, key: str, body: dict[str, Any], *, timeout: float = 120.0
    ) -> httpx.Response:  # money-safe: seconds
        """One chat completion as an end client sends it (OpenAI's wire format)."""
        return httpx.post(
            f"{self.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json=body,
            timeout=timeout,
        )


@dataclass(frozen=True)
class Stack:
    """Everything a test needs: the proxy, the ledger (and an admin client of it), the mock."""

    proxy: Proxy
    ledger: LedgerServer
    admin: LedgerClient
    admin_key: str
    provider: mock_provider.MockProvider
    engine: Engine

    def team_budget(self, limit_usd: str, *, mode: str = "hard") -> tuple[str, Budget]:
        """A fresh team with a budget over all time; its key is ``sk-ul:<team>:<user>``."""
        team = f"team-{uuid.uuid4().hex[:10]}"
        budget = self.admin.create_budget("team", team, Decimal(limit_usd), "total", mode=mode)
        return team, budget

    def request_ids(self, team: str) -> list[str]:
        """The ledger requests charged to ``team``, oldest first (read from the events table:
        GET /v1/events only pages events no running transaction could precede, and the
        PostgreSQL server may be shared)."""
        with self.engine.connect() as conn:
            events = ledger_service.read_events(
                conn, subject_id=team, settled_only=False, limit=1000
            )
        return list(dict.fromkeys(e.request_id for e in events if e.request_id))

    def story(self, request_id: str) -> dict[str, Any]:
        """GET /v1/requests/{id}: state, cost, subjects, timeline and messages."""
        response = httpx.get(
            f"{self.ledger.url}/v1/requests/{request_id}",
            params={"org": ORG},
            headers={"Authorization": f"Bearer {self.admin_key}"},
        )
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def quote(self, usage: dict[str, Any], model: str = "gpt-4o") -> Decimal:
        """The exact cost of ``usage`` by the ledger's own pricing."""
        return self.admin.quote(model, usage).cost_usd


def wait_until(
    check: Callable[[], Any], *, timeout: float = 30.0, what: str = "the condition"
) -> Any:  # money-safe: seconds
    """Poll ``check`` until it returns a truthy value (success events are logged in the
    background, after the client already has its answer)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _config(provider_url: str) -> str:
    return f"""
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: {provider_url}
      api_key: fake
  - model_name: gpt-4o-mocked
    litellm_params:
      model: openai/gpt-4o
      mock_response: "Hello from LiteLLM's mock_response"
      api_key: fake
  - model_name: gpt-4o-broken
    litellm_params:
      model: openai/gpt-4o
      mock_response: "litellm.InternalServerError"
      api_key: fake
litellm_settings:
  callbacks: usage_ledger.integrations.litellm.ledger_callback
router_settings:
  num_retries: 0
general_settings:
  master_key: {MASTER_KEY}
  custom_auth: tests.litellm.proxy_auth.user_api_key_auth
  custom_auth_run_common_checks: true
"""


def _proxy_env(ledger: LedgerServer, gateway_key: str, spool: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        # The proxy must not find a database of its own (it would try Prisma), nor our settings.
        if not k.startswith(("DATABASE_URL", "USAGE_LEDGER_", "LITELLM_", "OPENAI_"))
    }
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of prices from the internet
            "USAGE_LEDGER_URL": ledger.url,
            "USAGE_LEDGER_API_KEY": gateway_key,
            "USAGE_LEDGER_SPOOL": str(spool),
            "USAGE_LEDGER_TIMEOUT_SECONDS": "3",
            "USAGE_LEDGER_MAX_RETRIES": "1",
            "USAGE_LEDGER_DRAIN_SECONDS": "0.5",
            "USAGE_LEDGER_STREAM_GRACE_SECONDS": "5",
        }
    )
    return env


def _wait_for_proxy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + PROXY_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-4000:]
    pytest.fail(f"the LiteLLM proxy did not start:\n{tail}")


@pytest.fixture(scope="session")
def stack(
    pg_server: Server, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("litellm")
    name = f"ul_litellm_{uuid.uuid4().hex[:12]}"
    janitor = pg_server.janitor(name, template=template_db)
    janitor.init()
    engine = make_engine(pg_server.url(name), settings=Settings(pool_size=20))
    table = load_table(prices_path=None, prices_url=None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app_main, "load_table", lambda **_: table)
        with engine.begin() as conn:
            _, admin_key = create_key(conn, scope="admin", name="litellm-tests")
            _, gateway_key = create_key(conn, scope="gateway", org=ORG, name="litellm-proxy")
        ledger = LedgerServer(engine, free_port())
        ledger.start()
        provider = mock_provider.MockProvider()
        provider_server = mock_provider.start(provider)
        config = directory / "config.yaml"
        config.write_text(_config(provider.url))
        log = directory / "proxy.log"
        port = free_port()
        executable = shutil.which("litellm", path=str(Path(sys.executable).parent))
        assert executable, "the litellm proxy is installed with the dev extra"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [executable, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                cwd=directory,
                env=_proxy_env(ledger, gateway_key, directory / "spool.jsonl"),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        proxy = Proxy(f"http://127.0.0.1:{port}", directory / "spool.jsonl", log)
        admin = LedgerClient(ledger.url, admin_key, org=ORG)
        try:
            _wait_for_proxy(process, proxy.url, log)
            yield Stack(proxy, ledger, admin, admin_key, provider, engine)
        finally:
            admin.close()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            provider_server.shutdown()
            ledger.stop()
            engine.dispose()
            janitor.drop()
