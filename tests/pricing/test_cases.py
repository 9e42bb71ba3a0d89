"""Every shared reference case reproduced exactly: Decimal equality, no tolerance."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from app.pricing import service
from app.pricing.table import default_table

_SHARED = Path(__file__).parents[3] / "shared" / "pricing-cases" / "cases.jsonl"
_LOCAL = Path(__file__).parent / "data" / "cases.jsonl"
CASES_PATH = _SHARED if _SHARED.exists() else _LOCAL


def _cases() -> list[dict[str, Any]]:
    with CASES_PATH.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


CASES = _cases()


def test_the_case_file_is_complete() -> None:
    assert len(CASES) == 223


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_case_reproduced_exactly(case: dict[str, Any]) -> None:
    result = service.quote_to_json(
        service.quote(
            default_table(),
            model=case["model"],
            provider=case["provider"],
            usage=case["usage"],
            billing_time=case["billing_time"],
        )
    )
    assert result["model_key"] == case["resolved_key"]
    for name in ("prompt_usd", "completion_usd", "total_usd"):
        assert Decimal(result[name]) == Decimal(case["expected"][name]), name
