"""``migrate``, ``replay`` and ``expire``: commands over the database itself."""

from __future__ import annotations

import argparse
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from sqlalchemy import Connection, text

from app.alerts.replay import verify_alerts
from app.budgets import replay, sweeper
from app.budgets.replay import Difference
from app.cli.common import open_database
from app.config import Settings, add_database_arguments
from app.db import migrate
from app.db.engine import Database
from app.ledger import partitions
from app.reports import rollups


def _migrate(ns: argparse.Namespace) -> int:
    database = Database(Settings.from_namespace(ns))
    try:
        migrate.upgrade(database.url, ns.revision)
    finally:
        database.close()
    print(f"migrated to {ns.revision}")
    return 0


class ProgressBar:
    """Events done of the total, rate and ETA on one stderr line, redrawn at most 4 times a
    second (the total is the planner's estimate, so the bar ends where the count does)."""

    def __init__(self, stream: TextIO, *, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.started = time.monotonic()
        self.drawn = 0.0  # money-safe: progress timing
        self.total = 0

    def start(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()
        self.update(0, force=True)

    def update(self, done: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.drawn < 0.25:  # money-safe: progress timing
            return
        self.drawn = now
        elapsed = now - self.started
        total = max(self.total, done, 1)
        filled = self.width * done // total
        rate = done / elapsed if elapsed > 0 else 0.0  # money-safe: progress timing
        eta = f"{(total - done) / rate:,.0f} s" if rate > 0 else "?"
        self.stream.write(
            f"\rreplay [{'#' * filled}{'.' * (self.width - filled)}] {done:,}/{total:,} events"
            f"  {rate:,.0f}/s  ETA {eta}   "
        )
        self.stream.flush()

    def note(self, text: str) -> None:
        self.stream.write(f"\n{text}")
        self.stream.flush()


Seconds = float  # money-safe: wall-clock seconds
_SNAPSHOT_ID = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$")


def _check_rollups(conn: Connection, snapshot: str) -> tuple[list[Difference], Seconds]:
    """The rollups check, in the replay's snapshot, on a connection of its own: it runs while
    the budget projections are rebuilt (each a PostgreSQL backend, so the two use two cores),
    and returns its differences and seconds."""
    started = time.monotonic()
    if not _SNAPSHOT_ID.match(snapshot):
        raise ValueError(f"unexpected snapshot id {snapshot!r}")
    conn.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
    found = rollups.verify(conn)
    conn.rollback()
    return found, time.monotonic() - started


def _replay(ns: argparse.Namespace) -> int:
    if not ns.verify:
        print(
            "only `replay --verify` is supported: projections are rebuilt into scratch tables",
            file=sys.stderr,
        )
        return 2
    bar = ProgressBar(sys.stderr) if ns.progress or sys.stderr.isatty() else None
    started = time.monotonic()
    with (
        open_database(ns) as engine,
        engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
        engine.connect().execution_options(isolation_level="REPEATABLE READ") as side,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        # One snapshot for both connections: the events and every projection are read as of
        # the same instant, as if by one transaction.
        snapshot = str(conn.execute(text("SELECT pg_export_snapshot()")).scalar_one())
        reports = pool.submit(_check_rollups, side, snapshot)
        report = replay.verify(conn, bar)
        budgets_seconds = time.monotonic() - started
        if bar is not None:
            bar.update(report.events, force=True)
            bar.note(f"budgets, periods, reservations: {budgets_seconds:,.1f} s")
        # The alerts check (a scan of the events for their alerts) follows the budget
        # projections on this connection: the rollups check is the longer of the two legs.
        report.differences += verify_alerts(conn)
        alerts_seconds = time.monotonic() - started - budgets_seconds
        if bar is not None:
            bar.note(f"alerts: {alerts_seconds:,.1f} s")
            if not reports.done():
                bar.note("waiting for the rollups check")
        found, reports_seconds = reports.result()
        report.differences += found
        conn.rollback()
    if bar is not None:
        bar.note(
            f"rollups: {reports_seconds:,.1f} s (alongside);"
            f" total {time.monotonic() - started:,.1f} s\n"
        )
    print(f"replayed {report.events} events")
    for difference in report.differences:
        row: dict[str, Any] = {k: str(v) for k, v in difference.row.items()}
        print(f"DIFFERENCE {difference.projection} ({difference.side}): {row}")
    if report.ok:
        print("projections match the events")
        return 0
    print(f"{len(report.differences)} differences found")
    return 1


def _expire(ns: argparse.Namespace) -> int:
    with open_database(ns) as engine:
        count = sweeper.expire_due(engine)
    print(f"expired {count} holds")
    return 0


def _fold(ns: argparse.Namespace) -> int:
    with open_database(ns) as engine:
        count = rollups.fold_all(engine)
        with engine.connect() as conn:
            mark = rollups.watermark(conn)
    print(f"folded {count} events; rollups hold every event below seq {mark}")
    return 0


def _month(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM, got {text!r}") from error


def _partitions(ns: argparse.Namespace) -> int:
    with open_database(ns, as_owner=ns.action in ("archive", "restore")) as engine:
        with engine.begin() as conn:
            if ns.action == "ensure":
                now = datetime.now(UTC)
                created = partitions.ensure(conn, now, now + timedelta(days=31 * ns.months))
                print(f"created {created} partitions")
            elif ns.action == "archive":
                if ns.before is None:
                    print("archive needs --before YYYY-MM", file=sys.stderr)
                    return 2
                try:
                    moved = partitions.archive(conn, before=ns.before)
                except partitions.NotFolded as error:
                    print(error, file=sys.stderr)
                    return 1
                print(f"archived {len(moved)} partitions: {', '.join(moved) or '-'}")
            elif ns.action == "restore":
                if not ns.name:
                    print("restore needs --name ledger_events_YYYY_MM", file=sys.stderr)
                    return 2
                partitions.restore(conn, ns.name)
                print(f"restored {ns.name}")
        with engine.connect() as conn:
            for p in partitions.list_partitions(conn, count=True):
                span = f"{p.start:%Y-%m-%d}..{p.end:%Y-%m-%d}" if p.start and p.end else "default"
                where = "attached" if p.attached else "archived"
                print(f"{p.schema}.{p.name}\t{span}\t{where}\t{p.events} events")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("migrate", help="Migrate the database to the newest schema.")
    add_database_arguments(parser)
    parser.add_argument("--revision", default="head")
    parser.set_defaults(func=_migrate)

    parser = subparsers.add_parser(
        "replay", help="Rebuild projections from the events and compare (--verify)."
    )
    add_database_arguments(parser)
    parser.add_argument("--verify", action="store_true", help="Report differences; exit 1 on any.")
    parser.add_argument(
        "--progress",
        action="store_true",
        help="Draw the progress bar on stderr even when it is not a terminal.",
    )
    parser.set_defaults(func=_replay)

    parser = subparsers.add_parser(
        "rollups", help="Fold new usage events into the report rollups once (serve does it)."
    )
    add_database_arguments(parser)
    parser.set_defaults(func=_fold)

    parser = subparsers.add_parser(
        "partitions", help="List, create ahead, archive or restore monthly event partitions."
    )
    add_database_arguments(parser)
    parser.add_argument("action", choices=("list", "ensure", "archive", "restore"))
    parser.add_argument("--before", type=_month, help="archive: months ending by YYYY-MM")
    parser.add_argument("--name", help="restore: the archived partition's name")
    parser.add_argument("--months", type=int, default=3, help="ensure: months ahead")
    parser.set_defaults(func=_partitions)

    parser = subparsers.add_parser("expire", help="Expire overdue holds once (for cron).")
    add_database_arguments(parser)
    parser.set_defaults(func=_expire)
