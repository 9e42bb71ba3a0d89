"""The checkpointer covers every event exactly once, without ever making a writer wait."""

from __future__ import annotations

import itertools
import random
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from app.audit import checkpointer, queries, service
from app.budgets import holds
from app.budgets.model import Subject
from app.ledger import partitions
from app.reports import rollups
from tests.audit.support import (
    append,
    checkpoint_everything,
    covered_seqs,
    event_seqs,
    run,
    tamper,
    verify,
    write,
)


def test_an_open_writer_holds_the_range_below_its_event(engine: Engine) -> None:
    with engine.connect() as early:
        early_transaction = early.begin()
        append(early, "early")  # takes a transaction id, then stays open
        early_seq = early.execute(text("SELECT seq FROM ledger_events")).scalar_one()
        write(engine, 3, "late")  # later transactions, committed first
        checkpointer.checkpoint_all(engine)
        with engine.connect() as conn:
            head = queries.last_checkpoint(conn)
        # Nothing at or above the open writer's seq may be closed: it could still commit there.
        assert head is None or head.below_seq <= early_seq
        early_transaction.commit()
    checkpoint_everything(engine)
    assert sorted(s for r in covered_seqs(engine) for s in r) == event_seqs(engine)


def test_two_checkpointers_never_fork_the_chain(engine: Engine) -> None:
    write(engine, 3, "e")
    with engine.begin() as holder:
        assert queries.try_lock(holder)
        # A second checkpointer skips the round instead of waiting or writing a rival link.
        with engine.begin() as conn:
            assert service.checkpoint(conn) is None
    checkpoint_everything(engine)


def test_writers_holding_transactions_open_are_covered_exactly_once(
    engine: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Eight writers hold some transactions open so that later ones commit first, while two
    checkpointers close small ranges as fast as they can. A range closed over a seq that
    commits later would show that event as unexpected; one that skipped an event would leave
    it out of every checkpoint."""
    writers, per_writer = 8, 40
    done = threading.Event()
    errors: list[BaseException] = []

    def write_events(worker: int) -> None:
        rng = random.Random(worker)
        for index in range(per_writer):
            with engine.begin() as conn:
                append(conn, f"w{worker}-{index}")
                if rng.random() < 0.3:
                    append(conn, f"w{worker}-{index}-second")
                time.sleep(rng.choice([0, 0, 0.01, 0.05]))

    def checkpoint_continuously(batch: int) -> None:
        try:
            while not done.is_set():
                checkpointer.checkpoint_all(engine, batch=batch)
        except BaseException as error:  # surfaced by the main thread
            errors.append(error)

    # Small batches cut ranges between events; large ones keep up with the newest events,
    # where a range closed too early would be.
    checkpointers = [
        threading.Thread(target=checkpoint_continuously, args=(batch,)) for batch in (5, 1000)
    ]
    threads = [threading.Thread(target=write_events, args=(w,)) for w in range(writers)]
    for thread in checkpointers + threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    for thread in checkpointers:
        thread.join(timeout=30)
    assert errors == []
    checkpoint_everything(engine, batch=5)

    covered = [seq for seqs in covered_seqs(engine) for seq in seqs]
    assert covered == event_seqs(engine)  # every event, once, in seq order
    with engine.connect() as conn:
        ranges = conn.execute(
            text("SELECT from_seq, below_seq FROM ledger_checkpoints ORDER BY from_seq")
        ).all()
    assert len(ranges) > 10  # the checkpointers really ran alongside the writers
    assert ranges[0].from_seq == 0
    assert all(a.below_seq == b.from_seq for a, b in itertools.pairwise(ranges))
    code, out = verify(capsys, db_url)
    assert code == 0, out


@pytest.mark.parametrize("statement", ["UPDATE {} SET events = 1", "DELETE FROM {}", "TRUNCATE {}"])
def test_checkpoints_refuse_change_even_to_their_owner(
    engine: Engine, owner: Engine, statement: str
) -> None:
    write(engine, 1, "e")
    checkpoint_everything(engine)
    for role in (owner, engine):
        with role.begin() as conn, pytest.raises(DBAPIError, match=r"append-only|denied"):
            conn.execute(text(statement.format("ledger_checkpoints")))


def test_the_cli_checkpoints_and_prints_the_anchor(
    engine: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "audit", "checkpoint", "--database-url", db_url)
    assert (code, out) == (
        0,
        "checkpointed 0 events in 0 new checkpoints\nno checkpoint yet: no settled events\n",
    )
    write(engine, 3, "e")
    checkpoint_everything(engine)
    with engine.connect() as conn:
        head = queries.last_checkpoint(conn)
    assert head is not None
    code, out = run(capsys, "audit", "checkpoint", "--database-url", db_url)
    assert code == 0 and out.splitlines()[-1] == f"anchor {head.anchor}"
    assert verify(capsys, db_url, "--anchor", head.anchor)[0] == 0


JANUARY = datetime(2026, 1, 15, 12, tzinfo=UTC)
TEAM = Subject("team", "archive")


def test_archived_months_stay_covered(
    engine: Engine, owner: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An archived month is read from ledger_archive, by the checkpointer and by verify."""
    with owner.begin() as conn:
        partitions.ensure(conn, JANUARY, JANUARY)
        conn.execute(
            text(
                "ALTER TABLE ledger_events ALTER COLUMN recorded_at"
                " SET DEFAULT '2026-01-15T12:00:00Z'"
            )
        )
    try:
        for index in range(3):
            with engine.begin() as conn:
                holds.record_usage(
                    conn,
                    org="acme",
                    request_id=f"jan-{index}",
                    subjects=[TEAM],
                    cost_pico_usd=10 + index,
                    now=JANUARY + timedelta(hours=index),
                )
    finally:
        with owner.begin() as conn:
            conn.execute(
                text("ALTER TABLE ledger_events ALTER COLUMN recorded_at SET DEFAULT now()")
            )
    january = event_seqs(engine)
    # Archive before checkpointing: the checkpointer must find the month in the archive.
    # (Archiving wants the month folded into the rollups first; the settled horizon may be
    # held back by any open transaction of the cluster, hence the generous deadline.)
    deadline = time.monotonic() + 180
    while True:
        rollups.fold_all(engine)
        with engine.connect() as conn:
            if rollups.watermark(conn) > january[-1]:
                break
        assert time.monotonic() < deadline, "the rollups did not catch up"
        time.sleep(0.05)
    with owner.begin() as conn:
        assert partitions.archive(conn, before=datetime(2026, 2, 1, tzinfo=UTC))
    write(engine, 2, "now")
    checkpoint_everything(engine)
    assert [s for r in covered_seqs(engine) for s in r][: len(january)] == january
    code, out = verify(capsys, db_url)
    assert code == 0, out
    assert out.startswith(f"{len(january) + 2} events in ")

    tamper(
        owner,
        "UPDATE ledger_archive.ledger_events_2026_01 SET amount_pico_usd = 0 WHERE seq = :seq",
        seq=january[1],
    )
    code, out = verify(capsys, db_url)
    assert code == 1
    assert out.startswith(f"first bad seq {january[1]}: altered: ")


def test_the_checkpointer_thread_keeps_the_chain_current(engine: Engine) -> None:
    worker = checkpointer.Checkpointer(engine, interval_seconds=0.05)
    worker.start()
    try:
        write(engine, 3, "e")
        newest = event_seqs(engine)[-1]
        deadline = time.monotonic() + 180
        while True:
            with engine.connect() as conn:
                head = queries.last_checkpoint(conn)
            if head is not None and head.below_seq > newest:
                break
            assert time.monotonic() < deadline, "the checkpointer did not catch up"
            time.sleep(0.05)
    finally:
        worker.stop()
    assert [s for r in covered_seqs(engine) for s in r] == event_seqs(engine)


def test_serve_runs_a_checkpointer_beside_the_sweeper(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from app import main as app_main
    from app.config import Settings

    calls: list[str] = []

    class Recording(checkpointer.Checkpointer):
        def start(self) -> None:
            calls.append("start")

        def stop(self) -> None:
            calls.append("stop")

    monkeypatch.setattr(app_main, "Checkpointer", Recording)
    with TestClient(app_main.create_app(engine, Settings(insecure_no_auth=True))):
        assert calls == ["start"]
    assert calls == ["start", "stop"]
    with TestClient(app_main.create_app(engine, Settings(insecure_no_auth=True), sweep=False)):
        pass
    assert calls == ["start", "stop"]  # no background workers without the sweep flag
