"""Soak: mixed gateway and reader traffic for a long time at a stated rate, then the books.

Run (PostgreSQL at 127.0.0.1:5432, trust auth, as postgres):

    make soak                                    # 10 minutes at the default rate
    .venv/bin/python bench/soak.py --seconds 60  # a validation run
    .venv/bin/python bench/soak.py [--seconds S] [--rate OPS_PER_S] [--seed N] [--keep]
                                   [--serve-arg=--pool-size --serve-arg=32] [--json PATH]

Setup: drops and creates the database ``ul_soak`` (``--database``; no other database is
touched, no server setting changed), migrates it, defines the budgets of one org ``soak``
through the service, creates a gateway key and a reader key confined to it, and starts
``usage-ledger serve`` with its defaults (one process; sweeper every 5 s, rollup folder,
audit checkpointer) on a free port.

Budgets: the org (soft, ``total``: every request charges it, so its spent is the sum of every
charge); ten teams (soft, month, limits the run crosses, so alert levels rise); 50 API keys
(hard, day, UTC), ten of them tight (0.05 USD) so that reservations are refused with 402; five
projects (hard, day), one of them tight (0.10 USD) so that direct usage is refused with 402
once it is exhausted. Reservations name (key, team, org) and are only ever committed below
their hold, so a key budget can never pass its limit; direct usage names (project, team, org).

Traffic comes from a separate process (``bench/soak.py drive``: asyncio, one httpx client of
up to 32 keep-alive connections), **open loop**: operations start at Poisson arrivals of
``--rate`` per second whatever the server's latency (at most ``--max-in-flight`` at once; an
arrival beyond that is counted as shed, not queued). Each arrival is one operation, drawn by
weight (``MIX``): reserve→commit (one or two usage messages), reserve→cancel, reserve left to
expire (TTL 1-5 s), reserve→extend→commit, ``POST /v1/usage``, ``POST /v1/usage:batch`` (10
records), idempotent retries (a reserve and its commit each sent twice, or a usage sent twice:
the replay must return the same reservation / cost), a conflicting retry (same request_id,
other tokens: 409 expected), and reads: a budget's status, the spend report, the next page of
``GET /v1/events``. A 503/504 or a connection error is retried with the same body (as
docs/api.md prescribes), up to 5 times; every attempt is counted.

During the run the server's RSS (``VmRSS`` of ``/proc/<pid>/status``) is sampled every
``--sample-seconds`` (10), and every minute the periods' held money is compared with the held
reservations' holds, in one snapshot. At the end it prints per operation the achieved rate,
per call the p50/p99 latency and the statuses (402 refusals apart from errors), the RSS at
start and end of the traffic, its max, and its least-squares slope over the second half; then,
once the traffic has stopped and every hold has expired, the balance check:

- no reservation is left held, and every period's held money equals the holds of the
  reservations still held (zero);
- ``usage-ledger replay --verify`` passes (projections, rollups and alerts rebuilt from the
  events) and ``usage-ledger audit verify`` passes;
- the org budget's spent, and the spend report's total over the run (rollups plus unfolded
  events), equal the sum of every charge the driver was answered (each request once, retries
  not twice), to the last digit;
- no hard budget charged through reservations is over its limit in any period, and no hard
  budget charged directly is over it by a whole charge (a direct charge is refused only once
  the budget is exhausted, docs/ledger.md).

It exits 1 if any of these fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import (
    DEFAULT_SERVER_URL,
    ROOT,
    connect,
    create_database,
    drop_database,
    load_average,
    rss_kib,
    serve,
    wait_for_background,
)

sys.path.insert(0, str(ROOT))

ORG = "soak"
MODEL = "gpt-4o"
HOLD_USD = "0.02"  # above any commit's cost (at most 0.0135 USD for two messages)
EXTENDED_USD = "0.03"
KEYS, TIGHT_KEYS, TEAMS, PROJECTS = 50, 10, 10, 5
KEY_LIMIT_USD, TIGHT_KEY_LIMIT_USD = "1000", "0.05"
PROJECT_LIMIT_USD, TIGHT_PROJECT_LIMIT_USD = "1000", "0.10"
TEAM_LIMIT_USD = "2"
ORG_LIMIT_USD = "1000000"
BATCH_RECORDS = 10
RETRIES = 5
METADATA: dict[str, Any] = {"endpoint": "/v1/chat/completions", "tags": ["soak"]}

# Operation -> weight: what share of the arrivals it is.
MIX: dict[str, int] = {
    "reserve-commit": 30,
    "reserve-cancel": 10,
    "reserve-expire": 5,
    "reserve-extend-commit": 10,
    "usage": 15,
    "usage-batch": 3,
    "idempotent-retry": 7,
    "conflicting-retry": 2,
    "read-status": 6,
    "read-spend": 4,
    "read-events": 8,
}


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (nan for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def status_label(response: httpx.Response) -> str:
    """The status, and for a 409 which one: ``409 conflict`` (idempotency key reused with other
    content) or ``409 <state>`` (the reservation was already settled, e.g. expired)."""
    if response.status_code != 409:
        return str(response.status_code)
    problem = response.json()
    if problem.get("type", "").endswith("/idempotency-conflict"):
        return "409 conflict"
    return f"409 {problem.get('state', problem.get('type', '?').rsplit('/', 1)[-1])}"


# ---------------------------------------------------------------------------------------------
# The driver: a separate process, configured by a JSON document on stdin, that writes its
# summary as JSON to the path named in it.


@dataclass
class DriverStats:
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    completed: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    shed: Counter[str] = field(default_factory=Counter)
    late_starts: int = 0
    charged_usd: Decimal = Decimal(0)
    charges: int = 0
    max_direct_charge_usd: Decimal = Decimal(0)
    unresolved: list[str] = field(default_factory=list)  # request ids of unknown outcome
    mismatches: list[str] = field(default_factory=list)
    exceptions: Counter[str] = field(default_factory=Counter)

    def status(self, call: str, status: str) -> None:
        self.statuses.setdefault(call, Counter())[status] += 1

    def charge(self, cost_usd: str, *, direct: bool = False) -> None:
        cost = Decimal(cost_usd)
        self.charged_usd += cost
        self.charges += 1
        if direct:
            self.max_direct_charge_usd = max(self.max_direct_charge_usd, cost)


class Driver:
    def __init__(self, config: dict[str, Any], client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        self.stats = DriverStats()
        self.events_after = "0"
        self.gateway = {"Authorization": f"Bearer {config['gateway']}"}
        self.reader = {"Authorization": f"Bearer {config['reader']}"}

    async def call(
        self, name: str, method: str, path: str, body: Any = None, *, read: bool = False
    ) -> httpx.Response | None:
        """One API call, retried with the same body on 503/504 and connection errors; None
        when no attempt got an answer that settles it."""
        headers = self.reader if read else self.gateway
        content = None if body is None else json.dumps(body)
        if content is not None:
            headers = {**headers, "Content-Type": "application/json"}
        loop = asyncio.get_running_loop()
        for _ in range(RETRIES):
            began = loop.time()
            try:
                response = await self.client.request(method, path, content=content, headers=headers)
            except httpx.HTTPError as error:
                self.stats.status(name, type(error).__name__)
                await asyncio.sleep(0.5)
                continue
            self.stats.latencies_ms.setdefault(name, []).append((loop.time() - began) * 1000)
            self.stats.status(name, status_label(response))
            if response.status_code in (503, 504):
                retry_after = response.headers.get("Retry-After", "1")
                await asyncio.sleep(min(float(retry_after) if retry_after.isdigit() else 1, 2))
                continue
            return response
        return None

    # -- bodies ------------------------------------------------------------------------------

    @staticmethod
    def key_subjects(rng: random.Random) -> list[dict[str, str]]:
        k = rng.randrange(KEYS)
        return [
            {"type": "key", "id": f"k{k:03d}"},
            {"type": "team", "id": f"t{k % TEAMS:02d}"},
            {"type": "org", "id": ORG},
        ]

    @staticmethod
    def project_subjects(rng: random.Random) -> list[dict[str, str]]:
        p = rng.randrange(PROJECTS)
        return [
            {"type": "project", "id": f"p{p}"},
            {"type": "team", "id": f"t{rng.randrange(TEAMS):02d}"},
            {"type": "org", "id": ORG},
        ]

    @staticmethod
    def openai_usage(rng: random.Random) -> dict[str, int]:
        return {"prompt_tokens": rng.randint(200, 1500), "completion_tokens": rng.randint(20, 300)}

    def reservation(self, rng: random.Random, ttl_seconds: int) -> dict[str, Any]:
        return {
            "request_id": f"r-{uuid.uuid4().hex}",
            "subjects": self.key_subjects(rng),
            "model": MODEL,
            "amount_usd": HOLD_USD,
            "ttl_seconds": ttl_seconds,
            "metadata": METADATA,
        }

    def commit_body(self, rng: random.Random) -> dict[str, Any]:
        messages = [
            {"usage": self.openai_usage(rng), "ttft_ms": rng.randint(100, 900)}
            for _ in range(rng.randint(1, 2))
        ]
        return {"messages": messages, "duration_ms": rng.randint(500, 9000)}

    def usage_record(self, rng: random.Random) -> dict[str, Any]:
        if rng.random() < 0.5:
            model, usage = MODEL, self.openai_usage(rng)
        else:
            model = "claude-sonnet-4-5"
            usage = {
                "input_tokens": rng.randint(200, 1500),
                "output_tokens": rng.randint(20, 300),
                "cache_read_input_tokens": rng.randint(0, 1000),
            }
        return {
            "request_id": f"u-{uuid.uuid4().hex}",
            "subjects": self.project_subjects(rng),
            "model": model,
            "usage": usage,
            "metadata": METADATA,
        }

    # -- operations: each returns True when it got the answers it expects -------------------

    async def reserve(self, body: dict[str, Any], name: str = "reserve") -> str | None:
        """The reservation id, or None when refused (402) or failed."""
        response = await self.call(name, "POST", "/v1/reservations", body)
        if response is None or response.status_code != 201:
            return None
        reservation_id: str = response.json()["reservation_id"]
        return reservation_id

    async def commit(self, reservation_id: str, body: dict[str, Any], request_id: str) -> bool:
        response = await self.call(
            "commit", "POST", f"/v1/reservations/{reservation_id}/commit", body
        )
        if response is None:
            self.stats.unresolved.append(request_id)
            return False
        if response.status_code != 200:
            return False
        self.stats.charge(response.json()["cost_usd"])
        return True

    async def op_reserve_commit(self, rng: random.Random) -> bool:
        body = self.reservation(rng, ttl_seconds=60)
        reservation_id = await self.reserve(body)
        if reservation_id is None:
            return False
        return await self.commit(reservation_id, self.commit_body(rng), body["request_id"])

    async def op_reserve_cancel(self, rng: random.Random) -> bool:
        reservation_id = await self.reserve(self.reservation(rng, ttl_seconds=60))
        if reservation_id is None:
            return False
        await asyncio.sleep(rng.uniform(0, 0.5))
        response = await self.call(
            "cancel", "POST", f"/v1/reservations/{reservation_id}/cancel", None
        )
        return response is not None and response.status_code == 200

    async def op_reserve_expire(self, rng: random.Random) -> bool:
        return await self.reserve(self.reservation(rng, ttl_seconds=rng.randint(1, 5))) is not None

    async def op_reserve_extend_commit(self, rng: random.Random) -> bool:
        body = self.reservation(rng, ttl_seconds=30)
        reservation_id = await self.reserve(body)
        if reservation_id is None:
            return False
        await asyncio.sleep(rng.uniform(0, 0.5))
        extend = {"amount_usd": EXTENDED_USD, "ttl_seconds": 60}
        response = await self.call(
            "extend", "POST", f"/v1/reservations/{reservation_id}/extend", extend
        )
        extended = response is not None and response.status_code == 200
        # Refused (402) or not, the hold of 0.02 USD still covers the commit.
        committed = await self.commit(reservation_id, self.commit_body(rng), body["request_id"])
        return extended and committed

    async def usage(self, record: dict[str, Any], name: str = "usage") -> str | None:
        """The cost charged, or None when refused or failed."""
        response = await self.call(name, "POST", "/v1/usage", record)
        if response is None:
            self.stats.unresolved.append(record["request_id"])
            return None
        if response.status_code != 201:
            return None
        cost: str = response.json()["cost_usd"]
        return cost

    async def op_usage(self, rng: random.Random) -> bool:
        cost = await self.usage(self.usage_record(rng))
        if cost is not None:
            self.stats.charge(cost, direct=True)
        return cost is not None

    async def op_usage_batch(self, rng: random.Random) -> bool:
        records = [self.usage_record(rng) for _ in range(BATCH_RECORDS)]
        response = await self.call("usage:batch", "POST", "/v1/usage:batch", {"records": records})
        if response is None:
            self.stats.unresolved.extend(r["request_id"] for r in records)
            return False
        if response.status_code != 200:
            return False
        for result in response.json()["results"]:
            self.stats.status("usage:batch record", str(result["status"]))
            if result["status"] == 201:
                self.stats.charge(result["settlement"]["cost_usd"], direct=True)
            elif result["status"] in (503, 504):
                self.stats.unresolved.append(result["request_id"])
        return True

    async def op_idempotent_retry(self, rng: random.Random) -> bool:
        # A refused attempt leaves no key behind, so a request is sent again only once its
        # first attempt succeeded: then the replay must be the first answer.
        if rng.random() < 0.5:
            record = self.usage_record(rng)
            first = await self.usage(record)
            if first is None:
                return False
            self.stats.charge(first, direct=True)
            again = await self.usage(record, "usage (retry)")
            if first != again:
                self.stats.mismatches.append(f"usage {record['request_id']}: {first} != {again}")
                return False
            return True
        body = self.reservation(rng, ttl_seconds=60)
        reservation_id = await self.reserve(body)
        if reservation_id is None:
            return False
        again_id = await self.reserve(body, "reserve (retry)")
        if reservation_id != again_id:
            self.stats.mismatches.append(
                f"reserve {body['request_id']}: {reservation_id} != {again_id}"
            )
            return False
        commit = self.commit_body(rng)
        path = f"/v1/reservations/{reservation_id}/commit"
        first_commit = await self.call("commit", "POST", path, commit)
        if first_commit is None or first_commit.status_code != 200:
            if first_commit is None:
                self.stats.unresolved.append(body["request_id"])
            return False
        cost = first_commit.json()["cost_usd"]
        self.stats.charge(cost)
        again_commit = await self.call("commit (retry)", "POST", path, commit)
        again_cost = None
        if again_commit is not None and again_commit.status_code == 200:
            again_cost = again_commit.json()["cost_usd"]
        if again_cost != cost:
            self.stats.mismatches.append(f"commit {reservation_id}: {cost} != {again_cost}")
            return False
        return True

    async def op_conflicting_retry(self, rng: random.Random) -> bool:
        record = self.usage_record(rng)
        cost = await self.usage(record)
        if cost is None:
            return False
        self.stats.charge(cost, direct=True)
        changed = {**record, "usage": {k: v + 1 for k, v in record["usage"].items()}}
        response = await self.call("usage (conflicting retry)", "POST", "/v1/usage", changed)
        if response is None or response.status_code != 409:
            status = None if response is None else response.status_code
            self.stats.mismatches.append(
                f"conflicting usage {record['request_id']} answered {status}, not 409"
            )
            return False
        return True

    async def op_read_status(self, rng: random.Random) -> bool:
        budget_id = rng.choice(self.config["budget_ids"])
        path = f"/v1/budgets/{budget_id}/status"
        response = await self.call("budget status", "GET", path, read=True)
        return response is not None and response.status_code == 200

    async def op_read_spend(self, rng: random.Random) -> bool:
        group_by = rng.choice(["model", "subject_type,subject_id", "model,provider,endpoint"])
        path = f"/v1/reports/spend?granularity=day&group_by={group_by}"
        response = await self.call("reports spend", "GET", path, read=True)
        return response is not None and response.status_code == 200

    async def op_read_events(self, rng: random.Random) -> bool:
        path = f"/v1/events?after={self.events_after}&limit=200"
        response = await self.call("events page", "GET", path, read=True)
        if response is None or response.status_code != 200:
            return False
        self.events_after = max(self.events_after, response.json()["next_after"], key=int)
        return True

    def operations(self) -> dict[str, Callable[[random.Random], Awaitable[bool]]]:
        return {
            "reserve-commit": self.op_reserve_commit,
            "reserve-cancel": self.op_reserve_cancel,
            "reserve-expire": self.op_reserve_expire,
            "reserve-extend-commit": self.op_reserve_extend_commit,
            "usage": self.op_usage,
            "usage-batch": self.op_usage_batch,
            "idempotent-retry": self.op_idempotent_retry,
            "conflicting-retry": self.op_conflicting_retry,
            "read-status": self.op_read_status,
            "read-spend": self.op_read_spend,
            "read-events": self.op_read_events,
        }

    async def run_one(
        self, name: str, operation: Callable[[random.Random], Awaitable[bool]], seed: int
    ) -> None:
        try:
            ok = await operation(random.Random(seed))
        except Exception as error:
            self.stats.exceptions[f"{name}: {type(error).__name__}: {error}"[:200]] += 1
            if sum(self.stats.exceptions.values()) == 1:
                traceback.print_exc()
            ok = False
        (self.stats.completed if ok else self.stats.failed)[name] += 1

    async def resolve(self) -> None:
        """Ask the ledger what became of requests whose outcome the driver never learnt, and
        count what it charged for them."""
        pending, self.stats.unresolved = self.stats.unresolved, []
        for request_id in pending:
            response = await self.call(
                "requests (resolve)", "GET", f"/v1/requests/{request_id}", read=True
            )
            if response is None or response.status_code not in (200, 404):
                self.stats.unresolved.append(request_id)
                continue
            if response.status_code == 200:
                story = response.json()
                if story.get("state") in ("committed", "recorded"):
                    self.stats.charge(story["cost_usd"], direct=request_id.startswith("u-"))

    async def run(self) -> float:
        """Open loop for ``seconds``; returns the traffic window's length in seconds."""
        config = self.config
        rng = random.Random(config["seed"])
        names = list(MIX)
        weights = [MIX[n] for n in names]
        operations = self.operations()
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + config["seconds"]
        next_report = start + 60
        arrival = start
        tasks: set[asyncio.Task[None]] = set()
        while True:
            arrival += rng.expovariate(config["rate"])
            if arrival >= deadline:
                break
            delay = arrival - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:
                self.stats.late_starts += 1
            name = rng.choices(names, weights)[0]
            if len(tasks) >= config["max_in_flight"]:
                self.stats.shed[name] += 1
                continue
            task = asyncio.create_task(self.run_one(name, operations[name], rng.getrandbits(64)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if loop.time() >= next_report:
                next_report += 60
                done = sum(self.stats.completed.values()) + sum(self.stats.failed.values())
                print(
                    f"  driver: {loop.time() - start:.0f} s, {done} operations done,"
                    f" {len(tasks)} in flight",
                    file=sys.stderr,
                    flush=True,
                )
        if tasks:
            await asyncio.gather(*tasks)
        window = loop.time() - start
        await self.resolve()
        return window


async def _drive(config: dict[str, Any]) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=config["base"], limits=limits, timeout=60.0) as client:
        driver = Driver(config, client)
        window = await driver.run()
    stats = driver.stats
    return {
        "window_s": window,
        "completed": dict(stats.completed),
        "failed": dict(stats.failed),
        "shed": dict(stats.shed),
        "late_starts": stats.late_starts,
        "calls": {
            name: {
                "count": len(values),
                "p50_ms": percentile(values, 0.50),
                "p99_ms": percentile(values, 0.99),
                "max_ms": max(values, default=math.nan),
            }
            for name, values in stats.latencies_ms.items()
        },
        "statuses": {name: dict(counter) for name, counter in stats.statuses.items()},
        "charged_usd": str(stats.charged_usd),
        "charges": stats.charges,
        "max_direct_charge_usd": str(stats.max_direct_charge_usd),
        "unresolved": stats.unresolved,
        "mismatches": stats.mismatches,
        "exceptions": dict(stats.exceptions),
    }


def drive_main() -> int:
    config = json.loads(sys.stdin.read())
    summary = asyncio.run(_drive(config))
    Path(config["out"]).write_text(json.dumps(summary))
    return 0


# ---------------------------------------------------------------------------------------------
# Setup and checks (the orchestrating process).


@dataclass(frozen=True)
class World:
    gateway: str
    reader: str
    budget_ids: list[str]
    reservation_only_hard: list[str]  # key budgets
    direct_hard: list[str]  # project budgets


def prepare(url: str) -> World:
    """Migrate, define every budget through the service, create the keys."""
    from app.auth import service as auth
    from app.budgets import service as budgets
    from app.budgets.model import Subject
    from app.db import migrate
    from app.db.engine import make_engine
    from app.money import parse_usd

    migrate.upgrade(url)
    engine = make_engine(url, app_role=False)
    plan: list[tuple[str, str, str, str, str]] = [("org", ORG, ORG_LIMIT_USD, "total", "soft")]
    plan += [("team", f"t{t:02d}", TEAM_LIMIT_USD, "month", "soft") for t in range(TEAMS)]
    plan += [
        (
            "key",
            f"k{k:03d}",
            TIGHT_KEY_LIMIT_USD if k < TIGHT_KEYS else KEY_LIMIT_USD,
            "day",
            "hard",
        )
        for k in range(KEYS)
    ]
    plan += [
        (
            "project",
            f"p{p}",
            TIGHT_PROJECT_LIMIT_USD if p == 0 else PROJECT_LIMIT_USD,
            "day",
            "hard",
        )
        for p in range(PROJECTS)
    ]
    ids: dict[str, list[str]] = {}
    try:
        with engine.begin() as conn:
            now = datetime.now(UTC)
            for subject_type, subject_id, limit_usd, period, mode in plan:
                budget = budgets.define_budget(
                    conn,
                    org=ORG,
                    subject=Subject(subject_type, subject_id),
                    limit_pico_usd=parse_usd(limit_usd),
                    period=period,
                    mode=mode,
                    now=now,
                )
                ids.setdefault(subject_type, []).append(str(budget.budget_id))
            _, gateway = auth.create_key(conn, scope="gateway", org=ORG, name="soak")
            _, reader = auth.create_key(conn, scope="reader", org=ORG, name="soak")
    finally:
        engine.dispose()
    return World(
        gateway=gateway,
        reader=reader,
        budget_ids=[i for group in ids.values() for i in group],
        reservation_only_hard=ids["key"],
        direct_hard=ids["project"],
    )


HELD_CHECK = """
WITH holds AS (
    SELECT r.org, (h->>'budget_id')::uuid AS budget_id,
           (h->>'period_start')::timestamptz AS period_start,
           sum(r.amount_pico_usd) AS held_pico_usd, count(*) AS reservations
    FROM reservations r CROSS JOIN LATERAL jsonb_array_elements(r.holds) AS h
    WHERE r.state = 'held'
    GROUP BY 1, 2, 3
)
SELECT count(*) FILTER (WHERE coalesce(p.held_pico_usd, 0) <> coalesce(holds.held_pico_usd, 0)),
       coalesce(sum(p.held_pico_usd), 0),
       (SELECT count(*) FROM reservations WHERE state = 'held')
FROM budget_periods p FULL JOIN holds USING (org, budget_id, period_start)
"""


def held_check(url: str, timeout_s: float = 120.0) -> tuple[int, int, int]:
    """(periods whose held money differs from their held reservations' holds, held pico-USD,
    held reservations), read in one snapshot."""
    with connect(url, timeout_s=timeout_s) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        row = conn.execute(HELD_CHECK).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def wait_for_holds_to_expire(url: str, timeout_s: float) -> int:
    """Wait until no reservation is held; returns how many still are at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        _, _, held = held_check(url)
        if held == 0 or time.monotonic() > deadline:
            return held
        time.sleep(1)


def over_limit(
    url: str, budget_ids: Sequence[str], allowance_pico_usd: int, timeout_s: float = 120.0
) -> list[str]:
    """Periods of these hard budgets where spent + held passes the limit by more than
    ``allowance_pico_usd`` (strictly: ``>=`` when the allowance is positive)."""
    operator = ">=" if allowance_pico_usd > 0 else ">"
    with connect(url, timeout_s=timeout_s) as conn:
        rows = conn.execute(
            "SELECT b.subject_type, b.subject_id, p.period_start, p.spent_pico_usd,"
            " p.held_pico_usd, b.limit_pico_usd"
            " FROM budget_periods p JOIN budgets b USING (org, budget_id)"
            " WHERE b.mode = 'hard' AND b.budget_id = ANY(%s::uuid[])"
            f" AND p.spent_pico_usd + p.held_pico_usd - b.limit_pico_usd {operator} %s",
            (list(budget_ids), allowance_pico_usd if allowance_pico_usd > 0 else 0),
        ).fetchall()
    return [
        f"{r[0]} {r[1]} period {r[2]:%Y-%m-%d}: spent {r[3]} + held {r[4]} > limit {r[5]}"
        for r in rows
    ]


def org_spent_usd(url: str) -> Decimal:
    with connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(p.spent_pico_usd), 0) FROM budget_periods p"
            " JOIN budgets b USING (org, budget_id) WHERE b.subject_type = 'org'"
        ).fetchone()
    assert row is not None
    return Decimal(row[0]).scaleb(-12)


def report_total_usd(base: str, reader: str, began: datetime, ended: datetime) -> Decimal:
    """The spend report's total cost over whole hours around the run."""
    start = began.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    end = ended.replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    response = httpx.get(
        f"{base}/v1/reports/spend",
        params={"from": start.isoformat(), "to": end.isoformat(), "granularity": "all"},
        headers={"Authorization": f"Bearer {reader}"},
        timeout=120,
    )
    response.raise_for_status()
    return Decimal(response.json()["totals"]["cost_usd"])


def cli(url: str, *args: str) -> tuple[int, str]:
    """Run a ``usage-ledger`` command on the database; (exit code, its last lines). Retried
    while it could not connect (the shared server out of connections): that is no verdict."""
    for _ in range(20):
        done = subprocess.run(
            [str(Path(sys.executable).parent / "usage-ledger"), *args, "--database-url", url],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if done.returncode == 0 or "too many clients" not in done.stderr:
            break
        print(f"  ({' '.join(args)}: the server is out of connections; again in 10 s)")
        time.sleep(10)
    lines = done.stdout.strip().splitlines() or done.stderr.strip().splitlines()
    return done.returncode, " / ".join(lines[-2:])


def slope_kib_per_min(samples: Sequence[tuple[float, int]]) -> float:
    """Least-squares slope of RSS (KiB) over time (seconds), per minute."""
    if len(samples) < 2:
        return math.nan
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_r = sum(r for _, r in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (r - mean_r) for t, r in samples)
    return cov / var * 60 if var else math.nan


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


# ---------------------------------------------------------------------------------------------


def print_traffic(summary: dict[str, Any], rate: float) -> None:
    window = summary["window_s"]
    print(
        f"traffic: {window:.0f} s open loop at {rate:g} operations/s offered;"
        f" late starts {summary['late_starts']}, shed {sum(summary['shed'].values())}"
    )
    print(
        f"  {'operation':<24} {'done':>7} {'per s':>7} {'not done':>9}  (refused, failed or shed)"
    )
    for name in MIX:
        done = summary["completed"].get(name, 0)
        other = summary["failed"].get(name, 0) + summary["shed"].get(name, 0)
        print(f"  {name:<24} {done:>7} {done / window:>7.2f} {other:>9}")
    print(
        f"  {'call':<27} {'calls':>7} {'per s':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        "  statuses"
    )
    errors = refusals = transient = expired = 0
    for name, call in sorted(summary["calls"].items()):
        statuses = summary["statuses"].get(name, {})
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
        print(
            f"  {name:<27} {call['count']:>7} {call['count'] / window:>7.2f}"
            f" {call['p50_ms']:>8.1f} {call['p99_ms']:>8.1f} {call['max_ms']:>8.1f}  {shown}"
        )
    for name, statuses in sorted(summary["statuses"].items()):
        if name not in summary["calls"]:
            shown = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
            print(f"  {name:<27} {'':>42}  {shown}")
        for status, count in statuses.items():
            if status.startswith("2") or (status == "409 conflict" and "conflicting" in name):
                continue
            if status == "402":
                refusals += count
            elif status == "409 expired" and name in ("extend", "cancel"):
                expired += count  # the hold's TTL ran out before the call arrived
            elif status in ("503", "504") or not status[0].isdigit():
                transient += count
            else:
                errors += count
    print(
        f"  402 refusals {refusals}; 409 hold expired before extend/cancel {expired};"
        f" 503/504/connection errors (retried) {transient}; other errors {errors};"
        f" operations that raised {sum(summary['exceptions'].values())}"
    )
    for text, count in summary["exceptions"].items():
        print(f"    {count} x {text}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "drive":
        return drive_main()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="traffic time (600)")
    parser.add_argument("--rate", type=float, default=20.0, help="operations/s offered (20)")
    parser.add_argument("--max-in-flight", type=int, default=200)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--server-url", default=os.environ.get("BENCH_SERVER_URL", DEFAULT_SERVER_URL)
    )
    parser.add_argument("--database", default="ul_soak")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `serve` flag")
    parser.add_argument("--json", type=Path, help="also write the driver's summary here")
    args = parser.parse_args()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python"
        f" {platform.python_version()}; load average at start: {load_average()}",
        flush=True,
    )
    print(f"command: {' '.join(sys.argv)}", flush=True)
    url = create_database(args.server_url, args.database)
    failures: list[str] = []
    try:
        world = prepare(url)
        scratch = Path(tempfile.gettempdir()) / "soak"
        scratch.mkdir(exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
        log_path = workdir / "serve.log"
        print(f"workdir (server log, driver summary): {workdir}", flush=True)
        with serve(url, log_path, args.serve_arg) as server:
            failures += soak(args, url, world, server.base, server.pid, workdir)
        # Read after the server stopped, so the shutdown's lines are in too.
        log = log_path.read_text()
        bad = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
        print(f"server log: {len(log.splitlines())} lines, {len(bad)} ERROR/Traceback")
        for line in bad[:5]:
            print(f"  {line[:200]}")
    finally:
        if args.keep or failures:
            print(f"kept the database {args.database}")
        else:
            drop_database(args.server_url, args.database)
    print(f"load average at end: {load_average()}")
    if failures:
        print("BALANCE CHECK FAILED:")
        for failure in failures:
            print(f"  {failure}")
        return 1
    print("balance check passed")
    return 0


def check_during(url: str, world: World, elapsed: float, rss: int) -> list[str]:
    """The checks that hold at every instant, in the middle of the traffic; returns failures.
    Skipped (and said so) when the shared server has no connection to spare."""
    try:
        differ, held_pico, held = held_check(url, timeout_s=5)
        # Reservations never commit above their hold: a key budget is within its limit at
        # every instant, not only at the end.
        over = over_limit(url, world.reservation_only_hard, 0, timeout_s=5)
    except psycopg.OperationalError as error:
        print(f"  {elapsed:4.0f} s: server RSS {mib(rss)}; check skipped ({error})", flush=True)
        return []
    print(
        f"  {elapsed:4.0f} s: server RSS {mib(rss)}, {held} holds live"
        f" ({Decimal(held_pico).scaleb(-12).normalize()} USD), held money = held"
        f" reservations: {'ok' if not differ else 'MISMATCH'}, key budgets over"
        f" limit: {len(over)}; load average {load_average()}",
        flush=True,
    )
    failures = [f"at {elapsed:.0f} s: {line}" for line in over]
    if differ:
        failures.append(
            f"at {elapsed:.0f} s: {differ} periods' held money differs from their held reservations"
        )
    return failures


def soak(
    args: argparse.Namespace, url: str, world: World, base: str, pid: int, workdir: Path
) -> list[str]:
    """Run the traffic while sampling the server; then the balance check. Returns failures."""
    out = workdir / "driver.json"
    config = {
        "base": base,
        "gateway": world.gateway,
        "reader": world.reader,
        "rate": args.rate,
        "seconds": args.seconds,
        "seed": args.seed,
        "max_in_flight": args.max_in_flight,
        "budget_ids": world.budget_ids,
        "out": str(out),
    }
    print(f"server pid {pid}: RSS {mib(rss_kib(pid))} when ready", flush=True)
    samples: list[tuple[float, int]] = []
    began_at = datetime.now(UTC)
    began = time.monotonic()
    driver = subprocess.Popen(
        [sys.executable, __file__, "drive"], stdin=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert driver.stdin is not None
    driver.stdin.write(json.dumps(config))
    driver.stdin.close()
    held_failures: list[str] = []
    next_sample = began
    next_check = began + 60
    try:
        while driver.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - began, rss_kib(pid)))
                next_sample += args.sample_seconds
            if now >= next_check:
                next_check += 60
                held_failures += check_during(url, world, now - began, samples[-1][1])
            time.sleep(0.2)
    finally:
        if driver.poll() is None:
            driver.terminate()
            driver.wait()
    ended_at = datetime.now(UTC)
    samples.append((time.monotonic() - began, rss_kib(pid)))
    if driver.returncode != 0:
        return [f"the driver exited with {driver.returncode}"]
    summary: dict[str, Any] = json.loads(out.read_text())
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    print_traffic(summary, args.rate)

    traffic = [(t, r) for t, r in samples if t <= summary["window_s"] + args.sample_seconds]
    second_half = [(t, r) for t, r in traffic if t >= traffic[-1][0] / 2]
    print(
        f"server RSS over the traffic ({len(traffic)} samples every {args.sample_seconds:g} s):"
        f" start {mib(traffic[0][1])}, end {mib(traffic[-1][1])},"
        f" max {mib(max(r for _, r in traffic))}; slope over the second half"
        f" {slope_kib_per_min(second_half):+.0f} KiB/min",
        flush=True,
    )
    print(f"  samples (MiB): {' '.join(f'{r / 1024:.1f}' for _, r in traffic)}", flush=True)

    failures = list(held_failures)
    failures += [f"driver: {m}" for m in summary["mismatches"]]
    left = wait_for_holds_to_expire(url, timeout_s=180)
    if not wait_for_background(url):
        failures.append("the rollup folder or the audit checkpointer did not catch up")
    differ, held_pico, held = held_check(url)
    print(
        f"after the traffic: {held} reservations held, {held_pico} pico-USD held,"
        f" {differ} periods differ from held reservations; server RSS {mib(rss_kib(pid))}"
    )
    if left or held or held_pico or differ:
        failures.append(f"{held} holds left, {held_pico} pico-USD held, {differ} periods differ")

    code, text = cli(url, "replay", "--verify")
    print(f"usage-ledger replay --verify: exit {code}: {text}")
    if code:
        failures.append(f"replay --verify exited {code}")
    code, text = cli(url, "audit", "verify")
    print(f"usage-ledger audit verify: exit {code}: {text}")
    if code:
        failures.append(f"audit verify exited {code}")

    charged = Decimal(summary["charged_usd"])
    spent = org_spent_usd(url)
    reported = report_total_usd(base, world.reader, began_at, ended_at)
    exact = "" if not summary["unresolved"] else f" ({len(summary['unresolved'])} unresolved)"
    print(
        f"charges answered to the driver: {summary['charges']} summing to {charged} USD{exact};"
        f" org budget spent {spent.normalize()} USD; spend report total {reported} USD"
    )
    if summary["unresolved"]:
        failures.append(f"{len(summary['unresolved'])} requests of unknown outcome")
    if not charged == spent == reported:
        failures.append(f"charged {charged} != org spent {spent} or report {reported}")

    over = over_limit(url, world.reservation_only_hard, 0)
    allowance = int(Decimal(summary["max_direct_charge_usd"]).scaleb(12))
    over += over_limit(url, world.direct_hard, allowance)
    print(
        f"hard budgets over their limit: {len(over)} (key budgets: by any amount; project"
        f" budgets, charged directly: by a whole charge, {summary['max_direct_charge_usd']} USD)"
    )
    failures += over
    return failures


if __name__ == "__main__":
    sys.exit(main())
