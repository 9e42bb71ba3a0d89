"""A local spool of ledger writes that could not be delivered: one JSON object per line.

Every entry is an idempotent ledger call (a commit keyed by its reservation, a cancel, or direct
usage keyed by its ``request_id``), so delivering one twice charges once. That is what makes
the spool safe: an entry is appended and fsynced *before* the ledger is retried, and removed
only *after* the ledger answered; a crash in between re-sends it, and the ledger answers the
replay with the original result. Several proxy workers may share one file: an exclusive
``flock`` on a side file (``<spool>.lock``, never replaced, unlike the spool itself) serialises
appends and rewrites.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

# What a delivery attempt concluded about an entry.
DELIVERED = "delivered"  # the ledger took it (or had it already): drop it
REJECTED = "rejected"  # the ledger refused it for good: move it to the rejected file
RETRY = "retry"  # the ledger is still unavailable: keep it and everything after it


class Spool:
    """Append-only file of pending ledger writes, drained in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Writes the ledger refused for good (a usage record against a hard budget that was
        # already exhausted, usage it cannot price): kept for reconciliation, never dropped.
        self.rejected_path = path.with_name(path.name + ".rejected")

    @contextmanager
    def _locked(self) -> Iterator[TextIO]:
        """The spool, opened under the lock. The lock is on a side file because a rewrite
        replaces the spool's inode: a lock on the spool itself would let a waiting worker
        append to the replaced, unlinked file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with self.path.open("a+", encoding="utf-8") as handle:
                    yield handle
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, operation: str, payload: dict[str, Any]) -> str:
        """Persist one write durably; returns its spool id."""
        entry = {"spool_id": str(uuid.uuid4()), "operation": operation, "payload": payload}
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._locked() as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        return str(entry["spool_id"])

    def reject(self, operation: str, payload: dict[str, Any], reason: str) -> None:
        """Keep a write the ledger will never accept, with the ledger's reason."""
        entry = {"operation": operation, "payload": payload, "reason": reason}
        with self._locked(), self.rejected_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def pending(self) -> list[dict[str, Any]]:
        """Every entry not yet delivered, oldest first."""
        with self._locked() as handle:
            return _read(handle)

    async def drain(
        self, deliver: Callable[[str, dict[str, Any]], Awaitable[tuple[str, str]]]
    ) -> int:
        """Deliver entries in order until one must wait; returns how many were settled.

        ``deliver`` answers an outcome and, for ``REJECTED``, the ledger's reason.

        Sending happens outside the lock (a slow ledger must not block other workers' appends);
        the rewrite then removes exactly the settled ids, keeping anything appended meanwhile.
        """
        settled: set[str] = set()
        for entry in self.pending():
            operation, payload = str(entry["operation"]), dict(entry["payload"])
            outcome, reason = await deliver(operation, payload)
            if outcome == RETRY:
                break
            if outcome == REJECTED:
                self.reject(operation, payload, reason)
            settled.add(str(entry["spool_id"]))
        if settled:
            with self._locked() as handle:
                keep = [e for e in _read(handle) if e.get("spool_id") not in settled]
                temporary = self.path.with_name(self.path.name + ".tmp")
                with temporary.open("w", encoding="utf-8") as out:
                    out.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in keep)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, self.path)
        return len(settled)


def _read(handle: TextIO) -> list[dict[str, Any]]:
    handle.seek(0)
    entries = []
    for line in handle:
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last line from a crash mid-append; its write was never confirmed
        if isinstance(entry, dict) and "spool_id" in entry and "payload" in entry:
            entries.append(entry)
    return entries
