"""The pricing domain's exceptions."""

from __future__ import annotations

from collections.abc import Sequence

from app.errors import InvalidInput, LedgerError


class UnknownModel(LedgerError):
    """The model resolves to no price table entry, or its entry prices nothing for this usage."""

    status = 422
    title = "Unknown or unpriced model"

    def __init__(self, detail: str, *, model: str, suggestions: Sequence[str] = ()) -> None:
        super().__init__(detail, model=model, suggestions=list(suggestions))
        self.model = model
        self.suggestions = list(suggestions)


class InvalidUsage(InvalidInput):
    """A usage record that cannot be priced as given; ``field`` names the offending field."""


class InvalidPriceTable(LedgerError):
    """A price table that cannot be loaded: bad JSON, an empty map, a rate that is no price."""

    status = 422
    title = "Invalid price table"


class PricesUnavailable(LedgerError):
    """A price table chosen by URL could not be fetched and no cached copy exists."""

    status = 503
    title = "Price table unavailable"
