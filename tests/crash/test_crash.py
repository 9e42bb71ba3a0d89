"""The ledger under crashes: ``usage-ledger serve`` killed with SIGKILL at random points and
PostgreSQL stopped (fast and immediate) while client processes drive reserve/commit/cancel
traffic with retries; then every acknowledgement must be in the ledger exactly once, nothing
half-applied, dead holds expired by the sweeper, and the ledger balanced (docs/reliability.md,
"Crash tests")."""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from app.money import format_usd, parse_usd
from tests.crash.client import ORG, USERS
from tests.crash.cluster import Cluster, free_port
from tests.crash.harness import Clients, LedgerProcess, usage_ledger

pytestmark = pytest.mark.crash

DATABASE = "crash_ledger"
CLIENTS = 4
HOLD_TTL_SECONDS = 10
# Hard budgets tight enough that refusals happen within the run; soft user budgets that
# overflow; every request names one team, the org and one user.
BUDGETS: list[tuple[str, str, str, str]] = [
    ("team", "t0", "0.40", "hard"),
    ("team", "t1", "0.80", "hard"),
    ("team", "t2", "5", "hard"),
    ("org", ORG, "3", "hard"),
    *[("user", user, "0.30", "soft") for user in USERS],
]
# What happens between stretches of load, in this order.
FAULTS = [
    "kill-server",
    "kill-server",
    "kill-client",
    "kill-server",
    "restart-postgres-fast",
    "kill-server",
    "restart-postgres-immediate",
    "kill-server",
    "kill-client",
    "kill-server",
]


def define_budgets(url: str, admin_key: str) -> None:
    headers = {"Authorization": f"Bearer {admin_key}"}
    for subject_type, subject_id, limit_usd, mode in BUDGETS:
        response = httpx.post(
            f"{url}/v1/budgets",
            headers=headers,
            json={
                "org": ORG,
                "subject": {"type": subject_type, "id": subject_id},
                "limit_usd": limit_usd,
                "period": "total",
                "mode": mode,
            },
            timeout=30,
        )
        assert response.status_code == 201, response.text


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def wait_until_no_hold(dsn: str, timeout: float) -> float:  # money-safe: seconds
    """Seconds until no reservation of the org is held (the sweeper expires the dead ones)."""
    started = time.monotonic()
    while True:
        with psycopg.connect(dsn) as conn:
            held = conn.execute(
                "SELECT count(*) FROM reservations WHERE org = %s AND state = 'held'", (ORG,)
            ).fetchone()
        assert held is not None
        if held[0] == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{held[0]} holds still held after {timeout} s")
        time.sleep(0.5)


@pytest.mark.crash
def test_acknowledged_operations_survive_crashes(cluster: Cluster, run_dir: Path) -> None:
    seed = int(os.environ.get("CRASH_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    cluster.create_database(DATABASE)
    database_url = cluster.url(DATABASE)
    usage_ledger("migrate", database_url=database_url)
    admin_key = last_line(
        usage_ledger("keys", "create", "--scope", "admin", database_url=database_url)
    )
    gateway_key = last_line(
        usage_ledger(
            "keys", "create", "--scope", "gateway", "--org", ORG, database_url=database_url
        )
    )
    server = LedgerProcess(database_url=database_url, port=free_port(), log=run_dir / "serve.log")
    server.start()
    define_budgets(server.url, admin_key)

    clients = Clients(server.url, gateway_key, run_dir, HOLD_TTL_SECONDS)
    generation: Counter[int] = Counter()
    for i in range(CLIENTS):
        clients.start(f"c{i}g0", rng.randrange(1 << 30))
    happened: Counter[str] = Counter()
    started = time.monotonic()
    try:
        for fault in FAULTS:
            time.sleep(rng.uniform(1.0, 3.0))  # load runs; the fault lands at a random point
            happened[fault] += 1
            if fault == "kill-server":
                server.kill()
                time.sleep(rng.uniform(0.0, 0.5))
                server.start()
            elif fault == "kill-client":
                victim = rng.randrange(CLIENTS)
                clients.kill(f"c{victim}g{generation[victim]}")
                generation[victim] += 1
                clients.start(f"c{victim}g{generation[victim]}", rng.randrange(1 << 30))
            else:
                cluster.stop("fast" if fault.endswith("fast") else "immediate")
                time.sleep(rng.uniform(0.5, 1.5))  # the service answers 503 meanwhile
                cluster.start()
        time.sleep(rng.uniform(1.0, 3.0))
        clients.finish()
        load_seconds = time.monotonic() - started
        expiry_wait = wait_until_no_hold(cluster.dsn(DATABASE), HOLD_TTL_SECONDS + 60)
    finally:
        clients.stop_file.touch()
        clients.terminate()
        server.stop()

    usage_ledger("rollups", database_url=database_url)
    figures = check_ledger(cluster.dsn(DATABASE), list(clients.entries()))
    replay = usage_ledger("replay", "--verify", database_url=database_url)
    assert "projections match the events" in replay
    usage_ledger("audit", "verify", database_url=database_url)

    summary = {
        "seed": seed,
        "load_seconds": round(load_seconds, 1),
        "expiry_wait_seconds": round(expiry_wait, 1),
        "server_starts": server.starts,
        "server_start_to_ready_seconds_max": round(max(server.start_seconds), 1),
        "faults": dict(happened),
        "clients_killed": clients.killed,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        **figures,
    }
    text = json.dumps(summary, indent=1, sort_keys=True)
    (run_dir / "summary.json").write_text(text)
    (run_dir.parent / "last-summary.json").write_text(text)
    print(text)


def check_ledger(dsn: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Every check of "after recovery" against the database; returns the run's figures."""
    by_op: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        by_op[entry["op"]].append(entry)
    assert by_op["error"] == [], f"5xx other than 503: {by_op['error'][:5]}"
    for op in ("reserve", "commit", "cancel"):
        gave_up = [e for e in by_op[op] if e["status"] == 0]
        assert gave_up == [], f"{op} retried without an answer: {gave_up[:5]}"
    odd = [e for e in by_op["reserve"] if e["status"] not in (201, 402)]
    odd += [e for e in by_op["commit"] + by_op["cancel"] if e["status"] != 200]
    assert odd == [], f"unexpected answers: {odd[:5]}"

    reserved_ack = {
        e["request_id"]: e["reservation_id"] for e in by_op["reserve"] if e["status"] == 201
    }
    amount_ack = {e["request_id"]: parse_usd(e["amount_usd"]) for e in by_op["reserve"]}
    refused_ack = {e["request_id"] for e in by_op["reserve"] if e["status"] == 402}
    committed_ack = {e["reservation_id"]: e for e in by_op["commit"]}
    cancelled_ack = {e["reservation_id"]: e["state"] for e in by_op["cancel"]}
    abandoned = {e["reservation_id"] for e in by_op["abandon"]}

    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        events = conn.execute(
            "SELECT seq, event_type, request_id, reservation_id::text AS reservation_id,"
            " amount_pico_usd, payload FROM ledger_events WHERE org = %s ORDER BY seq",
            (ORG,),
        ).fetchall()
        reservations = {
            row["reservation_id"]: row
            for row in conn.execute(
                "SELECT reservation_id::text AS reservation_id, request_id, state,"
                " amount_pico_usd, cost_pico_usd, late FROM reservations WHERE org = %s",
                (ORG,),
            )
        }
        unanswered_keys = conn.execute(
            "SELECT count(*) AS n FROM idempotency_keys WHERE response IS NULL"
        ).fetchone()
        periods = conn.execute(
            "SELECT b.budget_id::text AS budget_id, b.subject_type, b.subject_id, b.mode,"
            " b.limit_pico_usd, p.spent_pico_usd, p.held_pico_usd"
            " FROM budgets b JOIN budget_periods p USING (org, budget_id) WHERE b.org = %s",
            (ORG,),
        ).fetchall()
        folded_below = conn.execute("SELECT folded_below FROM rollup_watermark").fetchone()
        rollup_cost = conn.execute(
            "SELECT coalesce(sum(cost_pico_usd), 0) AS cost FROM rollup_daily"
            " WHERE org = %s AND subject_type = 'team'",
            (ORG,),
        ).fetchone()
    assert unanswered_keys is not None and unanswered_keys["n"] == 0

    reserved_events: Counter[str] = Counter()
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    committed_events: dict[str, dict[str, Any]] = {}
    usage_events: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        kind, reservation_id = event["event_type"], event["reservation_id"]
        if kind == "reserved":
            reserved_events[event["request_id"]] += 1
            assert reservations[reservation_id]["request_id"] == event["request_id"]
        if reservation_id is not None:
            kinds[reservation_id][kind] += 1
        if kind == "committed":
            committed_events[reservation_id] = event
        if kind == "usage_recorded":
            usage_events[reservation_id].append(event)

    # At most once: no request reserved twice, no reservation settled twice.
    assert [r for r, n in reserved_events.items() if n != 1] == []
    for reservation_id, seen in kinds.items():
        assert seen["reserved"] == 1, (reservation_id, seen)
        for kind in ("committed", "cancelled", "expired"):
            assert seen[kind] <= 1, (reservation_id, seen)
    # Every reservation row has its event and every event its row: nothing half-applied.
    assert set(reservations) == {r for r, seen in kinds.items() if seen["reserved"]}
    # At least once: every acknowledgement is in the ledger.
    lost = [r for r in reserved_ack.values() if r not in reservations]
    lost += [r for r in committed_ack if kinds[r]["committed"] == 0]
    lost += [r for r in cancelled_ack if kinds[r][cancelled_ack[r]] == 0]
    assert lost == [], f"{len(lost)} acknowledged operations are not in the ledger: {lost[:5]}"
    for request_id, reservation_id in reserved_ack.items():
        assert reservations[reservation_id]["request_id"] == request_id
        assert reservations[reservation_id]["amount_pico_usd"] == amount_ack[request_id]
    refused_rows = [r for r in reservations.values() if r["request_id"] in refused_ack]
    assert refused_rows == [] and not refused_ack & set(reserved_events)
    for reservation_id, ack in committed_ack.items():
        assert kinds[reservation_id]["committed"] == 1, (reservation_id, kinds[reservation_id])
        assert committed_events[reservation_id]["amount_pico_usd"] == parse_usd(ack["cost_usd"])
        assert reservations[reservation_id]["cost_pico_usd"] == parse_usd(ack["cost_usd"])
    for reservation_id, state in cancelled_ack.items():
        assert reservations[reservation_id]["state"] == state
        assert kinds[reservation_id][state] == 1, (reservation_id, kinds[reservation_id])
        assert kinds[reservation_id]["committed"] == 0
    # Each state has exactly the events that lead to it, and a commit all its usage records.
    for reservation_id, row in reservations.items():
        seen = kinds[reservation_id]
        state = row["state"]
        assert state != "held", reservation_id
        assert seen[state] == 1, (reservation_id, state, seen)
        if state != "committed":
            assert seen["committed"] == 0 and seen["usage_recorded"] == 0, (reservation_id, seen)
        if state == "expired":
            assert seen["cancelled"] == 0, (reservation_id, seen)
    for reservation_id, event in committed_events.items():
        records = usage_events[reservation_id]
        assert len(records) == event["payload"]["messages"] == 1
        assert sum(r["amount_pico_usd"] for r in records) == event["amount_pico_usd"]
    # Dead requests (abandoned, or reserved by a client killed before it could settle them):
    # the sweeper expired them.
    for reservation_id in abandoned:
        assert reservations[reservation_id]["state"] == "expired"
    settled_ack = set(committed_ack) | set(cancelled_ack) | abandoned
    unacknowledged = [r for r in reservations if r not in set(reserved_ack.values())]
    orphans = [r for r in reserved_ack.values() if r not in settled_ack]

    # Hard budgets: nothing held any more, and spent within the limit except what commits
    # after their hold's expiry charged on top (docs/ledger.md: a late commit is charged).
    late_cost: Counter[str] = Counter()
    for event in committed_events.values():
        if event["payload"]["late"]:
            for delta in event["payload"]["deltas"]:
                late_cost[delta["budget_id"]] += int(delta["spent_pico_usd"])
    for period in periods:
        assert period["held_pico_usd"] == 0, period
        if period["mode"] == "hard":
            allowed = period["limit_pico_usd"] + late_cost[period["budget_id"]]
            assert period["spent_pico_usd"] <= allowed, period
    total_cost = sum(e["amount_pico_usd"] for e in committed_events.values())
    team_spent = sum(p["spent_pico_usd"] for p in periods if p["subject_type"] == "team")
    org_spent = sum(p["spent_pico_usd"] for p in periods if p["subject_type"] == "org")
    assert team_spent == org_spent == total_cost
    # Rollups: folded to the end of the log, and they hold the same money.
    assert folded_below is not None and folded_below["folded_below"] > events[-1]["seq"]
    assert rollup_cost is not None and rollup_cost["cost"] == total_cost

    retries: Counter[str] = Counter()
    for entry in by_op["reserve"] + by_op["commit"] + by_op["cancel"]:
        retries.update(entry["retries"])
    # The run exercised what it claims to: refusals, dead holds, retried requests.
    assert refused_ack, "no refusal: the hard budgets were not tight enough to test"
    assert abandoned, "no abandoned hold for the sweeper to expire"
    assert retries, "no request was retried"
    return {
        "events": len(events),
        "acknowledged": {
            "reserved": len(reserved_ack),
            "refused_402": len(refused_ack),
            "committed": len(committed_ack),
            "cancelled": sum(1 for s in cancelled_ack.values() if s == "cancelled"),
            "cancel_found_expired": sum(1 for s in cancelled_ack.values() if s == "expired"),
            "abandoned": len(abandoned),
        },
        "late_commits": sum(1 for e in committed_events.values() if e["payload"]["late"]),
        "reservations_unacknowledged": len(unacknowledged),
        # Reserved, then the client was killed before it logged a settlement.
        "killed_clients_reservations_by_state": dict(
            Counter(reservations[r]["state"] for r in orphans)
        ),
        "expired": sum(1 for r in reservations.values() if r["state"] == "expired"),
        "requests_cut_mid_flight": sum(
            1
            for e in by_op["reserve"] + by_op["commit"] + by_op["cancel"]
            if {"RemoteProtocolError", "ReadError", "ReadTimeout"} & set(e["retries"])
        ),
        "requests_retried": sum(
            1 for e in by_op["reserve"] + by_op["commit"] + by_op["cancel"] if e["retries"]
        ),
        "retries_by_cause": dict(retries),
        "hard_budgets_spent_of_limit_usd": {
            p["subject_id"]: f"{format_usd(p['spent_pico_usd'])}/{format_usd(p['limit_pico_usd'])}"
            for p in periods
            if p["mode"] == "hard"
        },
        "total_cost_usd": format_usd(total_cost),
    }
