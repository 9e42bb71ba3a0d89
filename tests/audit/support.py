"""Writing events, checkpointing them all, tampering as a superuser, running the CLI."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from app.audit import checkpointer, queries
from app.audit.model import unpack
from app.cli.main import main
from app.ledger import events
from app.ledger import service as ledger
from app.ledger.records import UsageRecord

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def append(conn: Connection, request_id: str, *, cost_pico_usd: int = 5) -> None:
    ledger.append(
        conn,
        org="acme",
        event_type=events.USAGE_RECORDED,
        occurred_at=NOW,
        request_id=request_id,
        amount_pico_usd=cost_pico_usd,
        payload=UsageRecord(
            cost_pico_usd=cost_pico_usd, model="gpt-4o", metadata={"tags": ["prod"]}
        ).to_payload(),
    )


def write(engine: Engine, count: int, prefix: str) -> None:
    """``count`` events, each in its own transaction (so each has its own transaction id)."""
    for index in range(count):
        with engine.begin() as conn:
            append(conn, f"{prefix}-{index}", cost_pico_usd=index + 1)


def event_seqs(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT seq FROM ledger_events ORDER BY seq")).scalars()
        return [int(seq) for seq in rows]


def checkpoint_everything(engine: Engine, *, batch: int = 10_000) -> None:
    """Checkpoint until the chain covers the newest event. Any open transaction of the cluster
    holds the settled horizon back (a bulk load in another database, for one), hence the
    generous deadline."""
    newest = max(event_seqs(engine), default=-1)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        checkpointer.checkpoint_all(engine, batch=batch)
        with engine.connect() as conn:
            head = queries.last_checkpoint(conn)
        if head is not None and head.below_seq > newest:
            return
        time.sleep(0.05)
    raise AssertionError("the checkpoints did not catch up")


def covered_seqs(engine: Engine) -> list[list[int]]:
    """The seqs each checkpoint recorded, oldest checkpoint first."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT entries FROM ledger_checkpoints ORDER BY from_seq"))
        return [[seq for seq, _ in unpack(bytes(row.entries))] for row in rows]


def tamper(owner: Engine, statement: str, **params: Any) -> None:
    """Run a statement the way a superuser bypasses the append-only triggers (and the seq
    trigger, so that a forged row keeps the seq it is given)."""
    with owner.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(statement), params)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


def verify(capsys: pytest.CaptureFixture[str], db_url: str, *args: str) -> tuple[int, str]:
    return run(capsys, "audit", "verify", "--database-url", db_url, *args)
