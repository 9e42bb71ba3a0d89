"""Which model names on the ledger's side and on the provider's bill are the same model.

The ledger keeps the name the gateway sent (``gpt-4o``, ``openai/gpt-4o``,
``claude-sonnet-4-5-20250929``); the provider bills the dated snapshot the alias pointed at
(``gpt-4o-2024-08-06``). Both sides are reduced to one *model key* by the rule below, and rows
are matched on equal keys only (docs/reconciliation.md, "Model matching").
"""

from __future__ import annotations

import re

# A dated snapshot suffix: OpenAI -2024-08-06, Anthropic -20250514. "-latest" is an alias too.
_DATED = re.compile(r"-(?:[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{8}|latest)$")
# Anthropic's "claude-sonnet-4-0" alias names the snapshot "claude-sonnet-4-20250514".
_MINOR_ZERO = re.compile(r"^(claude-(?:opus|sonnet|haiku)-[0-9]+)-0$")
# Display names of the Console ("Claude Sonnet 3.7") put the family first; the API ids of
# Claude 3.x put the version first ("claude-3-7-sonnet").
_DISPLAY_V3 = re.compile(r"^claude-(opus|sonnet|haiku)-(3(?:-[0-9]+)?)$")

# A name without a provider prefix is attributed by its family (only for usage records that
# carry no provider; the gateway records the resolved provider on every message).
_FAMILIES: dict[str, tuple[str, ...]] = {
    "anthropic": ("claude",),
    "openai": (
        "gpt-",
        "chatgpt-",
        "o1",
        "o3",
        "o4",
        "text-embedding-",
        "whisper",
        "tts-",
        "dall-e",
        "omni-moderation",
        "computer-use",
        "codex",
        "davinci",
        "babbage",
    ),
}


def model_key(name: str | None) -> str | None:
    """The key two names must share to be matched: lower case, without a provider prefix,
    without a date suffix (``-YYYY-MM-DD``, ``-YYYYMMDD``) or ``-latest``."""
    if name is None or not name.strip():
        return None
    key = name.strip().lower().rsplit("/", 1)[-1]
    key = _DATED.sub("", key)
    return _MINOR_ZERO.sub(r"\1", key)


def from_display_name(name: str) -> str:
    """A Console display name as the API id it stands for: ``Claude Haiku 4.5`` ->
    ``claude-haiku-4-5``, ``Claude Sonnet 3.7`` -> ``claude-3-7-sonnet``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")
    return _DISPLAY_V3.sub(r"claude-\2-\1", slug)


def belongs_to(provider: str, *, recorded_provider: str | None, model: str | None) -> bool:
    """Whether a ledger row is spend with ``provider``: by the provider the ledger recorded,
    else by the model's ``provider/`` prefix, else by the model's family."""
    if recorded_provider:
        return recorded_provider.strip().lower() == provider
    if not model:
        return False
    name = model.strip().lower()
    if "/" in name:
        return name.split("/", 1)[0] == provider
    return name.startswith(_FAMILIES.get(provider, ()))
