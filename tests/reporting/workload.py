"""Requests written through the public service API, and the facts they should become.

The expected facts are derived from what the test asked the ledger to do, by the rules of
docs/ledger.md and docs/dashboards.md, never from the events or rollups the views read.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from app.budgets import holds
from app.budgets.model import Subject
from app.ledger.records import UsageRecord

MODELS = [
    ("gpt-4o", "openai"),
    ("claude-sonnet-4", "anthropic"),
    ("gemini-2.5-pro", "gemini"),
    # Dimension values are cut to 200 characters in the rollups: the views must agree.
    ("m" * 230, "selfhosted"),
]
TAGS = ["prod", "batch", "eval"]
MEASURES = (
    "cost_pico_usd",
    "requests",
    "messages",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
Measures = tuple[int, int, int, int, int, int, int, int]


@dataclass(frozen=True)
class Request:
    """One request: charged directly (``reserved`` False) or reserved and then committed."""

    org: str
    request_id: str
    at: datetime
    subjects: tuple[Subject, ...]
    records: tuple[UsageRecord, ...]
    reserved: bool = False
    model: str | None = None
    provider: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def cost_pico_usd(self) -> int:
        return sum(r.cost_pico_usd for r in self.records) if self.records else 7_000_000_001


@dataclass(frozen=True)
class Fact:
    """One row of usage at one grain, as docs/dashboards.md describes the spend views."""

    org: str
    at: datetime
    model: str
    provider: str
    call_type: str
    endpoint: str
    subject_type: str
    subject_id: str
    tag: str
    measures: Measures


def _record(rng: random.Random) -> UsageRecord:
    model, provider = rng.choice(MODELS)
    metadata: dict[str, Any] = {}
    roll = rng.random()
    if roll < 0.5:
        metadata["endpoint"] = rng.choice(["/chat", "/responses"])
    elif roll < 0.6:
        metadata["endpoint"] = 42  # not a string: not reported
    roll = rng.random()
    if roll < 0.4:
        metadata["tags"] = rng.sample(TAGS, rng.randint(1, 2))
    elif roll < 0.5:
        metadata["tags"] = rng.choice(TAGS)  # one tag as a plain string
    elif roll < 0.55:
        metadata["tags"] = ["prod", "prod", ""]  # counted once; the empty tag is not a tag
    return UsageRecord(
        cost_pico_usd=rng.randint(0, 10**9) * 1000 + rng.randint(0, 999),
        model=model,
        provider=provider,
        call_type=rng.choice(["chat", "embedding"]),
        prompt_tokens=rng.randint(0, 5000),
        completion_tokens=rng.randint(0, 2000),
        cache_read_tokens=rng.randint(0, 100),
        cache_creation_tokens=rng.randint(0, 50),
        reasoning_tokens=rng.randint(0, 300),
        metadata=metadata,
    )


def random_requests(
    rng: random.Random, count: int, *, start: datetime, hours: int
) -> list[Request]:
    """Requests of two orgs spread over ``hours`` from ``start``; some reserved, some with
    no messages at all, so every rule of the facts is exercised."""
    users = [Subject("user", f"u{i}") for i in range(5)]
    teams = [Subject("team", f"t{i}") for i in range(2)]
    made = []
    for index in range(count):
        at = start + timedelta(seconds=rng.randint(0, hours * 3600 - 1))
        subjects = tuple(sorted({rng.choice(users), rng.choice(teams)}))
        bare = rng.random() < 0.1
        records = () if bare else tuple(_record(rng) for _ in range(rng.randint(1, 3)))
        reserved = rng.random() < 0.35
        model, provider = rng.choice(MODELS[:3]) if reserved or bare else (None, None)
        made.append(
            Request(
                org=rng.choice(["acme", "acme", "globex"]),
                request_id=f"req-{index}",
                at=at,
                subjects=subjects,
                records=records,
                reserved=reserved,
                model=model,
                provider=provider,
            )
        )
    return made


def write(conn: Connection, request: Request) -> None:
    """Write one request in the caller's transaction (one org per transaction)."""
    if not request.reserved:
        holds.record_usage(
            conn,
            org=request.org,
            request_id=request.request_id,
            subjects=request.subjects,
            cost_pico_usd=request.cost_pico_usd,
            records=request.records,
            model=request.model,
            provider=request.provider,
            now=request.at,
        )
        return
    reservation = holds.reserve(
        conn,
        org=request.org,
        request_id=request.request_id,
        subjects=request.subjects,
        amount_pico_usd=request.cost_pico_usd + 5,
        ttl_seconds=600,
        model=request.model,
        provider=request.provider,
        metadata=request.metadata,
        now=request.at - timedelta(seconds=30),
    )
    holds.commit_reservation(
        conn,
        org=request.org,
        reservation_id=reservation.reservation_id,
        cost_pico_usd=request.cost_pico_usd,
        records=request.records,
        now=request.at,
    )


def _cut(value: str | None) -> str:
    return (value or "")[:200]


def _tags(metadata: dict[str, Any]) -> list[str]:
    tags = metadata.get("tags")
    listed = [tags] if isinstance(tags, str) else tags if isinstance(tags, list) else []
    return sorted({_cut(t) for t in listed if isinstance(t, str) and t})


def facts(requests: Iterable[Request]) -> list[Fact]:
    """Every usage fact, at every grain: all spend, each subject's share, each tag's share."""
    made: list[Fact] = []
    for request in requests:
        subjects = [("", "")] + [(_cut(s.type), _cut(s.id)) for s in request.subjects]
        if not request.records:
            # A commit without messages counts as one request with its cost and no tokens.
            measures: Measures = (request.cost_pico_usd, 1, 0, 0, 0, 0, 0, 0)
            for subject_type, subject_id in subjects:
                made.append(
                    Fact(
                        request.org,
                        request.at,
                        _cut(request.model),
                        _cut(request.provider),
                        "",
                        "",
                        subject_type,
                        subject_id,
                        "",
                        measures,
                    )
                )
            continue
        for index, record in enumerate(request.records):
            endpoint = record.metadata.get("endpoint")
            measures = (
                record.cost_pico_usd,
                1 if index == 0 else 0,
                1,
                record.prompt_tokens,
                record.completion_tokens,
                record.cache_read_tokens,
                record.cache_creation_tokens,
                record.reasoning_tokens,
            )
            keys = [(t, i, "") for t, i in subjects] + [("", "", g) for g in _tags(record.metadata)]
            for subject_type, subject_id, tag in keys:
                made.append(
                    Fact(
                        request.org,
                        request.at,
                        _cut(record.model),
                        _cut(record.provider),
                        _cut(record.call_type),
                        _cut(endpoint if isinstance(endpoint, str) else None),
                        subject_type,
                        subject_id,
                        tag,
                        measures,
                    )
                )
    return made


def bucket(at: datetime, unit: str) -> datetime:
    """The UTC hour, day or month that contains ``at``."""
    at = at.astimezone(UTC)
    if unit == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    if unit == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def sums(made: Iterable[Fact], *, unit: str, grain: str) -> dict[tuple[Any, ...], Measures]:
    """Facts of one grain summed per view key: (org, bucket, [grain keys], model, provider,
    call_type, endpoint)."""
    totals: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(MEASURES))
    for fact in made:
        if grain == "spend":
            if fact.subject_type or fact.tag:
                continue
            keys: tuple[str, ...] = ()
        elif grain == "spend_by_subject":
            if not fact.subject_type:
                continue
            keys = (fact.subject_type, fact.subject_id)
        else:
            if not fact.tag:
                continue
            keys = (fact.tag,)
        key = (
            fact.org,
            bucket(fact.at, unit),
            *keys,
            fact.model,
            fact.provider,
            fact.call_type,
            fact.endpoint,
        )
        for position, value in enumerate(fact.measures):
            totals[key][position] += value
    return {key: (v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]) for key, v in totals.items()}
