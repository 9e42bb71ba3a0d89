"""Reconciliation errors (problem+json via app.errors)."""

from __future__ import annotations

from uuid import UUID

from app.errors import Conflict, InvalidInput, NotFound


class InvalidExport(InvalidInput):
    """A provider file that cannot be read as a cost export; ``location`` says where in it."""

    title = "Invalid provider export"

    def __init__(self, detail: str, *, location: str = "") -> None:
        super().__init__(
            f"{location}: {detail}" if location else detail, field="content", location=location
        )
        self.location = location


class ReconciliationNotFound(NotFound):
    def __init__(self, reconciliation_id: UUID) -> None:
        super().__init__(
            f"no reconciliation {reconciliation_id}", reconciliation_id=str(reconciliation_id)
        )


class ReconciliationConflict(Conflict):
    """The same file was imported for this org before, as another provider or period."""

    def __init__(self, detail: str, *, reconciliation_id: UUID, field: str) -> None:
        super().__init__(detail, reconciliation_id=str(reconciliation_id), field=field)
