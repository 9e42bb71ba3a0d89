"""``migrate``, ``replay`` and ``expire``: commands over the database itself."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.budgets import replay, sweeper
from app.cli.common import open_database
from app.config import Settings, add_database_arguments
from app.db import migrate
from app.db.engine import Database


def _migrate(ns: argparse.Namespace) -> int:
    database = Database(Settings.from_namespace(ns))
    try:
        migrate.upgrade(database.url, ns.revision)
    finally:
        database.close()
    print(f"migrated to {ns.revision}")
    return 0


def _replay(ns: argparse.Namespace) -> int:
    if not ns.verify:
        print(
            "only `replay --verify` is supported: projections are rebuilt into scratch tables",
            file=sys.stderr,
        )
        return 2
    with (
        open_database(ns) as engine,
        engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
    ):

        def progress(count: int) -> None:
            print(f"\rreplayed {count:,} events", end="", file=sys.stderr, flush=True)

        report = replay.verify(conn, progress if sys.stderr.isatty() else None)
        conn.rollback()
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
    parser.set_defaults(func=_replay)

    parser = subparsers.add_parser("expire", help="Expire overdue holds once (for cron).")
    add_database_arguments(parser)
    parser.set_defaults(func=_expire)
