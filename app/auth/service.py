"""API keys: created and revoked by admins, stored as a SHA-256 of a 256-bit secret.

A key reads ``ulk_<key_id>_<secret>``; only the key id and the secret's hash are stored, so a
leaked database reveals no usable key. (A fast hash suffices for random 256-bit secrets.)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Column, Connection, DateTime, Table, Text, insert, select, update

from app.db.metadata import metadata
from app.errors import LedgerError, NotFound

SCOPES = ("gateway", "reader", "admin")
PREFIX = "ulk_"
# ulk_<token_hex key id>_<token_urlsafe secret>: anything else (a NUL, say) is never looked up.
_KEY = re.compile(r"ulk_[0-9a-f]+_[A-Za-z0-9_-]+")

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("secret_hash", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("org", Text),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)


class Unauthorized(LedgerError):
    status = 401
    title = "Unauthorized"


class Forbidden(LedgerError):
    status = 403
    title = "Forbidden"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's scope and, for a confined key, its one org."""

    key_id: str
    scope: str
    org: str | None

    def allows(self, scope: str) -> bool:
        # admin may do everything; reader reads; gateway does the gateway's calls.
        return self.scope == "admin" or self.scope == scope


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    scope: str
    org: str | None
    name: str
    created_at: datetime
    revoked_at: datetime | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    conn: Connection, *, scope: str, org: str | None = None, name: str = ""
) -> tuple[KeyInfo, str]:
    """Create a key; returns its info and the full key, shown this once only."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    conn.execute(
        insert(api_keys).values(
            key_id=key_id,
            secret_hash=_hash(secret),
            scope=scope,
            org=org,
            name=name,
            created_at=now,
        )
    )
    return KeyInfo(key_id, scope, org, name, now, None), f"{PREFIX}{key_id}_{secret}"


def revoke_key(conn: Connection, *, key_id: str) -> None:
    """Revoke a key from now on."""
    result = conn.execute(
        update(api_keys)
        .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    if result.rowcount == 0:
        raise NotFound(f"no active key {key_id}", key_id=key_id)


def list_keys(conn: Connection) -> list[KeyInfo]:
    rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at))
    return [KeyInfo(r.key_id, r.scope, r.org, r.name, r.created_at, r.revoked_at) for r in rows]


def authenticate(conn: Connection, token: str) -> Principal:
    """The principal of a bearer token; Unauthorized for a malformed, unknown or revoked key."""
    if _KEY.fullmatch(token) is None:
        raise Unauthorized("malformed API key")
    key_id, _, secret = token[len(PREFIX) :].partition("_")
    row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
    if row is None or not hmac.compare_digest(row.secret_hash, _hash(secret)):
        raise Unauthorized("unknown API key")
    if row.revoked_at is not None:
        raise Unauthorized("revoked API key")
    return Principal(key_id=row.key_id, scope=row.scope, org=row.org)
