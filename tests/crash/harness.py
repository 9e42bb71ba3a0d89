"""The crash tests' moving parts: the ``usage-ledger serve`` process (killed with SIGKILL and
started again on the same port), the load clients (``tests/crash/client.py`` processes) and
reading their acknowledgement logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
# The CLI of this very tree (``python -m``, run from ROOT), not whatever ``usage-ledger`` the
# virtualenv's entry point imports: a copy of the tree tests the copy's code.
CLI = [sys.executable, "-m", "app.cli.main"]


def usage_ledger(*argv: str, database_url: str, check: bool = True) -> str:
    """Run one ``usage-ledger`` command against ``database_url``; its stdout."""
    done = subprocess.run(
        [*CLI, *argv, "--database-url", database_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"usage-ledger {' '.join(argv)} exited {done.returncode}:\n"
            f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done.stdout


class LedgerProcess:
    """``usage-ledger serve`` as a child process on a fixed port."""

    def __init__(self, *, database_url: str, port: int, log: Path, sweep_seconds: int = 1) -> None:
        self.database_url = database_url
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.sweep_seconds = sweep_seconds
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start_seconds: list[float] = []

    def start(self, timeout: float = 120.0) -> None:  # money-safe: seconds
        argv = [
            *CLI,
            "serve",
            "--database-url",
            self.database_url,
            "--port",
            str(self.port),
            "--expiry-sweep-seconds",
            str(self.sweep_seconds),
            "--rollup-fold-seconds",
            "1",
            "--pool-size",
            "8",
        ]
        with self.log.open("ab") as out:
            out.write(f"\n==== start {self.starts + 1} at {time.time():.3f}\n".encode())
            out.flush()
            self.process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1
        began = time.monotonic()
        deadline = began + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited {self.process.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    self.start_seconds.append(time.monotonic() - began)
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"serve not ready after {timeout} s; see {self.log}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook, no lifespan teardown, open transactions cut off."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.process = None


@dataclass
class Clients:
    """The load clients; each generation of a client has its own name (and request ids)."""

    url: str
    key: str
    directory: Path
    ttl_seconds: int
    stop_file: Path = field(init=False)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop_file = self.directory / "stop"

    def start(self, name: str, seed: int) -> None:
        argv = [
            sys.executable,
            "-m",
            "tests.crash.client",
            "--url",
            self.url,
            "--key",
            self.key,
            "--name",
            name,
            "--log",
            str(self.directory / f"{name}.jsonl"),
            "--stop",
            str(self.stop_file),
            "--seed",
            str(seed),
            "--ttl-seconds",
            str(self.ttl_seconds),
        ]
        stderr = (self.directory / f"{name}.stderr").open("ab")
        self.processes[name] = subprocess.Popen(argv, cwd=ROOT, stderr=stderr)
        stderr.close()

    def kill(self, name: str) -> None:
        """SIGKILL a client mid-request: whatever it held is a dead request."""
        process = self.processes.pop(name)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        self.killed.append(name)

    def finish(self, timeout: float = 240.0) -> None:  # money-safe: seconds
        """Ask every client to stop after its current request and wait for all of them."""
        self.stop_file.touch()
        for name, process in self.processes.items():
            code = process.wait(timeout=timeout)
            assert code == 0, f"client {name} exited {code}; see {self.directory}/{name}.stderr"

    def terminate(self) -> None:
        """After a failure: SIGKILL whichever client still runs (they retry for a while)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)

    def entries(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.directory.glob("*.jsonl")):
            with path.open() as log:
                for line in log:
                    # A client killed mid-write leaves at most a torn last line: not an answer
                    # it was given in full, so not an acknowledgement.
                    if line.endswith("\n"):
                        yield json.loads(line)
