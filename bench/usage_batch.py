"""Direct usage records per second: POST /v1/usage:batch against POST /v1/usage, over HTTP.

Run (PostgreSQL at 127.0.0.1:5432, trust auth, as postgres):

    make bench-batch
    # or: .venv/bin/python bench/usage_batch.py [--sizes 1,100,1000] [--clients 1,4]
    #         [--records-per-client 1000] [--min-batches 3] [--quick] [--database NAME]

Setup: drops and creates the database ``ul_bench_batch`` (``--database``; no other database is
touched and no server setting is changed), migrates it, defines monthly hard budgets for
``--keys`` API-key subjects, ``--teams`` teams and one org (limits far above anything the run
spends), creates a gateway key confined to the org and a reader key, then starts
``usage-ledger serve`` (its defaults: pool 16, sweeper, rollup folder and audit checkpointer
running) on a free port.

Records: with ``--scenario org`` (the default) each names three subjects (a random key, its
team and the org; so every record locks the one org budget, as in a deployment with an
org-wide budget); with ``--scenario spread`` one random key budget only. Model gpt-4o, a
provider usage object of 500-3,000 prompt and 50-800 completion tokens, and endpoint/tags
metadata: the body of POST /v1/usage, with a fresh request_id.

Cells, each for every client count N in ``--clients`` (N concurrent asyncio tasks, one
keep-alive httpx connection each):

- ``single``: the records sent one by one to POST /v1/usage;
- ``batch K``: the same kind of records in batches of K to POST /v1/usage:batch.

Each client sends ``--records-per-client`` records (at least ``--min-batches`` batches). The
script prints records/s (records over the cell's wall time), the p50 and p99 latency of one
call (one batch, or one record for ``single``), and errors: any non-2xx answer, and any
record of a batch not charged (201). Between cells it waits until the rollup folder and the
audit checkpointer have caught up, then VACUUMs (ANALYZE), so that no cell pays for another's
backlog. At the end what the budgets spent must equal the sum of every settlement's cost, to
the last decimal: the key budgets', and with ``--scenario org`` the teams' and the org's too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _server import create_database, drop_database, prepare_org, serve  # noqa: E402

ORG = "bench-batch"
LIMIT_USD = "1000000000"
MODEL = "gpt-4o"
METADATA: dict[str, Any] = {"endpoint": "/v1/chat/completions", "tags": ["prod"]}


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (nan for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# ---------------------------------------------------------------------------------------------
# Database, budgets, keys, server.


def subjects_for(k: int, teams: int, scenario: str) -> list[dict[str, str]]:
    """A record's subjects: key, team and org (``org``), or its key alone (``spread``)."""
    if scenario == "spread":
        return [{"type": "key", "id": f"k{k:05d}"}]
    return [
        {"type": "key", "id": f"k{k:05d}"},
        {"type": "team", "id": f"t{k % teams:03d}"},
        {"type": "org", "id": ORG},
    ]


def prepare(url: str, *, keys: int, teams: int) -> tuple[str, str]:
    """Migrate, define every budget through the service, create the keys; returns the gateway
    key and the reader key."""
    gateway, reader = prepare_org(
        url, org=ORG, limit_usd=LIMIT_USD, teams=teams, keys=keys, scopes=["gateway", "reader"],
        name="bench-batch",
    )  # fmt: skip
    return gateway, reader


def settle(url: str, timeout_s: float = 300.0) -> float:
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
            if row is not None and row[0] is not None and row[0] > top and row[1] > top:
                break
            time.sleep(0.5)
        else:
            print(f"  (settle: background work still behind after {timeout_s:.0f} s)", flush=True)
        conn.execute(
            "VACUUM (ANALYZE) budgets, budget_periods, idempotency_keys, ledger_events, api_keys"
        )
    return time.monotonic() - began


# ---------------------------------------------------------------------------------------------
# Cells.


@dataclass
class Cell:
    mode: str  # "single" or "batch"
    size: int
    clients: int
    records: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    cost_usd: Decimal = Decimal(0)

    @property
    def label(self) -> str:
        return "single" if self.mode == "single" else f"batch {self.size}"

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else math.nan


def make_record(rng: random.Random, prefix: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "request_id": f"{prefix}-{uuid.uuid4().hex}",
        "subjects": subjects_for(rng.randrange(args.keys), args.teams, args.scenario),
        "model": MODEL,
        "usage": {
            "prompt_tokens": rng.randint(500, 3000),
            "completion_tokens": rng.randint(50, 800),
        },
        "metadata": METADATA,
    }


async def run_cell(cell: Cell, base: str, key: str, args: argparse.Namespace, seed: int) -> None:
    """Send the cell's records from ``cell.clients`` concurrent clients; fills ``cell``."""
    per_client = max(args.records_per_client, args.min_batches * cell.size)
    calls = -(-per_client // cell.size)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    errors: dict[str, int] = {}
    costs: list[Decimal] = []

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def client_task(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        prefix = f"{cell.label.replace(' ', '')}-c{cell.clients}-{n}"
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600.0) as http:
            for _ in range(calls):
                records = [make_record(rng, prefix, args) for _ in range(cell.size)]
                if cell.mode == "single":
                    path, content = "/v1/usage", json.dumps(records[0])
                else:
                    path, content = "/v1/usage:batch", json.dumps({"records": records})
                began = time.perf_counter()
                try:
                    response = await http.post(path, content=content)
                except httpx.HTTPError as failure:
                    error(type(failure).__name__)
                    continue
                cell.latencies_ms.append((time.perf_counter() - began) * 1000)
                if response.status_code >= 300:
                    error(f"HTTP {response.status_code}")
                    continue
                body = response.json()
                if cell.mode == "single":
                    costs.append(Decimal(body["cost_usd"]))
                    cell.records += 1
                    continue
                for result in body["results"]:
                    if result["status"] == 201:
                        costs.append(Decimal(result["settlement"]["cost_usd"]))
                        cell.records += 1
                    else:
                        error(f"record {result['status']}")

    began = time.perf_counter()
    await asyncio.gather(*(client_task(n) for n in range(cell.clients)))
    cell.seconds = time.perf_counter() - began
    cell.errors = errors
    cell.cost_usd = sum(costs, Decimal(0))


def spent_by_subject_type(base: str, reader: str) -> dict[str, Decimal]:
    """What the budgets of each subject type have spent in the current period, summed."""
    response = httpx.get(
        f"{base}/v1/budgets", headers={"Authorization": f"Bearer {reader}"}, timeout=120.0
    )
    response.raise_for_status()
    spent: dict[str, Decimal] = {}
    for budget in response.json()["budgets"]:
        kind = budget["subject"]["type"]
        spent[kind] = spent.get(kind, Decimal(0)) + Decimal(budget["spent_usd"])
    return spent


def print_cell(cell: Cell) -> None:
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(cell.errors.items())) or "0"
    print(
        f"  {cell.label:<11} {cell.clients:>7} {cell.records:>8} {cell.records_per_s:>10.1f}"
        f" {len(cell.latencies_ms):>7} {percentile(cell.latencies_ms, 0.5):>9.1f}"
        f" {percentile(cell.latencies_ms, 0.99):>9.1f}   {errors}",
        flush=True,
    )


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--server-url",
        default=os.environ.get("BENCH_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="any database URL on the PostgreSQL server to use (its database part is ignored)",
    )
    parser.add_argument("--database", default="ul_bench_batch")
    parser.add_argument("--sizes", default="1,100,1000", help="batch sizes")
    parser.add_argument("--clients", default="1,4", help="concurrent client counts")
    parser.add_argument("--records-per-client", type=int, default=1000)
    parser.add_argument("--min-batches", type=int, default=3, help="per client and cell")
    parser.add_argument(
        "--scenario",
        choices=("org", "spread"),
        default="org",
        help="org: key + team + one org budget per record; spread: one of --keys key budgets",
    )
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--teams", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="validate at a small scale")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--json", type=Path, help="also write the cells as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.clients = "1,10,100", "1,2"
        args.records_per_client, args.min_batches, args.keys = 100, 1, 50
    sizes = [int(s) for s in args.sizes.split(",")]
    client_counts = [int(c) for c in args.clients.split(",")]

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python"
        f" {platform.python_version()}; load average at start: {load_average()}",
        flush=True,
    )
    url = create_database(args.server_url, args.database)
    cells: list[Cell] = []
    try:
        gateway, reader = prepare(url, keys=args.keys, teams=args.teams)
        with (
            tempfile.TemporaryDirectory(prefix="bench-batch-") as workdir,
            serve(url, Path(workdir) / "serve.log") as srv,
        ):
            base = srv.base
            warmup = Cell("batch", 10, 1)
            asyncio.run(run_cell(warmup, base, gateway, _warmup_args(args), seed=0))
            print(
                f"  {'cell':<11} {'clients':>7} {'records':>8} {'records/s':>10}"
                f" {'calls':>7} {'p50 ms':>9} {'p99 ms':>9}   errors",
                flush=True,
            )
            plan = [Cell("single", 1, c) for c in client_counts]
            plan += [Cell("batch", size, c) for size in sizes for c in client_counts]
            for seed, cell in enumerate(plan, start=1):
                settle(url)
                asyncio.run(run_cell(cell, base, gateway, args, seed=seed))
                cells.append(cell)
                print_cell(cell)
            spent = spent_by_subject_type(base, reader)
        charged = warmup.cost_usd + sum((c.cost_usd for c in cells), Decimal(0))
        # Every record charges one key budget, and with --scenario org its team and the org's.
        expected = dict.fromkeys(spent, charged if args.scenario == "org" else Decimal(0))
        expected["key"] = charged
        print(f"settlements sum to {charged} USD; budgets spent: {spent}", flush=True)
        if spent != expected:
            print(f"MISMATCH: expected budgets to have spent {expected}", flush=True)
            return 1
    finally:
        if not args.keep:
            drop_database(args.server_url, args.database)
    print(f"load average at end: {load_average()}")
    for clients in client_counts:
        single = next(c for c in cells if c.mode == "single" and c.clients == clients)
        for cell in cells:
            if cell.mode == "batch" and cell.clients == clients:
                ratio = cell.records_per_s / single.records_per_s
                print(f"  {clients} client(s): {cell.label} is {ratio:.1f}x single calls")
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "cell": c.label,
                        "clients": c.clients,
                        "records": c.records,
                        "records_per_s": round(c.records_per_s, 1),
                        "p50_ms": round(percentile(c.latencies_ms, 0.5), 1),
                        "p99_ms": round(percentile(c.latencies_ms, 0.99), 1),
                        "errors": c.errors,
                    }
                    for c in cells
                ],
                indent=2,
            )
        )
    return 1 if any(c.errors for c in cells) else 0


def _warmup_args(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "records_per_client": 10, "min_batches": 1})


if __name__ == "__main__":
    sys.exit(main())
