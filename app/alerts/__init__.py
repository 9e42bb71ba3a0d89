"""Budget alerts and their webhooks, delivered at least once from an outbox (docs/alerts.md)."""
