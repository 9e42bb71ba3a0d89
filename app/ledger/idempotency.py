"""Idempotency keys: the same key with the same content returns the first result; with
different content it is a conflict.

A key is claimed by inserting its row first in the transaction (before any budget lock), so a
concurrent retry waits on the unique index until the first attempt commits or rolls back, then
either reads the stored result or proceeds as the first attempt itself.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Column, Connection, DateTime, Row, Table, Text, select, update
from sqlalchemy.dialects.postgresql import JSONB, insert

from app.db.metadata import metadata
from app.errors import IdempotencyConflict

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("org", Text, primary_key=True),
    Column("operation", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("fingerprint", Text, nullable=False),
    Column("response", JSONB),
    Column("created_at", DateTime(timezone=True)),
)


def fingerprint(content: Any) -> str:
    """A stable digest of a request's content (canonical JSON)."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim(
    conn: Connection, *, org: str, operation: str, key: str, content_fingerprint: str
) -> dict[str, Any] | None:
    """Claim ``key`` for this transaction; return the stored response if it was used before."""
    inserted = conn.execute(
        insert(idempotency_keys)
        .values(org=org, operation=operation, key=key, fingerprint=content_fingerprint)
        .on_conflict_do_nothing()
        .returning(idempotency_keys.c.key)
    ).first()
    if inserted is not None:
        return None
    row = _checked(
        conn, org=org, operation=operation, key=key, content_fingerprint=content_fingerprint
    )
    if row is None:
        raise RuntimeError(f"idempotency key {key!r} vanished after a conflicting insert")
    response: dict[str, Any] = row.response
    return response


def store(conn: Connection, *, org: str, operation: str, key: str, response: Any) -> None:
    """Record the response of the claimed key, returned to every later retry."""
    conn.execute(
        update(idempotency_keys)
        .where(
            idempotency_keys.c.org == org,
            idempotency_keys.c.operation == operation,
            idempotency_keys.c.key == key,
        )
        .values(response=response)
    )


def _checked(
    conn: Connection, *, org: str, operation: str, key: str, content_fingerprint: str
) -> Row[Any, Any] | None:
    """The stored row of ``key``, refused as a conflict when its content differs."""
    row = conn.execute(
        select(idempotency_keys.c.fingerprint, idempotency_keys.c.response).where(
            idempotency_keys.c.org == org,
            idempotency_keys.c.operation == operation,
            idempotency_keys.c.key == key,
        )
    ).first()
    if row is not None and row.fingerprint != content_fingerprint:
        raise IdempotencyConflict(
            f"{operation} with key {key!r} was already made with different content",
            idempotency_key=key,
            operation=operation,
        )
    return row


def lookup(
    conn: Connection, *, org: str, operation: str, key: str, content_fingerprint: str
) -> dict[str, Any] | None:
    """The stored response of an earlier use of ``key`` (without claiming it), if any."""
    row = _checked(
        conn, org=org, operation=operation, key=key, content_fingerprint=content_fingerprint
    )
    if row is None or row.response is None:
        return None
    response: dict[str, Any] = row.response
    return response
