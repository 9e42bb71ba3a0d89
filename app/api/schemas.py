"""Request and response models of the HTTP API (the edge only; services take plain values)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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
    Field(description="Exact decimal string of USD, at most 12 decimals", examples=["0.50"]),
]
Fraction = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]?)(\.[0-9]{1,6})?$", examples=["0.8"])]
Metadata = Annotated[dict[str, Any], Field(description="Free-form: endpoint, tags, ...")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
