"""The ledger down: fail closed refuses calls (the default); fail open lets them through and
records them from the local spool once the ledger is back, losing none."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from tests.litellm.conftest import Stack, wait_until
from tests.litellm.test_proxy import _only_story, _prompt, _received


def _spooled(stack: Stack) -> list[dict[str, Any]]:
    if not stack.proxy.spool.exists():
        return []
    lines = stack.proxy.spool.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_ledger_down_fails_closed_by_default(stack: Stack) -> None:
    team, budget = stack.team_budget("5")
    messages = _prompt()
    stack.ledger.stop()
    try:
        response = stack.proxy.chat(f"sk-ul:{team}:jo", {"model": "gpt-4o", "messages": messages})
    finally:
        stack.ledger.start()

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["type"] == "budget_unavailable"
    assert _received(stack, messages) == []  # refused before the provider was called
    assert stack.request_ids(team) == []
    assert stack.admin.get_budget(budget.budget_id).spent_usd == 0


def test_ledger_down_fails_open_and_records_the_call_from_the_spool(stack: Stack) -> None:
    team, budget = stack.team_budget("5")
    messages = _prompt()
    stack.ledger.stop()
    try:
        response = stack.proxy.chat(
            f"sk-ul:{team}:kim:open", {"model": "gpt-4o", "messages": messages, "max_tokens": 90}
        )
        assert response.status_code == 200, response.text
        # Recorded locally while the ledger is away: the proxy's success event found it down.
        entries = wait_until(
            lambda: [e for e in _spooled(stack) if team in json.dumps(e)],
            what="the call to be spooled",
        )
        assert [e["operation"] for e in entries] == ["usage"]
    finally:
        stack.ledger.start()

    usage = response.json()["usage"]
    story = _only_story(stack, team, "recorded")
    expected = stack.quote(
        {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]}
    )
    assert Decimal(story["cost_usd"]) == expected
    assert stack.admin.get_budget(budget.budget_id).spent_usd == expected
    wait_until(lambda: not [e for e in _spooled(stack) if team in json.dumps(e)], what="a drain")
