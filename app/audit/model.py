"""What the checkpointer writes and what verification finds."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

# The canonical form of an event (app/audit/queries.py, CANONICAL_TEXT) has a version, written
# into each checkpoint, so that a later release can change it without breaking older links.
FORMAT = 1
GENESIS = bytes(32)  # the "previous hash" of the first checkpoint
# One entry per event: its seq (8 bytes, big-endian) and the SHA-256 of its canonical form.
ENTRY = struct.Struct(">q32s")

# What verification can find (docs/audit.md, "What verify reports").
ALTERED = "altered"  # the event's content differs from what its checkpoint recorded
MISSING = "missing"  # a checkpointed event is gone
UNEXPECTED = "unexpected"  # an event inside a checkpointed range that its checkpoint never saw
CHECKPOINT_ALTERED = "checkpoint altered"  # a checkpoint row no longer matches its own hash
CHECKPOINT_REWRITTEN = "checkpoint rewritten"  # the next checkpoint chains to another hash
CHECKPOINT_MISSING = "checkpoint missing"  # a seq range that no checkpoint covers any more
CHECKPOINT_OVERLAP = "checkpoint overlap"  # two checkpoints claim the same seqs
ANCHOR_MISMATCH = "anchor mismatch"  # the chain disagrees with an externally recorded head


def pack(digests: Iterable[tuple[int, bytes]]) -> bytes:
    """The entries of a range: each event's seq and digest, in seq order."""
    return b"".join(ENTRY.pack(seq, digest) for seq, digest in digests)


def unpack(entries: bytes) -> list[tuple[int, bytes]]:
    return list(ENTRY.iter_unpack(entries))


def chain_hash(
    previous_hash: bytes, *, format_version: int, from_seq: int, below_seq: int, entries: bytes
) -> bytes:
    """SHA-256 over the previous checkpoint's hash, this one's format and range, and its
    entries: a checkpoint commits to every event before its end, through the chain."""
    digest = hashlib.sha256(previous_hash)
    digest.update(struct.pack(">hqq", format_version, from_seq, below_seq))
    digest.update(entries)
    return digest.digest()


@dataclass(frozen=True)
class Checkpoint:
    from_seq: int
    below_seq: int
    events: int
    format: int
    previous_hash: bytes
    hash: bytes
    created_at: datetime

    @property
    def anchor(self) -> str:
        """``below_seq:hash`` for a record kept outside the database (``verify --anchor``)."""
        return f"{self.below_seq}:{self.hash.hex()}"


@dataclass(frozen=True)
class Anchor:
    """A chain head recorded outside the database: the checkpoint ending at ``below_seq``
    must still have this hash."""

    below_seq: int
    hash: bytes

    @classmethod
    def parse(cls, value: str) -> Anchor:
        seq, _, hex_hash = value.partition(":")
        try:
            anchor = cls(int(seq), bytes.fromhex(hex_hash))
        except ValueError as error:
            raise ValueError(f"expected BELOW_SEQ:SHA256_HEX, got {value!r}") from error
        if len(anchor.hash) != 32:
            raise ValueError(f"expected a 64-digit SHA-256 in {value!r}")
        return anchor


@dataclass(frozen=True)
class Finding:
    """One problem: ``seq`` is the first event whose integrity it puts in doubt (None when no
    event can be named, as for an anchor the chain no longer matches)."""

    seq: int | None
    kind: str
    detail: str


@dataclass
class Report:
    checkpoints: int = 0
    events: int = 0
    uncovered: int = 0
    from_seq: int = 0
    head: Checkpoint | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first(self) -> Finding | None:
        """The finding with the lowest seq (findings without one come last)."""
        if not self.findings:
            return None
        return min(self.findings, key=lambda f: (f.seq is None, f.seq or 0))
