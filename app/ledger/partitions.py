"""Monthly partitions of the event table: list them, keep them ahead, archive old months.

Archiving detaches a month from ``ledger_events`` and moves it, unchanged and still refusing
UPDATE and DELETE, into the ``ledger_archive`` schema. The hot path never reads old months, so
it does not notice; the rollups keep their sums, so reports still cover archived months; and
replay reads the archive with the live table, so ``replay --verify`` still sees every event
until an operator exports and drops an archived month (docs/ledger.md, "Retention").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, text

ARCHIVE_SCHEMA = "ledger_archive"
_MONTHLY = re.compile(r"^ledger_events_\d{4}_\d{2}$")


@dataclass(frozen=True)
class Partition:
    schema: str
    name: str
    start: datetime | None
    end: datetime | None
    attached: bool
    events: int


_BOUNDS = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


def _bounds(expression: str | None) -> tuple[datetime | None, datetime | None]:
    match = _BOUNDS.search(expression or "")
    if match is None:
        return None, None
    return (
        datetime.fromisoformat(match.group(1)).astimezone(UTC),
        datetime.fromisoformat(match.group(2)).astimezone(UTC),
    )


def list_partitions(conn: Connection, *, count: bool = False) -> list[Partition]:
    rows = conn.execute(
        text(
            "SELECT n.nspname AS schema, c.relname AS name, c.relispartition AS attached,"
            " pg_get_expr(c.relpartbound, c.oid) AS bound"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND (c.relname = 'ledger_events_default'"
            "   OR c.relname ~ '^ledger_events_[0-9]{4}_[0-9]{2}$')"
            "   AND n.nspname IN ('public', :archive)"
            " ORDER BY c.relname"
        ),
        {"archive": ARCHIVE_SCHEMA},
    ).mappings()
    found = []
    for row in rows:
        start, end = _bounds(row["bound"])
        if start is None and _MONTHLY.match(row["name"]):
            year, month = int(row["name"][-7:-3]), int(row["name"][-2:])
            start = datetime(year, month, 1, tzinfo=UTC)
            end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        events = 0
        if count:
            events = int(
                conn.execute(
                    text(f'SELECT count(*) FROM "{row["schema"]}"."{row["name"]}"')
                ).scalar_one()
            )
        found.append(
            Partition(row["schema"], row["name"], start, end, bool(row["attached"]), events)
        )
    return found


def ensure(conn: Connection, start: datetime, end: datetime) -> int:
    """Create the monthly partitions covering [start, end]; returns how many were new."""
    return int(
        conn.execute(
            text("SELECT ledger_ensure_partitions(:start, :end)"), {"start": start, "end": end}
        ).scalar_one()
    )


class NotFolded(RuntimeError):
    """A month to archive still has events that the rollups have not folded."""


def archive(conn: Connection, *, before: datetime) -> list[str]:
    """Detach every monthly partition that ends on or before ``before`` and move it to the
    archive schema. Needs the tables' owner (not the service's role). A month with events the
    rollups have not folded yet is refused: reports would lose them."""
    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {ARCHIVE_SCHEMA}"))
    moved = []
    for partition in list_partitions(conn):
        if not partition.attached or partition.end is None or partition.end > before:
            continue
        pending = conn.execute(
            text(
                f'SELECT count(*) FROM "{partition.name}"'
                " WHERE seq >= (SELECT folded_below FROM rollup_watermark)"
            )
        ).scalar_one()
        if pending:
            raise NotFolded(
                f"{partition.name} has {pending} events not folded into the rollups yet:"
                " run `usage-ledger rollups` (or wait for serve to) and archive again"
            )
        conn.execute(text(f'ALTER TABLE ledger_events DETACH PARTITION "{partition.name}"'))
        conn.execute(text(f'ALTER TABLE "{partition.name}" SET SCHEMA {ARCHIVE_SCHEMA}'))
        # Replay reads archived months as the service's role; reading is all it may do.
        conn.execute(text(f"GRANT USAGE ON SCHEMA {ARCHIVE_SCHEMA} TO usage_ledger_app"))
        conn.execute(
            text(f'GRANT SELECT ON {ARCHIVE_SCHEMA}."{partition.name}" TO usage_ledger_app')
        )
        moved.append(partition.name)
    return moved


def restore(conn: Connection, name: str) -> None:
    """Attach an archived month again (for example to replay over it)."""
    partition = next((p for p in list_partitions(conn) if p.name == name and not p.attached), None)
    if partition is None or partition.start is None or partition.end is None:
        raise LookupError(f"no archived partition {name}")
    conn.execute(text(f'ALTER TABLE {ARCHIVE_SCHEMA}."{name}" SET SCHEMA public'))
    conn.execute(
        text(
            f'ALTER TABLE ledger_events ATTACH PARTITION "{name}"'
            f" FOR VALUES FROM ('{partition.start.isoformat()}') TO ('{partition.end.isoformat()}')"
        )
    )


def archive_cut(conn: Connection) -> datetime | None:
    """The end of the newest archived month: events recorded before it may be archived."""
    ends = [p.end for p in list_partitions(conn) if not p.attached and p.end is not None]
    return max(ends) if ends else None


def archived_tables(conn: Connection) -> list[str]:
    """Qualified names of the archived months, oldest first."""
    return [
        f'{ARCHIVE_SCHEMA}."{p.name}"'
        for p in list_partitions(conn)
        if not p.attached and p.schema == ARCHIVE_SCHEMA
    ]


def history_source(conn: Connection) -> str:
    """A FROM clause over every event, archived months included."""
    tables = archived_tables(conn)
    if not tables:
        return "ledger_events"
    union = " UNION ALL ".join(
        ["SELECT * FROM ledger_events", *(f"SELECT * FROM {t}" for t in tables)]
    )
    return f"({union}) AS ledger_events"
