"""What the benchmarks share: their own database on a PostgreSQL server, ``usage-ledger serve``
on a free port, the server's memory, and waiting for its background work.

Every function here touches only the database it is given by name; nothing changes a server
setting.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def plain(url: str) -> str:
    """The URL for psycopg itself (no SQLAlchemy driver suffix such as ``+psycopg``)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+')[0]}://{rest}"


def connect(url: str, *, autocommit: bool = False, timeout_s: float = 120.0) -> psycopg.Connection:
    """``psycopg.connect``, retried for up to ``timeout_s`` while the server refuses (a shared
    server may be out of connections for a moment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return psycopg.connect(plain(url), autocommit=autocommit)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def database_url(server: str, name: str) -> str:
    """``server`` (any database URL on the PostgreSQL server) with its database set to ``name``."""
    parts = urlsplit(server)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def create_database(server: str, name: str) -> str:
    """Drop ``name`` if it exists and create it empty; returns its URL."""
    with connect(database_url(server, "postgres"), autocommit=True) as conn:
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    return database_url(server, name)


def drop_database(server: str, name: str) -> None:
    with connect(database_url(server, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def read_meta(server: str, name: str, bench: str) -> tuple[bool, dict[str, Any] | None]:
    """Whether database ``name`` exists, and the parameters of a complete load by ``bench``
    that ``write_meta`` left in its comment (None if there are none, or another bench's)."""
    with connect(database_url(server, "postgres"), autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
    if row is None:
        return False, None
    try:
        meta = json.loads(row[0]) if row[0] else None
    except ValueError:
        meta = None
    return True, meta if isinstance(meta, dict) and meta.get("bench") == bench else None


def write_meta(server: str, name: str, meta: dict[str, Any]) -> None:
    """Keep a load's parameters with the database (its comment), for a later ``--reuse``."""
    with connect(database_url(server, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal(json.dumps(meta))
            )
        )


def prepare_org(
    url: str, *, org: str, limit_usd: str, teams: int, keys: int, scopes: Sequence[str], name: str
) -> list[str]:
    """Migrate the database, define a monthly budget for the org, ``teams`` teams (t000...)
    and ``keys`` API-key subjects (k00000...) through the service, and create one key of each
    of ``scopes`` confined to the org; returns those keys' secrets, in order."""
    from app.auth import service as auth
    from app.budgets import service as budgets
    from app.budgets.model import Subject
    from app.db import migrate
    from app.db.engine import make_engine
    from app.money import parse_usd

    migrate.upgrade(url)
    engine = make_engine(url, app_role=False)
    limit = parse_usd(limit_usd)
    subjects = [("org", org)]
    subjects += [("team", f"t{t:03d}") for t in range(teams)]
    subjects += [("key", f"k{k:05d}") for k in range(keys)]
    try:
        with engine.begin() as conn:
            now = datetime.now(UTC)
            for subject_type, subject_id in subjects:
                budgets.define_budget(
                    conn,
                    org=org,
                    subject=Subject(subject_type, subject_id),
                    limit_pico_usd=limit,
                    period="month",
                    now=now,
                )
            return [auth.create_key(conn, scope=scope, org=org, name=name)[1] for scope in scopes]
    finally:
        engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Server:
    base: str  # http://127.0.0.1:<port>
    pid: int  # the ``usage-ledger serve`` process itself (one process: no workers)
    log_path: Path


@contextmanager
def serve(url: str, log_path: Path, extra: Sequence[str] = ()) -> Iterator[Server]:
    """``usage-ledger serve --database-url URL`` on a free port, with ``extra`` flags and
    otherwise its defaults (no ``USAGE_LEDGER_*`` variable of ours leaks in); waits for
    ``/readyz`` and stops it with SIGTERM (then SIGKILL after 30 s) on exit."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("USAGE_LEDGER_")}
    env.pop("DATABASE_URL", None)
    command = [
        str(Path(sys.executable).parent / "usage-ledger"),
        "serve",
        "--database-url",
        url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"usage-ledger serve exited; see {log_path}")
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"usage-ledger serve did not become ready; see {log_path}")
                time.sleep(0.25)
            yield Server(base, process.pid, log_path)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def wait_for_background(url: str, timeout_s: float = 300.0) -> bool:
    """Wait until the rollup folder and the audit checkpointer have passed every event written
    so far; False if they are still behind after ``timeout_s``."""
    began = time.monotonic()
    with connect(url, autocommit=True) as conn:
        top_row = conn.execute("SELECT coalesce(max(seq), 0) FROM ledger_events").fetchone()
        top = int(top_row[0]) if top_row else 0
        while time.monotonic() - began < timeout_s:
            row = conn.execute(
                "SELECT (SELECT folded_below FROM rollup_watermark),"
                " (SELECT coalesce(max(below_seq), 0) FROM ledger_checkpoints)"
            ).fetchone()
            if row is not None and row[0] is not None and row[0] > top and row[1] > top:
                return True
            time.sleep(0.5)
    return False
