"""Reserve -> commit pairs per second over the HTTP API, against the same SQL run raw.

Run (PostgreSQL at 127.0.0.1:5432, trust auth, as postgres; pgbench on PATH):

    make bench-ledger
    # or: .venv/bin/python bench/ledger.py [--scenarios a,b,c] [--clients 1,16,64]
    #         [--seconds 20] [--max-pairs N] [--quick] [--no-profile] [--workdir DIR]

Scenarios (budgets monthly, hard, limits far above anything the run can spend):

- (a) spread: 10,000 key budgets, each request names one at random;
- (b) hot: every request names the same team budget;
- (c) three: key + team + org per request (10,000 keys, 100 teams, one hot org budget).

Each cell, for each scenario and client count:

1. HTTP: ``usage-ledger serve`` (its defaults: pool 16, sweeper, rollup folder and audit
   checkpointer running) is loaded from a separate process (``bench/ledger.py drive``: asyncio
   and one keep-alive ``httpx.AsyncClient``, N tasks). Each task loops
   ``POST /v1/reservations`` (explicit ``amount_usd`` 0.05, model gpt-4o, the scenario's
   subjects, endpoint/tags metadata), then ``POST /v1/reservations/{id}/commit`` with one
   message's provider usage (``{"usage": {"prompt_tokens", "completion_tokens"}}``, priced by
   the server from the reservation's model: what the Python client's ``r.commit(usage)`` sends;
   0.0014-0.0155 USD, always below the hold). After ``--warmup`` seconds, pairs completing
   within ``--seconds`` count (at most ``--max-pairs``); any non-2xx answer (a 402 included)
   or transport error is an error.
2. Raw SQL: pgbench (``-M prepared``, one thread) runs ``bench/sql/reserve_commit.sql``, the
   same two transactions with the same locks, rows and event payloads, against a second org
   with the same budgets, same client count, same window.

Between cells the script waits until the rollup folder and the audit checkpointer have caught
up and VACUUMs (ANALYZE) its tables (the shared server may run with autovacuum off), so that no
cell pays for another's backlog. After the closed-loop cells of a scenario, one more HTTP cell
runs open-loop (Poisson arrivals) at half the scenario's best HTTP pairs/s, for the latency
goal, and pgbench is offered the same rate beside it (``-R``: latency from each pair's
scheduled start, as in the HTTP open loop). Unless ``--no-profile``, an extra (a) cell at 16
clients runs under py-spy (installed in the venv): a flame graph, the top frames by own time
while holding the GIL, and what the server's threads wait on. Errors are counted over whole
cells, warm-up included.

The database (``--database``, default ``ul_bench_ledger``) is dropped and created by each run
(``--reuse`` keeps an earlier run's budgets); no other database is touched and no server
setting is changed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _server import database_url, serve  # noqa: E402

SQL_SCRIPT = ROOT / "bench" / "sql" / "reserve_commit.sql"
HTTP_ORG = "bench-http"
RAW_ORG = "bench-raw"
KEYS = 10_000
TEAMS = 100
LIMIT_USD = "1000000000"
HOLD_USD = "0.05"
MODEL = "gpt-4o"
METADATA: dict[str, Any] = {"endpoint": "/v1/chat/completions", "tags": ["prod"]}
GOAL_RATIO = 0.5
GOAL_RESERVE_P99_MS = 20.0
SCENARIOS = {
    "a": (1, "10,000 budgets, one per request"),
    "b": (2, "one hot budget"),
    "c": (3, "key + team + hot org per request"),
}
RATE = 100  # py-spy samples per second
LAYOUT = 2  # bump when the budgets the script defines change
HOT_GOAL_RATIO = 0.8  # issue 8: one hot budget sustains >= 80% of the spread throughput
# The hot budgets: (b)'s team and (c)'s org. In the HTTP org they are defined through
# POST /v1/budgets (so `--escrow-slices` reaches them as the API's field); the raw org's
# are plain rows, as pgbench's SQL knows nothing of escrow.
HOT_SUBJECTS = (("team", "b-hot"), ("org", "c-org"))


def subjects_for(scenario: str, k: int) -> list[dict[str, str]]:
    """The subjects of a request of ``scenario`` for key number ``k`` (1..KEYS)."""
    if scenario == "a":
        return [{"type": "key", "id": f"a-k{k:05d}"}]
    if scenario == "b":
        return [{"type": "team", "id": "b-hot"}]
    return [
        {"type": "key", "id": f"c-k{k:05d}"},
        {"type": "team", "id": f"c-t{k % TEAMS:03d}"},
        {"type": "org", "id": "c-org"},
    ]


def all_subjects() -> list[tuple[str, str]]:
    out = [("key", f"a-k{k:05d}") for k in range(1, KEYS + 1)]
    out.append(("team", "b-hot"))
    out += [("key", f"c-k{k:05d}") for k in range(1, KEYS + 1)]
    out += [("team", f"c-t{t:03d}") for t in range(TEAMS)]
    out.append(("org", "c-org"))
    return out


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (nan for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# ---------------------------------------------------------------------------------------------
# The load driver: a separate process, `bench/ledger.py drive ...`.


@dataclass
class DriveResult:
    scenario: str
    clients: int
    rate: float | None
    window_s: float = 0.0
    pairs: int = 0
    reserve_ms: list[float] = field(default_factory=list)
    commit_ms: list[float] = field(default_factory=list)
    pair_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    late_starts: int = 0
    cpu_s: float = 0.0


async def _drive(args: argparse.Namespace) -> DriveResult:
    result = DriveResult(args.scenario, args.clients, args.rate)
    errors: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + args.warmup
    deadline = measure_from + args.seconds
    stop = False
    window_end = deadline
    schedule_at = start
    rng = random.Random(args.seed)
    cpu_from = 0.0
    announced = False

    def announce() -> None:
        nonlocal announced, cpu_from
        if not announced:
            announced = True
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu_from = usage.ru_utime + usage.ru_stime
            print("measure", flush=True)

    async def next_start() -> bool:
        """Open loop: wait for the next Poisson arrival; False once past the deadline."""
        nonlocal schedule_at
        schedule_at += rng.expovariate(args.rate)
        slot = schedule_at
        if slot >= deadline:
            return False
        delay = slot - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005 and slot >= measure_from:
            result.late_starts += 1
        return True

    async def worker(client: httpx.AsyncClient, seed: int) -> None:
        nonlocal stop, window_end
        own = random.Random(seed)
        while not stop:
            if args.rate is not None and not await next_start():
                return
            now = loop.time()
            if now >= deadline:
                return
            if now >= measure_from:
                announce()
            k = own.randint(1, KEYS)
            reserve_body = json.dumps(
                {"request_id": f"h-{uuid.uuid4().hex}", "subjects": subjects_for(args.scenario, k),
                 "model": MODEL, "amount_usd": HOLD_USD, "metadata": METADATA}
            )  # fmt: skip
            commit_body = json.dumps(
                {"usage": {"prompt_tokens": own.randint(500, 3000),
                           "completion_tokens": own.randint(50, 800)}}
            )  # fmt: skip
            t0 = loop.time()
            try:
                response = await client.post("/v1/reservations", content=reserve_body)
            except httpx.HTTPError as error:
                errors[f"reserve {type(error).__name__}"] += 1
                continue
            t1 = loop.time()
            if response.status_code != 201:
                errors[f"reserve {response.status_code}"] += 1
                continue
            reservation_id = response.json()["reservation_id"]
            try:
                response = await client.post(
                    f"/v1/reservations/{reservation_id}/commit", content=commit_body
                )
            except httpx.HTTPError as error:
                errors[f"commit {type(error).__name__}"] += 1
                continue
            t2 = loop.time()
            if response.status_code != 200:
                errors[f"commit {response.status_code}"] += 1
                continue
            if t0 >= measure_from and t2 <= deadline and not stop:
                result.reserve_ms.append((t1 - t0) * 1000)
                result.commit_ms.append((t2 - t1) * 1000)
                result.pair_ms.append((t2 - t0) * 1000)
                if args.max_pairs and len(result.pair_ms) >= args.max_pairs:
                    stop = True
                    window_end = t2

    async with httpx.AsyncClient(
        base_url=args.base, headers=headers, limits=limits, timeout=30.0
    ) as client:
        await asyncio.gather(*(worker(client, args.seed + 1 + n) for n in range(args.clients)))
    announce()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_s = usage.ru_utime + usage.ru_stime - cpu_from
    result.window_s = max(min(window_end, loop.time()) - measure_from, 1e-9)
    result.pairs = len(result.pair_ms)
    result.errors = dict(errors)
    print("done", flush=True)
    return result


def drive_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/ledger.py drive")
    parser.add_argument("--base", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--max-pairs", type=int, default=0)
    parser.add_argument("--rate", type=float, default=None, help="open loop: pairs/s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = asyncio.run(_drive(args))
    Path(args.out).write_text(json.dumps(asdict(result)))
    return 0


# ---------------------------------------------------------------------------------------------
# Database, budgets, key, server.


def layout_marker(escrow_slices: int | None = None) -> str:
    return json.dumps(
        {"bench": "ledger", "layout": LAYOUT, "keys": KEYS, "teams": TEAMS,
         "escrow_slices": escrow_slices}
    )  # fmt: skip


def prepare_database(
    server: str, name: str, *, reuse: bool, escrow_slices: int | None
) -> tuple[str, bool]:
    """Create (or, with ``reuse``, keep a complete earlier one with the same hot budgets)
    database; True when it is new."""
    with psycopg.connect(database_url(server, "postgres"), autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
        if reuse and row is not None and row[0] == layout_marker(escrow_slices):
            return database_url(server, name), False
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    return database_url(server, name), True


def mark_complete(server: str, name: str, escrow_slices: int | None) -> None:
    with psycopg.connect(database_url(server, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal(layout_marker(escrow_slices))
            )
        )


def define_budgets(url: str) -> None:
    """Every scenario's budgets in both orgs. The first of each org goes through
    ``app.budgets.service.define_budget``; the rest are written in bulk with the same rows
    and ``budget_defined`` payloads (checked against the service's), which is ~50x faster."""
    from sqlalchemy import insert, select

    from app.budgets import service as budgets
    from app.budgets.model import Subject
    from app.budgets.tables import budgets as budgets_table
    from app.db.engine import make_engine
    from app.ledger import events
    from app.ledger import service as ledger
    from app.ledger.tables import ledger_events
    from app.money import parse_usd

    engine = make_engine(url, app_role=False)
    limit = parse_usd(LIMIT_USD)
    subjects = all_subjects()
    try:
        for org in (HTTP_ORG, RAW_ORG):
            with engine.begin() as conn:
                now = datetime.now(UTC)
                first = budgets.define_budget(
                    conn, org=org, subject=Subject(*subjects[0]), limit_pico_usd=limit,
                    period="month", now=now,
                )  # fmt: skip
                # Clones of the service's own row and event, so that a column or payload key
                # added to budgets later is written the same way here.
                template = dict(
                    conn.execute(
                        select(budgets_table).where(
                            budgets_table.c.org == org,
                            budgets_table.c.budget_id == first.budget_id,
                        )
                    )
                    .one()
                    ._mapping
                )
                payload = conn.execute(
                    select(ledger_events.c.payload).where(
                        ledger_events.c.org == org,
                        ledger_events.c.event_type == events.BUDGET_DEFINED,
                        ledger_events.c.budget_id == first.budget_id,
                    )
                ).scalar_one()
                rows, defined = [], []
                for subject_type, subject_id in subjects[1:]:
                    if org == HTTP_ORG and (subject_type, subject_id) in HOT_SUBJECTS:
                        continue  # define_hot_budgets, through the API
                    budget_id = uuid.uuid4()
                    rows.append(
                        {**template, "budget_id": budget_id, "subject_type": subject_type,
                         "subject_id": subject_id}
                    )  # fmt: skip
                    defined.append(
                        {"org": org, "event_type": events.BUDGET_DEFINED, "occurred_at": now,
                         "budget_id": budget_id, "budget_ids": [budget_id],
                         "amount_pico_usd": limit,
                         "payload": {**payload,
                                     "subject": {"type": subject_type, "id": subject_id}}}
                    )  # fmt: skip
                conn.execute(insert(budgets_table), rows)
                ledger.append_many(conn, defined)
        with psycopg.connect(url) as check:
            shapes = check.execute(
                "SELECT DISTINCT (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(payload) k)"
                " FROM ledger_events WHERE event_type = 'budget_defined'"
            ).fetchall()
        if len(shapes) != 1:
            raise SystemExit(f"bulk budget_defined payloads differ from the service's: {shapes}")
    finally:
        engine.dispose()


def define_hot_budgets(url: str, escrow_slices: int | None) -> str:
    """The HTTP org's hot budgets through POST /v1/budgets (the service in-process, an admin
    key), with ``escrow_slices`` when asked; says what the server made of that field."""
    from fastapi.testclient import TestClient

    from app.auth import service as auth
    from app.config import Settings
    from app.db.engine import make_engine
    from app.main import create_app

    engine = make_engine(url)
    notes = []
    try:
        with engine.begin() as conn:
            _, admin = auth.create_key(conn, scope="admin", name="bench-ledger-setup")
        app = create_app(engine, Settings(), sweep=False)
        with TestClient(app, headers={"Authorization": f"Bearer {admin}"}) as client:
            for subject_type, subject_id in HOT_SUBJECTS:
                body: dict[str, Any] = {
                    "org": HTTP_ORG, "subject": {"type": subject_type, "id": subject_id},
                    "limit_usd": LIMIT_USD, "period": "month",
                }  # fmt: skip
                if escrow_slices is not None:
                    body["escrow_slices"] = escrow_slices
                response = client.post("/v1/budgets", json=body)
                if response.status_code == 422 and "escrow_slices" in response.text:
                    notes.append(f"{subject_id}: escrow_slices refused (422), defined without")
                    del body["escrow_slices"]
                    response = client.post("/v1/budgets", json=body)
                elif escrow_slices is not None and response.status_code == 201:
                    shown = response.json().get("escrow_slices")
                    what = "absent from the response" if shown is None else f"{shown!r}"
                    notes.append(f"{subject_id}: escrow_slices {what}")
                if response.status_code != 201:
                    raise SystemExit(f"POST /v1/budgets {body}: {response.status_code}"
                                     f" {response.text}")  # fmt: skip
    finally:
        engine.dispose()
    return "; ".join(notes) if notes else "plain (no escrow_slices)"


def create_gateway_key(url: str) -> str:
    from app.auth import service as auth
    from app.db.engine import make_engine

    engine = make_engine(url, app_role=False)
    try:
        with engine.begin() as conn:
            _, key = auth.create_key(conn, scope="gateway", org=HTTP_ORG, name="bench-ledger")
    finally:
        engine.dispose()
    return key


def vacuum(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "VACUUM (ANALYZE) budgets, budget_periods, reservations, idempotency_keys,"
            " ledger_events"
        )


def settle(url: str, timeout_s: float = 180.0) -> float:
    """Wait until the rollup folder and the audit checkpointer have passed every event written
    so far, then VACUUM (ANALYZE); returns the seconds waited."""
    began = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        top_row = conn.execute("SELECT coalesce(max(seq), 0) FROM ledger_events").fetchone()
        top = int(top_row[0]) if top_row else 0
        while time.monotonic() - began < timeout_s:
            row = conn.execute(
                "SELECT (SELECT folded_below FROM rollup_watermark),"
                " (SELECT coalesce(max(below_seq), 0) FROM ledger_checkpoints)"
            ).fetchone()
            if row is not None and row[0] > top and row[1] > top:
                break
            time.sleep(0.5)
        else:
            print(f"  (settle: background work still behind after {timeout_s:.0f} s)", flush=True)
    vacuum(url)
    return time.monotonic() - began


# ---------------------------------------------------------------------------------------------
# Which statements the service runs per call (in-process, once, before the measurement).


def trace_statements(url: str, key: str) -> dict[str, list[str]]:
    from fastapi.testclient import TestClient
    from sqlalchemy import event
    from sqlalchemy.engine.interfaces import CacheStats

    from app.config import Settings
    from app.db.engine import make_engine
    from app.main import create_app

    settings = Settings()
    engine = make_engine(url, settings=settings)
    trace: list[str] = []

    def statement(_c: Any, _cur: Any, text: str, params: Any, context: Any, many: bool) -> None:
        first = " ".join(text.split())
        shown = re.sub(r"\(%\(.*", "(...)", first)
        shown = shown[:96] + ("..." if len(shown) > 96 else "") + (" [executemany]" * many)
        cache = getattr(context, "cache_hit", None)
        if cache == CacheStats.NO_CACHE_KEY:
            shown += " [no cache key: compiled on every call]"
        elif cache == CacheStats.CACHE_MISS and warmed[0]:
            shown += " [compiled again]"
        trace.append(shown)

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "begin", lambda _c: trace.append("BEGIN"))
    event.listen(engine, "commit", lambda _c: trace.append("COMMIT"))
    event.listen(engine, "rollback", lambda _c: trace.append("ROLLBACK"))
    calls: dict[str, list[str]] = {}
    warmed = [False]
    try:
        app = create_app(engine, settings, sweep=False)
        with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
            for warm in (False, True):  # the first round warms caches and the price book up
                warmed[0] = warm
                trace.clear()
                body = {"request_id": f"trace-{uuid.uuid4().hex}",
                        "subjects": subjects_for("c", 1), "model": MODEL,
                        "amount_usd": HOLD_USD, "metadata": METADATA}  # fmt: skip
                response = client.post("/v1/reservations", json=body)
                response.raise_for_status()
                calls["reserve"] = list(trace)
                trace.clear()
                commit = {"usage": {"prompt_tokens": 1200, "completion_tokens": 350}}
                path = f"/v1/reservations/{response.json()['reservation_id']}/commit"
                client.post(path, json=commit).raise_for_status()
                calls["commit"] = list(trace)
    finally:
        engine.dispose()
    return calls


# ---------------------------------------------------------------------------------------------
# Cells.


def cpu_ticks(pid: int) -> float:
    """utime + stime of a process and its live descendants (`serve --workers N`), seconds."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def machine_ticks() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


@dataclass
class HttpCell:
    scenario: str
    clients: int
    rate: float | None
    pairs: int
    pairs_per_s: float
    reserve_p50: float
    reserve_p99: float
    commit_p50: float
    commit_p99: float
    pair_p99: float
    errors: dict[str, int]
    late_starts: int
    server_cpu: float  # cores' worth used by the server process in the window
    server_cpu_ms_per_pair: float
    driver_cpu: float
    machine_busy: float  # fraction of all CPUs busy in the window
    load1: float

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class RawCell:
    scenario: str
    clients: int
    pairs: int
    pairs_per_s: float
    pair_p50: float
    pair_p99: float
    reserve_mean: float  # pgbench -r: the reserve transaction's statements, summed
    commit_mean: float
    errors: int
    error_detail: str
    machine_busy: float
    load1: float
    rate: float | None = None  # open loop (pgbench -R): the pairs/s offered


def run_http(
    base: str,
    key: str,
    server_pid: int,
    workdir: Path,
    *,
    scenario: str,
    clients: int,
    seconds: float,
    warmup: float,
    max_pairs: int,
    rate: float | None = None,
    during: Any = None,
) -> HttpCell:
    """One HTTP cell: the driver process, with the server's CPU sampled over its window;
    ``during(pid)`` (the profiler) runs once the window opens."""
    out = workdir / f"drive-{scenario}-{clients}-{'open' if rate else 'closed'}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "drive", "--base", base,
               "--key", key, "--scenario", scenario, "--clients", str(clients),
               "--seconds", str(seconds), "--warmup", str(warmup),
               "--max-pairs", str(max_pairs), "--out", str(out)]  # fmt: skip
    if rate is not None:
        command += ["--rate", f"{rate:.3f}"]
    load1 = os.getloadavg()[0]
    server_from = machine_from = (0.0, 0.0)
    server_to = machine_to = (0.0, 0.0)
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT) as driver:
        assert driver.stdout is not None
        for line in driver.stdout:
            if line.strip() == "measure":
                server_from = (cpu_ticks(server_pid), time.monotonic())
                machine_from = machine_ticks()
                if during is not None:
                    during(server_pid)
            elif line.strip() == "done":
                server_to = (cpu_ticks(server_pid), time.monotonic())
                machine_to = machine_ticks()
        if driver.wait() != 0:
            raise SystemExit(f"the load driver failed ({driver.returncode})")
    data = json.loads(out.read_text())
    result = DriveResult(**data)
    elapsed = max(server_to[1] - server_from[1], 1e-9)
    busy = (machine_to[0] - machine_from[0]) / max(machine_to[1] - machine_from[1], 1.0)
    return HttpCell(
        scenario=scenario,
        clients=clients,
        rate=rate,
        pairs=result.pairs,
        pairs_per_s=result.pairs / result.window_s,
        reserve_p50=percentile(result.reserve_ms, 0.50),
        reserve_p99=percentile(result.reserve_ms, 0.99),
        commit_p50=percentile(result.commit_ms, 0.50),
        commit_p99=percentile(result.commit_ms, 0.99),
        pair_p99=percentile(result.pair_ms, 0.99),
        errors=result.errors,
        late_starts=result.late_starts,
        server_cpu=(server_to[0] - server_from[0]) / elapsed,
        server_cpu_ms_per_pair=(server_to[0] - server_from[0]) * 1000 / max(result.pairs, 1),
        driver_cpu=result.cpu_s / elapsed,
        machine_busy=busy,
        load1=load1,
    )


def committed_reservations(url: str, org: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM reservations WHERE org = %s AND state = 'committed'", (org,)
        ).fetchone()
    return int(row[0]) if row else 0


def pgbench_variables(scenario: str) -> list[str]:
    """-D arguments: the org, scenario, key counts, metadata and a real one-message quote."""
    from app.pricing import service as pricing
    from app.pricing.table import default_table

    quote = pricing.quote(
        default_table(), model=MODEL, provider=None,
        usage={"prompt_tokens": 1200, "completion_tokens": 350}, billing_time=None,
    )  # fmt: skip
    values = {
        "org": RAW_ORG,
        "scenario": str(SCENARIOS[scenario][0]),
        "keys": str(KEYS),
        "teams": str(TEAMS),
        "metadata": json.dumps(METADATA),
        "priced_by": str(quote.priced_by),
        "quote": json.dumps(pricing.quote_to_json(quote)),
    }
    return [arg for name, value in values.items() for arg in ("-D", f"{name}={value}")]


def run_raw(
    url: str,
    workdir: Path,
    *,
    scenario: str,
    clients: int,
    seconds: float,
    warmup: float,
    rate: float | None = None,
) -> RawCell:
    """One raw cell: pgbench with the same client count, window and warm-up; with ``rate``,
    open loop at that many pairs/s (``-R``: each pair's latency counts from its scheduled
    start, as the HTTP driver's open loop does)."""
    prefix = workdir / f"pgbench-{scenario}-{clients}{'-open' if rate else ''}"
    for old in workdir.glob(f"{prefix.name}.*"):
        old.unlink()
    parts = urlsplit(url)
    duration = math.ceil(warmup + seconds)
    command = ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "1",
               "-T", str(duration), "-r", "-l", f"--log-prefix={prefix}",
               *(["-R", f"{rate:.3f}"] if rate else []),
               "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
               "-U", parts.username or "postgres", "-f", str(SQL_SCRIPT),
               *pgbench_variables(scenario), parts.path.lstrip("/")]  # fmt: skip
    env = {**os.environ, "PGOPTIONS": "-c lock_timeout=5000 -c timezone=UTC"}
    for attempt in range(3):  # the shared server may be out of connections for a moment
        before = committed_reservations(url, RAW_ORG)
        load1 = os.getloadavg()[0]
        machine_from = machine_ticks()
        started = time.time()
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir)
        machine_to = machine_ticks()
        if "could not create connection" not in done.stderr or attempt == 2:
            break
        print("  (pgbench could not connect every client; again in 10 s)", flush=True)
        time.sleep(10)
        for old in workdir.glob(f"{prefix.name}.*"):
            old.unlink()
    after = committed_reservations(url, RAW_ORG)
    (workdir / f"{prefix.name}.out").write_text(done.stdout + "\n" + done.stderr)
    processed = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    total = int(processed.group(1)) if processed else 0
    aborted = [line for line in done.stderr.splitlines() if "aborted" in line]
    refused = max(total - (after - before), 0)
    ends, latencies = [], []
    for path in workdir.glob(f"{prefix.name}.*"):
        if path.suffix == ".out":
            continue
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6 and fields[2] != "skipped" and fields[2] != "failed":
                ends.append(int(fields[4]) + int(fields[5]) / 1e6)
                latencies.append(int(fields[2]) / 1000)
    window_from, window_to = started + warmup, started + warmup + seconds
    measured = [ms for end, ms in zip(ends, latencies, strict=True)
                if window_from <= end <= window_to]  # fmt: skip
    reserve_mean, commit_mean = statement_split(done.stdout)
    detail = "; ".join(sorted(set(re.sub(r"client \d+ ", "client ", a) for a in aborted)))[:300]
    if done.returncode not in (0, 2) and not detail:
        detail = (done.stderr.strip().splitlines() or ["pgbench failed"])[-1][:300]
    busy = (machine_to[0] - machine_from[0]) / max(machine_to[1] - machine_from[1], 1.0)
    return RawCell(
        scenario=scenario,
        clients=clients,
        pairs=len(measured),
        pairs_per_s=len(measured) / seconds,
        pair_p50=percentile(measured, 0.50),
        pair_p99=percentile(measured, 0.99),
        reserve_mean=reserve_mean,
        commit_mean=commit_mean,
        errors=len(aborted) + refused + (0 if done.returncode in (0, 2) else 1),
        error_detail=detail or (f"{refused} refused" if refused else ""),
        machine_busy=busy,
        load1=load1,
        rate=rate,
    )


def statement_split(report: str) -> tuple[float, float]:
    """Mean ms of the reserve and the commit transaction's statements, from pgbench -r."""
    lines = report.split("statement latencies in milliseconds", 1)[-1].splitlines()[1:]
    sums = [0.0, 0.0]
    part = -1
    for line in lines:
        match = re.match(r"\s+([\d.]+)\s+(?:\d+\s+)?(.*)$", line)
        if not match:
            continue
        command = match.group(2).strip()
        if command.startswith("BEGIN"):
            part += 1
        if 0 <= part <= 1:
            sums[part] += float(match.group(1))
    return sums[0], sums[1]


# ---------------------------------------------------------------------------------------------
# Profile.

PACKAGES: tuple[tuple[str, str], ...] = (
    ("json/", "json encoding/decoding (stdlib)"),
    ("psycopg", "psycopg (driver)"),
    ("sqlalchemy/", "SQLAlchemy (compile, execute, rows, pool)"),
    ("pydantic", "pydantic (validation, serialisation)"),
    ("fastapi/", "FastAPI (routing, dependencies, encoding)"),
    ("starlette/", "Starlette"),
    ("anyio/", "anyio (thread-pool hand-offs)"),
    ("uvicorn/", "uvicorn + h11 (HTTP)"),
    ("h11/", "uvicorn + h11 (HTTP)"),
    ("app/pricing/", "app.pricing"),
    ("app/", "app (our code, except pricing)"),
)
INCLUSIVE: tuple[tuple[str, str], ...] = (
    ("event loop thread (HTTP parsing, routing, responses)", "thread MainThread"),
    ("worker threads (the transactions, sync endpoints and dependencies)", "thread worker"),
    ("background threads (folder, checkpointer, sweeper, webhooks)", "thread background"),
    ("SQLAlchemy, all of it", "sqlalchemy/"),
    ("  of which statement compilation (compiler.py)", "sqlalchemy/sql/compiler.py"),
    ("  of which cache-key generation", "sqlalchemy/sql/cache_key.py"),
    ("psycopg, all of it", "psycopg/"),
    ("pydantic, all of it", "pydantic"),
    ("json, all of it", "json/"),
    ("app.auth (API key lookup)", "app/auth/"),
    ("app.pricing (pricing the commit's usage)", "app/pricing/"),
    ("app.budgets.holds (the transactions themselves)", "app/budgets/holds.py"),
)


def _split(frame: str) -> tuple[str, str]:
    """(function, file) of a py-spy frame "function (file:line)"."""
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    return (match.group(1), match.group(2)) if match else (frame, "")


def package(frames: Sequence[str]) -> str:
    """The package a sample's own time belongs to: its leaf's, or for a leaf in the standard
    library (threading, queue, uuid, ...) the nearest caller's."""
    for frame in reversed(frames):
        file = _split(frame)[1]
        for prefix, name in PACKAGES:
            if file.startswith(prefix):
                return name
    return "other (standard library)"


def thread_of(first: str) -> str:
    """The thread name of py-spy's --threads root frame "thread (tid): name"."""
    name = first.split(": ", 1)[-1]
    if name == "MainThread":
        return name
    # anyio's workers (sync routes and dependencies), or the app's transaction threads.
    if name == "AnyIO worker thread" or name.startswith("transaction_"):
        return "worker"
    return "background"


def read_collapsed(path: Path) -> list[tuple[str, list[str], int, str]]:
    """(thread, frames, count, process) of py-spy's raw (collapsed) output, recorded with
    --threads (and --subprocesses, which puts a "process PID:..." frame first)."""
    stacks = []
    for line in path.read_text().splitlines():
        joined, _, count = line.rpartition(" ")
        if joined and count.isdigit():
            first, *frames = joined.split(";")
            process = ""
            if first.startswith("process ") and frames:
                process = first.split(":", 1)[0]
                first, *frames = frames
            stacks.append((thread_of(first), frames or [first], int(count), process))
    return stacks


def thread_state(thread: str, frames: Sequence[str]) -> str | None:
    """What a thread was doing in one sample; None when it was idle."""
    leaf = _split(frames[-1])
    if thread == "MainThread":
        # Inside uvloop waiting for I/O, or `serve --workers N`'s supervisor between checks.
        if leaf[0] == "Runner.run" or leaf[0].startswith(("Event.wait", "Condition.wait")):
            return None
        return "event loop: running Python (HTTP, routing, responses) or waiting for the GIL"
    if thread == "worker":
        # An idle worker: anyio's waits in the stdlib Queue.get (SQLAlchemy's pool queue has
        # its own module), an executor's in the C SimpleQueue.get under its `_worker` frame.
        if leaf[0] == "_worker" or any(f.startswith("Queue.get (queue.py") for f in frames):
            return None
        if leaf[1].startswith("psycopg/") and leaf[0].endswith(".wait"):
            return "worker: waiting on PostgreSQL (a round trip in flight)"
        if leaf[0].startswith("Condition.wait") and any("sqlalchemy/pool" in f for f in frames):
            return "worker: waiting for a pooled connection"
        return "worker: running Python or waiting for the GIL"
    if leaf[0].startswith(("Event.wait", "Condition.wait")):
        return None
    return "background threads: busy"


@dataclass
class Profile:
    samples: int
    seconds: float
    top: list[tuple[str, float]]  # function (file), share of GIL samples as own time
    packages: list[tuple[str, float]]
    inclusive: list[tuple[str, float]]
    threads: list[tuple[str, float]]  # state, mean number of threads in it
    files: list[str]


def summarise_profile(gil: Path, idle: Path, svg: Path, seconds: int, rate: int) -> Profile:
    stacks = read_collapsed(gil)
    total = sum(count for _, _, count, _ in stacks) or 1
    own: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for thread, frames, count, _ in stacks:
        function, file = _split(frames[-1])
        own[f"{function} ({file})"] += count
        by_package[package(frames)] += count
        for label, needle in INCLUSIVE:
            if needle == f"thread {thread}" or any(needle in frame for frame in frames):
                inclusive[label] += count
    states: Counter[str] = Counter()
    # Samples taken: each process's main thread is in every one (py-spy lags on a busy box);
    # with several server processes the states are summed over them.
    main_samples: Counter[str] = Counter()
    for thread, frames, count, process in read_collapsed(idle):
        main_samples[process] += count if thread == "MainThread" else 0
        state = thread_state(thread, frames)
        if state is not None:
            states[state] += count
    ticks = max(main_samples.values(), default=0) or seconds * rate
    return Profile(
        samples=total,
        seconds=seconds,
        top=[(name, count / total) for name, count in own.most_common(15)],
        packages=[(name, count / total) for name, count in by_package.most_common()],
        inclusive=[(label, inclusive[label] / total) for label, _ in INCLUSIVE],
        threads=[(name, count / ticks) for name, count in states.most_common()],
        files=[str(svg), str(gil), str(idle)],
    )


def profiler(workdir: Path, seconds: int) -> tuple[Any, dict[str, Path]]:
    """A ``during`` hook recording, one after another: a flame graph (SVG), raw stacks of the
    thread holding the GIL, raw stacks of every thread (idle ones included)."""
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    assert spy is not None
    files = {
        "svg": workdir / "profile.svg",
        "gil": workdir / "profile-gil.txt",
        "idle": workdir / "profile-threads.txt",
    }

    def run(pid: int) -> None:
        for name, extra in (("svg", []), ("gil", ["--format", "raw", "--gil", "--threads"]),
                            ("idle", ["--format", "raw", "--idle", "--threads"])):  # fmt: skip
            subprocess.run(
                [spy, "record", "--pid", str(pid), "--subprocesses", "--duration", str(seconds),
                 "--rate", str(RATE), "-o", str(files[name]), *extra],
                check=True, capture_output=True,
            )  # fmt: skip

    return run, files


# ---------------------------------------------------------------------------------------------
# Report.


def fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def print_table(http: list[HttpCell], raw: dict[tuple[str, int], RawCell]) -> list[str]:
    head = (
        "| scenario | clients | HTTP pairs/s | reserve p50 / p99 ms | commit p50 / p99 ms"
        " | pair p99 ms | errors | raw pairs/s | raw pair p50 / p99 ms | ratio"
        " | server CPU, ms/pair | load |"
    )
    lines = [head, "| --- | --- |" + " ---: |" * 10]
    for cell in http:
        # An open-loop cell sits beside raw SQL offered the same rate (key clients 0).
        other = raw.get((cell.scenario, cell.clients if cell.rate is None else 0))
        clients = str(cell.clients) if cell.rate is None else f"open, {cell.rate:,.0f}/s"
        errors = str(cell.error_count) + (f" / {other.errors}" if other else "")
        ratio = cell.pairs_per_s / other.pairs_per_s if other and other.pairs else math.nan
        lines.append(
            f"| ({cell.scenario}) | {clients} | {fmt(cell.pairs_per_s, 0)}"
            f" | {fmt(cell.reserve_p50)} / {fmt(cell.reserve_p99)}"
            f" | {fmt(cell.commit_p50)} / {fmt(cell.commit_p99)} | {fmt(cell.pair_p99)}"
            f" | {errors} | {fmt(other.pairs_per_s, 0) if other else ''}"
            f" | {(fmt(other.pair_p50) + ' / ' + fmt(other.pair_p99)) if other else ''}"
            f" | {fmt(ratio, 2) if cell.rate is None and other else ''}"
            f" | {cell.server_cpu:.2f}, {cell.server_cpu_ms_per_pair:.1f} | {cell.load1:.1f} |"
        )
    for line in lines:
        print(line)
    return lines


def machine(url: str) -> str:
    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        settings = conn.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name IN ('shared_buffers',"
            " 'synchronous_commit', 'fsync', 'autovacuum', 'max_connections') ORDER BY name"
        ).fetchall()
    with open("/proc/meminfo") as info:
        mem_kb = int(info.readline().split()[1])
    shown = ", ".join(f"{n}={s}{u or ''}" for n, s, u in settings)
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {mem_kb / 1024**2:.0f} GiB RAM,"
        f" Python {platform.python_version()}, PostgreSQL {version[0] if version else '?'}"
        f" ({shown})"
    )


def probe(url: str) -> str:
    """The machine's state as PostgreSQL sees it: a SELECT 1 round trip and a one-row INSERT
    with its commit (a WAL flush), median of repeated tries."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (at timestamptz)")
        trips, flushes = [], []
        for _ in range(100):
            began = time.perf_counter()
            conn.execute("SELECT 1")
            trips.append((time.perf_counter() - began) * 1000)
        for _ in range(20):
            began = time.perf_counter()
            conn.execute("INSERT INTO bench_probe VALUES (now())")
            flushes.append((time.perf_counter() - began) * 1000)
        conn.execute("TRUNCATE bench_probe")
    return (
        f"SELECT 1 round trip {percentile(trips, 0.5):.2f} ms, INSERT + commit (WAL flush)"
        f" {percentile(flushes, 0.5):.2f} ms (medians)"
    )


def payload_shapes(url: str) -> list[str]:
    """Each event type's payload keys and mean size, HTTP org against raw org, by number of
    subjects (recent events)."""
    out = []
    seen: dict[tuple[str, str, int], tuple[set[str], list[int]]] = {}
    with psycopg.connect(url) as conn:
        for org in (HTTP_ORG, RAW_ORG):
            rows = conn.execute(
                "SELECT event_type, payload::text FROM ledger_events WHERE org = %s"
                " AND event_type IN ('reserved', 'committed', 'usage_recorded')"
                " ORDER BY seq DESC LIMIT 6000",
                (org,),
            ).fetchall()
            for event_type, text in rows:
                payload = json.loads(text)
                subjects = len(payload.get("subjects", ()))
                keys, sizes = seen.setdefault((org, event_type, subjects), (set(), []))
                keys.update(payload)
                sizes.append(len(text))
    for (org, event_type, subjects), (keys, sizes) in sorted(seen.items()):
        other = seen.get((RAW_ORG, event_type, subjects))
        if org != HTTP_ORG or other is None:
            continue
        same = "same keys" if keys == other[0] else f"KEYS DIFFER: {sorted(keys ^ other[0])}"
        out.append(
            f"{event_type} with {subjects} subject(s): HTTP {sum(sizes) / len(sizes):.0f} B,"
            f" raw {sum(other[1]) / len(other[1]):.0f} B mean payload; {same}"
        )
    return out


def consistency(url: str) -> list[str]:
    """Per org: the held money in the periods equals the holds of reservations still held."""
    out = []
    with psycopg.connect(url) as conn:
        for org in (HTTP_ORG, RAW_ORG):
            # Escrow slices (budget_slices, where the schema has them) hold money too.
            slices = conn.execute("SELECT to_regclass('budget_slices') IS NOT NULL").fetchone()
            sliced = (
                " + (SELECT coalesce(sum(held_pico_usd), 0) FROM budget_slices"
                "    WHERE org = %(org)s)"
                if slices and slices[0]
                else ""
            )
            row = conn.execute(
                "SELECT (SELECT coalesce(sum(held_pico_usd), 0) FROM budget_periods"
                "        WHERE org = %(org)s)" + sliced + ","
                " (SELECT coalesce(sum(r.amount_pico_usd * jsonb_array_length(r.holds)), 0)"
                "  FROM reservations r WHERE org = %(org)s AND state = 'held'),"
                " (SELECT count(*) FROM reservations WHERE org = %(org)s AND state = 'held'),"
                " (SELECT count(*) FROM reservations WHERE org = %(org)s)",
                {"org": org},
            ).fetchone()
            assert row is not None
            ok = "ok" if row[0] == row[1] else "MISMATCH"
            out.append(
                f"{org}: {row[3]:,} reservations, {row[2]:,} left held (cut at a window's end"
                f" or failed); periods' held = held reservations: {ok}"
            )
    return out


# ---------------------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "drive":
        return drive_main(sys.argv[2:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", default="a,b,c")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per cell")
    parser.add_argument("--max-pairs", type=int, default=200_000, help="per HTTP cell")
    parser.add_argument("--quick", action="store_true", help="5 s cells, clients 1,16")
    parser.add_argument("--no-raw", action="store_true", help="skip the pgbench cells")
    parser.add_argument("--no-half-load", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--profile-seconds", type=int, default=15)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="ul_bench_ledger")
    parser.add_argument("--reuse", action="store_true", help="keep an earlier run's budgets")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    parser.add_argument("--workdir", default=None, help="logs, pgbench logs, profiles, JSON")
    parser.add_argument(
        "--serve-arg", action="append", default=[], help="extra `serve` argument (repeatable)"
    )
    parser.add_argument(
        "--escrow-slices", type=int, default=None, metavar="N",
        help="define (b)'s team and (c)'s org budget with escrow_slices N (1..64)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.escrow_slices is not None and not 1 <= args.escrow_slices <= 64:
        parser.error("--escrow-slices takes an integer from 1 to 64")
    if args.quick:
        args.seconds, args.warmup, args.profile_seconds = 5.0, 2.0, 5
        if args.clients == parser.get_default("clients"):
            args.clients = "1,16"
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not scenarios or any(s not in SCENARIOS for s in scenarios):
        parser.error(f"--scenarios takes a comma-separated subset of {','.join(SCENARIOS)}")
    if not args.no_raw and shutil.which("pgbench") is None:
        parser.error("pgbench is not on PATH (apt-get install postgresql-client), or --no-raw")
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if not args.no_profile and spy is None:
        print("py-spy is not installed (.venv/bin/pip install py-spy): no profile", flush=True)
        args.no_profile = True
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ledger-"))
    workdir.mkdir(parents=True, exist_ok=True)

    url, fresh = prepare_database(
        args.server, args.database, reuse=args.reuse, escrow_slices=args.escrow_slices
    )
    print(f"machine: {machine(url)}", flush=True)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"workdir: {workdir}", flush=True)
    began = time.monotonic()
    if fresh:
        from app.db import migrate

        migrate.upgrade(url)
        define_budgets(url)
        hot = define_hot_budgets(url, args.escrow_slices)
        mark_complete(args.server, args.database, args.escrow_slices)
        print(f"hot budgets of {HTTP_ORG}: {hot}", flush=True)
    vacuum(url)
    print(f"database at start: {probe(url)}", flush=True)
    key = create_gateway_key(url)
    print(f"database {args.database}: {'created' if fresh else 'reused'},"
          f" {2 * len(all_subjects()):,} budgets in orgs {HTTP_ORG} / {RAW_ORG}"
          f" ({time.monotonic() - began:.0f} s)", flush=True)  # fmt: skip
    statements = trace_statements(url, key)
    for call, trace in statements.items():
        print(f"\nstatements of one {call} over HTTP (scenario c):")
        for n, line in enumerate(trace, 1):
            print(f"  {n:2d}. {line}")
    print(flush=True)

    http_cells: list[HttpCell] = []
    raw_cells: dict[tuple[str, int], RawCell] = {}
    profile: Profile | None = None
    profile_clients = 16 if 16 in clients else max(clients)
    with serve(url, workdir / "serve.log", args.serve_arg) as running:
        base, pid = running.base, running.pid
        print(f"server: {base} (pid {pid}, log {workdir / 'serve.log'})", flush=True)
        for scenario in scenarios:
            for count in clients:
                settle(url)
                cell = run_http(
                    base, key, pid, workdir, scenario=scenario, clients=count,
                    seconds=args.seconds, warmup=args.warmup, max_pairs=args.max_pairs,
                )  # fmt: skip
                http_cells.append(cell)
                print(f"({scenario}) {count:3d} clients HTTP: {cell.pairs_per_s:8.1f} pairs/s,"
                      f" reserve p50/p99 {fmt(cell.reserve_p50)}/{fmt(cell.reserve_p99)} ms,"
                      f" commit p50/p99 {fmt(cell.commit_p50)}/{fmt(cell.commit_p99)} ms,"
                      f" errors {cell.errors or 0}, server CPU {cell.server_cpu:.2f}"
                      f" ({cell.server_cpu_ms_per_pair:.1f} ms/pair),"
                      f" driver CPU {cell.driver_cpu:.2f}, machine busy"
                      f" {cell.machine_busy:.0%}, load {cell.load1:.1f}", flush=True)  # fmt: skip
                if not args.no_raw:
                    settle(url)
                    raw = run_raw(
                        url, workdir, scenario=scenario, clients=count, seconds=args.seconds,
                        warmup=args.warmup,
                    )  # fmt: skip
                    raw_cells[(scenario, count)] = raw
                    print(f"({scenario}) {count:3d} clients raw:  {raw.pairs_per_s:8.1f} pairs/s,"
                          f" pair p50/p99 {fmt(raw.pair_p50)}/{fmt(raw.pair_p99)} ms"
                          f" (reserve {raw.reserve_mean:.2f} + commit {raw.commit_mean:.2f} ms"
                          f" mean), errors {raw.errors} {raw.error_detail},"
                          f" machine busy {raw.machine_busy:.0%}, load {raw.load1:.1f}",
                          flush=True)  # fmt: skip
                if scenario == "a" and count == profile_clients and not args.no_profile:
                    settle(url)
                    hook, files = profiler(workdir, args.profile_seconds)
                    print(f"(a) {count:3d} clients HTTP under py-spy"
                          f" ({3 * args.profile_seconds} s) ...", flush=True)  # fmt: skip
                    profiled = run_http(
                        base, key, pid, workdir, scenario="a", clients=count,
                        seconds=3 * args.profile_seconds + 2, warmup=args.warmup, max_pairs=0,
                        during=hook,
                    )  # fmt: skip
                    print(f"    (profiled: {profiled.pairs_per_s:.1f} pairs/s, not a figure)")
                    profile = summarise_profile(
                        files["gil"], files["idle"], files["svg"], args.profile_seconds, RATE
                    )
            if not args.no_half_load:
                best = max((c.pairs_per_s for c in http_cells
                            if c.scenario == scenario and c.rate is None), default=0.0)  # fmt: skip
                if best > 0:
                    settle(url)
                    cell = run_http(
                        base, key, pid, workdir, scenario=scenario, clients=max(clients),
                        seconds=args.seconds, warmup=args.warmup, max_pairs=args.max_pairs,
                        rate=best / 2,
                    )  # fmt: skip
                    http_cells.append(cell)
                    print(f"({scenario}) open loop at {best / 2:.0f} pairs/s (half the best):"
                          f" {cell.pairs_per_s:.1f} pairs/s, reserve p50/p99"
                          f" {fmt(cell.reserve_p50)}/{fmt(cell.reserve_p99)} ms, commit p99"
                          f" {fmt(cell.commit_p99)} ms, errors {cell.errors or 0},"
                          f" late starts {cell.late_starts}", flush=True)  # fmt: skip
                    if not args.no_raw:
                        settle(url)
                        open_raw = run_raw(
                            url, workdir, scenario=scenario, clients=max(clients),
                            seconds=args.seconds, warmup=args.warmup, rate=best / 2,
                        )  # fmt: skip
                        raw_cells[(scenario, 0)] = open_raw
                        print(f"({scenario}) raw SQL open loop at {best / 2:.0f} pairs/s:"
                              f" {open_raw.pairs_per_s:.1f} pairs/s, pair p50/p99"
                              f" {fmt(open_raw.pair_p50)}/{fmt(open_raw.pair_p99)} ms,"
                              f" errors {open_raw.errors}", flush=True)  # fmt: skip

    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"database at end: {probe(url)}\n")
    table = print_table(http_cells, raw_cells)
    print()
    verdicts = goals(http_cells, raw_cells) + hot_ratios(http_cells, args.escrow_slices)
    for line in verdicts:
        print(line)
    if profile is not None:
        print(f"\nprofile of (a) at {profile_clients} clients: {profile.samples:,} samples of"
              " the thread holding the GIL")  # fmt: skip
        print("top frames by own time:")
        for name, share in profile.top:
            print(f"  {share:6.1%}  {name}")
        print("own time by package (stdlib leaves charged to their caller's package):")
        for name, share in profile.packages:
            print(f"  {share:6.1%}  {name}")
        print("inclusive (share of GIL samples with such a frame on the stack):")
        for name, share in profile.inclusive:
            print(f"  {share:6.1%}  {name}")
        print("server threads, mean number in each state (all threads, idle ones left out):")
        for name, mean in profile.threads:
            print(f"  {mean:6.2f}  {name}")
        print("files: " + ", ".join(profile.files))
    print()
    for line in payload_shapes(url) + consistency(url):
        print(line)
    (workdir / "results.json").write_text(
        json.dumps(
            {"http": [asdict(c) for c in http_cells],
             "raw": [asdict(c) for c in raw_cells.values()],
             "statements": statements, "table": table, "goals": verdicts,
             "profile": asdict(profile) if profile else None},
            indent=1,
        )
    )  # fmt: skip
    print(f"\nresults: {workdir / 'results.json'}")
    if args.drop:
        with psycopg.connect(database_url(args.server, "postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(args.database)
                )
            )
    return 0


def hot_ratios(http: list[HttpCell], escrow_slices: int | None) -> list[str]:
    """Hot (b) pairs/s as a fraction of spread (a) pairs/s at the same client count."""
    closed = {(c.scenario, c.clients): c for c in http if c.rate is None}
    out = []
    for (scenario, clients), hot in sorted(closed.items()):
        spread = closed.get(("a", clients))
        if scenario != "b" or spread is None or spread.pairs_per_s <= 0:
            continue
        ratio = hot.pairs_per_s / spread.pairs_per_s
        out.append(
            f"(b)/(a) at {clients} clients: {hot.pairs_per_s:,.0f} / {spread.pairs_per_s:,.0f}"
            f" pairs/s = {ratio:.0%} (escrow_slices {escrow_slices or 'off'};"
            f" goal >= {HOT_GOAL_RATIO:.0%}: {'met' if ratio >= HOT_GOAL_RATIO else 'NOT met'})"
        )
    return out


def goals(http: list[HttpCell], raw: dict[tuple[str, int], RawCell]) -> list[str]:
    out = []
    by_scenario: dict[str, list[HttpCell]] = defaultdict(list)
    for cell in http:
        by_scenario[cell.scenario].append(cell)
    for scenario, cells in by_scenario.items():
        closed = [c for c in cells if c.rate is None]
        raws = [r for (s, _), r in raw.items() if s == scenario and r.rate is None]
        best = max(closed, key=lambda c: c.pairs_per_s, default=None)
        best_raw = max(raws, key=lambda r: r.pairs_per_s, default=None)
        if best and best_raw and best_raw.pairs_per_s > 0:
            ratio = best.pairs_per_s / best_raw.pairs_per_s
            wanted = " (goal >= 50%: " + ("met)" if ratio >= GOAL_RATIO else "NOT met)")
            out.append(
                f"({scenario}) best HTTP {best.pairs_per_s:,.0f} pairs/s ({best.clients} clients)"
                f" = {ratio:.0%} of best raw {best_raw.pairs_per_s:,.0f} pairs/s"
                f" ({best_raw.clients} clients)" + (wanted if scenario in ("a", "c") else "")
            )
        for cell in cells:
            if cell.rate is not None:
                met = cell.reserve_p99 < GOAL_RESERVE_P99_MS
                open_raw = raw.get((scenario, 0))
                out.append(
                    f"({scenario}) at half load ({cell.rate:,.0f} pairs/s offered): reserve p99"
                    f" {fmt(cell.reserve_p99)} ms (goal < {GOAL_RESERVE_P99_MS:.0f} ms: "
                    + ("met)" if met else "NOT met)")
                    + (
                        f"; raw SQL offered the same rate: pair p50/p99"
                        f" {fmt(open_raw.pair_p50)}/{fmt(open_raw.pair_p99)} ms"
                        if open_raw
                        else ""
                    )
                )
    return out


if __name__ == "__main__":
    sys.exit(main())
