"""The gateway and budget endpoints through HTTP, against a real PostgreSQL."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.overrides.service import PriceBook
from app.pricing.table import PriceTable

PROBLEM = "application/problem+json"


def _budget(client: TestClient, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "org": "acme",
        "subject": {"type": "team", "id": "ml"},
        "limit_usd": "1.00",
        "period": "day",
        "mode": "hard",
    }
    body.update(overrides)
    response = client.post("/v1/budgets", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def _reserve(client: TestClient, request_id: str, **overrides: Any) -> Any:
    body: dict[str, Any] = {
        "org": "acme",
        "request_id": request_id,
        "subjects": [{"type": "org", "id": "acme"}, {"type": "team", "id": "ml"}],
        "model": "gpt-4o",
        "amount_usd": "0.50",
    }
    body.update(overrides)
    return client.post("/v1/reservations", json=body)


def test_budget_lifecycle(client: TestClient) -> None:
    created = _budget(client, alert_thresholds=["0.5", "0.9", "1.0"])
    assert created["limit_usd"] == "1" and created["remaining_usd"] == "1"
    assert created["alert_level"] == "ok"
    budget_id = created["budget_id"]
    fetched = client.get(f"/v1/budgets/{budget_id}").json()
    assert fetched["period_start"] < fetched["period_end"]
    changed = client.patch(f"/v1/budgets/{budget_id}", json={"limit_usd": "2.5"}).json()
    assert changed["limit_usd"] == "2.5" and changed["version"] == 2
    listing = client.get("/v1/budgets", params={"subject_type": "team", "subject_id": "ml"})
    assert [b["budget_id"] for b in listing.json()["budgets"]] == [budget_id]
    assert client.get("/v1/budgets", params={"subject_id": "nobody"}).json()["budgets"] == []


def test_budget_create_is_idempotent_with_a_request_id(client: TestClient) -> None:
    first = _budget(client, request_id="b-1")
    again = client.post(
        "/v1/budgets",
        json={
            "org": "acme",
            "request_id": "b-1",
            "subject": {"type": "team", "id": "ml"},
            "limit_usd": "1.00",
            "period": "day",
            "mode": "hard",
        },
    )
    assert again.status_code == 201 and again.json()["budget_id"] == first["budget_id"]
    other = client.post(
        "/v1/budgets",
        json={
            "org": "acme",
            "request_id": "b-1",
            "subject": {"type": "team", "id": "ml"},
            "limit_usd": "2.00",
            "period": "day",
            "mode": "hard",
        },
    )
    assert other.status_code == 409


def test_reserve_commit_with_exact_cost(client: TestClient) -> None:
    budget = _budget(client)
    reserved = _reserve(client, "req-1")
    assert reserved.status_code == 201, reserved.text
    body = reserved.json()
    assert body["amount_usd"] == "0.5" and body["state"] == "held"
    assert body["budgets"][0]["remaining_usd"] == "0.5"
    committed = client.post(
        f"/v1/reservations/{body['reservation_id']}/commit",
        json={
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 500,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
            "ttft_ms": 120,
            "duration_ms": 900,
        },
    )
    assert committed.status_code == 200, committed.text
    settlement = committed.json()
    assert settlement["cost_usd"] == "0.0075"
    assert settlement["overrun"] is False and settlement["late"] is False
    assert settlement["breakdown"]["messages"][0]["model_key"] == "gpt-4o"
    status = client.get(f"/v1/budgets/{budget['budget_id']}").json()
    assert (status["spent_usd"], status["held_usd"]) == ("0.0075", "0")
    retry = client.post(
        f"/v1/reservations/{body['reservation_id']}/commit",
        json={
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 500,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
            "ttft_ms": 120,
            "duration_ms": 900,
        },
    )
    assert retry.json() == settlement
    status = client.get(f"/v1/budgets/{budget['budget_id']}").json()
    assert status["spent_usd"] == "0.0075"


def test_commit_with_several_messages(client: TestClient) -> None:
    _budget(client)
    reservation = _reserve(client, "req-m").json()
    response = client.post(
        f"/v1/reservations/{reservation['reservation_id']}/commit",
        json={
            "messages": [
                {"usage": {"prompt_tokens": 1000, "completion_tokens": 500}},
                {
                    "model": "claude-sonnet-4-5",
                    "usage": {
                        "input_tokens": 100,
                        "output_tokens": 10,
                        "cache_read_input_tokens": 1000,
                        "cache_creation_input_tokens": 0,
                    },
                },
            ]
        },
    )
    assert response.status_code == 200, response.text
    messages = response.json()["breakdown"]["messages"]
    assert [m["model_key"] for m in messages] == ["gpt-4o", "claude-sonnet-4-5"]


def test_budget_exceeded_is_a_402_problem(client: TestClient) -> None:
    budget = _budget(client, limit_usd="0.40")
    response = _reserve(client, "req-big")
    assert response.status_code == 402
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["type"].endswith("/budget-exceeded")
    assert problem["budget_id"] == budget["budget_id"]
    assert (problem["limit_usd"], problem["remaining_usd"]) == ("0.4", "0.4")


def test_reusing_a_request_id_with_other_content_is_409(client: TestClient) -> None:
    _budget(client)
    first = _reserve(client, "req-dup")
    assert _reserve(client, "req-dup").json() == first.json()
    conflict = _reserve(client, "req-dup", amount_usd="0.20")
    assert conflict.status_code == 409
    assert conflict.json()["type"].endswith("/idempotency-conflict")


def test_cancel_releases_and_commit_after_cancel_is_409(client: TestClient) -> None:
    budget = _budget(client)
    reservation = _reserve(client, "req-c").json()
    cancelled = client.post(f"/v1/reservations/{reservation['reservation_id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert client.get(f"/v1/budgets/{budget['budget_id']}").json()["held_usd"] == "0"
    late = client.post(
        f"/v1/reservations/{reservation['reservation_id']}/commit",
        json={"usage": {"prompt_tokens": 1, "completion_tokens": 1}},
    )
    assert late.status_code == 409
    assert late.json()["type"].endswith("/reservation-settled")


def test_a_commit_is_claimed_and_its_reservation_checked_before_pricing(
    client: TestClient,
) -> None:
    """A retry gets the first settlement even when its usage can no longer be priced, and a
    settled reservation answers 409 before its usage is priced."""
    _budget(client)
    reservation = _reserve(client, "req-p").json()
    commit = f"/v1/reservations/{reservation['reservation_id']}/commit"
    usage = {"usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    first = client.post(commit, json=usage)
    assert first.status_code == 200, first.text
    book = client.app.state.prices  # type: ignore[attr-defined]
    no_prices = PriceTable({}, source_id="none", label="no prices")
    client.app.state.prices = PriceBook(no_prices, None)  # type: ignore[attr-defined]
    try:
        assert client.post(commit, json=usage).json() == first.json()
        unpriced = _reserve(client, "req-q").json()
        fresh = client.post(f"/v1/reservations/{unpriced['reservation_id']}/commit", json=usage)
        assert fresh.status_code == 422, fresh.text  # nothing to price it with: refused
        client.post(f"/v1/reservations/{unpriced['reservation_id']}/cancel")
        settled = client.post(f"/v1/reservations/{unpriced['reservation_id']}/commit", json=usage)
        assert settled.status_code == 409
        assert settled.json()["type"].endswith("/reservation-settled")
    finally:
        client.app.state.prices = book  # type: ignore[attr-defined]


def test_extend_raises_the_hold_or_is_refused(client: TestClient) -> None:
    _budget(client)
    reservation = _reserve(client, "req-x", amount_usd="0.10").json()
    path = f"/v1/reservations/{reservation['reservation_id']}/extend"
    extended = client.post(path, json={"amount_usd": "0.60", "ttl_seconds": 120})
    assert extended.status_code == 200 and extended.json()["amount_usd"] == "0.6"
    refused = client.post(path, json={"amount_usd": "1.60"})
    assert refused.status_code == 402


def test_reserve_from_a_request_body_and_clamp(client: TestClient) -> None:
    budget = _budget(client, limit_usd="0.05")
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello there"}]}
    refused = _reserve(client, "req-r", amount_usd=None, request=request)
    # Without max_tokens the worst case is the model's whole output: more than $0.05.
    assert refused.status_code == 402
    clamped = _reserve(client, "req-k", amount_usd=None, request=request, fit="clamp")
    assert clamped.status_code == 201, clamped.text
    body = clamped.json()
    assert 0 < body["max_output_tokens"] < 16384
    assert body["budgets"][0]["remaining_usd"] >= "0"
    status = client.get(f"/v1/budgets/{budget['budget_id']}").json()
    assert status["held_usd"] == body["amount_usd"]
    # The last cent: nothing more than a minimal answer fits any more.
    tiny = _reserve(client, "req-t", amount_usd=None, request=request, fit="clamp")
    assert tiny.status_code == 402
    assert _reserve(client, "req-k", amount_usd=None, request=request, fit="clamp").json() == body


def test_usage_without_reservation(client: TestClient) -> None:
    budget = _budget(client)
    body = {
        "org": "acme",
        "request_id": "u-1",
        "subjects": [{"type": "team", "id": "ml"}],
        "model": "gpt-4o",
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500},
    }
    first = client.post("/v1/usage", json=body)
    assert first.status_code == 201, first.text
    assert first.json()["cost_usd"] == "0.0075"
    assert client.post("/v1/usage", json=body).json() == first.json()
    assert client.get(f"/v1/budgets/{budget['budget_id']}").json()["spent_usd"] == "0.0075"


def test_quotes(client: TestClient) -> None:
    response = client.post(
        "/v1/quotes",
        json={"model": "gpt-4o", "usage": {"prompt_tokens": 1000, "completion_tokens": 500}},
    )
    assert response.status_code == 200 and response.json()["total_usd"] == "0.0075"
    unknown = client.post("/v1/quotes", json={"model": "gpt-99", "usage": {"prompt_tokens": 1}})
    assert unknown.status_code == 422
    assert unknown.json()["type"].endswith("/unknown-model")
    estimate = client.post(
        "/v1/quotes",
        json={
            "model": "gpt-4o",
            "request": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10},
        },
    )
    assert estimate.status_code == 200 and estimate.json()["max_output_tokens"] == 10


def test_invalid_input_names_the_field(client: TestClient) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"limit_usd": "1e3"}, "limit_usd"),
        ({"limit_usd": "NaN"}, "limit_usd"),
        ({"period": "year"}, "period"),
        ({"subject": {"type": "team", "id": "ml'; DROP TABLE budgets;--"}}, "subject.id"),
    ]
    for overrides, field in cases:
        body: dict[str, Any] = {
            "org": "acme",
            "subject": {"type": "team", "id": "ml"},
            "limit_usd": "1.00",
            "period": "day",
        }
        body.update(overrides)
        response = client.post("/v1/budgets", json=body)
        assert response.status_code == 422, (overrides, response.text)
        assert response.json()["field"] == field
    negative = client.post("/v1/quotes", json={"model": "gpt-4o", "usage": {"prompt_tokens": -1}})
    assert negative.status_code == 422 and "prompt_tokens" in negative.json()["field"]
    missing_org = client.post(
        "/v1/budgets",
        json={"subject": {"type": "team", "id": "ml"}, "limit_usd": "1", "period": "day"},
    )
    assert missing_org.status_code == 422 and missing_org.json()["field"] == "org"


def test_price_override_applies_from_its_effective_time(client: TestClient) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 500}
    before = client.post(
        "/v1/quotes",
        json={"model": "gpt-4o", "usage": usage, "billing_time": "2026-01-01T00:00:00Z"},
    ).json()
    created = client.post(
        "/v1/prices/overrides",
        json={
            "model_key": "gpt-4o",
            "effective_at": "2026-06-01T00:00:00Z",
            "fields": {"input_cost_per_token": "0.000001", "output_cost_per_token": "0.000002"},
        },
    )
    assert created.status_code == 201, created.text
    override_id = created.json()["override_id"]
    old = client.post(
        "/v1/quotes",
        json={"model": "gpt-4o", "usage": usage, "billing_time": "2026-01-01T00:00:00Z"},
    ).json()
    new = client.post(
        "/v1/quotes",
        json={"model": "gpt-4o", "usage": usage, "billing_time": "2026-07-01T00:00:00Z"},
    ).json()
    assert old["total_usd"] == before["total_usd"] == "0.0075"
    assert new["total_usd"] == "0.002"
    assert new["priced_by"]["source"] == override_id
    internal = client.post(
        "/v1/prices/overrides",
        json={
            "model_key": "acme-internal-llm",
            "effective_at": "2026-01-01T00:00:00Z",
            "fields": {"input_cost_per_token": "0.0000001", "output_cost_per_token": "0"},
        },
    )
    assert internal.status_code == 201
    priced = client.post("/v1/quotes", json={"model": "acme-internal-llm", "usage": usage})
    assert priced.status_code == 200 and priced.json()["total_usd"] == "0.0001"
    listed = client.get("/v1/prices/overrides").json()["overrides"]
    assert [o["model_key"] for o in listed] == ["gpt-4o", "acme-internal-llm"]
    bad = client.post(
        "/v1/prices/overrides", json={"model_key": "x", "fields": {"input_cost_per_token": "NaN"}}
    )
    assert bad.status_code == 422 and bad.json()["field"] == "fields.input_cost_per_token"
