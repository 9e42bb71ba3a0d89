"""Where a price table comes from: the embedded snapshot, a file, or a URL with an on-disk cache.

A source is always chosen explicitly (``--prices PATH``, ``--prices-url URL`` or their
environment fallbacks); with none, the embedded snapshot prices. A URL is fetched with httpx;
the copy is cached under the cache directory and reused for ``max_age``; when a fetch fails a
cached copy is used (with a warning), and without one the error is ``PricesUnavailable``,
never an empty table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx

from app.pricing.errors import InvalidPriceTable, PricesUnavailable
from app.pricing.table import PriceEntry, PriceTable, default_table, format_rate_usd

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE = timedelta(hours=24)
FETCH_TIMEOUT_SECONDS = 20.0


def cache_dir() -> Path:
    """The on-disk cache of fetched price tables (env USAGE_LEDGER_CACHE_DIR, else XDG)."""
    configured = os.environ.get("USAGE_LEDGER_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "usage-ledger"


def cache_path(url: str, directory: Path | None = None) -> Path:
    """Where the copy of ``url`` is cached."""
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:24]
    return (directory or cache_dir()) / f"prices-{digest}.json"


def load_path(path: str | Path) -> PriceTable:
    """A table from a JSON file in LiteLLM's format."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise InvalidPriceTable(f"cannot read price table {str(path)!r}: {error}") from error
    return PriceTable.from_json(data, label=f"file {path}")


def fetch_bytes(url: str, *, client: httpx.Client | None = None) -> bytes:
    """GET ``url``; any transport error or non-2xx status is ``PricesUnavailable``."""
    try:
        if client is not None:
            response = client.get(url, timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=True)
        else:
            response = httpx.get(url, timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise PricesUnavailable(f"cannot fetch price table from {url}: {error}") from error
    return response.content


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


def load_url(
    url: str,
    *,
    directory: Path | None = None,
    max_age: timedelta = DEFAULT_MAX_AGE,
    client: httpx.Client | None = None,
    refresh: bool = False,
) -> PriceTable:
    """A table from ``url``, through the on-disk cache (see the module docstring)."""
    cached = cache_path(url, directory)
    fresh = cached.exists() and time.time() - cached.stat().st_mtime < max_age.total_seconds()
    if fresh and not refresh:
        return PriceTable.from_json(cached.read_bytes(), label=f"{url} (cached)")
    try:
        data = fetch_bytes(url, client=client)
        table = PriceTable.from_json(data, label=url)
    except (PricesUnavailable, InvalidPriceTable) as error:
        if not cached.exists():
            if isinstance(error, PricesUnavailable):
                raise PricesUnavailable(
                    f"{error.detail}; no cached copy at {cached}", url=url
                ) from error
            raise
        log.warning("price table %s unavailable (%s); using cached copy %s", url, error, cached)
        return PriceTable.from_json(cached.read_bytes(), label=f"{url} (stale cache)")
    _write_atomically(cached, data)
    return table


def load_table(*, prices_path: str | None = None, prices_url: str | None = None) -> PriceTable:
    """The table chosen by settings: a file, else a URL, else the embedded snapshot."""
    if prices_path:
        return load_path(prices_path)
    if prices_url:
        return load_url(prices_url)
    return default_table()


def read_source(source: str, *, client: httpx.Client | None = None) -> tuple[bytes, PriceTable]:
    """The raw bytes and parsed table of a path or http(s) URL (for ``prices update``)."""
    if source.startswith(("http://", "https://")):
        data = fetch_bytes(source, client=client)
        return data, PriceTable.from_json(data, label=source)
    try:
        data = Path(source).read_bytes()
    except OSError as error:
        raise InvalidPriceTable(f"cannot read price table {source!r}: {error}") from error
    return data, PriceTable.from_json(data, label=f"file {source}")


@dataclass(frozen=True, slots=True)
class TableDiff:
    """Models added, removed and repriced between two tables (repriced: rate name -> old, new)."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    repriced: Mapping[str, Mapping[str, tuple[str | None, str | None]]]


def _price_fields(entry: PriceEntry) -> dict[str, str]:
    fields = {name: format_rate_usd(rate) for name, rate in entry.rates.items()}
    for key in ("tiered_pricing", "off_peak_pricing", "search_context_cost_per_query"):
        if key in entry.raw:
            fields[key] = json.dumps(entry.raw[key], sort_keys=True, default=str)
    return fields


def diff_tables(old: PriceTable, new: PriceTable) -> TableDiff:
    """What changed from ``old`` to ``new``, by model key."""
    old_entries, new_entries = old.base_entries(), new.base_entries()
    repriced: dict[str, dict[str, tuple[str | None, str | None]]] = {}
    for key in sorted(set(old_entries) & set(new_entries)):
        before, after = _price_fields(old_entries[key]), _price_fields(new_entries[key])
        if before != after:
            repriced[key] = {
                name: (before.get(name), after.get(name))
                for name in sorted(set(before) | set(after))
                if before.get(name) != after.get(name)
            }
    return TableDiff(
        added=tuple(sorted(set(new_entries) - set(old_entries))),
        removed=tuple(sorted(set(old_entries) - set(new_entries))),
        repriced=repriced,
    )
