"""SQL only: the canonical digest of each event, the settled horizon, checkpoint rows."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, Row, insert, select, text

from app.audit.model import Checkpoint
from app.audit.tables import ledger_checkpoints

# Checkpointers exclude each other with this transaction-scoped advisory lock; the key is the
# first 8 bytes of sha256(b"usage-ledger/ledger_checkpoints"), so it meets no other lock.
CHECKPOINT_LOCK = 2508090419899797353

_UTC_ISO = (
    "coalesce(to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"
    " {column}::text)"
)
# Format 1 of an event's canonical form: a JSON array of every column, payload last. JSON is
# self-delimiting, so no two different rows share a text (NULL is null, not ""). Each part is
# a pure function of the stored value, independent of the session's TimeZone and DateStyle:
# timestamps are rendered in UTC to the microsecond (infinity as such), jsonb prints its keys
# sorted (by length, then bytes) without duplicates or insignificant whitespace, numbers as
# stored. So a dump and restore, an upgrade or an archived month reads the same text;
# tests/audit/test_canonical.py pins it. A new column of ledger_events must be added here,
# under a new FORMAT (app/audit/model.py).
CANONICAL_TEXT = (
    "json_build_array(seq, org, event_type, schema_version, request_id, reservation_id,"
    " budget_id, budget_ids, amount_pico_usd, "
    + _UTC_ISO.format(column="occurred_at")
    + ", "
    + _UTC_ISO.format(column="recorded_at")
    + ", payload)::text"
)
DIGEST = f"sha256(convert_to({CANONICAL_TEXT}, 'UTF8'))"


def try_lock(conn: Connection) -> bool:
    """Take the checkpointers' lock for this transaction, or return False at once."""
    return bool(
        conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": CHECKPOINT_LOCK}
        ).scalar_one()
    )


def settled_horizon(conn: Connection) -> int:
    """No event can appear below this seq any more (docs/ledger.md, "Reading the stream")."""
    return int(
        conn.execute(
            text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20")
        ).scalar_one()
    )


def batch_end(conn: Connection, source: str, *, low: int, high: int, batch: int) -> int:
    """``high``, or just past the ``batch``-th event at or above ``low``, whichever is lower."""
    last = conn.execute(
        text(
            f"SELECT seq FROM {source} WHERE seq >= :low AND seq < :high"
            " ORDER BY seq OFFSET :skip LIMIT 1"
        ),
        {"low": low, "high": high, "skip": batch - 1},
    ).scalar()
    return high if last is None else int(last) + 1


def digests(conn: Connection, source: str, *, low: int, high: int) -> list[tuple[int, bytes]]:
    """(seq, SHA-256 of the canonical form) of every event in [low, high), in seq order."""
    rows = conn.execute(
        text(
            f"SELECT seq, {DIGEST} AS digest FROM {source}"
            " WHERE seq >= :low AND seq < :high ORDER BY seq, digest"
        ),
        {"low": low, "high": high},
    )
    return [(int(seq), bytes(digest)) for seq, digest in rows]


def first_seq(conn: Connection, source: str, *, low: int, high: int | None = None) -> int | None:
    """The lowest seq in [low, high), or None."""
    upper = "" if high is None else " AND seq < :high"
    found = conn.execute(
        text(f"SELECT min(seq) FROM {source} WHERE seq >= :low{upper}"),
        {"low": low, "high": high},
    ).scalar()
    return None if found is None else int(found)


def count_from(conn: Connection, source: str, *, low: int) -> int:
    return int(
        conn.execute(
            text(f"SELECT count(*) FROM {source} WHERE seq >= :low"), {"low": low}
        ).scalar_one()
    )


_HEADER = [c for c in ledger_checkpoints.c if c.name != "entries"]


def _checkpoint(row: Row[tuple[int, int, int, int, bytes, bytes, datetime]]) -> Checkpoint:
    return Checkpoint(
        from_seq=int(row.from_seq),
        below_seq=int(row.below_seq),
        events=int(row.events),
        format=int(row.format),
        previous_hash=bytes(row.previous_hash),
        hash=bytes(row.hash),
        created_at=row.created_at,
    )


def last_checkpoint(conn: Connection) -> Checkpoint | None:
    row = conn.execute(
        select(*_HEADER).order_by(ledger_checkpoints.c.from_seq.desc()).limit(1)
    ).first()
    return None if row is None else _checkpoint(row)


def checkpoints(conn: Connection) -> list[Checkpoint]:
    """Every checkpoint, without its entries, in seq order."""
    rows = conn.execute(select(*_HEADER).order_by(ledger_checkpoints.c.from_seq))
    return [_checkpoint(row) for row in rows]


def entries(conn: Connection, *, from_seq: int) -> bytes:
    return bytes(
        conn.execute(
            select(ledger_checkpoints.c.entries).where(ledger_checkpoints.c.from_seq == from_seq)
        ).scalar_one()
    )


def insert_checkpoint(
    conn: Connection,
    *,
    from_seq: int,
    below_seq: int,
    events: int,
    format_version: int,
    previous_hash: bytes,
    hash_value: bytes,
    entries: bytes,
) -> Checkpoint:
    row = conn.execute(
        insert(ledger_checkpoints)
        .values(
            from_seq=from_seq,
            below_seq=below_seq,
            events=events,
            format=format_version,
            previous_hash=previous_hash,
            hash=hash_value,
            entries=entries,
        )
        .returning(*_HEADER)
    ).one()
    return _checkpoint(row)
