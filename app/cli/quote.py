"""`usage-ledger quote`: price JSON lines of usage read on stdin, one JSON line out per line in.

Each input line is ``{"model", "provider", "usage", "billing_time"}``; each output line is the
quote document (``app.pricing.service.quote_to_json``) or ``{"error": {"type", "detail", ...}}``
for that line alone: the next lines are still priced.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from app.config import add_pricing_arguments
from app.errors import LedgerError
from app.pricing import service
from app.pricing.errors import InvalidUsage, UnknownModel
from app.pricing.table import PriceTable


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "quote",
        help="Price usage records read as JSON lines on stdin.",
        description="Read {model, provider, usage, billing_time} JSON lines on stdin and "
        "write one quote (or error) JSON line per input line.",
    )
    add_pricing_arguments(parser)
    parser.set_defaults(func=run)


def _error(kind: str, detail: str, **members: Any) -> dict[str, Any]:
    return {"error": {"type": kind, "detail": detail, **members}}


def quote_line(table: PriceTable, text: str) -> dict[str, Any]:
    """The output document for one input line."""
    try:
        request = json.loads(text)
    except ValueError as error:
        return _error("invalid_usage", f"not a JSON object: {error}", field="line")
    if not isinstance(request, dict):
        return _error("invalid_usage", "each line must be a JSON object", field="line")
    model = request.get("model")
    if not isinstance(model, str) or not model.strip():
        return _error("invalid_usage", "model must be a non-empty string", field="model")
    usage = request.get("usage")
    if usage is None:
        usage = {}
    if not isinstance(usage, dict):
        return _error("invalid_usage", "usage must be a JSON object", field="usage")
    try:
        result = service.quote(
            table,
            model=model,
            provider=request.get("provider"),
            usage=usage,
            billing_time=request.get("billing_time"),
        )
    except UnknownModel as error:
        return _error(
            "unknown_model", error.detail, model=error.model, suggestions=error.suggestions
        )
    except InvalidUsage as error:
        return _error("invalid_usage", error.detail, field=error.fields.get("field"))
    except LedgerError as error:
        return _error("invalid_usage", error.detail)
    return service.quote_to_json(result)


def quote_stream(table: PriceTable, lines: Iterable[str], out: TextIO) -> int:
    """Quote each non-blank line; returns how many lines were errors."""
    errors = 0
    for text in lines:
        if not text.strip():
            continue
        document = quote_line(table, text)
        errors += "error" in document
        out.write(json.dumps(document, separators=(",", ":")) + "\n")
        out.flush()
    return errors


def run(ns: argparse.Namespace) -> int:
    try:
        table = service.load_table(prices_path=ns.prices_path, prices_url=ns.prices_url)
    except LedgerError as error:
        print(f"usage-ledger quote: {error.detail}", file=sys.stderr)
        return 2
    quote_stream(table, sys.stdin, sys.stdout)
    return 0
