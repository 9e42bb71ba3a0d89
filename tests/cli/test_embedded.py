"""The embedded PostgreSQL: started on demand, shared, stopped by its last user, and never
blocked by a server process that was killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from app.db.embedded import EmbeddedPostgres


def _server_running(data_dir: Path) -> bool:
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    if not pid_file.exists():
        return False
    running: bool = psutil.pid_exists(int(pid_file.read_text().splitlines()[0]))
    return running


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli.main",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--insecure-no-auth",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, "serve exited early"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail("serve did not become ready")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "ledger-data"


def test_last_user_stops_the_server(data_dir: Path) -> None:
    first, second = EmbeddedPostgres(data_dir), EmbeddedPostgres(data_dir)
    first.start()
    second.start()
    first.stop()
    assert _server_running(data_dir)  # the second user still needs it
    second.stop()
    assert not _server_running(data_dir)


def test_serve_on_embedded_stops_it_on_sigterm_and_survives_sigkill(data_dir: Path) -> None:
    port = _free_port()
    serve = _start_serve(data_dir, port)
    try:
        _wait_ready(port, serve)
        assert _server_running(data_dir)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
        assert not _server_running(data_dir)

        killed = _start_serve(data_dir, port)
        _wait_ready(port, killed)
        killed.kill()
        killed.wait(timeout=30)
        # The orphaned database server is adopted by the next start, not a blocker.
        again = _start_serve(data_dir, port)
        _wait_ready(port, again)
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=60) == 0
        assert not _server_running(data_dir)
    finally:
        for process in (serve,):
            if process.poll() is None:
                process.kill()
        if _server_running(data_dir):
            EmbeddedPostgres(data_dir).start()
            leftover = EmbeddedPostgres(data_dir)
            leftover.start()
            leftover.stop()
