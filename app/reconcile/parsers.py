"""Read a provider's cost export, whichever documented shape it has: told from the content."""

from __future__ import annotations

import csv
import io

from app.errors import InvalidInput
from app.reconcile import anthropic_costs, openai_costs
from app.reconcile.errors import InvalidExport
from app.reconcile.formats import PROVIDERS, ProviderExport, load_json, pages_of

FORMATS = (
    openai_costs.JSON_FORMAT,
    openai_costs.CSV_FORMAT,
    anthropic_costs.JSON_FORMAT,
    anthropic_costs.CSV_FORMAT,
)
_NAMES = {"openai": "an OpenAI costs export", "anthropic": "an Anthropic cost report"}


def parse_export(provider: str, content: str) -> ProviderExport:
    """The line items of ``content``, a cost export of ``provider`` (JSON or CSV)."""
    if provider not in PROVIDERS:
        raise InvalidInput(f"provider must be one of {', '.join(PROVIDERS)}", field="provider")
    text = content.removeprefix("\ufeff")
    if not text.strip():
        raise InvalidExport("the file is empty")
    if text.lstrip()[0] in "[{":
        exported = _parse_json(provider, text)
    else:
        try:
            exported = _parse_csv(text)
        except csv.Error as error:
            raise InvalidExport(f"not a readable CSV file: {error}") from error
    if exported.provider != provider:
        raise InvalidInput(
            f"the file is {_NAMES[exported.provider]}, but provider is {provider!r}",
            field="provider",
        )
    return exported


def _parse_json(provider: str, text: str) -> ProviderExport:
    document = load_json(text)
    if openai_costs.is_costs_json(document):
        return openai_costs.parse_json(document)
    if anthropic_costs.is_cost_report_json(document):
        return anthropic_costs.parse_json(document)
    if any(page["data"] for page in pages_of(document)):
        raise InvalidExport(
            "buckets have neither start_time (OpenAI costs) nor starting_at (Anthropic cost "
            "report)",
            location="data[0]",
        )
    # Pages without a single bucket carry no format of their own: the provider named decides.
    parser = openai_costs.parse_json if provider == "openai" else anthropic_costs.parse_json
    return parser(document)


def _parse_csv(text: str) -> ProviderExport:
    header = [name.strip() for name in next(csv.reader(io.StringIO(text, newline="")), [])]
    if openai_costs.is_costs_csv(header):
        return openai_costs.parse_csv(text)
    if anthropic_costs.is_cost_csv(header):
        return anthropic_costs.parse_csv(text)
    if anthropic_costs.is_usage_csv(header) or "num_model_requests" in header:
        raise InvalidExport(
            "this is a usage export (token counts, no cost): export the cost report instead",
            location="line 1",
        )
    raise InvalidExport(
        "not a known cost export: expected OpenAI's costs CSV (amount_value, start_time, "
        "line_item, ...) or Anthropic's cost CSV (usage_date_utc, model, cost_usd, ...); "
        f"found columns {', '.join(header[:12]) or 'none'}",
        location="line 1",
    )
