"""``serve``: migrate, then serve HTTP with the background workers running.

One process by default. ``--workers N`` pre-forks N server processes after the database (the
embedded one included) is started and migrated once: each child has its own engine and pool
and its own listening socket on the same port (``SO_REUSEPORT``, so the kernel spreads new
connections over them), and only child 0 runs the background workers (expiry sweeper, rollup
folder, audit checkpointer, webhook delivery). Those are safe to run in several processes
anyway (each claims its work with row locks or ``SKIP LOCKED``); one set is simply enough.
The parent only supervises: it restarts a child that dies, forwards SIGTERM/SIGINT, and stops
the embedded server after the last child has exited.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import uvicorn
from sqlalchemy import Engine

from app.auth import service as auth
from app.config import Settings, add_database_arguments, add_pricing_arguments, add_server_arguments
from app.db import migrate
from app.db.engine import Database, make_engine
from app.main import create_app

log = logging.getLogger(__name__)

# How long the parent waits for its children to finish their requests after SIGTERM.
_STOP_GRACE_SECONDS = 30.0


def _serve(ns: argparse.Namespace) -> int:
    settings = Settings.from_namespace(ns)
    workers = int(ns.workers or 1)
    if workers < 1:
        raise SystemExit("--workers must be at least 1")
    # SIGTERM must unwind normally so an embedded server we started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    database = Database(settings)
    try:
        migrate.upgrade(database.url)
        engine = make_engine(database.url, settings=settings)
        _announce_auth(engine, settings)
        if workers == 1:
            app = create_app(engine, settings)
            _freeze_startup_objects()
            log.info("serving on http://%s:%d", settings.host, settings.port)
            uvicorn.run(app, **_uvicorn_options(settings))
            engine.dispose()
        else:
            # No connection may cross the fork: each child opens its own.
            engine.dispose()
            return _prefork(database.url, settings, workers)
    finally:
        database.close()
    return 0


def _freeze_startup_objects() -> None:
    """Put what start-up made (modules, routes, schemas, the price table: ~170,000 objects)
    beyond the cyclic garbage collector. Each full collection walked all of them, 90-120 ms
    with the GIL held, every 7 s or so under load: the slowest 1% of requests
    (docs/benchmarks.md, "Garbage collection pauses"). They live as long as the process anyway."""
    gc.collect()
    gc.freeze()


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    # httptools and uvloop (dependencies) are picked by "auto"; named here so that a missing
    # one fails at start instead of silently falling back to the pure-Python h11.
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        "access_log": False,
        "http": "httptools",
        "loop": "uvloop" if sys.platform != "win32" else "auto",
    }


def _announce_auth(engine: Engine, settings: Settings) -> None:
    """Auth is always on; only --insecure-no-auth turns it off, and says so loudly."""
    if settings.insecure_no_auth:
        log.warning(
            "AUTH IS DISABLED (--insecure-no-auth): every caller is an admin of every "
            "org. Use this for local demos only."
        )
        return
    with engine.connect() as conn:
        active = [k for k in auth.list_keys(conn) if k.revoked_at is None]
    if not active:
        log.warning(
            "no API key exists yet: create one with "
            "`usage-ledger keys create --scope admin` (same database flags as serve)"
        )


def _listeners(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port: one per child with SO_REUSEPORT (Linux
    balances connections over them), else one shared by all."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # A plain bind first: SO_REUSEPORT would otherwise share the port with another serve.
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
        port = probe.getsockname()[1]
    finally:
        probe.close()
    per_child = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")
    sockets = []
    for _ in range(count if per_child else 1):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if per_child:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sockets.append(sock)
    return sockets * (1 if per_child else count)


def _prefork(url: str, settings: Settings, workers: int) -> int:
    """Fork ``workers`` server processes and supervise them until SIGTERM/SIGINT."""
    sockets = _listeners(settings.host, settings.port, workers)
    parent = os.getpid()
    children: dict[int, int] = {}  # pid -> worker index
    stopping = threading.Event()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(url, settings, sockets[index], index=index, parent=parent)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                # Never run the parent's atexit handlers (they stop the embedded server).
                logging.shutdown()
                os._exit(code)
        children[pid] = index

    for index in range(workers):
        spawn(index)

    def stop(*_: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "serving on http://%s:%d with %d worker processes (pids %s)",
        settings.host,
        sockets[0].getsockname()[1],
        workers,
        ", ".join(str(pid) for pid in children),
    )
    while not stopping.is_set():
        for pid, index in list(children.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done and not stopping.is_set():
                del children[pid]
                log.warning(
                    "worker %d (pid %d) exited with status %d; starting another", index, pid, status
                )
                spawn(index)
        stopping.wait(0.5)  # money-safe: monotonic seconds
    for pid in children:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_SECONDS
    while children and time.monotonic() < deadline:
        for pid in list(children):
            if os.waitpid(pid, os.WNOHANG)[0]:
                del children[pid]
        time.sleep(0.1)
    for pid in children:
        _signal(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    for sock in set(sockets):
        sock.close()
    return 0


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _child(url: str, settings: Settings, sock: socket.socket, *, index: int, parent: int) -> int:
    """One pre-forked server process: its own engine, the app, uvicorn on ``sock``."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    _exit_with(parent)
    engine = make_engine(url, settings=settings)
    try:
        app = create_app(engine, settings, sweep=index == 0)
        _freeze_startup_objects()
        options = _uvicorn_options(settings)
        del options["host"], options["port"]
        server = uvicorn.Server(uvicorn.Config(app, **options))
        # uvicorn re-raises the SIGTERM it handled, after a graceful shutdown.
        with contextlib.suppress(SystemExit):
            server.run(sockets=[sock])
    finally:
        engine.dispose()
    return 0


def _exit_with(parent: int) -> None:
    """Stop this child if its parent dies (SIGKILL leaves no chance to forward a signal)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="Serve the HTTP API.")
    add_database_arguments(parser)
    add_server_arguments(parser)
    add_pricing_arguments(parser)
    workers = os.environ.get("USAGE_LEDGER_WORKERS")
    parser.add_argument(
        "--workers",
        type=int,
        default=int(workers) if workers else None,
        help="Server processes (env USAGE_LEDGER_WORKERS; default 1). Each has its own pool "
        "of --pool-size connections; only one runs the background workers.",
    )
    parser.set_defaults(func=_serve)
