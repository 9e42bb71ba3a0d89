"""The webhook delivery worker: posts queued deliveries, retries with backoff, logs each try.

Delivery is at least once. A delivery is queued in the transaction that raised its event, so
a crash before it is posted only delays it. The worker claims due deliveries in a short
transaction that pushes them a lease into the future, posts them with no transaction open (a
transaction held across HTTP calls would hold back the snapshot horizon every event reader
waits for, docs/ledger.md "Reading the stream"), then records the outcome. A worker that dies
while posting leaves the delivery to be claimed again when the lease runs out, so a receiver
can see a delivery twice: it deduplicates by the ``Usage-Ledger-Delivery`` header.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from app.alerts import service
from app.alerts.model import Attempt
from app.alerts.service import Claim
from app.alerts.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    body_bytes,
    sign,
)
from app.background import Worker

log = logging.getLogger(__name__)
ERROR_EXCERPT = 300


@dataclass(frozen=True)
class DeliveryPolicy:
    """Retry schedule and limits. The defaults make 10 attempts over 1.5 to 3 hours (the nine
    waits' ceilings are 30 s, 1, 2, 4, 8, 16, 32 min, 1 h, 1 h: 3 h 3.5 min)."""

    max_attempts: int = 10
    backoff_base_seconds: float = 30.0
    backoff_max_seconds: float = 3600.0
    timeout_seconds: float = 10.0
    # Longer than a post can take, so a live worker never loses its claim to another.
    lease_seconds: float = 60.0
    batch: int = 50

    def backoff_seconds(self, attempt: int, rng: random.Random) -> float:
        """Wait after failed attempt ``attempt`` (1-based): base * 2**(attempt-1), capped, with
        "equal jitter" (uniform in [half, all] of it) so that many deliveries failing together
        do not come back together, yet none retries much sooner than the schedule says."""
        doublings = min(max(attempt - 1, 0), 60)  # past the cap anyway; keeps it finite
        ceiling_seconds = min(
            self.backoff_max_seconds, self.backoff_base_seconds * (1 << doublings)
        )
        return ceiling_seconds / 2 + rng.uniform(0, ceiling_seconds / 2)


def _post(client: httpx.Client, claim: Claim) -> tuple[Attempt, bool, str | None]:
    """One POST; the attempt as logged, whether it was delivered, and the error if not."""
    body = body_bytes(claim.payload)
    started_at = datetime.now(UTC)
    started = time.monotonic()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "usage-ledger-webhooks/1",
        SIGNATURE_HEADER: sign(claim.secret, body, int(started_at.timestamp())),
        DELIVERY_HEADER: str(claim.delivery_id),
        EVENT_HEADER: claim.event_type,
    }
    status_code: int | None = None
    error: str | None = None
    try:
        response = client.post(claim.url, content=body, headers=headers)
        status_code = response.status_code
        if not 200 <= status_code < 300:
            excerpt = response.text[:ERROR_EXCERPT]
            error = f"HTTP {status_code}" + (f": {excerpt}" if excerpt else "")
    except httpx.HTTPError as failure:
        error = f"{type(failure).__name__}: {failure}"[:ERROR_EXCERPT]
    duration_ms = int((time.monotonic() - started) * 1000)
    attempt = Attempt(claim.attempt, started_at, status_code, error, duration_ms)
    return attempt, error is None, error


def deliver_due(
    engine: Engine,
    *,
    client: httpx.Client,
    policy: DeliveryPolicy | None = None,
    rng: random.Random | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Claim and post every due delivery, batch by batch (until ``stop`` is set); returns how
    many were attempted."""
    policy = policy or DeliveryPolicy()
    rng = rng or random.Random()
    total = 0
    while True:
        with engine.begin() as conn:
            claims = service.claim_deliveries(
                conn, limit=policy.batch, lease=timedelta(seconds=policy.lease_seconds)
            )
        for claim in claims:
            _attempt(engine, client, claim, policy, rng)
        total += len(claims)
        if len(claims) < policy.batch or (stop is not None and stop.is_set()):
            return total


def _attempt(
    engine: Engine,
    client: httpx.Client,
    claim: Claim,
    policy: DeliveryPolicy,
    rng: random.Random,
) -> None:
    if claim.webhook_revoked:
        with engine.begin() as conn:
            service.record_attempt(
                conn, claim=claim, attempt=None, delivered=False, error="webhook revoked"
            )
        return
    attempt, delivered, error = _post(client, claim)
    retry_in = None
    if not delivered and claim.attempt < policy.max_attempts:
        retry_in = timedelta(seconds=policy.backoff_seconds(claim.attempt, rng))
    with engine.begin() as conn:
        service.record_attempt(
            conn, claim=claim, attempt=attempt, delivered=delivered, error=error, retry_in=retry_in
        )
    if not delivered:
        log.warning(
            "webhook delivery %s attempt %d failed (%s); %s",
            claim.delivery_id,
            claim.attempt,
            error,
            f"retrying in {retry_in}" if retry_in is not None else "giving up",
        )


class DeliveryWorker(Worker):
    """Runs ``deliver_due`` every ``interval`` seconds in a daemon thread until stopped."""

    name = "webhook-delivery"

    def __init__(
        self,
        engine: Engine,
        *,
        interval_seconds: float = 1.0,
        policy: DeliveryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.engine = engine
        self.interval_seconds = interval_seconds
        self.policy = policy or DeliveryPolicy()
        self._transport = transport
        # A delivery in flight may take its whole timeout before the thread sees the stop.
        self.join_seconds = self.policy.timeout_seconds + 10
        super().__init__()

    def _run(self) -> None:
        rng = random.Random()
        with httpx.Client(
            timeout=self.policy.timeout_seconds, follow_redirects=False, transport=self._transport
        ) as client:
            while not self._stop.is_set():
                try:
                    deliver_due(
                        self.engine, client=client, policy=self.policy, rng=rng, stop=self._stop
                    )
                except OperationalError as error:  # the database is away: a line, not a trace
                    log.warning("webhook delivery postponed: %s", error.orig)
                except Exception:
                    log.exception("webhook delivery failed; retrying next interval")
                self._stop.wait(self.interval_seconds)
