"""The per-message usage record that ``usage_recorded`` events carry."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CALL_TYPES = (
    "chat",
    "completion",
    "embedding",
    "image",
    "audio",
    "speech",
    "transcription",
    "video",
    "rerank",
    "moderation",
    "search",
    "other",
)


@dataclass(frozen=True)
class UsageRecord:
    """One message's usage and its exact cost; token counts are inclusive (docs/pricing.md)."""

    cost_pico_usd: int
    model: str | None = None
    provider: str | None = None
    call_type: str = "chat"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    reasoning_tokens: int = 0
    ttft_ms: int | None = None
    duration_ms: int | None = None
    model_key: str | None = None
    priced_by: str | None = None
    units: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_payload(payload: dict[str, Any]) -> UsageRecord:
        known = {name for name in UsageRecord.__dataclass_fields__}
        return UsageRecord(**{k: v for k, v in payload.items() if k in known})
