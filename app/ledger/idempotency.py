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

from sqlalchemy import Column, Connection, DateTime, Row, Table, Text, text
from sqlalchemy.dialects.postgresql import JSONB

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


# Plain statements for the hot path: a Core construct built per call costs ~100 µs more.
_CLAIM = text(
    "INSERT INTO idempotency_keys (org, operation, key, fingerprint)"
    " VALUES (:org, :operation, :key, :fingerprint) ON CONFLICT DO NOTHING RETURNING key"
)
_STORED = text(
    "SELECT fingerprint, response FROM idempotency_keys"
    " WHERE org = :org AND operation = :operation AND key = :key"
)


def claim(
    conn: Connection, *, org: str, operation: str, key: str, content_fingerprint: str
) -> dict[str, Any] | None:
    """Claim ``key`` for this transaction; return the stored response if it was used before."""
    inserted = conn.execute(
        _CLAIM,
        {"org": org, "operation": operation, "key": key, "fingerprint": content_fingerprint},
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


# Parameter names of their own, so that the statement can run alongside others
# (ledger.append_many's ``alongside``).
STORE = """
UPDATE idempotency_keys SET response = CAST(:stored_response AS jsonb)
WHERE org = :stored_org AND operation = :stored_operation AND key = :stored_key
"""
_STORE = text(STORE)


def storing(*, org: str, operation: str, key: str, response: Any) -> tuple[str, dict[str, Any]]:
    """The statement recording the response of the claimed key, with its parameters."""
    return STORE, {
        "stored_org": org,
        "stored_operation": operation,
        "stored_key": key,
        "stored_response": json.dumps(response, separators=(",", ":")),
    }


def store(conn: Connection, *, org: str, operation: str, key: str, response: Any) -> None:
    """Record the response of the claimed key, returned to every later retry."""
    _, parameters = storing(org=org, operation=operation, key=key, response=response)
    conn.execute(_STORE, parameters)


def _checked(
    conn: Connection, *, org: str, operation: str, key: str, content_fingerprint: str
) -> Row[Any, Any] | None:
    """The stored row of ``key``, refused as a conflict when its content differs."""
    row = conn.execute(_STORED, {"org": org, "operation": operation, "key": key}).first()
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
