"""API keys: created and revoked by admins, stored as a SHA-256 of a 256-bit secret.

A key reads ``ulk_<key_id>_<secret>``; only the key id and the secret's hash are stored, so a
leaked database reveals no usable key. (A fast hash suffices for random 256-bit secrets.)

A server remembers a verified key for ``VERIFIED_TTL_SECONDS`` (``VerifiedKeys``), so the hot
path does not look every call's key up again. A revocation is honoured by the process that
made it at once, and by every other process (another ``serve``, or a server when the CLI
revoked the key) within that TTL: docs/api.md, "Authentication and scopes".
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Table,
    Text,
    insert,
    select,
    text,
    update,
)

from app.background import Worker
from app.db.metadata import metadata
from app.errors import LedgerError, NotFound

log = logging.getLogger(__name__)

SCOPES = ("gateway", "reader", "admin")
# revoke_key notifies it (delivered when the revoking transaction commits); every server
# process listens, so a revocation from any process reaches every key cache at once.
REVOCATIONS = "usage_ledger_key_revoked"
PREFIX = "ulk_"
# ulk_<token_hex key id>_<token_urlsafe secret>: anything else (a NUL, say) is never looked up.
Instant = float  # money-safe: a time.monotonic() reading, in seconds
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
    """Revoke a key from now on: this process's caches forget it at once, and every server
    process's RevocationListener when this transaction commits."""
    result = conn.execute(
        update(api_keys)
        .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    if result.rowcount == 0:
        raise NotFound(f"no active key {key_id}", key_id=key_id)
    conn.execute(
        text("SELECT pg_notify(:channel, :key_id)"), {"channel": REVOCATIONS, "key_id": key_id}
    )
    for cache in list(_CACHES):
        cache.forget(key_id)


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


VERIFIED_TTL_SECONDS = 5.0


class VerifiedKeys:
    """Keys verified in the last ``ttl_seconds``, by the SHA-256 of the whole bearer token.

    A hit costs one hash and no database round trip. Only successes are remembered (an
    unknown or revoked key is looked up on every call), an entry is never extended (the key is
    verified against the database again once it expires), and a revocation drops the key's
    entries at once: one in this process directly, one in any other process through
    ``RevocationListener``. A cache created with ``listening=False`` remembers nothing until
    its listener is connected, and forgets everything whenever the listener loses its
    connection, so a revocation it could not hear about is never served from memory; the TTL
    bounds what a listener that is connected but deaf (a silent network partition) could miss.
    The secret itself is never kept.
    """

    def __init__(
        self,
        ttl_seconds: float = VERIFIED_TTL_SECONDS,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,  # money-safe: monotonic seconds
        *,
        listening: bool = True,
    ) -> None:
        self.listening = listening
        self.generation = 0  # bumped by every forget: a lookup that spans one is not kept
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self.now = clock
        self._entries: dict[str, tuple[Principal, float]] = {}  # money-safe: monotonic seconds
        self._lock = threading.Lock()
        _CACHES.add(self)

    @staticmethod
    def token_hash(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def get(self, token_hash: str) -> Principal | None:
        if not self.listening:
            return None
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        caller, expires = entry
        if self.now() >= expires:
            with self._lock:
                self._entries.pop(token_hash, None)
            return None
        return caller

    def put(
        self, token_hash: str, caller: Principal, *, verified_at: Instant, generation: int
    ) -> None:
        """Remember ``caller`` until ``ttl_seconds`` after ``verified_at`` (``now()`` taken
        before the lookup, so a revocation committed during it still counts), unless a key was
        forgotten since ``generation`` was read, before the lookup."""
        with self._lock:
            # A revocation heard while this key was being looked up may postdate the lookup.
            if not self.listening or generation != self.generation:
                return
            if len(self._entries) >= self.max_entries:
                now = self.now()
                self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[token_hash] = (caller, verified_at + self.ttl_seconds)

    def forget(self, key_id: str) -> None:
        with self._lock:
            self.generation += 1
            self._entries = {k: v for k, v in self._entries.items() if v[0].key_id != key_id}

    def forget_all(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()


class RevocationListener(Worker):
    """Listens for revocations (``REVOCATIONS``) on a connection of its own and drops the
    revoked key from ``cache``; the cache serves entries only while this is connected."""

    name = "key-revocations"

    def __init__(self, engine: Engine, cache: VerifiedKeys, retry_seconds: float = 1.0) -> None:
        url = engine.url.set(drivername="postgresql")
        self.conninfo = url.render_as_string(hide_password=False)
        self.cache = cache
        self.retry_seconds = retry_seconds
        super().__init__()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {REVOCATIONS}")
                    self.cache.forget_all()
                    self.cache.listening = True
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self.cache.forget(note.payload)
                        conn.execute("SELECT 1")  # a dead connection shows here
            except psycopg.Error as error:
                log.warning("key revocations not heard (%s); keys are looked up every call", error)
            finally:
                self.cache.listening = False
                self.cache.forget_all()
            self._stop.wait(self.retry_seconds)


# Every live cache of this process, so that revoke_key reaches them all.
_CACHES: weakref.WeakSet[VerifiedKeys] = weakref.WeakSet()
