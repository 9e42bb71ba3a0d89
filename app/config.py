"""Settings, parsed in one place: CLI flags first, environment variables as fallback."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path


def default_data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data when no database URL is configured.

    As root the home directory is avoided: the embedded server runs as an unprivileged
    system user and would need every parent directory opened to it (see POSTGRES notes).
    """
    if os.geteuid() == 0:
        return Path("/var/lib/usage-ledger")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "usage-ledger"


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8000
    expiry_sweep_seconds: int = 5
    rollup_fold_seconds: int = 1
    default_hold_ttl_seconds: int = 600
    lock_timeout_ms: int = 5000
    pool_size: int = 16
    prices_path: str | None = None
    prices_url: str | None = None
    insecure_no_auth: bool = False
    # Connection faults (docs/reliability.md). 0 ms: no statement timeout, PostgreSQL's
    # default, for commands such as replay that may run long; `serve` defaults to 30 s.
    statement_timeout_ms: int = 0
    pool_timeout_seconds: float = 10.0
    connect_timeout_seconds: int = 10
    pool_pre_ping: bool = False
    # FastAPI's native OpenTelemetry spans and metrics (they need a provider configured in the
    # process, e.g. by opentelemetry-instrument); off, their per-request checks cost nothing.
    opentelemetry: bool = False

    @staticmethod
    def from_namespace(ns: argparse.Namespace) -> Settings:
        """Build settings from parsed flags; every flag has an environment fallback."""
        values = {
            name: getattr(ns, name) for name in _FIELDS if getattr(ns, name, None) is not None
        }
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        return Settings(**values)


_FIELDS = (
    "database_url",
    "data_dir",
    "host",
    "port",
    "expiry_sweep_seconds",
    "rollup_fold_seconds",
    "default_hold_ttl_seconds",
    "lock_timeout_ms",
    "pool_size",
    "prices_path",
    "prices_url",
    "insecure_no_auth",
    "statement_timeout_ms",
    "pool_timeout_seconds",
    "connect_timeout_seconds",
    "pool_pre_ping",
    "opentelemetry",
)


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def _env_int(name: str) -> int | None:
    value = _env(name)
    return int(value) if value is not None else None


def _env_float(name: str) -> float | None:  # money-safe: seconds
    value = _env(name)
    return float(value) if value is not None else None  # money-safe: seconds


def _env_flag(name: str) -> bool | None:
    value = _env(name)
    if value is None:
        return None
    return value.strip().lower() in {"1", "true", "yes", "on"}


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every command needs to find the same database as `serve`."""
    parser.add_argument(
        "--database-url",
        default=_env("DATABASE_URL"),
        help="PostgreSQL URL (env DATABASE_URL). Unset: an embedded server under --data-dir.",
    )
    parser.add_argument(
        "--data-dir",
        default=_env("USAGE_LEDGER_DATA_DIR"),
        help="Data directory of the embedded PostgreSQL (env USAGE_LEDGER_DATA_DIR).",
    )
    parser.add_argument(
        "--lock-timeout-ms",
        type=int,
        default=_env_int("USAGE_LEDGER_LOCK_TIMEOUT_MS"),
        help="Longest wait for a budget row lock (env USAGE_LEDGER_LOCK_TIMEOUT_MS).",
    )


def add_pricing_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags choosing the price table."""
    parser.add_argument(
        "--prices",
        dest="prices_path",
        default=_env("USAGE_LEDGER_PRICES"),
        help="Price table JSON in LiteLLM's format (env USAGE_LEDGER_PRICES).",
    )
    parser.add_argument(
        "--prices-url",
        default=_env("USAGE_LEDGER_PRICES_URL"),
        help="Fetch the price table from this URL, cached on disk (env USAGE_LEDGER_PRICES_URL).",
    )


SERVE_STATEMENT_TIMEOUT_MS = 30_000


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `serve`."""
    parser.add_argument("--host", default=_env("USAGE_LEDGER_HOST"), help="Bind address.")
    parser.add_argument(
        "--port", type=int, default=_env_int("USAGE_LEDGER_PORT"), help="Bind port."
    )
    parser.add_argument(
        "--expiry-sweep-seconds",
        type=int,
        default=_env_int("USAGE_LEDGER_EXPIRY_SWEEP_SECONDS"),
        help="How often serve expires overdue holds.",
    )
    parser.add_argument(
        "--rollup-fold-seconds",
        type=int,
        default=_env_int("USAGE_LEDGER_ROLLUP_FOLD_SECONDS"),
        help="How often serve folds new usage events into the report rollups.",
    )
    parser.add_argument(
        "--default-hold-ttl-seconds",
        type=int,
        default=_env_int("USAGE_LEDGER_DEFAULT_HOLD_TTL_SECONDS"),
        help="Hold lifetime when a reservation names none.",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=_env_int("USAGE_LEDGER_POOL_SIZE"),
        help="Database connections kept by the server.",
    )
    statement_timeout_ms = _env_int("USAGE_LEDGER_STATEMENT_TIMEOUT_MS")
    parser.add_argument(
        "--statement-timeout-ms",
        type=int,
        default=SERVE_STATEMENT_TIMEOUT_MS
        if statement_timeout_ms is None
        else statement_timeout_ms,
        help="Longest statement before PostgreSQL cancels it, answered 504; 0: none "
        f"(env USAGE_LEDGER_STATEMENT_TIMEOUT_MS, default {SERVE_STATEMENT_TIMEOUT_MS}).",
    )
    parser.add_argument(
        "--pool-timeout-seconds",
        type=float,  # money-safe: seconds
        default=_env_float("USAGE_LEDGER_POOL_TIMEOUT_SECONDS"),
        help="Longest wait for a free pooled connection before a 503 (env "
        "USAGE_LEDGER_POOL_TIMEOUT_SECONDS, default 10).",
    )
    parser.add_argument(
        "--connect-timeout-seconds",
        type=int,
        default=_env_int("USAGE_LEDGER_CONNECT_TIMEOUT_SECONDS"),
        help="Longest wait to open a database connection; 0: none (env "
        "USAGE_LEDGER_CONNECT_TIMEOUT_SECONDS, default 10).",
    )
    parser.add_argument(
        "--pool-pre-ping",
        action="store_const",
        const=True,
        default=_env_flag("USAGE_LEDGER_POOL_PRE_PING"),
        help="Test each pooled connection before use, so connections dropped while idle cost "
        "no request a 503 (a round trip per checkout; env USAGE_LEDGER_POOL_PRE_PING).",
    )
    parser.add_argument(
        "--opentelemetry",
        action="store_const",
        const=True,
        default=_env_flag("USAGE_LEDGER_OPENTELEMETRY"),
        help="Let FastAPI emit OpenTelemetry spans and metrics to the process's providers "
        "(configured by e.g. opentelemetry-instrument; env USAGE_LEDGER_OPENTELEMETRY). Off: "
        "no per-request telemetry checks.",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_const",
        const=True,
        default=_env_flag("USAGE_LEDGER_INSECURE_NO_AUTH"),
        help="Serve without API keys (local demos only).",
    )
