"""Background workers of a ``serve`` process: each a daemon thread that runs until stopped."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import OperationalError


class Worker:
    """Runs ``_run`` in a daemon thread named ``name``; ``stop`` sets ``_stop`` and waits up
    to ``join_seconds`` for the thread to end."""

    name = "worker"
    join_seconds = 10.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.join_seconds)

    def _run(self) -> None:
        raise NotImplementedError


class Periodic(Worker):
    """Calls ``tick`` every ``interval_seconds`` until stopped. A database that is away costs
    a warning line per round, not a trace; any other failure is logged with its trace, and
    the next round tries again. Both are logged under the subclass's module."""

    what = "background work"  # as the log lines name it: "<what> postponed", "<what> failed"

    def __init__(self, interval_seconds: float) -> None:
        self.interval_seconds = interval_seconds
        super().__init__()

    def tick(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        log = logging.getLogger(type(self).__module__)
        while not self._stop.wait(self.interval_seconds):
            try:
                self.tick()
            except OperationalError as error:
                log.warning("%s postponed: %s", self.what, error.orig)
            except Exception:
                log.exception("%s failed; retrying next interval", self.what)
