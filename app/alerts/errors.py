"""Alert and webhook conditions."""

from __future__ import annotations

from app.errors import NotFound


class WebhookNotFound(NotFound):
    """No such webhook (for this key's org)."""
