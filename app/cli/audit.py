"""``audit checkpoint`` and ``audit verify``: the event log's tamper evidence (docs/audit.md)."""

from __future__ import annotations

import argparse
from typing import Any

from app.audit import checkpointer, service
from app.audit.model import Anchor
from app.cli.common import open_database
from app.config import add_database_arguments


def _anchor(value: str) -> Anchor:
    try:
        return Anchor.parse(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _batch(value: str) -> int:
    # A checkpoint row holds 40 bytes per event; a million keeps it at 40 MB.
    size = int(value)
    if not 1 <= size <= 1_000_000:
        raise argparse.ArgumentTypeError("the batch must be between 1 and 1,000,000 events")
    return size


def _checkpoint(ns: argparse.Namespace) -> int:
    with open_database(ns) as engine:
        made = checkpointer.checkpoint_all(engine, batch=ns.batch)
        with engine.connect() as conn:
            head = service.head(conn)
    print(f"checkpointed {sum(c.events for c in made)} events in {len(made)} new checkpoints")
    if head is None:
        print("no checkpoint yet: no settled events")
        return 0
    # The line to keep outside the database: `audit verify --anchor` checks the chain against it.
    print(f"anchor {head.anchor}")
    return 0


def _verify(ns: argparse.Namespace) -> int:
    with (
        open_database(ns) as engine,
        engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
    ):
        report = service.verify(conn, from_seq=ns.from_seq, anchors=ns.anchor)
        conn.rollback()
    first = report.first
    if first is None:
        since = f" from seq {report.from_seq}" if report.from_seq else ""
        print(
            f"{report.events} events in {report.checkpoints} checkpoints verified{since};"
            f" {report.uncovered} events after the last checkpoint not yet covered"
        )
        if report.head is not None:
            print(f"anchor {report.head.anchor}")
        return 0
    named = "unknown" if first.seq is None else str(first.seq)
    print(f"first bad seq {named}: {first.kind}: {first.detail}")
    for finding in report.findings:
        if finding is not first:
            seq = "unknown" if finding.seq is None else finding.seq
            print(f"also seq {seq}: {finding.kind}: {finding.detail}")
    print(
        f"{len(report.findings)} problems in {report.checkpoints} checkpoints"
        f" ({report.events} events read)"
    )
    return 1


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser(
        "audit", help="Tamper evidence: extend the event log's hash chain, or verify it."
    )
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")

    checkpoint = actions.add_parser(
        "checkpoint",
        help="Checkpoint every settled event (for cron; serve does it) and print the anchor.",
    )
    add_database_arguments(checkpoint)
    checkpoint.add_argument("--batch", type=_batch, default=10_000, help="events per checkpoint")
    checkpoint.set_defaults(func=_checkpoint)

    verify = actions.add_parser(
        "verify", help="Recompute the chain from the events; exit 1 naming the first bad seq."
    )
    add_database_arguments(verify)
    verify.add_argument(
        "--from-seq",
        type=int,
        default=0,
        help="start at the first checkpoint at or after this seq (after dropping old months)",
    )
    verify.add_argument(
        "--anchor",
        type=_anchor,
        action="append",
        default=[],
        metavar="BELOW_SEQ:HASH",
        help="a head printed earlier by `audit checkpoint`, kept outside the database",
    )
    verify.set_defaults(func=_verify)
