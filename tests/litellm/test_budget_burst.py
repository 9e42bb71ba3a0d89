"""The same burst of requests without ``max_tokens`` against a 1 USD hard budget, through the
same proxy: once under usage-ledger (reserve with clamp, cap written into the request), once
under LiteLLM's own key budget (its reservation of the worst case). The mock provider answers
as many tokens as allowed: exactly the cap when the request has one, else 2,000 tokens."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import httpx

from tests.litellm.conftest import Stack, wait_until

BURST = 16
LIMIT_USD = Decimal("1")


def _burst(stack: Stack, key: str) -> list[httpx.Response]:
    """``BURST`` requests sent at once, none with max_tokens."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=BURST)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{stack.proxy.url}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        json={
                            "model": "gpt-4o",
                            "messages": [{"role": "user", "content": f"Write a long story, {n}."}],
                        },
                    )
                    for n in range(BURST)
                )
            )

    return asyncio.run(run())


def _cost(stack: Stack, response: httpx.Response) -> Decimal:
    usage: dict[str, Any] = response.json()["usage"]
    return stack.quote(
        {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]}
    )


def test_a_burst_spends_the_hard_budget_without_overspending(stack: Stack) -> None:
    team, budget = stack.team_budget(str(LIMIT_USD))
    responses = _burst(stack, f"sk-ul:{team}:burst")
    admitted = [r for r in responses if r.status_code == 200]
    assert {r.status_code for r in responses} <= {200, 402}, [r.text for r in responses]

    def settled() -> Any:
        after = stack.admin.get_budget(budget.budget_id)
        committed = len(stack.request_ids(team)) >= len(admitted)
        return after if committed and after.held_usd == 0 else None

    after = wait_until(settled, what="every admitted request to be committed")
    provider_cost = sum((_cost(stack, r) for r in admitted), Decimal(0))
    print(
        f"\nusage-ledger: {len(admitted)}/{BURST} admitted, spent {after.spent_usd} of "
        f"{LIMIT_USD} USD ({after.spent_usd / LIMIT_USD:.2%}), provider cost {provider_cost}"
    )
    assert after.spent_usd == provider_cost  # every admitted answer charged, exactly
    assert after.spent_usd <= LIMIT_USD  # zero overspend
    assert after.spent_usd >= LIMIT_USD * Decimal("0.99")


def test_litellms_own_budget_on_the_same_burst(stack: Stack) -> None:
    key = f"sk-ll:burst-{uuid.uuid4().hex[:8]}:{LIMIT_USD}"
    responses = _burst(stack, key)
    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    # LiteLLM's own refusal: 422, "budget_exceeded" (the callback's is a 402).
    assert all(r.status_code == 422 for r in refused), [r.text for r in refused]
    assert all(r.json()["error"]["type"] == "budget_exceeded" for r in refused)
    # What the admitted answers cost at the provider, priced exactly by the ledger, and what
    # LiteLLM reported for them (its float response cost header).
    spent = sum((_cost(stack, r) for r in admitted), Decimal(0))
    reported = sum(  # LiteLLM's own figure, a float: shown, never used for money
        float(r.headers.get("x-litellm-response-cost", 0)) for r in admitted
    )
    print(
        f"\nLiteLLM's key budget: {len(admitted)}/{BURST} admitted, spent {spent} of "
        f"{LIMIT_USD} USD ({spent / LIMIT_USD:.2%}); LiteLLM reported {reported!r}"
    )
    # LiteLLM holds every request at the model's whole output window (16,384 tokens of gpt-4o)
    # while each answer is 2,000 tokens: most of the burst is refused, most of the budget idle.
    assert len(refused) > 0
    assert spent < LIMIT_USD * Decimal("0.5")
