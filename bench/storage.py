"""Storage per event, per request and per rollup row, measured on a real database.

Run (PostgreSQL at 127.0.0.1:5432, trust auth, as postgres):

    make bench-storage
    # = .venv/bin/python bench/storage.py load: a fresh load through the service, measured
    .venv/bin/python bench/storage.py [--json] measure --database NAME [--sample-percent P]
    .venv/bin/python bench/storage.py load [--requests 4000] [--clients 4] [--keep]

``measure`` only reads: it never writes to the database it is given (safe on a benchmark
database someone else owns). It prints

1. every table (the months of ``ledger_events`` summed under it, archived months included) with
   its rows, heap, TOAST, index and total bytes (``pg_table_size``, ``pg_indexes_size``,
   ``pg_total_relation_size``; heap counts the free-space and visibility maps too), and the
   total bytes per row;
2. ``ledger_events`` per event type: rows, average payload bytes (``pg_column_size`` of the
   stored jsonb), average tuple bytes (``pg_column_size`` of the whole row: the 24-byte header
   included, plus 4 for its line pointer), and the type's share of the table's bytes: the heap
   in proportion to its tuple bytes, TOAST in proportion to the payload bytes of its rows too
   wide to stay inline, each index in proportion to the index entries the type has (partial
   index predicates are read from the catalog and evaluated per row). With ``--sample-percent``
   the per-type figures come from ``TABLESAMPLE SYSTEM`` and are scaled: estimates;
3. the rollups: rows per grain, bytes per row, rows per folded usage event;
4. per request of the database's mix: all bytes divided by the requests (reservations plus
   direct charges).

``load`` makes its own database (``--database``, default ``ul_scaling_storage``; refused
unless the name starts with ``ul_scaling``, and dropped and created by each run), migrates it,
defines budgets through the service, starts ``usage-ledger serve`` (its defaults: sweeper,
rollup folder and audit checkpointer running) and drives ``--requests`` requests over HTTP
from ``--clients`` asyncio tasks, a gateway's mix:

- 70% reserve then commit, one message (80%) or 2-5 (a tool-using agent), three subjects
  (a key of 1,000, its team of 50, the org), endpoint and tags metadata;
- 20% direct charges (``POST /v1/usage``), same subjects and shapes;
- 7% reserve then cancel; 3% reserve with a 1-second hold that is left to expire.

Models gpt-4o, gpt-4o-mini (OpenAI usage, cached prompt tokens in 45%) and claude-sonnet-4-5
(Anthropic usage with cache reads and writes), TTFT and duration on every message. Then it
waits until the sweeper has expired every abandoned hold and the folder and checkpointer have
caught up, prints the WAL the server wrote meanwhile (the whole server's: meaningful on a
server of its own, ``--server``), runs ``VACUUM (ANALYZE)`` (the shared server may run with
autovacuum off) and measures. Nothing in the load reaches an alert threshold. ``--keep``
keeps the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import _server  # noqa: E402
from _server import database_url, drop_database, serve  # noqa: E402

ORG = "scaling-bench"
KEYS = 1000
TEAMS = 50
LIMIT_USD = "1000000000"
# A whole tuple wider than this is compressed and, if still too wide, moved to TOAST
# (TOAST_TUPLE_THRESHOLD with 8 kB pages).
TOAST_THRESHOLD = 2032
LINE_POINTER = 4


def loadavg() -> str:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return f"{one} {five} {fifteen}"


# ---------------------------------------------------------------------------------------------
# Measure (read only).


@dataclass
class TableSize:
    name: str
    rows: int = 0
    heap: int = 0
    toast: int = 0
    indexes: int = 0
    total: int = 0
    parts: int = 0
    live_tuple_bytes: float = 0.0

    def per_row(self) -> float:
        return self.total / self.rows if self.rows else math.nan


@dataclass
class TypeShare:
    event_type: str
    rows: float = 0.0
    payload_bytes: float = 0.0
    tuple_bytes: float = 0.0
    wide_payload_bytes: float = 0.0
    index_entries: dict[str, float] = field(default_factory=dict)
    heap: float = 0.0
    toast: float = 0.0
    indexes: float = 0.0

    @property
    def total(self) -> float:
        return self.heap + self.toast + self.indexes


def _sampled(sample_percent: float | None) -> tuple[sql.Composable, float]:
    """A TABLESAMPLE clause and the factor that scales its counts back to the table."""
    if sample_percent is None:
        return sql.SQL(""), 1.0
    clause = sql.SQL("TABLESAMPLE SYSTEM ({})").format(sql.Literal(sample_percent))
    return clause, 100.0 / sample_percent


def table_sizes(
    conn: psycopg.Connection[Any], *, estimate_rows: bool, sample_percent: float | None
) -> list[TableSize]:
    """Every ordinary table of the ledger's schemas; partitions (and archived months of
    ``ledger_events``) are summed under their table. ``live_tuple_bytes`` sums the live rows'
    ``pg_column_size`` plus a line pointer each: what the rows need, without the free space
    that updates and deletes leave in the files until later inserts reuse it."""
    leaves = conn.execute(
        """
        SELECT n.nspname, c.relname, c.oid::regclass::text AS qualified,
               CASE WHEN c.relispartition THEN pg_partition_root(c.oid)::text
                    WHEN n.nspname = 'ledger_archive' AND c.relname ~ '^ledger_events_'
                    THEN 'ledger_events'
                    ELSE c.oid::regclass::text END AS owner_table,
               pg_table_size(c.oid) AS table_bytes,
               CASE WHEN c.reltoastrelid = 0 THEN 0
                    ELSE pg_total_relation_size(c.reltoastrelid) END AS toast_bytes,
               pg_indexes_size(c.oid) AS index_bytes,
               pg_total_relation_size(c.oid) AS total_bytes,
               c.reltuples::bigint AS estimated_rows
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname IN ('public', 'ledger_archive')
        ORDER BY 4, 2
        """
    ).fetchall()
    found: dict[str, TableSize] = {}
    for _, _, qualified, owner, table_bytes, toast, index_bytes, total, estimated in leaves:
        size = found.setdefault(owner, TableSize(owner))
        if estimate_rows:
            rows = max(int(estimated), 0)
        else:
            counted = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(qualified))
            ).fetchone()
            rows = int(counted[0]) if counted else 0
        sample, scale = _sampled(sample_percent)
        live = conn.execute(
            sql.SQL("SELECT coalesce(sum(pg_column_size(t.*) + {}), 0) FROM {} t {}").format(
                sql.Literal(LINE_POINTER), sql.SQL(qualified), sample
            )
        ).fetchone()
        size.live_tuple_bytes += float(live[0]) * scale if live else 0.0
        size.rows += rows
        size.heap += int(table_bytes) - int(toast)
        size.toast += int(toast)
        size.indexes += int(index_bytes)
        size.total += int(total)
        size.parts += 1
    return sorted(found.values(), key=lambda t: -t.total)


def event_indexes(conn: psycopg.Connection[Any]) -> list[tuple[str, str, int]]:
    """Each index of ``ledger_events``: name, predicate (``true`` for a full index) and its
    bytes summed over the attached partitions."""
    rows = conn.execute(
        """
        SELECT parent.relname,
               coalesce(pg_get_expr(pi.indpred, pi.indrelid), 'true'),
               coalesce((SELECT sum(pg_relation_size(leaf.relid))
                         FROM pg_partition_tree(parent.oid) leaf WHERE leaf.isleaf), 0)
        FROM pg_index pi
        JOIN pg_class parent ON parent.oid = pi.indexrelid
        WHERE pi.indrelid = 'public.ledger_events'::regclass
        ORDER BY 1
        """
    ).fetchall()
    return [(str(name), str(predicate), int(size)) for name, predicate, size in rows]


def event_shares(
    conn: psycopg.Connection[Any], events: TableSize, *, sample_percent: float | None
) -> list[TypeShare]:
    """Per event type: rows, sizes, and its share of the event table's heap, TOAST and
    indexes (attached months only; see the module docstring for the apportioning)."""
    indexes = event_indexes(conn)
    # The predicates come from the catalog: the database's own DDL, not user input.
    filters = [
        sql.SQL("count(*) FILTER (WHERE {})").format(sql.SQL(predicate))
        for _, predicate, _ in indexes
    ]
    sample, scale = _sampled(sample_percent)
    statement = sql.SQL(
        "SELECT event_type, count(*), sum(pg_column_size(payload)),"
        " sum(pg_column_size(e.*) + {pointer}),"
        " sum(CASE WHEN pg_column_size(e.*) > {toast} THEN pg_column_size(payload) ELSE 0 END)"
        "{filters} FROM public.ledger_events e {sample} GROUP BY event_type ORDER BY 2 DESC"
    ).format(
        pointer=sql.Literal(LINE_POINTER),
        toast=sql.Literal(TOAST_THRESHOLD),
        filters=sql.SQL("").join(sql.SQL(", ") + f for f in filters) if filters else sql.SQL(""),
        sample=sample,
    )
    shares = []
    for row in conn.execute(statement).fetchall():
        share = TypeShare(
            str(row[0]),
            rows=int(row[1]) * scale,
            payload_bytes=float(row[2] or 0) * scale,
            tuple_bytes=float(row[3] or 0) * scale,
            wide_payload_bytes=float(row[4] or 0) * scale,
        )
        for (name, _, _), entries in zip(indexes, row[5:], strict=True):
            share.index_entries[name] = int(entries) * scale
        shares.append(share)
    attached = conn.execute(
        """
        SELECT coalesce(sum(pg_table_size(relid)), 0),
               coalesce(sum(CASE WHEN c.reltoastrelid = 0 THEN 0
                                 ELSE pg_total_relation_size(c.reltoastrelid) END), 0)
        FROM pg_partition_tree('public.ledger_events') t JOIN pg_class c ON c.oid = t.relid
        WHERE t.isleaf
        """
    ).fetchone()
    table_bytes, toast_bytes = (int(attached[0]), int(attached[1])) if attached else (0, 0)
    heap_bytes = table_bytes - toast_bytes
    tuple_total = sum(s.tuple_bytes for s in shares) or 1.0
    wide_total = sum(s.wide_payload_bytes for s in shares)
    for share in shares:
        share.heap = heap_bytes * share.tuple_bytes / tuple_total
        if wide_total:
            share.toast = toast_bytes * share.wide_payload_bytes / wide_total
        else:  # nothing is wide enough for TOAST: its empty relation is shared by rows
            share.toast = toast_bytes * share.rows / max(sum(s.rows for s in shares), 1.0)
    for name, _, size in indexes:
        entries = sum(s.index_entries.get(name, 0.0) for s in shares)
        for share in shares:
            if entries:
                share.indexes += size * share.index_entries.get(name, 0.0) / entries
    return shares


def rollup_grains(
    conn: psycopg.Connection[Any], table: str, *, sample_percent: float | None
) -> dict[str, int]:
    sample, scale = _sampled(sample_percent)
    rows = conn.execute(
        sql.SQL(
            "SELECT CASE WHEN subject_type <> '' THEN 'subject' WHEN tag <> '' THEN 'tag'"
            " ELSE 'all' END, count(*) FROM {} {} GROUP BY 1 ORDER BY 1"
        ).format(sql.Identifier(table), sample)
    ).fetchall()
    return {str(grain): round(int(count) * scale) for grain, count in rows}


def requests_in(conn: psycopg.Connection[Any], *, sample_percent: float | None) -> dict[str, int]:
    """Requests of the mix: reservations by state, plus direct charges (committed events
    without a reservation)."""
    found = {
        f"reservations {state}": int(count)
        for state, count in conn.execute(
            "SELECT state, count(*) FROM reservations GROUP BY state ORDER BY state"
        ).fetchall()
    }
    sample, scale = _sampled(sample_percent)
    direct = conn.execute(
        sql.SQL(
            "SELECT count(*) FROM ledger_events {} WHERE event_type = 'committed'"
            " AND reservation_id IS NULL"
        ).format(sample)
    ).fetchone()
    found["direct charges"] = round(int(direct[0]) * scale) if direct else 0
    return found


def measure(
    url: str, *, sample_percent: float | None = None, estimate_rows: bool = False
) -> dict[str, Any]:
    """Read-only: every figure the module docstring lists, as a dict."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = on")
        conn.execute("SET jit = off")
        tables = table_sizes(conn, estimate_rows=estimate_rows, sample_percent=sample_percent)
        by_name = {t.name: t for t in tables}
        events = by_name.get("ledger_events", TableSize("ledger_events"))
        shares = event_shares(conn, events, sample_percent=sample_percent)
        grains = {
            t: rollup_grains(conn, t, sample_percent=sample_percent)
            for t in ("rollup_hourly", "rollup_daily")
        }
        folded_row = conn.execute("SELECT events FROM rollup_watermark").fetchone()
        usage = sum(s.rows for s in shares if s.event_type == "usage_recorded")
        requests = requests_in(conn, sample_percent=sample_percent)
        database_row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        version = conn.execute("SHOW server_version").fetchone()
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": loadavg(),
        "server_version": version[0] if version else "",
        "database_bytes": int(database_row[0]) if database_row else 0,
        "sample_percent": sample_percent,
        "tables": [
            t.__dict__
            | {
                "bytes_per_row": t.per_row(),
                "live_tuple_bytes_per_row": t.live_tuple_bytes / t.rows if t.rows else math.nan,
            }
            for t in tables
        ],
        "event_types": [
            {
                "event_type": s.event_type,
                "rows": s.rows,
                "payload_bytes_avg": s.payload_bytes / s.rows if s.rows else math.nan,
                "tuple_bytes_avg": s.tuple_bytes / s.rows if s.rows else math.nan,
                "heap_bytes_per_event": s.heap / s.rows if s.rows else math.nan,
                "toast_bytes_per_event": s.toast / s.rows if s.rows else math.nan,
                "index_bytes_per_event": s.indexes / s.rows if s.rows else math.nan,
                "total_bytes_per_event": s.total / s.rows if s.rows else math.nan,
            }
            for s in shares
        ],
        "rollup_grains": grains,
        "folded_events": int(folded_row[0]) if folded_row else 0,
        "usage_events": round(usage),
        "requests": requests,
    }


def mib(value: float) -> str:
    return f"{value / 2**20:,.2f}"


def print_report(result: dict[str, Any]) -> None:
    print(
        f"measured {result['measured_at']}, load average {result['load_average']},"
        f" PostgreSQL {result['server_version']},"
        f" database {mib(result['database_bytes'])} MiB"
    )
    print(
        "\ntables (partitions summed; MiB; bytes/row = total / rows;"
        " live/row = the live rows' own bytes, pg_column_size + line pointer):"
    )
    print(
        f"{'table':<28} {'parts':>5} {'rows':>12} {'heap':>9} {'toast':>8} {'indexes':>9}"
        f" {'total':>9} {'bytes/row':>10} {'live/row':>9}"
    )
    for t in result["tables"]:
        if not t["total"]:
            continue
        per_row = t["bytes_per_row"]
        shown = f"{per_row:,.0f}" if not math.isnan(per_row) else "-"
        live = t["live_tuple_bytes_per_row"]
        live_shown = f"{live:,.0f}" if not math.isnan(live) else "-"
        print(
            f"{t['name']:<28} {t['parts']:>5} {t['rows']:>12,} {mib(t['heap']):>9}"
            f" {mib(t['toast']):>8} {mib(t['indexes']):>9} {mib(t['total']):>9} {shown:>10}"
            f" {live_shown:>9}"
        )
    sampled = result["sample_percent"]
    print(
        "\nledger_events by type (bytes per event; heap, TOAST and indexes apportioned"
        + (f"; from a {sampled}% TABLESAMPLE, scaled" if sampled else "")
        + "):"
    )
    print(
        f"{'event_type':<18} {'rows':>12} {'payload':>8} {'tuple':>7} {'heap':>7} {'toast':>6}"
        f" {'indexes':>8} {'total':>7}"
    )
    rows = 0.0
    total = 0.0
    for e in result["event_types"]:
        rows += e["rows"]
        total += e["total_bytes_per_event"] * e["rows"]
        print(
            f"{e['event_type']:<18} {e['rows']:>12,.0f} {e['payload_bytes_avg']:>8,.0f}"
            f" {e['tuple_bytes_avg']:>7,.0f} {e['heap_bytes_per_event']:>7,.0f}"
            f" {e['toast_bytes_per_event']:>6,.0f} {e['index_bytes_per_event']:>8,.0f}"
            f" {e['total_bytes_per_event']:>7,.0f}"
        )
    if rows:
        print(f"{'all events':<18} {rows:>12,.0f} {'':>8} {'':>7} {'':>7} {'':>6} {'':>8}"
              f" {total / rows:>7,.0f}")  # fmt: skip
    tables = {t["name"]: t for t in result["tables"]}
    usage = result["usage_events"]
    print("\nrollups:")
    for name, grains in result["rollup_grains"].items():
        table = tables.get(name)
        if table is None:
            continue
        shown = ", ".join(f"{g} {n:,}" for g, n in grains.items())
        per_usage = table["rows"] / usage if usage else math.nan
        print(
            f"  {name}: {table['rows']:,} rows ({shown}), {table['bytes_per_row']:,.0f} bytes/row,"
            f" {per_usage:.3f} rows per usage_recorded event"
        )
    print(f"  watermark: {result['folded_events']:,} events folded; {usage:,} usage_recorded")
    requests = result["requests"]
    count = sum(requests.values())
    print("\nrequests: " + ", ".join(f"{k} {v:,}" for k, v in requests.items()))
    if not count:
        return
    before: dict[str, dict[str, Any]] = result.get("before_load", {})
    if before:
        print(
            "growth per request (bytes and rows added by the load, divided by its requests;"
            " the setup's budgets and keys measured before it are left out):"
        )
    else:
        print("per request (everything in the database divided by its requests):")

    def grown(t: dict[str, Any], column: str) -> float:
        return float(t[column] - before.get(t["name"], {}).get(column, 0))

    every = sum(grown(t, "total") for t in result["tables"])
    print(f"  {'all tables':<28} {every / count:>8,.0f} bytes/request ({mib(every)} MiB)")
    for t in result["tables"]:
        added = grown(t, "total")
        if added:
            rows = grown(t, "rows")
            print(
                f"  {t['name']:<28} {added / count:>8,.0f} bytes/request,"
                f" {rows / count:>6.2f} rows/request"
            )


# ---------------------------------------------------------------------------------------------
# Load through the service.


def create_database(server: str, name: str) -> str:
    if not name.startswith("ul_scaling"):
        raise SystemExit(f"refusing to drop and create {name!r}: load uses ul_scaling* only")
    return _server.create_database(server, name)


def prepare(url: str) -> str:
    """Migrate, define the budgets through the service, create a gateway key; returns it."""
    (gateway,) = _server.prepare_org(
        url, org=ORG, limit_usd=LIMIT_USD, teams=TEAMS, keys=KEYS, scopes=["gateway"],
        name="bench-storage",
    )  # fmt: skip
    return gateway


MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5")
MODEL_WEIGHTS = (0.45, 0.35, 0.20)
ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/messages")
TAGS = ("prod", "staging", "batch", "support-bot", "search", "eval")


def usage_for(rng: random.Random, model: str) -> dict[str, Any]:
    prompt = int(rng.lognormvariate(math.log(1500), 0.8)) + 1
    completion = int(rng.lognormvariate(math.log(280), 0.9)) + 1
    if model.startswith("claude"):
        usage: dict[str, Any] = {"input_tokens": prompt, "output_tokens": completion}
        if rng.random() < 0.45:
            usage["cache_read_input_tokens"] = rng.randint(prompt // 2, prompt * 4)
        if rng.random() < 0.15:
            usage["cache_creation_input_tokens"] = rng.randint(500, 4000)
        return usage
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    usage["total_tokens"] = prompt + completion
    if rng.random() < 0.45:
        usage["prompt_tokens_details"] = {"cached_tokens": rng.randint(0, prompt // 1024 * 1024)}
    return usage


def message_for(rng: random.Random, model: str) -> dict[str, Any]:
    return {
        "usage": usage_for(rng, model),
        "ttft_ms": rng.randint(80, 2000),
        "duration_ms": rng.randint(300, 30000),
    }


@dataclass
class Drive:
    requests: int
    done: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


async def one_request(client: httpx.AsyncClient, rng: random.Random, drive: Drive) -> None:
    k = rng.randrange(KEYS)
    subjects = [
        {"type": "key", "id": f"k{k:05d}"},
        {"type": "team", "id": f"t{k % TEAMS:03d}"},
        {"type": "org", "id": ORG},
    ]
    model = rng.choices(MODELS, MODEL_WEIGHTS)[0]
    metadata = {
        "endpoint": ENDPOINTS[k % len(ENDPOINTS)],
        "tags": sorted({TAGS[k % len(TAGS)], TAGS[(k // 7) % len(TAGS)]}),
    }
    messages = 1 if rng.random() < 0.8 else rng.randint(2, 5)
    body = {"messages": [message_for(rng, model) for _ in range(messages)]}
    request_id = f"req-{uuid.uuid4().hex}"
    draw = rng.random()
    kind = (
        "reserve+commit"
        if draw < 0.70
        else "direct"
        if draw < 0.90
        else "reserve+cancel"
        if draw < 0.97
        else "reserve+expire"
    )

    def check(response: httpx.Response, step: str) -> bool:
        if response.status_code in (200, 201):
            return True
        label = f"{step} {response.status_code}"
        drive.errors[label] = drive.errors.get(label, 0) + 1
        return False

    if kind == "direct":
        check(
            await client.post(
                "/v1/usage",
                json={
                    "request_id": request_id,
                    "subjects": subjects,
                    "model": model,
                    "metadata": metadata,
                    **body,
                },
            ),
            "usage",
        )
    else:
        reserved = await client.post(
            "/v1/reservations",
            json={
                "request_id": request_id,
                "subjects": subjects,
                "model": model,
                "amount_usd": "0.5",
                "ttl_seconds": 1 if kind == "reserve+expire" else 600,
                "metadata": metadata,
            },
        )
        if check(reserved, "reserve"):
            reservation = reserved.json()["reservation_id"]
            if kind == "reserve+commit":
                check(
                    await client.post(f"/v1/reservations/{reservation}/commit", json=body), "commit"
                )
            elif kind == "reserve+cancel":
                check(await client.post(f"/v1/reservations/{reservation}/cancel"), "cancel")
    drive.kinds[kind] = drive.kinds.get(kind, 0) + 1


async def drive_load(base: str, key: str, *, requests: int, clients: int, seed: int) -> Drive:
    drive = Drive(requests)

    async def task(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as client:
            while drive.done < drive.requests:
                drive.done += 1
                await one_request(client, rng, drive)

    await asyncio.gather(*(task(n) for n in range(clients)))
    return drive


def wal_lsn(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    return str(row[0]) if row else "0/0"


def wal_bytes(url: str, since: str) -> int:
    """WAL written by the whole server since ``since``: this run's only on a server of its own."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::bigint", (since,)
        ).fetchone()
    return int(row[0]) if row else 0


def settle(url: str, timeout_s: float = 300.0) -> None:
    """Wait until no hold is left to expire and the folder and checkpointer have passed every
    event."""
    began = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() - began < timeout_s:
            held = conn.execute("SELECT count(*) FROM reservations WHERE state = 'held'").fetchone()
            top = conn.execute("SELECT coalesce(max(seq), 0) FROM ledger_events").fetchone()
            marks = conn.execute(
                "SELECT (SELECT folded_below FROM rollup_watermark),"
                " (SELECT coalesce(max(below_seq), 0) FROM ledger_checkpoints)"
            ).fetchone()
            if held and top and marks and held[0] == 0 and min(marks) > top[0]:
                break
            time.sleep(1)
        else:
            print(f"(settle: still behind after {timeout_s:.0f} s)", flush=True)


def load(args: argparse.Namespace) -> dict[str, Any]:
    url = create_database(args.server, args.database)
    workdir = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    try:
        key = prepare(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
        before = measure(url)
        print(f"load average at start: {loadavg()}", flush=True)
        with serve(url, workdir / "serve.log") as srv:
            base = srv.base
            wal_start = wal_lsn(url)
            began = time.monotonic()
            drive = asyncio.run(
                drive_load(base, key, requests=args.requests, clients=args.clients, seed=args.seed)
            )
            seconds = time.monotonic() - began
            print(
                f"drove {drive.done:,} requests in {seconds:,.1f} s ({drive.done / seconds:,.1f}/s,"
                f" {args.clients} clients): {json.dumps(drive.kinds)}; errors {drive.errors or 0};"
                f" load average {loadavg()}",
                flush=True,
            )
            settle(url)
            wal = wal_bytes(url, wal_start)
        print(
            f"WAL written by the server from the first request until the folder and checkpointer"
            f" caught up: {mib(wal)} MiB, {wal / max(drive.done, 1):,.0f} bytes per request"
            " (the whole server's WAL: this run's alone only on a server of its own)",
            flush=True,
        )
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
        result = measure(url)
        result["load"] = {
            "requests": drive.done,
            "kinds": drive.kinds,
            "errors": drive.errors,
            "requests_per_s": drive.done / seconds,
            "clients": args.clients,
            "wal_bytes": wal,
        }
        result["before_load"] = {t["name"]: t for t in before["tables"]}
        return result
    finally:
        if not args.keep:
            drop_database(args.server, args.database)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    commands = parser.add_subparsers(dest="command", required=True)
    measure_parser = commands.add_parser("measure", help="measure an existing database (reads)")
    measure_parser.add_argument("--database", required=True)
    measure_parser.add_argument("--sample-percent", type=float, default=None)
    measure_parser.add_argument(
        "--estimate-rows", action="store_true", help="row counts from pg_class, not count(*)"
    )
    load_parser = commands.add_parser("load", help="a fresh load through the service, measured")
    load_parser.add_argument("--database", default="ul_scaling_storage")
    load_parser.add_argument("--requests", type=int, default=4000)
    load_parser.add_argument("--clients", type=int, default=4)
    load_parser.add_argument("--seed", type=int, default=20261122)
    load_parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args(argv)
    if args.command == "measure":
        sample = args.sample_percent
        if sample is not None and not 0 < sample <= 100:
            parser.error("--sample-percent must be in (0, 100]")
        result = measure(
            database_url(args.server, args.database),
            sample_percent=sample,
            estimate_rows=args.estimate_rows,
        )
    else:
        result = load(args)
    print_report(result)
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
