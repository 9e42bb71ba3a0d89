"""Checkpointing the event log into a hash chain, and verifying it: the audit's public API.

Both read every event through ``history_source``, so archived months stay covered. Neither
opens or commits a transaction: ``checkpoint`` wants its own short one, ``verify`` one
REPEATABLE READ transaction, so that the chain and the events come from one snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy import Connection

from app.audit import queries
from app.audit.model import (
    ALTERED,
    ANCHOR_MISMATCH,
    CHECKPOINT_ALTERED,
    CHECKPOINT_MISSING,
    CHECKPOINT_OVERLAP,
    CHECKPOINT_REWRITTEN,
    ENTRY,
    FORMAT,
    GENESIS,
    MISSING,
    UNEXPECTED,
    Anchor,
    Checkpoint,
    Finding,
    Report,
    chain_hash,
    pack,
    unpack,
)
from app.ledger.partitions import history_source


def checkpoint(conn: Connection, *, batch: int = 10_000) -> Checkpoint | None:
    """Append a checkpoint over up to ``batch`` settled events past the newest checkpoint.

    Returns None when there is nothing settled to cover or another checkpointer holds the
    chain (it is doing the same work). Exactly once, like the rollup folder
    (docs/reports.md): the range ends at or below the settled horizon, so no event can appear
    in it after it is closed; it starts where the previous one ended, so none is skipped.
    """
    if not queries.try_lock(conn):
        return None
    head = queries.last_checkpoint(conn)
    low, previous_hash = (0, GENESIS) if head is None else (head.below_seq, head.hash)
    horizon = queries.settled_horizon(conn)
    if horizon <= low:
        return None
    source = history_source(conn)
    high = queries.batch_end(conn, source, low=low, high=horizon, batch=batch)
    digests = queries.digests(conn, source, low=low, high=high)
    if not digests:
        # Nothing to cover yet: the next checkpoint's range will start at ``low`` all the same.
        return None
    entries = pack(digests)
    return queries.insert_checkpoint(
        conn,
        from_seq=low,
        below_seq=high,
        events=len(digests),
        format_version=FORMAT,
        previous_hash=previous_hash,
        hash_value=chain_hash(
            previous_hash, format_version=FORMAT, from_seq=low, below_seq=high, entries=entries
        ),
        entries=entries,
    )


def head(conn: Connection) -> Checkpoint | None:
    """The newest checkpoint: its ``anchor`` is what to record outside the database."""
    return queries.last_checkpoint(conn)


def _differences(
    stored: list[tuple[int, bytes]], found: list[tuple[int, bytes]]
) -> Iterator[tuple[int, str]]:
    """(seq, kind) where the events in the database differ from the checkpoint's entries,
    in seq order. Both lists are sorted by seq; ``found`` may repeat a seq (the primary key is
    (seq, recorded_at), so a forger can add a second row with a checkpointed seq)."""
    i = j = 0
    while i < len(stored) or j < len(found):
        if j == len(found) or (i < len(stored) and stored[i][0] < found[j][0]):
            yield stored[i][0], MISSING
            i += 1
        elif i == len(stored) or found[j][0] < stored[i][0]:
            yield found[j][0], UNEXPECTED
            j += 1
        else:
            seq, digest = stored[i]
            end = j
            while end < len(found) and found[end][0] == seq:
                end += 1
            same = [d for _, d in found[j:end]]
            if digest not in same:
                yield seq, ALTERED
            elif len(same) > 1:
                yield seq, UNEXPECTED
            i, j = i + 1, end


def _span(checkpoint: Checkpoint) -> str:
    return f"checkpoint [{checkpoint.from_seq}, {checkpoint.below_seq})"


def _hashes_to(checkpoint: Checkpoint, entries: bytes) -> bool:
    return checkpoint.hash == chain_hash(
        checkpoint.previous_hash,
        format_version=checkpoint.format,
        from_seq=checkpoint.from_seq,
        below_seq=checkpoint.below_seq,
        entries=entries,
    )


_EVENT_DETAILS = {
    ALTERED: "its content differs from what {span} recorded",
    MISSING: "{span} recorded it; it is no longer in the database",
    UNEXPECTED: "it lies inside {span}, which never recorded it",
}


def _check_range(
    current: Checkpoint,
    stored_entries: bytes,
    stored: list[tuple[int, bytes]],
    found: list[tuple[int, bytes]],
    first: int,
) -> tuple[bool, list[Finding]]:
    """Whether the checkpoint row still matches its own hash, and how the events of its
    range differ from it."""
    row_intact = (
        current.format == FORMAT
        and len(stored_entries) == ENTRY.size * current.events
        and _hashes_to(current, stored_entries)
    )
    differences = list(_differences(stored, found))
    if not differences:
        if row_intact:
            return True, []
        return False, [
            Finding(
                first,
                CHECKPOINT_ALTERED,
                f"{_span(current)} no longer matches its own hash: its entries match the"
                " events, so the row was changed (its hash, range or format, or its entries"
                " along with events of its range)",
            )
        ]
    if not row_intact and _hashes_to(current, pack(found)):
        # The events are exactly what was checkpointed: the row's entries were edited.
        seq = differences[0][0]
        return False, [
            Finding(
                seq,
                CHECKPOINT_ALTERED,
                f"{_span(current)}'s entry for seq {seq} was changed; the events still match"
                " the checkpoint's hash",
            )
        ]
    findings = [
        Finding(seq, kind, _EVENT_DETAILS[kind].format(span=_span(current)))
        for seq, kind in differences
    ]
    if not row_intact:
        findings.append(
            Finding(first, CHECKPOINT_ALTERED, f"{_span(current)} no longer matches its own hash")
        )
    return row_intact, findings


def verify(
    conn: Connection,
    *,
    from_seq: int = 0,
    anchors: Sequence[Anchor] = (),
    limit: int = 100,
) -> Report:
    """Recompute the chain from every event and compare it with the stored checkpoints.

    Starts at the first checkpoint at or after ``from_seq``, trusting its link to the ones
    before (for a ledger whose oldest archived months were exported and dropped). Stops after
    ``limit`` findings. Each finding names the first seq it puts in doubt; docs/audit.md says
    why that is exact for an event altered, removed or inserted.
    """
    report = Report(from_seq=from_seq)
    everything = queries.checkpoints(conn)
    chain = [c for c in everything if c.from_seq >= from_seq]
    source = history_source(conn)
    expected_from, expected_previous = 0, GENESIS
    if from_seq > 0 and chain:
        expected_from, expected_previous = chain[0].from_seq, chain[0].previous_hash
    previous: Checkpoint | None = None
    previous_first = 0
    previous_reported = False
    for current in chain:
        if len(report.findings) >= limit:
            break
        stored_entries = queries.entries(conn, from_seq=current.from_seq)
        found = queries.digests(conn, source, low=current.from_seq, high=current.below_seq)
        # Whole entries only: a forger may have cut the column anywhere.
        stored = unpack(stored_entries[: len(stored_entries) - len(stored_entries) % ENTRY.size])
        first = min([seq for seq, _ in stored[:1] + found[:1]], default=current.from_seq)
        row_intact, range_findings = _check_range(current, stored_entries, stored, found, first)
        findings: list[Finding] = []
        # The links: contiguous ranges, each chained to the hash of the one before.
        if current.from_seq > expected_from:
            gap = queries.first_seq(conn, source, low=expected_from, high=current.from_seq)
            findings.append(
                Finding(
                    expected_from if gap is None else gap,
                    CHECKPOINT_MISSING,
                    f"no checkpoint covers seqs [{expected_from}, {current.from_seq}):"
                    " a checkpoint row was deleted",
                )
            )
        elif current.from_seq < expected_from:
            findings.append(
                Finding(
                    first,
                    CHECKPOINT_OVERLAP,
                    f"{_span(current)} overlaps the checkpoint before it: a checkpoint row"
                    " was inserted or its range altered",
                )
            )
        elif current.previous_hash != expected_previous and row_intact:
            # This row is intact, so it is the one before that changed its hash. (A row that
            # is not intact is reported with its range, which explains its broken link.)
            if previous is None:
                findings.append(
                    Finding(first, CHECKPOINT_ALTERED, f"{_span(current)} does not start the chain")
                )
            elif not previous_reported:
                findings.append(
                    Finding(
                        previous_first,
                        CHECKPOINT_REWRITTEN,
                        f"{_span(current)} chains to a hash that {_span(previous)} no longer"
                        " has: that checkpoint was recomputed, so any of its events may have"
                        " been rewritten with it",
                    )
                )
        findings += range_findings
        report.findings += findings[: limit - len(report.findings)]
        report.checkpoints += 1
        report.events += len(found)
        expected_from, expected_previous = current.below_seq, current.hash
        # A checkpoint found altered breaks the next link too: that is the same problem.
        previous, previous_first, previous_reported = current, first, not row_intact
        report.head = current

    report.uncovered = queries.count_from(conn, source, low=expected_from)
    by_end = {c.below_seq: c for c in everything}
    for anchor in anchors:
        anchored = by_end.get(anchor.below_seq)
        if anchored is None:
            detail = f"no checkpoint ends at seq {anchor.below_seq} any more"
        elif anchored.hash != anchor.hash:
            detail = (
                f"the checkpoint ending at seq {anchor.below_seq} has hash"
                f" {anchored.hash.hex()}, the record outside says {anchor.hash.hex()}:"
                " the chain up to it was recomputed"
            )
        else:
            continue
        report.findings.append(Finding(None, ANCHOR_MISMATCH, detail))
    return report
