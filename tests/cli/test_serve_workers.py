"""``serve --workers N``: the embedded PostgreSQL is started once, N processes serve one port,
a dead worker is replaced, and SIGTERM stops the workers and then the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from app.db.embedded import EmbeddedPostgres
from tests.cli.test_embedded import _free_port, _server_running, _wait_ready


def _workers(
    serve: subprocess.Popen[bytes], count: int, gone: int | None = None
) -> list[psutil.Process]:
    """The serve process's live children once there are ``count`` of them (without ``gone``)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children = []
        for child in psutil.Process(serve.pid).children():
            try:
                if child.pid != gone and child.status() != psutil.STATUS_ZOMBIE:
                    children.append(child)
            except psutil.NoSuchProcess:
                continue
        if len(children) == count:
            return children
        time.sleep(0.2)
    pytest.fail(f"serve did not get to {count} workers")


def test_workers_share_one_port_and_one_embedded_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "ledger-data"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    serve = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "serve", "--data-dir", str(data_dir),
         "--port", str(port), "--insecure-no-auth", "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_ready(port, serve)
        workers = _workers(serve, 2)
        # One database user registered (the supervisor), one server started.
        assert len(list((data_dir / "clients").glob("*"))) == 1
        assert _server_running(data_dir)
        budget = {
            "org": "acme",
            "subject": {"type": "team", "id": "ml"},
            "limit_usd": "5",
            "period": "month",
        }
        base = f"http://127.0.0.1:{port}"
        # New connections land on either worker; every one of them answers from the same data.
        for n in range(6):
            with httpx.Client(base_url=base) as client:
                budget["subject"] = {"type": "team", "id": f"t{n}"}
                assert client.post("/v1/budgets", json=budget).status_code == 201
                assert len(client.get("/v1/budgets").json()["budgets"]) == n + 1
        # A worker that dies is replaced, and the port keeps answering.
        workers[0].kill()
        replaced = _workers(serve, 2, gone=workers[0].pid)
        assert workers[1].pid in {p.pid for p in replaced}
        _wait_ready(port, serve)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
        assert not any(p.is_running() and p.status() != "zombie" for p in replaced)
        assert not _server_running(data_dir)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        for child in psutil.Process().children(recursive=True):
            if "serve" in " ".join(child.cmdline()) and str(port) in child.cmdline():
                child.kill()
        if _server_running(data_dir):
            leftover = EmbeddedPostgres(data_dir)
            leftover.start()
            leftover.stop()
