"""A superuser's direct edits to the ledger are caught, and the first bad seq is named."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app.audit import queries
from app.audit.model import chain_hash, pack, unpack
from tests.audit.support import (
    checkpoint_everything,
    covered_seqs,
    run,
    tamper,
    verify,
    write,
)
from tests.factories import wait_until_settled


@dataclass(frozen=True)
class Chain:
    """Three or more checkpoints (of up to 4 events each) and two events after them."""

    ranges: list[list[int]]
    uncovered: int = 2

    @property
    def middle(self) -> list[int]:
        return self.ranges[1]

    @property
    def last(self) -> list[int]:
        return self.ranges[-1]


@pytest.fixture
def chain(engine: Engine) -> Chain:
    write(engine, 12, "covered")
    # Settled first, so the checkpoints are whole batches of 4 whatever else the cluster runs.
    wait_until_settled(engine)
    checkpoint_everything(engine, batch=4)
    ranges = covered_seqs(engine)
    assert [len(r) for r in ranges] == [4, 4, 4]
    write(engine, 2, "after")
    return Chain(ranges)


def test_a_clean_ledger_verifies(
    chain: Chain, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = verify(capsys, db_url)
    assert code == 0, out
    assert out.splitlines()[0] == (
        f"12 events in {len(chain.ranges)} checkpoints verified;"
        " 2 events after the last checkpoint not yet covered"
    )
    assert out.splitlines()[1].startswith("anchor ")


@pytest.mark.parametrize(
    "change",
    [
        "payload = jsonb_set(payload, '{cost_pico_usd}', '999999')",
        'payload = payload || \'{"metadata": {"tags": ["prod "]}}\'',
        "amount_pico_usd = amount_pico_usd + 1",
        "org = 'evil'",
        "event_type = 'committed'",
        "schema_version = schema_version + 1",
        "request_id = NULL",
        "reservation_id = '00000000-0000-0000-0000-000000000001'",
        "budget_id = '00000000-0000-0000-0000-000000000001'",
        "budget_ids = ARRAY['00000000-0000-0000-0000-000000000001'::uuid]",
        "occurred_at = occurred_at + interval '1 microsecond'",
        "recorded_at = recorded_at - interval '1 microsecond'",
    ],
)
def test_a_change_to_any_column_of_an_event_is_named(
    chain: Chain, owner: Engine, db_url: str, capsys: pytest.CaptureFixture[str], change: str
) -> None:
    target = chain.middle[1]
    tamper(owner, f"UPDATE ledger_events SET {change} WHERE seq = :seq", seq=target)
    code, out = verify(capsys, db_url)
    assert code == 1
    assert out.startswith(f"first bad seq {target}: altered: ")


def test_a_deleted_event_is_named(
    chain: Chain, owner: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = chain.middle[1]
    tamper(owner, "DELETE FROM ledger_events WHERE seq = :seq", seq=target)
    code, out = verify(capsys, db_url)
    assert code == 1
    assert out.startswith(f"first bad seq {target}: missing: ")


_FORGE = (
    "INSERT INTO ledger_events SELECT :forged, org, event_type, schema_version,"
    " request_id || '-forged', reservation_id, budget_id, budget_ids, amount_pico_usd, payload,"
    " occurred_at, recorded_at + make_interval(secs => :shift) FROM ledger_events WHERE seq = :seq"
)


def test_a_forged_event_inside_a_checkpointed_range_is_named(
    chain: Chain, owner: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A seq no transaction took (the n-th event of a transaction that wrote one), between two
    # checkpointed events: only the checkpoint's list of seqs can tell it was never there.
    forged = chain.middle[1] + 1
    assert forged < chain.middle[2]
    tamper(owner, _FORGE, forged=forged, seq=chain.middle[1], shift=0)
    code, out = verify(capsys, db_url)
    assert code == 1
    assert out.startswith(f"first bad seq {forged}: unexpected: ")


def test_a_forged_copy_with_a_checkpointed_seq_is_named(
    chain: Chain, owner: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The primary key is (seq, recorded_at): a second row with the same seq is possible.
    target = chain.middle[2]
    tamper(owner, _FORGE, forged=target, seq=target, shift=0.001)
    code, out = verify(capsys, db_url)
    assert code == 1
    assert out.startswith(f"first bad seq {target}: ")
    assert ": altered: " in out or ": unexpected: " in out


def test_the_first_of_several_changes_is_named(
    chain: Chain, owner: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(owner, "DELETE FROM ledger_events WHERE seq = :seq", seq=chain.last[0])
    tamper(owner, "UPDATE ledger_events SET org = 'x' WHERE seq = :seq", seq=chain.middle[-1])
    code, out = verify(capsys, db_url)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"first bad seq {chain.middle[-1]}: altered: ")
    assert lines[1].startswith(f"also seq {chain.last[0]}: missing: ")


def _checkpoint_row(owner: Engine, seq: int) -> dict[str, Any]:
    """The checkpoint row covering ``seq``."""
    with owner.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM ledger_checkpoints WHERE from_seq <= :seq ORDER BY from_seq DESC"),
            {"seq": seq},
        ).mappings()
        return dict(next(iter(row)))


def test_an_altered_checkpoint_hash_is_named(
    chain: Chain, owner: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    row = _checkpoint_row(owner, chain.middle[0])
    tamper(
        owner,
        "UPDATE ledger_checkpoints SET hash = :hash WHERE from_seq = :from_seq",
        hash=bytes(32),
        from_seq=row["from_seq"],
    )
    code, out = verify(capsys, db_url)
    assert code == 1
    # The events match the row's entries, so no single event is to blame: the checkpoint's
    # whole range has lost its evidence, starting at its first event.
    assert out.startswith(f"first bad seq {chain.middle[0]}: checkpoint altered: ")
    assert "also" not in out  # the next link's break is the same problem, not a second one


def test_an_altered_checkpoint_entry_is_named(
    chain: Chain, owner: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    row = _checkpoint_row(owner, chain.middle[0])
    entries = unpack(bytes(row["entries"]))
    entries[2] = (entries[2][0], bytes(32))
    tamper(
        owner,
        "UPDATE ledger_checkpoints SET entries = :entries WHERE from_seq = :from_seq",
        entries=pack(entries),
        from_seq=row["from_seq"],
    )
    code, out = verify(capsys, db_url)
    assert code == 1
    assert out.startswith(f"first bad seq {chain.middle[2]}: checkpoint altered: ")
    assert "the events still match" in out


def test_a_deleted_checkpoint_is_named(
    chain: Chain, owner: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    row = _checkpoint_row(owner, chain.middle[0])
    tamper(owner, "DELETE FROM ledger_checkpoints WHERE from_seq = :f", f=row["from_seq"])
    code, out = verify(capsys, db_url)
    assert code == 1
    assert out.startswith(f"first bad seq {chain.middle[0]}: checkpoint missing: ")


def test_a_checkpoint_recomputed_over_an_altered_event_breaks_the_next_link(
    chain: Chain, owner: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The forger alters an event and recomputes its checkpoint, but not the rest of the chain:
    which event changed cannot be told any more, only that the checkpoint's range is suspect."""
    tamper(owner, "UPDATE ledger_events SET org = 'x' WHERE seq = :seq", seq=chain.middle[2])
    row = _checkpoint_row(owner, chain.middle[0])
    with owner.connect() as conn:
        digests = queries.digests(conn, "ledger_events", low=row["from_seq"], high=row["below_seq"])
    entries = pack(digests)
    rehashed = chain_hash(
        bytes(row["previous_hash"]),
        format_version=int(row["format"]),
        from_seq=int(row["from_seq"]),
        below_seq=int(row["below_seq"]),
        entries=entries,
    )
    tamper(
        owner,
        "UPDATE ledger_checkpoints SET entries = :entries, hash = :hash WHERE from_seq = :f",
        entries=entries,
        hash=rehashed,
        f=row["from_seq"],
    )
    code, out = verify(capsys, db_url)
    assert code == 1
    assert out.startswith(f"first bad seq {chain.middle[0]}: checkpoint rewritten: ")


def test_a_whole_chain_recomputed_is_caught_only_by_an_anchor(
    chain: Chain, engine: Engine, owner: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The limit of any evidence kept inside the database: a superuser who rewrites an event
    and then every checkpoint from it on leaves a consistent chain. A head recorded outside
    (what `audit checkpoint` prints) is what catches it."""
    code, out = run(capsys, "audit", "checkpoint", "--database-url", db_url)
    assert code == 0
    anchor = out.splitlines()[-1].removeprefix("anchor ")
    tamper(owner, "UPDATE ledger_events SET org = 'x' WHERE seq = :seq", seq=chain.middle[0])
    tamper(owner, "DELETE FROM ledger_checkpoints")
    checkpoint_everything(engine, batch=4)

    assert verify(capsys, db_url)[0] == 0
    code, out = verify(capsys, db_url, "--anchor", anchor)
    assert code == 1
    assert out.startswith("first bad seq unknown: anchor mismatch: ")


def test_verify_can_start_after_history_that_was_dropped(
    chain: Chain, owner: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """After an archived month is exported and dropped, its events are missing for good;
    ``--from-seq`` starts at a later checkpoint and trusts its link to the dropped part."""
    tamper(owner, "DELETE FROM ledger_events WHERE seq = ANY(:seqs)", seqs=chain.ranges[0])
    code, out = verify(capsys, db_url)
    assert code == 1 and out.startswith(f"first bad seq {chain.ranges[0][0]}: missing: ")
    start = _checkpoint_row(owner, chain.middle[0])["from_seq"]
    code, out = verify(capsys, db_url, "--from-seq", str(start))
    assert code == 0, out
    covered = sum(len(r) for r in chain.ranges[1:])
    assert out.startswith(
        f"{covered} events in {len(chain.ranges) - 1} checkpoints verified from seq {start};"
    )
