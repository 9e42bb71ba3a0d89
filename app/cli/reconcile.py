"""`usage-ledger reconcile`: import a provider's cost export and compare it with the ledger.

Prints one row per UTC day and model: the ledger's cost, the provider's, and the difference
(provider minus ledger), largest absolute difference first, then the totals
(docs/reconciliation.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any, TextIO

from app.cli.common import open_database
from app.config import add_database_arguments
from app.errors import LedgerError
from app.money import format_usd
from app.reconcile import service
from app.reconcile.formats import PROVIDERS
from app.reconcile.service import Report, ReportRow

_NOTES = {"matched": "", "ledger_only": "ledger only", "provider_only": "provider only"}


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from error


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "reconcile",
        help="Compare a provider's cost export with the ledger, per day and model.",
        description="Import OpenAI's organization costs export or Anthropic's cost report "
        "(JSON API response or CSV export; the format is read from the content) and print, per "
        "UTC day and model, the ledger's cost, the provider's and the difference (provider "
        "minus ledger), largest first. Importing the same file again changes nothing.",
    )
    add_database_arguments(parser)
    parser.add_argument("--provider", required=True, choices=PROVIDERS)
    parser.add_argument(
        "--org", default=None, help="The ledger org billed (default: the only org with events)."
    )
    parser.add_argument(
        "--from", dest="period_from", type=_day, default=None, help="First UTC day compared."
    )
    parser.add_argument(
        "--to", dest="period_to", type=_day, default=None, help="Last UTC day compared (inclusive)."
    )
    parser.add_argument(
        "--format", dest="output", choices=("table", "csv", "json"), default="table"
    )
    parser.add_argument("file", help="The export file (JSON or CSV), or - for stdin.")
    parser.set_defaults(func=run)


def _model_label(row: ReportRow) -> str:
    if row.model is not None:
        return row.model
    return f"[{row.line_item}]" if row.line_item is not None else "(no model)"


def _note(row: ReportRow) -> str:
    notes = [_NOTES[row.status]] if _NOTES[row.status] else []
    if not row.provider_exact:
        notes.append("provider figure rounded to 1e-12 USD")
    return "; ".join(notes)


def write_table(report: Report, created: bool, out: TextIO) -> None:
    r = report.reconciliation
    state = "imported" if created else "already imported, unchanged"
    out.write(
        f"reconciliation {r.reconciliation_id} ({state}): {r.provider}, org {r.org}, "
        f"{r.period_start} to {r.period_end - service.DAY} (UTC), {r.format}, "
        f"{r.line_item_count} line items, sha256 {r.source_sha256[:16]}...\n"
    )
    for warning in r.warnings:
        out.write(f"warning: {warning}\n")
    if report.excluded_line_items:
        out.write(
            f"note: {report.excluded_line_items} line items "
            f"({format_usd(report.excluded_provider_pico_usd)} USD) fall outside the period\n"
        )
    header = ("day", "model", "ledger USD", "provider USD", "difference USD", "")
    lines = [
        (
            row.day.isoformat(),
            _model_label(row),
            format_usd(row.ledger_pico_usd),
            format_usd(row.provider_pico_usd),
            format_usd(row.difference_pico_usd),
            _note(row),
        )
        for row in report.rows
    ]
    totals = report.totals
    total = (
        "total",
        "",
        format_usd(totals["ledger_pico_usd"]),
        format_usd(totals["provider_pico_usd"]),
        format_usd(totals["difference_pico_usd"]),
        "",
    )
    widths = [max(len(line[i]) for line in [header, *lines, total]) for i in range(6)]

    def emit(line: tuple[str, ...]) -> None:
        cells = [
            line[i].rjust(widths[i]) if 2 <= i <= 4 else line[i].ljust(widths[i]) for i in range(6)
        ]
        out.write("  ".join(cells).rstrip() + "\n")

    out.write("\n")
    emit(header)
    for line in lines:
        emit(line)
    emit(tuple("-" * w if 2 <= i <= 4 else "" for i, w in enumerate(widths)))
    emit(total)


def write_csv(report: Report, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["day", "model", "line_item", "status", "ledger_usd", "provider_usd", "difference_usd"]
    )
    for row in report.rows:
        writer.writerow(
            [
                row.day.isoformat(),
                row.model or "",
                row.line_item or "",
                row.status,
                format_usd(row.ledger_pico_usd),
                format_usd(row.provider_pico_usd),
                format_usd(row.difference_pico_usd),
            ]
        )
    totals = report.totals
    writer.writerow(
        [
            "total",
            "",
            "",
            "",
            format_usd(totals["ledger_pico_usd"]),
            format_usd(totals["provider_pico_usd"]),
            format_usd(totals["difference_pico_usd"]),
        ]
    )


def _read(path: str) -> str:
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    return raw.decode("utf-8")


def run(ns: argparse.Namespace) -> int:
    try:
        content = _read(ns.file)
    except OSError as error:
        print(f"usage-ledger reconcile: cannot read {ns.file}: {error.strerror}", file=sys.stderr)
        return 2
    except UnicodeDecodeError:
        print(f"usage-ledger reconcile: {ns.file} is not UTF-8 text", file=sys.stderr)
        return 2
    with open_database(ns) as engine:
        try:
            with engine.begin() as conn:
                org = ns.org or service.only_org(conn)
                if org is None:
                    print(
                        "usage-ledger reconcile: name the org with --org (the ledger does not "
                        "hold exactly one)",
                        file=sys.stderr,
                    )
                    return 2
                reconciliation, created = service.import_export(
                    conn,
                    org=org,
                    provider=ns.provider,
                    content=content,
                    period_from=ns.period_from,
                    period_to=ns.period_to,
                )
                report = service.report_of(conn, reconciliation)
        except LedgerError as error:
            field = error.fields.get("field")
            where = ns.file if field == "content" else f"--{field}" if field else "error"
            print(f"usage-ledger reconcile: {where}: {error.detail}", file=sys.stderr)
            return 2
    if ns.output == "json":
        document = {**service.report_to_json(report), "created": created}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    elif ns.output == "csv":
        write_csv(report, sys.stdout)
    else:
        write_table(report, created, sys.stdout)
    return 0
