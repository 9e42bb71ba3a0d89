"""Settings of the gateway plug-ins, read once from the environment, and the mapping from a
gateway's auth context to the ledger's subjects. No gateway package is imported here."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAIL_CLOSED = "closed"
FAIL_OPEN = "open"
POLICIES = (FAIL_CLOSED, FAIL_OPEN)

# Who pays for a call, from LiteLLM's UserAPIKeyAuth: ledger subject type = attribute, with
# "|" for fallbacks. ``token`` is the hash of the virtual key, stable across renames.
DEFAULT_SUBJECTS = "key=token,user=user_id,team=team_id,org=org_id"

# Key or team metadata that overrides the defaults for the callers it describes (an admin sets
# it in LiteLLM, so no end client can choose it).
METADATA_KEY = "usage_ledger"

_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,199}$")
_SAFE_CHAR = re.compile(r"[A-Za-z0-9._:@/+-]")


class ConfigurationError(ValueError):
    """A setting that cannot be used; raised when the proxy loads the callback."""


@dataclass(frozen=True)
class SubjectRule:
    """One ledger subject per call: its type, and the auth attributes that give its id."""

    subject_type: str
    attributes: tuple[str, ...]


@dataclass(frozen=True)
class LedgerSettings:
    """Where the ledger is and how to behave when it cannot answer (docs/litellm.md)."""

    url: str
    api_key: str
    org: str | None = None
    subjects: tuple[SubjectRule, ...] = ()
    failure_policy: str = FAIL_CLOSED
    spool_path: Path = Path("usage-ledger-spool.jsonl")
    timeout_seconds: float = 5.0  # money-safe: seconds
    max_retries: int = 2
    hold_ttl_seconds: int = 600
    drain_interval_seconds: float = 5.0  # money-safe: seconds
    stream_settle_grace_seconds: float = 30.0  # money-safe: seconds

    def __post_init__(self) -> None:
        if self.failure_policy not in POLICIES:
            raise ConfigurationError(
                f"failure policy must be one of {', '.join(POLICIES)}, not {self.failure_policy!r}"
            )
        if not self.subjects:
            object.__setattr__(self, "subjects", parse_subjects(DEFAULT_SUBJECTS))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LedgerSettings:
        """Settings from ``USAGE_LEDGER_*`` variables; URL and key are required."""
        env = os.environ if env is None else env
        url = env.get("USAGE_LEDGER_URL", "").strip()
        api_key = env.get("USAGE_LEDGER_API_KEY", "").strip()
        if not url or not api_key:
            raise ConfigurationError(
                "set USAGE_LEDGER_URL and USAGE_LEDGER_API_KEY (a gateway key) for the callback"
            )
        state = Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        return cls(
            url=url,
            api_key=api_key,
            org=env.get("USAGE_LEDGER_ORG") or None,
            subjects=parse_subjects(env.get("USAGE_LEDGER_SUBJECTS") or DEFAULT_SUBJECTS),
            failure_policy=(env.get("USAGE_LEDGER_FAILURE_POLICY") or FAIL_CLOSED).lower(),
            spool_path=Path(
                env.get("USAGE_LEDGER_SPOOL") or state / "usage-ledger" / "litellm-spool.jsonl"
            ),
            timeout_seconds=_number(env, "USAGE_LEDGER_TIMEOUT_SECONDS", 5.0),
            max_retries=int(_number(env, "USAGE_LEDGER_MAX_RETRIES", 2)),
            hold_ttl_seconds=int(_number(env, "USAGE_LEDGER_HOLD_TTL_SECONDS", 600)),
            drain_interval_seconds=_number(env, "USAGE_LEDGER_DRAIN_SECONDS", 5.0),
            stream_settle_grace_seconds=_number(env, "USAGE_LEDGER_STREAM_GRACE_SECONDS", 30.0),
        )


def _number(env: Mapping[str, str], name: str, default: float) -> float:  # money-safe: seconds
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)  # money-safe: a duration or a count, never money
    except ValueError as error:
        raise ConfigurationError(f"{name} must be a number, not {raw!r}") from error
    if value < 0:
        raise ConfigurationError(f"{name} must not be negative")
    return value


def parse_subjects(spec: str) -> tuple[SubjectRule, ...]:
    """``"team=team_id,key=key_alias|token"`` as rules, in the order given."""
    rules = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        subject_type, sep, attributes = part.partition("=")
        names = tuple(a.strip() for a in attributes.split("|") if a.strip())
        if not sep or not _IDENTIFIER.match(subject_type.strip()) or not names:
            raise ConfigurationError(
                f"subject rule {part!r} must look like type=attribute or type=attr1|attr2"
            )
        rules.append(SubjectRule(subject_type.strip(), names))
    if not rules:
        raise ConfigurationError("USAGE_LEDGER_SUBJECTS names no subject")
    return tuple(rules)


def subject_id(value: object) -> str:
    """A ledger identifier for any auth value, one-to-one.

    Characters the ledger does not accept (and ``=``, the escape) become ``=XX`` per UTF-8 byte.
    An id that starts with another character than a letter or digit, or is still longer than
    200 characters, becomes ``sha256=Z<hex>``: ``=Z`` never comes out of the escaping (whose
    digits are 0-9A-F), so two different LiteLLM ids never share a budget.
    """
    text = str(value)
    escaped = "".join(
        char if _SAFE_CHAR.match(char) else "".join(f"={byte:02X}" for byte in char.encode())
        for char in text
    )
    if not text[:1].isascii() or not text[:1].isalnum() or len(escaped) > 200:
        return "sha256=Z" + hashlib.sha256(text.encode()).hexdigest()
    return escaped


def subjects_for(rules: tuple[SubjectRule, ...], auth: Any) -> list[tuple[str, str]]:
    """The (type, id) subjects of a call: each rule's first attribute with a value."""
    subjects = []
    for rule in rules:
        for attribute in rule.attributes:
            value = getattr(auth, attribute, None)
            if value not in (None, ""):
                subjects.append((rule.subject_type, subject_id(value)))
                break
    return subjects


@dataclass(frozen=True)
class CallerPolicy:
    """Whether the ledger applies to a caller, and what to do when it is down."""

    enabled: bool
    failure_policy: str


def caller_policy(default: str, auth: Any) -> CallerPolicy:
    """Key metadata overrides team metadata, which overrides the configured default:
    ``{"usage_ledger": {"failure_policy": "open"}}`` or ``{"usage_ledger": {"enabled": false}}``.
    """
    enabled, policy = True, default
    for source in (getattr(auth, "team_metadata", None), getattr(auth, "metadata", None)):
        settings = source.get(METADATA_KEY) if isinstance(source, Mapping) else None
        if not isinstance(settings, Mapping):
            continue
        if isinstance(settings.get("enabled"), bool):
            enabled = settings["enabled"]
        if settings.get("failure_policy") in POLICIES:
            policy = str(settings["failure_policy"])
    return CallerPolicy(enabled, policy)
