"""Signed webhook payloads: ``Usage-Ledger-Signature: t=<unix seconds>,v1=<hex>``.

``v1`` is HMAC-SHA256 with the webhook's secret over ``<t>.<raw body>``. Signing the timestamp
with the body lets a receiver refuse an old delivery replayed at it (docs/alerts.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

SIGNATURE_HEADER = "Usage-Ledger-Signature"
DELIVERY_HEADER = "Usage-Ledger-Delivery"
EVENT_HEADER = "Usage-Ledger-Event"
DEFAULT_TOLERANCE_SECONDS = 300


def body_bytes(payload: dict[str, Any]) -> bytes:
    """The exact bytes posted: compact JSON with sorted keys, the same on every attempt."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: int | None = None,
) -> bool:
    """What a receiver does: True when some ``v1`` matches and ``t`` is recent enough."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = int(time.time()) if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = _digest(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
