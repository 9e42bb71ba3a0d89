"""The checkpointer: extends the hash chain over newly settled events, off the hot path.

Used by ``serve`` (a background thread) and by ``usage-ledger audit checkpoint`` (for cron).
Writers never wait for it and it never waits for them: it reads only events below the settled
horizon, takes no lock that a writer takes, and skips a round while another checkpointer (in
another ``serve`` process) holds the chain.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from app.audit import service
from app.audit.model import Checkpoint
from app.background import Periodic

log = logging.getLogger(__name__)


def checkpoint_all(engine: Engine, *, batch: int = 10_000) -> list[Checkpoint]:
    """Checkpoint up to the settled horizon, one transaction per checkpoint; returns the new
    checkpoints, oldest first. Each new head is logged with its anchor, so that a log shipper
    keeps a record of the chain outside the database (docs/audit.md)."""
    made: list[Checkpoint] = []
    while True:
        with engine.begin() as conn:
            checkpoint = service.checkpoint(conn, batch=batch)
        if checkpoint is None:
            break
        made.append(checkpoint)
        if checkpoint.events < batch:
            break
    if made:
        head = made[-1]
        log.info(
            "checkpointed %d events; chain head anchor %s",
            sum(c.events for c in made),
            head.anchor,
        )
    return made


class Checkpointer(Periodic):
    """Runs ``checkpoint_all`` every ``interval_seconds`` in a daemon thread until stopped.

    The interval bounds how long a new event stays without tamper evidence (plus the time the
    oldest open transaction of the cluster holds the settled horizon back)."""

    name = "audit-checkpointer"
    what = "audit checkpoint"

    def __init__(self, engine: Engine, interval_seconds: float = 10.0) -> None:
        self.engine = engine
        super().__init__(interval_seconds)

    def tick(self) -> None:
        checkpoint_all(self.engine)
