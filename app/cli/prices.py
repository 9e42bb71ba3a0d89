"""`usage-ledger prices update --from PATH|URL`: refresh the price table and show what changed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.config import add_pricing_arguments
from app.errors import LedgerError
from app.pricing import service
from app.pricing.sources import TableDiff, cache_path, diff_tables, read_source


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "prices", help="Inspect and refresh the price table."
    )
    commands = parser.add_subparsers(dest="prices_command", required=True, metavar="ACTION")
    update = commands.add_parser(
        "update",
        help="Fetch a price table and print what changed against the current one.",
        description="Read a LiteLLM price map from PATH or URL, compare it with the current "
        "table (--prices / --prices-url / the embedded snapshot) and write it: to --output, "
        "and for a URL into the on-disk cache that --prices-url URL reads.",
    )
    update.add_argument("--from", dest="source", required=True, metavar="PATH|URL")
    update.add_argument("--output", metavar="PATH", help="Also write the new table here.")
    update.add_argument("--dry-run", action="store_true", help="Print the changes only.")
    add_pricing_arguments(update)
    update.set_defaults(func=run_update)


def format_diff(diff: TableDiff, *, limit: int = 200) -> list[str]:
    """Human-readable lines: a summary, then each added, removed and repriced model."""
    lines = [f"added {len(diff.added)}, removed {len(diff.removed)}, repriced {len(diff.repriced)}"]
    lines += [f"+ {key}" for key in diff.added[:limit]]
    lines += [f"- {key}" for key in diff.removed[:limit]]
    for key, changes in list(diff.repriced.items())[:limit]:
        detail = ", ".join(f"{name}: {old} -> {new}" for name, (old, new) in changes.items())
        lines.append(f"~ {key}: {detail}")
    hidden = max(len(diff.added) - limit, 0) + max(len(diff.removed) - limit, 0)
    hidden += max(len(diff.repriced) - limit, 0)
    if hidden:
        lines.append(f"... and {hidden} more")
    return lines


def run_update(ns: argparse.Namespace) -> int:
    try:
        current = service.load_table(prices_path=ns.prices_path, prices_url=ns.prices_url)
        data, new = read_source(ns.source)
    except LedgerError as error:
        print(f"usage-ledger prices update: {error.detail}", file=sys.stderr)
        return 2
    print(f"current: {current.label} sha256 {current.source_id}")
    print(f"new:     {new.label} sha256 {new.source_id}")
    for text in format_diff(diff_tables(current, new)):
        print(text)
    if ns.dry_run:
        return 0
    targets = [Path(ns.output)] if ns.output else []
    if ns.source.startswith(("http://", "https://")):
        targets.append(cache_path(ns.source))
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".partial")
        partial.write_bytes(data)
        partial.replace(target)
        print(f"wrote {target}")
    if not targets:
        print("nothing written: give --output PATH (a file source is used with --prices PATH)")
    return 0
