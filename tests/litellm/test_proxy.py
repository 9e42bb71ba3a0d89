"""LiteLLM's proxy with the usage-ledger callback, driven as an end client drives it: chat
completions (plain and streamed), a budget refusal, a clamp, a provider error, abandoned
streams."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import httpx

from tests.litellm.conftest import Stack, wait_until

PROMPT = [{"role": "user", "content": "Write a long story about ledgers."}]
GPT_4O_MAX_OUTPUT = 16384  # gpt-4o's max_output_tokens in the embedded price table


def _prompt(marker: str = "") -> list[dict[str, str]]:
    """A prompt no other test sends, so the mock's log can be searched for it."""
    return [{"role": "user", "content": f"Write a long story. {marker} #{uuid.uuid4().hex}"}]


def _received(stack: Stack, messages: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The bodies the mock provider received for ``messages``."""
    with stack.provider.lock:
        return [r for r in stack.provider.requests if r.get("messages") == messages]


def _only_story(stack: Stack, team: str, state: str) -> dict[str, Any]:
    """The one request charged to ``team``, once it reached ``state``."""

    def settled() -> dict[str, Any] | None:
        request_ids = stack.request_ids(team)
        if len(request_ids) != 1:
            return None
        story = stack.story(request_ids[0])
        return story if story["state"] == state else None

    story: dict[str, Any] = wait_until(settled, what=f"a request of {team} to be {state}")
    return story


def _stream(
    stack: Stack,
    key: str,
    body: dict[str, Any],
    *,
    stop_after: int | None = None,
    timeout: float = 60.0,  # money-safe: seconds
) -> tuple[list[dict[str, Any]], str]:
    """Chunks of a streamed completion (all, or the first ``stop_after`` with content before
    the client hangs up) and the text received."""
    chunks: list[dict[str, Any]] = []
    text = []
    with httpx.stream(
        "POST",
        f"{stack.proxy.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={**body, "stream": True},
        timeout=timeout,
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            chunks.append(chunk)
            for choice in chunk.get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
            if stop_after is not None and sum(1 for t in text if t) >= stop_after:
                break  # leaving the block closes the connection mid-stream
    return chunks, "".join(text)


def test_chat_completion_is_committed_at_the_providers_usage(stack: Stack) -> None:
    team, budget = stack.team_budget("5")
    response = stack.proxy.chat(
        f"sk-ul:{team}:ann",
        {"model": "gpt-4o", "messages": PROMPT, "max_tokens": 300, "tags": ["nightly"]},
    )
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["completion_tokens"] == 300  # the client's own cap was below the ledger's

    story = _only_story(stack, team, "committed")
    expected = stack.quote(
        {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]}
    )
    assert Decimal(story["cost_usd"]) == expected
    after = stack.admin.get_budget(budget.budget_id)
    assert (after.spent_usd, after.held_usd) == (expected, Decimal(0))
    [message] = story["messages"]
    assert (message["prompt_tokens"], message["completion_tokens"]) == (
        usage["prompt_tokens"],
        300,
    )
    assert message["metadata"]["endpoint"] == "/v1/chat/completions"
    assert message["metadata"]["tags"] == ["nightly"]
    assert message["metadata"]["usage_source"] == "provider"
    assert message["metadata"]["model_group"] == "gpt-4o"
    assert isinstance(message["ttft_ms"], int) and isinstance(message["duration_ms"], int)
    assert 0 <= message["ttft_ms"] <= message["duration_ms"]
    subjects = {(s["type"], s["id"]) for s in story["subjects"]}
    assert {("team", team), ("user", "ann"), ("org", "acme-org")} <= subjects
    assert any(kind == "key" for kind, _ in subjects)


def test_request_without_max_tokens_is_sent_with_the_ledgers_cap(stack: Stack) -> None:
    team, _ = stack.team_budget("5")
    messages = _prompt()
    response = stack.proxy.chat(f"sk-ul:{team}:bo", {"model": "gpt-4o", "messages": messages})
    assert response.status_code == 200, response.text

    [sent] = _received(stack, messages)
    # The ledger's bound for a request without one: the model's whole output window, which the
    # provider now enforces too (the mock answers as many tokens as allowed).
    assert sent["max_tokens"] == GPT_4O_MAX_OUTPUT
    assert response.json()["usage"]["completion_tokens"] == GPT_4O_MAX_OUTPUT
    _only_story(stack, team, "committed")


def test_clamped_request_spends_what_the_budget_holds_and_no_more(stack: Stack) -> None:
    team, budget = stack.team_budget("0.01")
    messages = _prompt()
    response = stack.proxy.chat(f"sk-ul:{team}:cy", {"model": "gpt-4o", "messages": messages})
    assert response.status_code == 200, response.text

    [sent] = _received(stack, messages)
    assert 900 < sent["max_tokens"] < 1000  # 0.01 USD at 10 USD per million output tokens
    story = _only_story(stack, team, "committed")
    # The hold took all but less than one output token's price (0.00001 USD) ...
    assert Decimal("0.01") - Decimal(story["reserved_usd"]) < Decimal("0.00001")
    # ... and the charge is the hold less the input bound's margin over the real prompt.
    after = stack.admin.get_budget(budget.budget_id)
    assert after.spent_usd == Decimal(story["cost_usd"])
    assert Decimal("0.009") <= after.spent_usd <= Decimal("0.01")


def test_mock_response_model_is_ledgered_from_litellms_token_counts(stack: Stack) -> None:
    team, _ = stack.team_budget("5")
    response = stack.proxy.chat(
        f"sk-ul:{team}:di", {"model": "gpt-4o-mocked", "messages": _prompt()}
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith("Hello")
    usage = response.json()["usage"]

    story = _only_story(stack, team, "committed")
    [message] = story["messages"]
    # LiteLLM's mock_response keeps no provider body, so its token counts are what is priced.
    assert message["metadata"]["usage_source"] == "litellm"
    assert Decimal(story["cost_usd"]) == stack.quote(
        {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]}
    )


def test_streamed_completion_is_committed_at_the_streams_usage(stack: Stack) -> None:
    team, budget = stack.team_budget("5")
    chunks, text = _stream(
        stack,
        f"sk-ul:{team}:eve",
        {
            "model": "gpt-4o",
            "messages": _prompt(),
            "max_tokens": 700,
            "stream_options": {"include_usage": True},
        },
    )
    assert text == "tok " * 700
    [usage] = [chunk["usage"] for chunk in chunks if chunk.get("usage")]

    story = _only_story(stack, team, "committed")
    expected = stack.quote(
        {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]}
    )
    assert Decimal(story["cost_usd"]) == expected
    assert stack.admin.get_budget(budget.budget_id).held_usd == 0
    [message] = story["messages"]
    assert message["completion_tokens"] == 700
    assert message["ttft_ms"] is not None and message["duration_ms"] is not None


def test_budget_refusal_reaches_the_end_client_as_402(stack: Stack) -> None:
    team, budget = stack.team_budget("0.0001")
    messages = _prompt()
    response = stack.proxy.chat(f"sk-ul:{team}:fay", {"model": "gpt-4o", "messages": messages})

    assert response.status_code == 402, response.text
    error = response.json()["error"]
    assert error["type"] == "budget_exceeded"
    assert error["message"].startswith("Budget exceeded: budget ")
    problem = error["provider_specific_fields"]["usage_ledger"]
    assert problem["budget_id"] == budget.budget_id
    assert problem["remaining_usd"] == "0.0001"
    assert _received(stack, messages) == []  # the provider was never called
    after = stack.admin.get_budget(budget.budget_id)
    assert (after.spent_usd, after.held_usd) == (Decimal(0), Decimal(0))


def test_provider_error_cancels_the_hold(stack: Stack) -> None:
    team, budget = stack.team_budget("5")
    response = stack.proxy.chat(
        f"sk-ul:{team}:gus", {"model": "gpt-4o-broken", "messages": _prompt()}
    )
    assert response.status_code == 500, response.text

    story = _only_story(stack, team, "cancelled")
    assert Decimal(story["cost_usd"] or 0) == 0
    after = stack.admin.get_budget(budget.budget_id)
    assert (after.spent_usd, after.held_usd) == (Decimal(0), Decimal(0))


def test_stream_abandoned_midway_is_committed_with_what_was_produced(stack: Stack) -> None:
    team, budget = stack.team_budget("5")
    _, text = _stream(
        stack,
        f"sk-ul:{team}:hal",
        {"model": "gpt-4o", "messages": _prompt("[slow]"), "max_tokens": 2048},
        stop_after=2,
    )
    assert 0 < len(text) < len("tok " * 2048)

    story = _only_story(stack, team, "committed")
    [message] = story["messages"]
    assert 0 < message["completion_tokens"] < 2048
    full = stack.quote({"prompt_tokens": message["prompt_tokens"], "completion_tokens": 2048})
    assert 0 < Decimal(story["cost_usd"]) < full
    assert stack.admin.get_budget(budget.budget_id).held_usd == 0


def test_stream_abandoned_before_any_output_is_cancelled(stack: Stack) -> None:
    team, budget = stack.team_budget("5")
    try:
        _stream(
            stack,
            f"sk-ul:{team}:ida",
            {"model": "gpt-4o", "messages": _prompt("[late]"), "max_tokens": 64},
            stop_after=1,
            timeout=1.0,
        )
    except httpx.ReadTimeout:
        pass
    else:
        raise AssertionError("the mock provider answers [late] after the client gives up")

    _only_story(stack, team, "cancelled")
    after = stack.admin.get_budget(budget.budget_id)
    assert (after.spent_usd, after.held_usd) == (Decimal(0), Decimal(0))
