"""Request and response models of the HTTP API (the edge only; services take plain values)."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from app.money import InvalidAmount, parse_usd

IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,199}$"
Identifier = Annotated[
    str,
    Field(pattern=IDENTIFIER, description="1-200 characters: letters, digits and ._:@/+=-"),
]


def _usd(text: str) -> str:
    try:
        parse_usd(text)
    except InvalidAmount as error:
        raise ValueError(str(error)) from error
    return text


Usd = Annotated[
    str,
    AfterValidator(_usd),
    Field(
        description="Exact decimal string of USD, at most 12 decimals",
        examples=["0.50"],
        # Documents parse_usd's format in /openapi.json; parse_usd is what enforces it.
        json_schema_extra={"pattern": r"^[0-9]{1,15}(\.[0-9]{1,12})?$"},
    ),
]
Fraction = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]?)(\.[0-9]{1,6})?$", examples=["0.8"])]
MAX_METADATA_BYTES = 64 * 1024


def _small(metadata: dict[str, Any]) -> dict[str, Any]:
    # Metadata is copied onto every usage record of the request: keep it to tags and labels.
    try:
        size = len(json.dumps(metadata, ensure_ascii=False).encode())
    except RecursionError:
        raise ValueError("is nested too deeply") from None
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes of JSON")
    return metadata


Metadata = Annotated[
    dict[str, Any],
    AfterValidator(_small),
    Field(description="Free-form: endpoint, tags, ... (at most 64 KiB of JSON)"),
]


def _storable_text(text: str) -> bool:
    if "\x00" in text:
        return False
    if text.isascii():  # no surrogate to find: skip the encoding's copy
        return True
    try:
        text.encode()
    except UnicodeEncodeError:  # an unpaired surrogate, from a "\ud800" JSON escape
        return False
    return True


MAX_JSON_DEPTH = 64
"""Nesting allowed in free-form JSON (metadata, usage, a provider request): ample for tool
schemas, and far below what serialising a body for its idempotency key can take (~250)."""


def _unstorable(value: Any) -> str | None:
    """What in ``value`` the ledger cannot store, or None: text with a NUL or an unpaired
    surrogate (PostgreSQL refuses both), a NaN or infinite number (Python's JSON parser reads
    NaN, Infinity and 1e400; JSON has none), or nesting deeper than MAX_JSON_DEPTH."""
    if value is None or type(value) in (int, bool):  # most fields: nothing to walk
        return None
    pending: list[tuple[str, Any, int]] = [("", value, 0)]
    while pending:
        path, item, depth = pending.pop()
        where = path.lstrip(".") or "the value"
        if depth > MAX_JSON_DEPTH:
            return f"nested more than {MAX_JSON_DEPTH} levels deep"
        if isinstance(item, str) and not _storable_text(item):
            return f"{where} holds a NUL character or an unpaired surrogate"
        if isinstance(item, float) and not math.isfinite(item):  # money-safe: only refuses
            return f"{where} is not a finite number"
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and not _storable_text(key):
                    return f"a key of {where} holds a NUL character or an unpaired surrogate"
                pending.append((f"{path}.{key}", child, depth + 1))
        elif isinstance(item, list | tuple):
            pending.extend((f"{path}[{i}]", child, depth + 1) for i, child in enumerate(item))
    return None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unchecked_fields: ClassVar[frozenset[str]] = frozenset()
    """Fields validated elsewhere, so left out of the storable-value check below."""

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        # Refused here, by field, rather than failing in PostgreSQL or the serialiser (a 500).
        if info.field_name in cls.unchecked_fields:
            return value
        problem = _unstorable(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class SubjectIn(Strict):
    type: Identifier
    id: Identifier


class BudgetCreate(Strict):
    org: Identifier | None = Field(None, description="Implied by a tenant-confined key")
    request_id: Identifier | None = Field(None, description="Idempotency key (optional)")
    subject: SubjectIn
    limit_usd: Usd
    period: Literal["day", "week", "month", "total"]
    timezone: str = Field("UTC", max_length=64, examples=["Europe/Berlin"])
    mode: Literal["hard", "soft"] = "hard"
    alert_thresholds: list[Fraction] = Field(
        default_factory=lambda: ["0.8", "0.95", "1.0"], max_length=10
    )


class BudgetChange(Strict):
    limit_usd: Usd | None = None
    mode: Literal["hard", "soft"] | None = None
    alert_thresholds: list[Fraction] | None = Field(None, max_length=10)


class BudgetOut(BaseModel):
    budget_id: str
    org: str
    subject: dict[str, str]
    limit_usd: str
    spent_usd: str
    held_usd: str
    remaining_usd: str
    period: str
    timezone: str
    mode: str
    alert_thresholds: list[str]
    alert_level: Literal["ok", "warning", "critical", "exceeded"]
    period_start: str
    period_end: str
    version: int


class BudgetList(BaseModel):
    budgets: list[BudgetOut]


class ReservationCreate(Strict):
    org: Identifier | None = None
    request_id: Identifier
    subjects: list[SubjectIn] = Field(min_length=1, max_length=20)
    model: str | None = Field(None, min_length=1, max_length=300)
    provider: str | None = Field(None, max_length=100)
    amount_usd: Usd | None = None
    request: dict[str, Any] | None = Field(
        None, description="An OpenAI-, Anthropic- or Gemini-style request body to estimate"
    )
    fit: Literal["refuse", "clamp"] = "refuse"
    ttl_seconds: int | None = Field(None, ge=1, le=86_400)
    metadata: Metadata = Field(default_factory=dict)


class BudgetRemainingOut(BaseModel):
    budget_id: str
    subject: dict[str, str]
    mode: str
    limit_usd: str
    remaining_usd: str


class ReservationOut(BaseModel):
    reservation_id: str
    request_id: str
    org: str
    state: str
    amount_usd: str
    expires_at: str
    budgets: list[BudgetRemainingOut]
    max_output_tokens: int | None = None
    estimate: dict[str, Any] | None = None


class MessageIn(Strict):
    usage: dict[str, Any]
    model: str | None = Field(None, min_length=1, max_length=300)
    provider: str | None = Field(None, max_length=100)
    call_type: str = Field("chat", max_length=40)
    ttft_ms: int | None = Field(None, ge=0, le=86_400_000)
    duration_ms: int | None = Field(None, ge=0, le=86_400_000)
    metadata: Metadata = Field(default_factory=dict)


class CommitIn(Strict):
    org: Identifier | None = None
    usage: dict[str, Any] | None = Field(None, description="Canonical or provider-native usage")
    model: str | None = Field(None, min_length=1, max_length=300)
    provider: str | None = Field(None, max_length=100)
    call_type: str = Field("chat", max_length=40)
    ttft_ms: int | None = Field(None, ge=0, le=86_400_000)
    duration_ms: int | None = Field(None, ge=0, le=86_400_000)
    messages: list[MessageIn] | None = Field(None, min_length=1, max_length=1000)
    billing_time: str | None = Field(None, max_length=64)
    metadata: Metadata = Field(default_factory=dict)


class UsageIn(CommitIn):
    request_id: Identifier
    subjects: list[SubjectIn] = Field(min_length=1, max_length=20)


class SettlementOut(BaseModel):
    request_id: str
    reservation_id: str | None
    org: str
    cost_usd: str
    held_usd: str
    overrun: bool
    late: bool
    flagged_budgets: list[str]
    breakdown: dict[str, Any]


class CancelIn(Strict):
    org: Identifier | None = None


class ExtendIn(Strict):
    org: Identifier | None = None
    amount_usd: Usd | None = Field(None, description="The new total hold (only raises)")
    ttl_seconds: int | None = Field(None, ge=1, le=86_400)


class QuoteIn(Strict):
    model: str = Field(min_length=1, max_length=300)
    provider: str | None = Field(None, max_length=100)
    usage: dict[str, Any] | None = None
    request: dict[str, Any] | None = None
    billing_time: str | None = Field(None, max_length=64)


MAX_BATCH_RECORDS = 1000


class UsageBatchIn(Strict):
    # Each record is validated, and refused, on its own, as a UsageIn.
    unchecked_fields = frozenset({"records"})

    org: Identifier | None = Field(None, description="Implied by a tenant-confined key")
    records: list[Any] = Field(
        min_length=1,
        max_length=MAX_BATCH_RECORDS,
        description="1-1,000 bodies of POST /v1/usage without `org`, each validated, "
        "idempotent and settled on its own",
    )


class UsageBatchResultOut(BaseModel):
    index: int = Field(description="The record's position in `records`")
    request_id: str | None
    status: int = Field(description="201 charged (first time or replay), else the refusal's")
    settlement: SettlementOut | None = Field(None, description="When charged (201)")
    problem: dict[str, Any] | None = Field(
        None, description="When refused: the RFC 9457 problem POST /v1/usage would return"
    )


class UsageBatchOut(BaseModel):
    results: list[UsageBatchResultOut]
    accepted: int
    refused: int
