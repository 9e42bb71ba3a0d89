"""The checkpointer: extends the hash chain over newly settled events, off the hot path.

Used by ``serve`` (a background thread) and by ``usage-ledger audit checkpoint`` (for cron).
Writers never wait for it and it never waits for them: it reads only events below the settled
horizon, takes no lock that a writer takes, and skips a round while another checkpointer (in
another ``serve`` process) holds the chain.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from app.audit import service
from app.audit.model import Checkpoint

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


class Checkpointer:
    """Runs ``checkpoint_all`` every ``interval_seconds`` in a daemon thread until stopped.

    The interval bounds how long a new event stays without tamper evidence (plus the time the
    oldest open transaction of the cluster holds the settled horizon back)."""

    def __init__(self, engine: Engine, interval_seconds: float = 10.0) -> None:
        self.engine = engine
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-checkpointer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                checkpoint_all(self.engine)
            except OperationalError as error:
                log.warning("audit checkpoint postponed: %s", error.orig)
            except Exception:
                log.exception("audit checkpoint failed; retrying next interval")
