"""The dangerous fault: the connection dies while COMMIT is in flight, so the service cannot
know whether the transaction committed. The answer must say so (503 outcome-unknown), and a
retry with the same request_id must return the first result if it committed, apply it once if
it did not, and never count it twice."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from app.budgets.tables import reservations
from tests.faults.conftest import (
    ClientFactory,
    assert_consistent,
    assert_fault,
    balances,
    create_budget,
    events_of,
    reservation_body,
    usage_body,
)
from tests.faults.proxy import CommitCut, FaultProxy

HALF_USD = 500_000_000_000  # pico-USD
# gpt-4o in the embedded price snapshot: 1,000 input tokens at $2.50/M, 500 output at $10/M.
USAGE_COST = 7_500_000_000  # pico-USD
USAGE = {"usage": {"prompt_tokens": 1000, "completion_tokens": 500}}


def _committed(where: CommitCut) -> bool:
    return where is CommitCut.AFTER


def _reservation_ids(engine: Engine, request_id: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(reservations.c.reservation_id).where(reservations.c.request_id == request_id)
        )
        return [str(row.reservation_id) for row in rows]


@pytest.mark.parametrize("where", list(CommitCut), ids=lambda w: w.value)
def test_reserve_then_commit_with_the_connection_lost_during_commit(
    where: CommitCut,
    proxied_url: str,
    proxy: FaultProxy,
    owner_engine: Engine,
    app_client: ClientFactory,
) -> None:
    client = app_client(proxied_url, pool_size=4)
    create_budget(client)

    proxy.cut_next_commit(where)
    lost = client.post("/v1/reservations", json=reservation_body("amb-1"))
    assert proxy.commits_cut == 1
    body = assert_fault(lost, 503, "outcome-unknown")
    assert body["outcome"] == "unknown"
    first_ids = _reservation_ids(owner_engine, "amb-1")
    assert len(first_ids) == (1 if _committed(where) else 0)

    retried = client.post("/v1/reservations", json=reservation_body("amb-1"))
    assert retried.status_code == 201, retried.text
    reservation_id = retried.json()["reservation_id"]
    if first_ids:  # it had committed: the retry answers with the first result
        assert first_ids == [reservation_id]
    assert _reservation_ids(owner_engine, "amb-1") == [reservation_id]
    assert events_of(owner_engine, "amb-1") == ["reserved"]
    assert balances(owner_engine) == (0, HALF_USD)

    proxy.cut_next_commit(where)
    commit_path = f"/v1/reservations/{reservation_id}/commit"
    assert_fault(client.post(commit_path, json=USAGE), 503, "outcome-unknown")
    assert proxy.commits_cut == 2
    settled = events_of(owner_engine, "amb-1") == ["reserved", "committed", "usage_recorded"]
    assert settled == _committed(where)

    retried_commit = client.post(commit_path, json=USAGE)
    assert retried_commit.status_code == 200, retried_commit.text
    assert retried_commit.json()["cost_usd"] == "0.0075"
    again = client.post(commit_path, json=USAGE)
    assert again.json() == retried_commit.json()
    assert events_of(owner_engine, "amb-1") == ["reserved", "committed", "usage_recorded"]
    assert balances(owner_engine) == (USAGE_COST, 0)
    assert_consistent(owner_engine)


@pytest.mark.parametrize("where", list(CommitCut), ids=lambda w: w.value)
def test_direct_usage_with_the_connection_lost_during_commit(
    where: CommitCut,
    proxied_url: str,
    proxy: FaultProxy,
    owner_engine: Engine,
    app_client: ClientFactory,
) -> None:
    client = app_client(proxied_url, pool_size=4)
    create_budget(client)

    proxy.cut_next_commit(where)
    assert_fault(client.post("/v1/usage", json=usage_body("amb-u")), 503, "outcome-unknown")
    recorded = events_of(owner_engine, "amb-u") == ["committed", "usage_recorded"]
    assert recorded == _committed(where)

    retried = client.post("/v1/usage", json=usage_body("amb-u"))
    assert retried.status_code == 201, retried.text
    assert retried.json()["cost_usd"] == "0.0075"
    assert client.post("/v1/usage", json=usage_body("amb-u")).json() == retried.json()
    assert events_of(owner_engine, "amb-u") == ["committed", "usage_recorded"]
    assert balances(owner_engine) == (USAGE_COST, 0)
    assert_consistent(owner_engine)


def test_connection_lost_before_commit_is_not_ambiguous(
    proxied_url: str, proxy: FaultProxy, owner_engine: Engine, app_client: ClientFactory
) -> None:
    """A connection lost mid-transaction, before COMMIT, is a plain 503: nothing applied."""
    client = app_client(proxied_url, pool_size=4)
    create_budget(client)
    proxy.cut_all()
    lost = client.post("/v1/usage", json=usage_body("plain-u"))
    assert_fault(lost, 503, "database-unavailable")
    assert events_of(owner_engine, "plain-u") == []
    assert proxy.commits_cut == 0
