"""Spend reports and budget status at 10M usage events, over HTTP, against a raw scan.

Run (PostgreSQL at 127.0.0.1:5432, trust auth; the bench uses a database of its own):

    make bench-reports
    # or: .venv/bin/python bench/reports.py [--events 10000000] [--reuse | --recreate] [--drop]

1. Load. Creates and migrates ``ul_bench_reports`` (``--database``), defines budgets through
   ``app.budgets.service.define_budget``, then COPYs ``--events`` ``usage_recorded`` events
   (plus one ``committed`` event per request, which do not count toward ``--events``) over
   90 days into ``ledger_events`` as the table owner: the seq trigger assigns seq, one
   transaction per ``--batch`` events. Payloads have exactly the shapes of
   ``app.budgets.holds.record_usage`` (checked against it before loading), with real costs
   from the embedded price table. ``budget_periods`` is the sum of the events' deltas.
   Then VACUUM (ANALYZE), then ``app.reports.rollups.fold_all`` until caught up.
2. Measure. Starts ``usage-ledger serve`` on a free port with a reader key and times each
   report over HTTP (warm-up, then ``--requests``), next to the same answer computed by a raw
   GROUP BY over ``ledger_events`` in the same run; the two must agree to the last pico-USD.

``--reuse`` measures a database loaded by an earlier run (the load's parameters are kept in
the database's comment); ``--recreate`` drops it and loads again; ``--drop`` drops it at the
end. No other database is touched, and no server setting is changed.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
from sqlalchemy import Engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _server import (  # noqa: E402
    create_database,
    database_url,
    drop_database,
    plain,
    read_meta,
    serve,
    write_meta,
)

from app.auth import service as auth  # noqa: E402
from app.budgets import holds  # noqa: E402
from app.budgets import service as budgets  # noqa: E402
from app.budgets.model import Subject  # noqa: E402
from app.budgets.periods import period_bounds  # noqa: E402
from app.db import migrate  # noqa: E402
from app.db.engine import make_engine  # noqa: E402
from app.ledger.records import UsageRecord  # noqa: E402
from app.money import format_usd, parse_usd  # noqa: E402
from app.pricing import service as pricing  # noqa: E402
from app.pricing.table import default_table  # noqa: E402
from app.reports import halves, rollups  # noqa: E402
from app.reports import service as reports  # noqa: E402

ORG = "acme"
GOAL_P95_MS = 50.0
GOAL_RATIO = 100.0
HOUR_US = 3_600_000_000
SUMS = (
    "cost_pico_usd",
    "requests",
    "messages",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
COPY_COLUMNS = (
    "org, event_type, schema_version, request_id, reservation_id, budget_id, budget_ids,"
    " amount_pico_usd, payload, occurred_at, recorded_at"
)
# Messages per request: 80% one, then agent loops and tool calls of up to ten.
MESSAGE_COUNTS = (1, 2, 3, 4, 5, 6, 8, 10)
MESSAGE_WEIGHTS = (80, 10, 5, 2, 1, 1, 0.6, 0.4)
TAG_SETS: tuple[list[str], ...] = (
    ["prod"],
    ["prod", "support-bot"],
    ["prod", "search"],
    ["prod", "agents"],
    ["staging"],
    ["dev"],
    ["batch", "nightly"],
    [],
)
TAG_WEIGHTS = (30, 12, 12, 10, 12, 10, 6, 8)
USER_LIMIT_USD = "50000"  # monthly, UTC: far above any user's month, so no alert is due
KEY_LIMIT_USD = "5000"  # daily, America/New_York, every 10th key


# ---------------------------------------------------------------------------------------------
# The synthetic population: models with real prices, keys, users and their budgets.


@dataclass
class Model:
    name: str
    provider: str
    call_type: str
    # (cost in pico-USD, the payload's first fields as JSON, without the closing brace)
    shapes: list[tuple[int, str]] = field(default_factory=list)
    committed_tail: str = ""  # the end of a committed payload naming this model

    def __post_init__(self) -> None:
        name, provider = json.dumps(self.name), json.dumps(self.provider)
        self.committed_tail = f'"model": {name}, "provider": {provider}, "direct": true}}'


@dataclass
class Budget:
    budget_id: str
    period: str
    timezone: str


@dataclass
class Key:
    subjects: str  # the request's subjects as JSON, sorted as the service sorts them
    tail: str  # '"metadata": {...}, "subjects": [...]' of each usage event
    models: list[Model]
    model_cum: list[float]
    budgets: list[Budget]  # the budgets of the key and its user, in budget_id order


@dataclass
class Population:
    models: list[Model]
    keys: list[Key]
    key_cum: list[float]
    users: int
    budgets: list[tuple[Subject, Budget]]


def _zipf(count: int, exponent: float) -> list[float]:
    return [1.0 / (rank**exponent) for rank in range(1, count + 1)]


def _cumulative(weights: Sequence[float]) -> list[float]:
    total = 0.0
    out = []
    for weight in weights:
        total += weight
        out.append(total)
    return out


def _lognormal_int(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return max(low, min(high, int(rng.lognormvariate(math.log(median), sigma))))


def _shape(rng: random.Random, model: str, call_type: str, at: datetime) -> tuple[int, str]:
    """One priced message of ``model``: its cost and the payload's fields before metadata."""
    if call_type == "embedding":
        usage = {"prompt_tokens": _lognormal_int(rng, 600, 1.0, 4, 8000)}
    else:
        prompt = _lognormal_int(rng, 1500, 1.1, 20, 120_000)
        completion = _lognormal_int(rng, 280, 0.9, 1, 8000)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        if rng.random() < 0.45:
            usage["cache_read_tokens"] = int(prompt * rng.uniform(0.2, 0.9))
        if rng.random() < 0.2:
            usage["reasoning_tokens"] = int(completion * rng.uniform(0.1, 0.8))
    quote = pricing.quote(default_table(), model=model, provider=None, usage=usage, billing_time=at)
    completion_tokens = quote.usage.completion_tokens
    record = UsageRecord(
        cost_pico_usd=quote.total_pico_usd,
        model=model,
        provider=quote.provider,
        call_type=call_type,
        prompt_tokens=quote.usage.prompt_tokens,
        completion_tokens=completion_tokens,
        cache_read_tokens=quote.usage.cache_read_tokens,
        cache_creation_tokens=quote.usage.cache_creation_tokens,
        cache_creation_1h_tokens=quote.usage.cache_creation_1h_tokens,
        reasoning_tokens=quote.usage.reasoning_tokens,
        ttft_ms=int(rng.uniform(120, 900)),
        duration_ms=int(rng.uniform(200, 900) + completion_tokens * rng.uniform(8, 25)),
        model_key=quote.model_key,
        priced_by=quote.priced_by,
    )
    payload = record.to_payload()
    del payload["metadata"]  # per key, appended with the subjects and the message index
    return quote.total_pico_usd, json.dumps(payload)[:-1]


MAJOR_PROVIDERS = frozenset(
    ("openai", "anthropic", "gemini", "vertex_ai-language-models", "vertex_ai-anthropic_models",
     "bedrock", "bedrock_converse", "azure", "mistral", "deepseek", "xai", "groq")
)  # fmt: skip


def _by_reach(rng: random.Random, table: Any, names: list[str]) -> list[str]:
    """Shuffled names, two of the major providers' for each other one: popularity is by this
    order, so most traffic goes to OpenAI, Anthropic, Google, AWS, Azure and the like."""
    major = [n for n in names if table.get(n).provider in MAJOR_PROVIDERS]
    other = [n for n in names if table.get(n).provider not in MAJOR_PROVIDERS]
    rng.shuffle(major)
    rng.shuffle(other)
    out: list[str] = []
    while major or other:
        out += major[:2] + other[:1]
        del major[:2], other[:1]
    return out


def _pick_models(
    rng: random.Random, count: int, at: datetime, shapes: int
) -> tuple[list[Model], list[Model]]:
    """``count`` models of the price table: 90% chat, 10% embedding, each with priced shapes."""
    table = default_table()
    chat: list[str] = []
    embedding: list[str] = []
    for name in sorted(table):
        entry = table.get(name)
        if entry is None or entry.off_peak is not None or entry.tiers:
            continue
        if not name.isascii() or any(c in name for c in '*"\\\t\n'):
            continue  # plain names only: the COPY text below carries JSON without escapes
        if entry.mode == "chat" and entry.prices_input_tokens and entry.prices_output_tokens:
            chat.append(name)
        elif entry.mode == "embedding" and entry.prices_input_tokens:
            embedding.append(name)
    chat = _by_reach(rng, table, chat)
    embedding = _by_reach(rng, table, embedding)
    wanted = {"chat": count - count // 10, "embedding": count // 10}
    picked: dict[str, list[Model]] = {"chat": [], "embedding": []}
    for call_type, names in (("chat", chat), ("embedding", embedding)):
        for name in names:
            if len(picked[call_type]) == wanted[call_type]:
                break
            try:
                priced = [_shape(rng, name, call_type, at) for _ in range(shapes)]
            except Exception:  # a model this usage cannot price: not part of the mix
                continue
            if any(cost <= 0 or "\\" in prefix for cost, prefix in priced):
                continue
            provider = json.loads(priced[0][1] + "}")["provider"]
            picked[call_type].append(Model(name, provider, call_type, priced))
    return picked["chat"], picked["embedding"]


def _endpoint(rng: random.Random, model: Model) -> str:
    if model.call_type == "embedding":
        return "/v1/embeddings"
    roll = rng.random()
    if model.provider == "anthropic" and roll < 0.6:
        return "/v1/messages"
    if model.provider in ("openai", "azure") and roll < 0.3:
        return "/v1/responses"
    return "/v1/chat/completions"


def build_population(
    rng: random.Random, *, models: int, keys: int, users: int, anchor: datetime, shapes: int
) -> Population:
    chat, embedding = _pick_models(rng, models, anchor, shapes)
    chat_cum = _cumulative(_zipf(len(chat), 1.0))
    embedding_cum = _cumulative(_zipf(len(embedding), 1.0))
    user_cum = _cumulative(_zipf(users, 0.8))
    key_budgets: dict[int, Budget] = {}
    user_budgets = {
        u: Budget(str(UUID(int=rng.getrandbits(128), version=4)), "month", "UTC")
        for u in range(users)
    }
    population_budgets = [
        (Subject("user", f"user-{u:04d}"), budget) for u, budget in user_budgets.items()
    ]
    out: list[Key] = []
    for k in range(keys):
        user = bisect.bisect(user_cum, rng.random() * user_cum[-1])
        key_id, user_id = f"key-{k:04d}", f"user-{user:04d}"
        if k % 10 == 0:
            key_budgets[k] = Budget(
                str(UUID(int=rng.getrandbits(128), version=4)), "day", "America/New_York"
            )
            population_budgets.append((Subject("key", key_id), key_budgets[k]))
        if rng.random() < 0.15:
            pool, cum, wanted = embedding, embedding_cum, 1
        else:
            pool, cum, wanted = chat, chat_cum, rng.choices((1, 2, 3), (50, 30, 20))[0]
        own: list[Model] = []
        while len(own) < wanted:
            model = pool[bisect.bisect(cum, rng.random() * cum[-1])]
            if model not in own:
                own.append(model)
        endpoint = _endpoint(rng, own[0])
        tags = rng.choices(TAG_SETS, TAG_WEIGHTS)[0]
        subjects = json.dumps([{"type": "key", "id": key_id}, {"type": "user", "id": user_id}])
        metadata = json.dumps({"endpoint": endpoint, "tags": tags})
        chosen = sorted(
            [user_budgets[user], *([key_budgets[k]] if k in key_budgets else [])],
            key=lambda b: UUID(b.budget_id),
        )
        out.append(
            Key(
                subjects=subjects,
                tail=f'"metadata": {metadata}, "subjects": {subjects}',
                models=own,
                model_cum=_cumulative([0.7, 0.2, 0.1][: len(own)]),
                budgets=chosen,
            )
        )
    order = list(range(keys))
    rng.shuffle(order)  # activity rank unrelated to the key's number
    weights = [0.0] * keys
    for rank, k in enumerate(order, start=1):
        weights[k] = 1.0 / rank**1.1
    return Population(chat + embedding, out, _cumulative(weights), users, population_budgets)


# ---------------------------------------------------------------------------------------------
# Generating the events as COPY text.


class Clock:
    """Formats epoch microseconds as timestamptz text, caching each hour's prefix."""

    def __init__(self) -> None:
        self._prefix: dict[int, str] = {}

    def text(self, micros: int) -> str:
        hour, rest = divmod(micros, HOUR_US)
        prefix = self._prefix.get(hour)
        if prefix is None:
            start = datetime.fromtimestamp(hour * 3600, UTC)
            prefix = self._prefix[hour] = start.strftime("%Y-%m-%d %H:")
        minute, rest = divmod(rest, 60_000_000)
        second, micro = divmod(rest, 1_000_000)
        return f"{prefix}{minute:02d}:{second:02d}.{micro:06d}+00"


class Periods:
    """Budget period bounds by (period, zone, hour), as the service computes them: bounds
    fall on whole hours in every zone used here, so an hour's bounds hold for all its instants."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, int], tuple[datetime, datetime, str]] = {}

    def of(self, budget: Budget, hour: int) -> tuple[datetime, datetime, str]:
        key = (budget.period, budget.timezone, hour)
        found = self._cache.get(key)
        if found is None:
            start, end = period_bounds(
                budget.period, budget.timezone, datetime.fromtimestamp(hour * 3600, UTC)
            )
            found = self._cache[key] = (
                start,
                end,
                f'"period_start": "{start.isoformat()}", "period_end": "{end.isoformat()}"',
            )
        return found


def hour_counts(requests: int, first_hour: int, hours: int) -> list[int]:
    """Requests per hour: a diurnal curve peaking at 17:00 UTC, quieter weekends, and a
    50% growth over the span."""
    weights = []
    for index in range(hours):
        at = datetime.fromtimestamp((first_hour + index) * 3600, UTC)
        diurnal = 0.35 + 0.65 * (1 + math.cos(2 * math.pi * (at.hour - 17) / 24)) / 2
        weekend = 0.55 if at.weekday() >= 5 else 1.0
        weights.append(diurnal * weekend * (0.8 + 0.4 * index / hours))
    total = sum(weights)
    counts = [int(requests * w / total) for w in weights]
    short = requests - sum(counts)
    for index in sorted(range(hours), key=lambda i: weights[i], reverse=True)[:short]:
        counts[index] += 1
    return counts


@dataclass
class Generated:
    usage_events: int = 0
    committed_events: int = 0
    cost_pico_usd: int = 0
    # (budget_id, period_start) -> [period_end, spent]
    periods: dict[tuple[str, datetime], list[Any]] = field(default_factory=dict)


def generate(
    rng: random.Random,
    population: Population,
    *,
    events: int,
    start_us: int,
    end_us: int,
    out: Generated,
) -> Iterator[tuple[int, str]]:
    """Yield (events, COPY text) per request, in time order, until ``events`` messages."""
    counts = array("B")
    total = 0
    message_cum = _cumulative(MESSAGE_WEIGHTS)
    while total < events:
        n = MESSAGE_COUNTS[bisect.bisect(message_cum, rng.random() * message_cum[-1])]
        n = min(n, events - total)
        counts.append(n)
        total += n
    first_hour = start_us // HOUR_US
    hours = (end_us - 1) // HOUR_US - first_hour + 1
    per_hour = hour_counts(len(counts), first_hour, hours)
    clock, periods = Clock(), Periods()
    keys, key_cum = population.keys, population.key_cum
    random_ = rng.random
    request = 0
    for index, count in enumerate(per_hour):
        hour = first_hour + index
        low = max(hour * HOUR_US, start_us)
        span = min((hour + 1) * HOUR_US, end_us) - low
        times = sorted(low + int(random_() * span) for _ in range(count))
        chosen = rng.choices(keys, cum_weights=key_cum, k=count)
        for occurred, key in zip(times, chosen, strict=True):
            n = counts[request]
            request += 1
            model = key.models[bisect.bisect(key.model_cum, random_() * key.model_cum[-1])]
            occurred_text = clock.text(occurred)
            recorded_text = clock.text(occurred + 5_000 + int(random_() * 250_000))
            request_id = f"req_{occurred // 1000:012x}{rng.getrandbits(40):010x}"
            shapes = model.shapes
            lines = []
            cost = 0
            for message in range(n):
                message_cost, prefix = shapes[int(random_() * len(shapes))]
                cost += message_cost
                lines.append(
                    f"{ORG}\tusage_recorded\t2\t{request_id}\t\\N\t\\N\t{{}}\t{message_cost}\t"
                    f'{prefix}, {key.tail}, "message_index": {message}}}\t'
                    f"{occurred_text}\t{recorded_text}\n"
                )
            deltas = []
            for budget in key.budgets:
                period_start, period_end, bounds = periods.of(budget, hour)
                deltas.append(
                    f'{{"budget_id": "{budget.budget_id}", {bounds}, '
                    f'"spent_pico_usd": {cost}, "held_pico_usd": 0}}'
                )
                slot = out.periods.setdefault((budget.budget_id, period_start), [period_end, 0])
                slot[1] += cost
            budget_ids = ",".join(b.budget_id for b in key.budgets)
            committed = (
                f'{{"held_pico_usd": 0, "overrun": false, "late": false, '
                f'"subjects": {key.subjects}, "deltas": [{", ".join(deltas)}], '
                f'"messages": {n}, "flagged_budgets": [], {model.committed_tail}'
            )
            out.usage_events += n
            out.committed_events += 1
            out.cost_pico_usd += cost
            yield (
                n + 1,
                f"{ORG}\tcommitted\t1\t{request_id}\t\\N\t\\N\t{{{budget_ids}}}\t{cost}\t"
                f"{committed}\t{occurred_text}\t{recorded_text}\n" + "".join(lines),
            )


# ---------------------------------------------------------------------------------------------
# Database: create, load, fold.


def define_budgets(engine: Engine, population: Population, at: datetime) -> None:
    """Through the service, as an admin would: budget rows and budget_defined events."""
    with engine.begin() as conn:
        for subject, budget in population.budgets:
            budgets.define_budget(
                conn,
                org=ORG,
                subject=subject,
                limit_pico_usd=parse_usd(
                    USER_LIMIT_USD if budget.period == "month" else KEY_LIMIT_USD
                ),
                period=budget.period,
                timezone=budget.timezone,
                mode="hard" if budget.period == "month" else "soft",
                budget_id=UUID(budget.budget_id),
                now=at,
            )


def check_shapes(engine: Engine, sample: str, at: datetime) -> None:
    """The generated payloads have exactly the keys record_usage writes (rolled back)."""
    generated = {}
    for line in sample.splitlines():
        columns = line.split("\t")
        generated[columns[1]] = (set(json.loads(columns[8])), columns[6] != "{}")
    with engine.connect() as conn:
        holds.record_usage(
            conn,
            org=ORG,
            request_id="bench-shape-check",
            subjects=[Subject("key", "key-0000"), Subject("user", "user-0000")],
            cost_pico_usd=7,
            records=[
                UsageRecord(cost_pico_usd=7, model="m", provider="p", metadata={"endpoint": "/x"})
            ],
            model="m",
            provider="p",
            now=at,
        )
        written = {
            row.event_type: (set(row.payload), bool(row.budget_ids))
            for row in conn.execute(
                text(
                    "SELECT event_type, payload, budget_ids FROM ledger_events"
                    " WHERE request_id = 'bench-shape-check'"
                )
            )
        }
        conn.rollback()
    for event_type in ("committed", "usage_recorded"):
        if generated[event_type] != written[event_type]:
            raise SystemExit(
                f"{event_type} payload drifted from the app's: generated"
                f" {sorted(generated[event_type][0])}, app {sorted(written[event_type][0])}"
            )


def load(
    url: str, population: Population, rng: random.Random, args: argparse.Namespace, anchor: datetime
) -> tuple[Generated, int, float]:
    """COPY the events, one transaction per ``--batch``; returns them, the rows and seconds."""
    start = anchor - timedelta(days=args.days)
    start_us = int(start.timestamp()) * 1_000_000
    end_us = int(anchor.timestamp()) * 1_000_000
    out = Generated()
    stream = generate(
        rng, population, events=args.events, start_us=start_us, end_us=end_us, out=out
    )
    with psycopg.connect(plain(url)) as conn:
        conn.execute(
            "SELECT ledger_ensure_partitions(%s, %s)", (start, anchor + timedelta(days=62))
        )
        conn.commit()
        began = time.perf_counter()
        rows = 0
        batches = 0
        pending: list[str] = []
        done = False
        while not done:
            in_batch = 0
            with (
                conn.transaction(),
                conn.cursor() as cursor,
                cursor.copy(f"COPY ledger_events ({COPY_COLUMNS}) FROM STDIN") as copy,
            ):
                while in_batch < args.batch:
                    item = next(stream, None)
                    if item is None:
                        done = True
                        break
                    in_batch += item[0]
                    pending.append(item[1])
                    if len(pending) >= 2000:
                        copy.write("".join(pending))
                        pending.clear()
                if pending:
                    copy.write("".join(pending))
                    pending.clear()
            rows += in_batch
            batches += 1
            elapsed = time.perf_counter() - began
            print(
                f"  loaded {out.usage_events:,} usage + {out.committed_events:,} committed"
                f" events in {elapsed:,.0f} s ({rows / elapsed:,.0f} events/s)",
                flush=True,
            )
        seconds = time.perf_counter() - began
    print(
        f"load: {out.usage_events:,} usage_recorded + {out.committed_events:,} committed ="
        f" {rows:,} events in {seconds:,.1f} s, {batches} transactions:"
        f" {rows / seconds:,.0f} events/s ({out.usage_events / seconds:,.0f}"
        " usage events/s)",
        flush=True,
    )
    return out, rows, seconds


def write_periods(url: str, generated: Generated) -> None:
    with psycopg.connect(plain(url)) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO budget_periods (org, budget_id, period_start, period_end,"
            " spent_pico_usd, held_pico_usd) VALUES (%s, %s, %s, %s, %s, 0)",
            [
                (ORG, UUID(budget_id), start, end, spent)
                for (budget_id, start), (end, spent) in generated.periods.items()
            ],
        )


def vacuum(url: str, tables: str) -> float:
    began = time.perf_counter()
    with psycopg.connect(plain(url), autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {tables}")
    return time.perf_counter() - began


def fold(engine: Engine) -> tuple[int, float]:
    began = time.perf_counter()
    folded = rollups.fold_all(engine)
    while True:  # fold_all stops at a short batch; make sure nothing is left
        more = rollups.fold_all(engine)
        if not more:
            break
        folded += more
    return folded, time.perf_counter() - began


def rollup_counts(url: str) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    with psycopg.connect(plain(url)) as conn:
        for table in ("rollup_hourly", "rollup_daily"):
            rows = conn.execute(
                f"SELECT CASE WHEN subject_type <> '' THEN 'subject'"
                f" WHEN tag <> '' THEN 'tag' ELSE 'all' END, count(*) FROM {table} GROUP BY 1"
            ).fetchall()
            counts[table] = {grain: int(n) for grain, n in rows}
        narrow = {**{t: "subject" for t in [*rollups.SUBJECT_TABLES, rollups.SUBJECT_SPAN]},
                  **{t: "all" for t in rollups.MODEL_TABLES}}  # fmt: skip
        for table, grain in narrow.items():  # one grain each: no tag column
            (n,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone() or (0,)
            counts[table] = {grain: int(n)}
    return counts


# ---------------------------------------------------------------------------------------------
# Measuring: the reports over HTTP, the raw scans over psycopg.


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


GroupKey = tuple[Any, ...]


@dataclass
class Result:
    name: str
    rows: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    sql_ms: list[float] = field(default_factory=list)
    in_process_ms: list[float] = field(default_factory=list)
    raw_ms: list[float] = field(default_factory=list)
    exact: bool = False
    detail: str = ""
    explain: str = ""
    load_average: float = 0.0  # the machine's 1-minute load average after the HTTP timing

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p95(self) -> float:
        return percentile(self.latencies_ms, 0.95)

    @property
    def raw_p50(self) -> float:
        return statistics.median(self.raw_ms)

    @property
    def met(self) -> bool:
        return self.exact and self.p95 < GOAL_P95_MS and self.raw_p50 / self.p50 >= GOAL_RATIO


def time_http(
    client: httpx.Client, path: str, params: dict[str, str], warmup: int, requests: int
) -> tuple[list[float], Any]:
    body: Any = None
    for _ in range(warmup):
        response = client.get(path, params=params)
        response.raise_for_status()
    latencies = []
    for _ in range(requests):
        began = time.perf_counter()
        response = client.get(path, params=params)
        content = response.content
        latencies.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
        body = content
    return latencies, json.loads(body)


def catch_up(url: str) -> None:
    """Bring the database to its steady state before timing anything: statistics as
    autovacuum would keep them (it may be off on the server), the rollup folder caught up and,
    where this version has it, the audit checkpointer."""
    began = time.perf_counter()
    with psycopg.connect(plain(url), autocommit=True) as conn:
        conn.execute("ANALYZE")
    print(f"catch-up: ANALYZE in {time.perf_counter() - began:,.1f} s", flush=True)
    engine = make_engine(url)
    try:
        folded, seconds = fold(engine)
        print(f"catch-up: folded {folded:,} events in {seconds:,.1f} s", flush=True)
        try:
            from app.audit.checkpointer import checkpoint_all
        except ImportError:
            return
        began = time.perf_counter()
        covered = 0
        while made := checkpoint_all(engine):
            covered += sum(c.events for c in made)
        seconds = time.perf_counter() - began
        print(
            f"catch-up: audit checkpoints over {covered:,} events in {seconds:,.1f} s"
            + (f" ({covered / seconds:,.0f} events/s)" if covered else ""),
            flush=True,
        )
    finally:
        engine.dispose()


def time_raw(
    conn: psycopg.Connection[Any], statement: str, params: dict[str, Any], repeats: int
) -> tuple[list[float], list[tuple[Any, ...]]]:
    timings = []
    rows: list[tuple[Any, ...]] = []
    for _ in range(repeats):
        began = time.perf_counter()
        rows = conn.execute(statement, params).fetchall()
        timings.append((time.perf_counter() - began) * 1000)
    return timings, rows


_USAGE = """
    (event_type = 'usage_recorded'
     OR (event_type = 'committed' AND coalesce((payload->>'messages')::bigint, 0) = 0))"""
_RAW_SUMS = """
    sum(coalesce(amount_pico_usd, 0)) AS cost_pico_usd,
    sum(CASE WHEN event_type = 'committed'
              OR coalesce((payload->>'message_index')::bigint, 0) = 0
         THEN 1 ELSE 0 END) AS requests,
    count(*) FILTER (WHERE event_type = 'usage_recorded') AS messages,
    sum(coalesce((payload->>'prompt_tokens')::bigint, 0)) AS prompt_tokens,
    sum(coalesce((payload->>'completion_tokens')::bigint, 0)) AS completion_tokens,
    sum(coalesce((payload->>'cache_read_tokens')::bigint, 0)) AS cache_read_tokens,
    sum(coalesce((payload->>'cache_creation_tokens')::bigint,
                 (payload->>'cache_write_tokens')::bigint, 0)) AS cache_write_tokens,
    sum(coalesce((payload->>'reasoning_tokens')::bigint, 0)) AS reasoning_tokens"""


def raw_by_model_sql(granularity: str) -> str:
    period = "date_trunc('day', occurred_at, %(tz)s)" if granularity == "day" else "NULL"
    return f"""
SELECT {period} AS period_start, coalesce(payload->>'model', '') AS model, {_RAW_SUMS}
FROM ledger_events
WHERE org = %(org)s AND occurred_at >= %(start)s AND occurred_at < %(end)s AND {_USAGE}
GROUP BY 1, 2"""


def raw_by_subject_sql(granularity: str) -> str:
    period = "date_trunc('day', occurred_at, %(tz)s)" if granularity == "day" else "NULL"
    return f"""
SELECT {period} AS period_start, s->>'type' AS subject_type, s->>'id' AS subject_id,
       {_RAW_SUMS}
FROM ledger_events
CROSS JOIN LATERAL jsonb_array_elements(payload->'subjects') AS s
WHERE org = %(org)s AND occurred_at >= %(start)s AND occurred_at < %(end)s AND {_USAGE}
GROUP BY 1, 2, 3"""


RAW_BUDGET_SQL = """
SELECT coalesce(sum(amount_pico_usd), 0) FROM ledger_events
WHERE org = %(org)s AND event_type = 'committed'
  AND occurred_at >= %(start)s AND occurred_at < %(end)s
  AND payload->'subjects' @> %(subject)s::jsonb"""


def _instant(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


def report_map(body: dict[str, Any], groups: Sequence[str]) -> dict[GroupKey, tuple[int, ...]]:
    out = {}
    for row in body["rows"]:
        key = (_instant(row["period_start"]), *(row[g] for g in groups))
        sums = (parse_usd(row["cost_usd"]), *(int(row[s]) for s in SUMS[1:]))
        out[key] = sums
    return out


def raw_map(rows: list[tuple[Any, ...]], groups: int) -> dict[GroupKey, tuple[int, ...]]:
    out = {}
    for row in rows:
        key = (_instant(row[0]), *((value or None) for value in row[1 : 1 + groups]))
        out[key] = tuple(int(value) for value in row[1 + groups :])
    return out


def compare(
    report: dict[GroupKey, tuple[int, ...]], raw: dict[GroupKey, tuple[int, ...]]
) -> tuple[bool, str]:
    if report == raw:
        cost = sum(v[0] for v in raw.values())
        return True, f"{len(raw):,} groups equal, total ${format_usd(cost)}"
    missing = [k for k in raw if k not in report][:3]
    extra = [k for k in report if k not in raw][:3]
    differ = [(k, report[k], raw[k]) for k in report if k in raw and report[k] != raw[k]][:3]
    return False, f"DIFFER: missing {missing}, extra {extra}, different {differ}"


@dataclass(frozen=True)
class ReportCase:
    name: str
    params: dict[str, str]
    query: reports.SpendQuery
    raw_sql: str
    groups: tuple[str, ...]
    tz: str


def report_cases(to: datetime) -> list[ReportCase]:
    month, week = to - timedelta(days=30), to - timedelta(days=7)
    cases = []
    for name, start, granularity, group_by, tz in (
        ("spend by model x day, 30 d, UTC", month, "day", ("model",), "UTC"),
        ("spend by model x day, 30 d, America/New_York", month, "day", ("model",),
         "America/New_York"),
        ("spend by subject, 7 d (granularity=all)", week, "all", ("subject_type", "subject_id"),
         "UTC"),
        ("spend by subject x day, 7 d", week, "day", ("subject_type", "subject_id"), "UTC"),
    ):  # fmt: skip
        params = {
            "from": start.isoformat(),
            "to": to.isoformat(),
            "granularity": granularity,
            "group_by": ",".join(group_by),
            "tz": tz,
        }
        query = reports.SpendQuery(
            org=ORG, start=start, end=to, granularity=granularity, group_by=group_by, tz=tz
        )
        raw = (
            raw_by_model_sql(granularity)
            if "model" in group_by
            else raw_by_subject_sql(granularity)
        )
        cases.append(ReportCase(name, params, query, raw, group_by, tz))
    return cases


def time_sql(
    engine: Engine, case: ReportCase, repeats: int
) -> tuple[list[float], list[float], str]:
    """In-process, as the route runs it: the whole service call ``spend_json_in_halves``
    (watermark, statement, JSON text; two halves at once where it splits), the report's JSON
    statement alone (the whole window on one connection), and its EXPLAIN ANALYZE."""
    query = reports.validate(case.query)
    in_process, alone = [], []
    plan_text = ""
    for _ in range(repeats):
        began = time.perf_counter()
        halves.spend_json_in_halves(engine, query)
        in_process.append((time.perf_counter() - began) * 1000)
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        snapshot = reports._prepare(conn)
        statement, params = reports._json_statement(
            query, snapshot, order_by_cost=False, limit=None
        )
        for _ in range(repeats):
            began = time.perf_counter()
            conn.execute(text(statement), params).fetchall()
            alone.append((time.perf_counter() - began) * 1000)
        plan = conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + statement), params)
        plan_text = "\n".join(str(line) for line in plan.scalars())
        conn.rollback()
    return in_process, alone, plan_text


def explain_ms(plan: str) -> float | None:
    """The execution time EXPLAIN ANALYZE reported."""
    for line in plan.splitlines():
        if line.startswith("Execution Time:"):
            return float(line.split()[2])
    return None


def status_path(client: httpx.Client) -> str:
    paths = client.get("/openapi.json").json()["paths"]
    if "/v1/budgets/{budget_id}/status" in paths:
        return "/v1/budgets/{budget_id}/status"
    return "/v1/budgets/{budget_id}"


def find(body: Any, name: str) -> str | None:
    """The string field ``name`` of a budget status, wherever the response puts it."""
    if isinstance(body, dict):
        if isinstance(body.get(name), str):
            return str(body[name])
        for value in body.values():
            found = find(value, name)
            if found is not None:
                return found
    return None


def busiest_budget(url: str, at: datetime) -> tuple[UUID, Subject]:
    """The user budget with the most spend in its current period."""
    with psycopg.connect(plain(url)) as conn:
        row = conn.execute(
            "SELECT b.budget_id, b.subject_type, b.subject_id FROM budgets b"
            " JOIN budget_periods p USING (org, budget_id)"
            " WHERE b.org = %s AND b.subject_type = 'user'"
            " AND p.period_start <= %s AND p.period_end > %s"
            " ORDER BY p.spent_pico_usd DESC LIMIT 1",
            (ORG, at, at),
        ).fetchone()
    if row is None:
        raise SystemExit("no budget has spend in its current period")
    return row[0], Subject(row[1], row[2])


def measure(url: str, meta: dict[str, Any], args: argparse.Namespace) -> list[Result]:
    anchor = datetime.fromisoformat(meta["anchor"])
    to = anchor.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    # The default windows end at the hour after the load; --end-hours-earlier moves them, e.g.
    # to make both ends partial days when the load happened to end just before midnight.
    to -= timedelta(hours=args.end_hours_earlier)
    print(f"windows end at {to.isoformat()}", flush=True)
    catch_up(url)
    engine = make_engine(url)
    owner = make_engine(url, app_role=False)
    with owner.begin() as conn:
        _, key = auth.create_key(conn, scope="reader", org=ORG, name="bench-reports")
    log_path = Path(tempfile.mkstemp(prefix="bench-reports-serve-", suffix=".log")[1])
    results: list[Result] = []
    raw_conn: psycopg.Connection[Any] = psycopg.connect(plain(url), autocommit=True)
    try:
        with (
            serve(url, log_path) as running,
            httpx.Client(
                base_url=running.base, headers={"Authorization": f"Bearer {key}"}, timeout=120
            ) as client,
        ):
            print(f"server: {running.base} (log {log_path})", flush=True)
            for case in report_cases(to):
                result = Result(case.name)
                result.latencies_ms, body = time_http(
                    client, "/v1/reports/spend", case.params, args.warmup, args.requests
                )
                result.load_average = os.getloadavg()[0]
                result.rows = len(body["rows"])
                result.in_process_ms, result.sql_ms, result.explain = time_sql(
                    engine, case, args.sql_repeats
                )
                params = {"org": ORG, "start": case.query.start, "end": case.query.end,
                          "tz": case.tz}  # fmt: skip
                result.raw_ms, raw_rows = time_raw(raw_conn, case.raw_sql, params, args.raw_repeats)
                result.exact, result.detail = compare(
                    report_map(body, case.groups), raw_map(raw_rows, len(case.groups))
                )
                results.append(result)
                print_result(result)
            budget_id, subject = busiest_budget(url, datetime.now(UTC))
            path = status_path(client).format(budget_id=budget_id)
            result = Result(f"budget status ({path.replace(str(budget_id), '{id}')})")
            result.latencies_ms, body = time_http(client, path, {}, args.warmup, args.requests)
            result.load_average = os.getloadavg()[0]
            result.rows = 1
            spent, start, end = (find(body, n) for n in ("spent_usd", "period_start", "period_end"))
            if spent is None or start is None or end is None:
                raise SystemExit(f"{path} answered without spent_usd and period bounds: {body}")
            period = {"start": datetime.fromisoformat(start), "end": datetime.fromisoformat(end)}
            subject_json = json.dumps([subject.as_dict()])
            result.raw_ms, raw_rows = time_raw(
                raw_conn, RAW_BUDGET_SQL, {"org": ORG, "subject": subject_json, **period},
                args.raw_repeats,
            )  # fmt: skip
            raw_spent = int(raw_rows[0][0])
            result.exact = parse_usd(spent) == raw_spent
            result.detail = (
                f"{subject.type} {subject.id}, {find(body, 'period')} from {start}:"
                f" spent ${spent} (status) vs ${format_usd(raw_spent)} (raw)"
            )
            results.append(result)
            print_result(result)
    finally:
        raw_conn.close()
        engine.dispose()
        owner.dispose()
    return results


def print_result(result: Result) -> None:
    sql = ""
    if result.sql_ms:
        sql = (
            f", in-process p50 {statistics.median(result.in_process_ms):.1f} ms,"
            f" sql p50 {statistics.median(result.sql_ms):.1f} ms,"
            f" explain analyze {explain_ms(result.explain) or 0:.1f} ms"
        )
    print(
        f"{result.name}: {result.rows:,} rows, p50 {result.p50:.1f} ms, p95 {result.p95:.1f} ms,"
        f" max {max(result.latencies_ms):.1f} ms{sql}; raw p50 {result.raw_p50:,.0f} ms"
        f" ({result.raw_p50 / result.p50:,.0f}x); {'EXACT' if result.exact else 'NOT EXACT'}:"
        f" {result.detail}",
        flush=True,
    )


def print_table(results: list[Result]) -> None:
    print()
    print("| report | rows | p50 ms | p95 ms | max ms | in-process p50 ms | SQL alone p50 ms"
          " | EXPLAIN ANALYZE ms | raw GROUP BY p50 ms"
          " | raw/report (p50) | raw p50 / report p95 | exact | load avg | goal |")  # fmt: skip
    print("| --- " + "| ---: " * 10 + "| --- | ---: | --- |")
    for r in results:
        sql = f"{statistics.median(r.sql_ms):.1f}" if r.sql_ms else "-"
        in_process = f"{statistics.median(r.in_process_ms):.1f}" if r.in_process_ms else "-"
        explained = explain_ms(r.explain)
        plan = f"{explained:.1f}" if explained is not None else "-"
        print(
            f"| {r.name} | {r.rows:,} | {r.p50:.1f} | {r.p95:.1f} | {max(r.latencies_ms):.1f}"
            f" | {in_process} | {sql} | {plan} | {r.raw_p50:,.0f} | {r.raw_p50 / r.p50:,.0f}x"
            f" | {r.raw_p50 / r.p95:,.0f}x | {'yes' if r.exact else 'NO'}"
            f" | {r.load_average:.1f} | {'met' if r.met else 'MISSED'} |"
        )


# ---------------------------------------------------------------------------------------------


def machine(url: str) -> str:
    with psycopg.connect(plain(url)) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        settings = conn.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name IN ('shared_buffers',"
            " 'work_mem', 'max_parallel_workers_per_gather', 'jit', 'effective_cache_size',"
            " 'autovacuum')"
            " ORDER BY name"
        ).fetchall()
    with open("/proc/meminfo") as info:
        mem_kb = int(info.readline().split()[1])
    shown = ", ".join(f"{n}={s}{u or ''}" for n, s, u in settings)
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {mem_kb / 1024**2:.0f} GiB RAM,"
        f" Python {platform.python_version()}, PostgreSQL {version[0] if version else '?'}"
        f" ({shown})"
    )


CODE = (
    "app/reports/service.py",
    "app/reports/router.py",
    "app/reports/rollups.py",
    "app/budgets/service.py",
    "app/budgets/router.py",
    "app/db/engine.py",
)


def code_version(url: str) -> str:
    """The schema revision and a digest of the files on the measured path (the tree changes
    under other engineers' hands, and figures are only comparable for the same code)."""
    with psycopg.connect(plain(url)) as conn:
        row = conn.execute("SELECT string_agg(version_num, ',') FROM alembic_version").fetchone()
    digest = hashlib.sha256()
    for name in CODE:
        digest.update((ROOT / name).read_bytes())
    return (
        f"schema {row[0] if row else '?'}, sha256 of {', '.join(CODE)}: {digest.hexdigest()[:12]}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000_000, help="usage_recorded events")
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="ul_bench_reports")
    parser.add_argument("--reuse", action="store_true", help="measure an earlier run's data")
    parser.add_argument("--recreate", action="store_true", help="drop the database and load")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--keys", type=int, default=4000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--shapes", type=int, default=48, help="priced usage shapes per model")
    parser.add_argument("--batch", type=int, default=500_000, help="events per transaction")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--raw-repeats", type=int, default=3)
    parser.add_argument("--sql-repeats", type=int, default=10)
    parser.add_argument(
        "--end-hours-earlier", type=int, default=0, help="end the report windows N hours earlier"
    )
    parser.add_argument(
        "--verify", action="store_true", help="after loading, replay --verify (small runs)"
    )
    args = parser.parse_args()
    if args.reuse and args.recreate:
        parser.error("--reuse and --recreate exclude each other")
    if args.batch >= 2**20:
        parser.error("--batch must stay below 2**20 events (one transaction's limit)")
    url = database_url(args.server, args.database)
    exists, meta = read_meta(args.server, args.database, "reports")
    if args.reuse and meta is not None and meta["events"] != args.events:
        parser.error(f"{args.database} holds {meta['events']:,} events, not {args.events:,}")
    if exists and not args.recreate and not (args.reuse and meta is not None):
        parser.error(
            f"database {args.database} exists"
            + (" with a complete load: pass --reuse to measure it" if meta else " (incomplete)")
            + " or --recreate to drop it and load again"
        )
    print(f"machine: {machine(database_url(args.server, 'postgres'))}", flush=True)
    if meta is None or args.recreate:
        create_database(args.server, args.database)
        migrate.upgrade(url)
        meta = load_all(url, args)
    else:
        print(f"reusing {args.database}: {json.dumps(meta)}", flush=True)
        migrate.upgrade(url)  # the schema of the code being measured (a no-op when current)
    print(f"code: {code_version(url)}", flush=True)
    try:
        results = measure(url, meta, args)
        print_table(results)
        missed = [r for r in results if not r.met]
        for r in missed:
            print(f"\nEXPLAIN (ANALYZE, BUFFERS) of '{r.name}':\n{r.explain or '(no plan)'}")
        print(f"\ngoals (p95 < {GOAL_P95_MS:.0f} ms and >= {GOAL_RATIO:.0f}x the raw scan):"
              f" {len(results) - len(missed)}/{len(results)} met")  # fmt: skip
        exact = all(r.exact for r in results)
    finally:
        if args.drop:
            drop_database(args.server, args.database)
            print(f"dropped {args.database}")
    return 0 if exact else 1


def load_all(url: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    anchor = datetime.now(UTC).replace(microsecond=0)
    start = anchor - timedelta(days=args.days)
    began = time.perf_counter()
    population = build_population(
        rng, models=args.models, keys=args.keys, users=args.users, anchor=anchor,
        shapes=args.shapes,
    )  # fmt: skip
    print(
        f"population: {len(population.models)} models ({args.shapes} priced shapes each),"
        f" {args.keys:,} keys + {args.users:,} users = {args.keys + args.users:,} subjects,"
        f" {len(population.budgets):,} budgets ({time.perf_counter() - began:.1f} s)",
        flush=True,
    )
    owner = make_engine(url, app_role=False)
    try:
        define_budgets(owner, population, start)
        span = {
            "start_us": int(start.timestamp()) * 10**6,
            "end_us": int(anchor.timestamp()) * 10**6,
        }
        sample = next(generate(random.Random(0), population, events=1, out=Generated(), **span))
        check_shapes(owner, sample[1], start)
        generated, rows, load_seconds = load(url, population, rng, args, anchor)
        write_periods(url, generated)
        seconds = vacuum(url, "ledger_events, budget_periods")
        print(f"vacuum (analyze) ledger_events: {seconds:,.1f} s", flush=True)
        folder = make_engine(url)
        folded, fold_seconds = fold(folder)
        folder.dispose()
        print(
            f"fold: {folded:,} events in {fold_seconds:,.1f} s"
            f" ({folded / fold_seconds:,.0f} events/s, fold_all with its default batch of 50,000)",
            flush=True,
        )
        vacuum(
            url,
            ", ".join(
                [
                    "rollup_hourly",
                    "rollup_daily",
                    *rollups.SUBJECT_TABLES,
                    rollups.SUBJECT_SPAN,
                    *rollups.MODEL_TABLES,
                ]
            ),
        )
        counts = rollup_counts(url)
        for table, grains in counts.items():
            shown = ", ".join(f"{g} {n:,}" for g, n in sorted(grains.items()))
            print(f"  {table}: {sum(grains.values()):,} rows ({shown})", flush=True)
        check_limits(url)
        if args.verify:
            verify(owner)
    finally:
        owner.dispose()
    meta = {
        "bench": "reports",
        "events": args.events,
        "usage_events": generated.usage_events,
        "committed_events": generated.committed_events,
        "anchor": anchor.isoformat(),
        "seed": args.seed,
        "events_loaded": rows,
        "load_events_per_s": round(rows / load_seconds),
        "fold_events_per_s": round(folded / fold_seconds),
        "total_usd": format_usd(generated.cost_pico_usd),
    }
    write_meta(args.server, args.database, meta)
    return meta


def check_limits(url: str) -> None:
    """No budget period reached its first alert threshold (0.8), so no alert event is due and
    the generated stream is what the service would have written."""
    with psycopg.connect(plain(url)) as conn:
        row = conn.execute(
            "SELECT max(p.spent_pico_usd / b.limit_pico_usd) FROM budget_periods p"
            " JOIN budgets b USING (org, budget_id)"
        ).fetchone()
    top = row[0] if row else None
    print(f"highest budget use in any period: {top:.4f} of its limit", flush=True)
    if top is not None and top >= Decimal("0.8"):
        raise SystemExit("a budget crossed an alert threshold: raise the bench's limits")


def verify(engine: Engine) -> None:
    from app.budgets import replay

    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        report = replay.verify(conn)
        report.differences += rollups.verify(conn)
        conn.rollback()
    print(f"replay --verify: {report.events:,} events, {len(report.differences)} differences")
    for difference in report.differences[:10]:
        print(f"  {difference}")
    if not report.ok:
        raise SystemExit("the generated events do not replay into the projections")


if __name__ == "__main__":
    sys.exit(main())
