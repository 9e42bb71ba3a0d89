"""The report and audit endpoints over HTTP, with keys confined to one org."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app.auth import service as auth
from app.config import Settings
from app.main import create_app
from app.reports import rollups
from tests.factories import wait_until_settled

PRICES = Path(__file__).parents[2] / "app" / "pricing" / "data" / "model_prices.json"
# The window is fixed when the module is collected, minutes before its tests
# run; it reaches a day past that so no run crosses its end.
HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
WINDOW = {
    "from": (HOUR - timedelta(days=1)).isoformat(),
    "to": (HOUR + timedelta(days=1)).isoformat(),
}


@pytest.fixture
def api(engine: Engine) -> Iterator[TestClient]:
    app = create_app(engine, Settings(), sweep=False)
    with TestClient(app) as client:
        yield client


def _key(engine: Engine, scope: str, org: str | None = None) -> dict[str, str]:
    with engine.begin() as conn:
        _, key = auth.create_key(conn, scope=scope, org=org)
    return {"Authorization": f"Bearer {key}"}


def _usage(
    api: TestClient, gateway: dict[str, str], org: str, request_id: str, **extra: Any
) -> None:
    body = {
        "org": org,
        "request_id": request_id,
        "subjects": [{"type": "user", "id": "alice"}, {"type": "team", "id": "ml"}],
        "messages": [
            {
                "model": "gpt-4o",
                "usage": {"prompt_tokens": 1000, "completion_tokens": 200},
                "metadata": {"endpoint": "/chat/completions", "tags": ["prod"]},
            },
            {
                "model": "claude-sonnet-4-5-20250929",
                "usage": {"input_tokens": 3000, "output_tokens": 100},
            },
        ],
        **extra,
    }
    response = api.post("/v1/usage", json=body, headers=gateway)
    assert response.status_code in (200, 201), response.text


@pytest.fixture
def usage(api: TestClient, engine: Engine) -> dict[str, Any]:
    gateway_acme = _key(engine, "gateway", "acme")
    gateway_other = _key(engine, "gateway", "globex")
    _usage(api, gateway_acme, "acme", "r1")
    _usage(api, gateway_acme, "acme", "r2")
    _usage(api, gateway_other, "globex", "g1")
    return {"acme": _key(engine, "reader", "acme"), "admin": _key(engine, "admin")}


def test_spend_report_json_is_exact_and_confined(
    api: TestClient, engine: Engine, usage: dict[str, Any]
) -> None:
    params = {**WINDOW, "group_by": "model,provider", "granularity": "all"}
    first = api.get("/v1/reports/spend", params=params, headers=usage["acme"])
    assert first.status_code == 200, first.text
    wait_until_settled(engine)
    rollups.fold_all(engine)
    report = api.get("/v1/reports/spend", params=params, headers=usage["acme"]).json()
    assert report["rows"] == first.json()["rows"]
    assert report["org"] == "acme"
    by_model = {row["model"]: row for row in report["rows"]}
    assert set(by_model) == {"gpt-4o", "claude-sonnet-4-5-20250929"}
    story = api.get("/v1/requests/r1", headers=usage["acme"]).json()
    per_request = {m["model"]: Decimal(m["cost_usd"]) for m in story["messages"]}
    for model, row in by_model.items():
        assert Decimal(row["cost_usd"]) == 2 * per_request[model]
        assert row["requests"] == (2 if model == "gpt-4o" else 0)
        assert row["messages"] == 2
    assert by_model["gpt-4o"]["prompt_tokens"] == 2000
    assert Decimal(report["totals"]["cost_usd"]) == 2 * Decimal(story["cost_usd"])
    assert report["source"]["rollups_folded_below_seq"] != "0"

    everything = api.get("/v1/reports/spend", params=params, headers=usage["admin"]).json()
    assert everything["totals"]["requests"] == 3
    refused = api.get(
        "/v1/reports/spend", params={**params, "org": "globex"}, headers=usage["acme"]
    )
    assert refused.status_code == 403


def test_spend_report_csv_and_tag_and_subject_views(api: TestClient, usage: dict[str, Any]) -> None:
    response = api.get(
        "/v1/reports/spend",
        params={
            **WINDOW,
            "group_by": "subject_type,subject_id",
            "format": "csv",
            "tz": "Europe/Paris",
        },
        headers=usage["acme"],
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert rows[0].keys() >= {"period_start", "subject_type", "subject_id", "cost_usd", "requests"}
    assert {(r["subject_type"], r["subject_id"]) for r in rows} == {
        ("team", "ml"),
        ("user", "alice"),
    }
    tagged = api.get(
        "/v1/reports/spend",
        params={**WINDOW, "group_by": "tag,endpoint", "granularity": "all"},
        headers=usage["acme"],
    ).json()
    assert [(r["tag"], r["endpoint"], r["messages"]) for r in tagged["rows"]] == [
        ("prod", "/chat/completions", 2)
    ]


def test_top_spenders(api: TestClient, usage: dict[str, Any]) -> None:
    top = api.get(
        "/v1/reports/top", params={**WINDOW, "by": "model", "limit": 1}, headers=usage["acme"]
    ).json()
    assert len(top["rows"]) == 1
    full = api.get(
        "/v1/reports/top", params={**WINDOW, "by": "model"}, headers=usage["acme"]
    ).json()
    costs = [Decimal(r["cost_usd"]) for r in full["rows"]]
    assert costs == sorted(costs, reverse=True) and top["rows"][0] == full["rows"][0]
    subjects = api.get("/v1/reports/top", params=WINDOW, headers=usage["acme"]).json()
    assert {r["subject_id"] for r in subjects["rows"]} == {"alice", "ml"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"granularity": "minute"}, "granularity"),
        ({"group_by": "colour"}, "group_by"),
        ({"from": "2026-01-01T00:30:00Z"}, "from"),
        ({"tz": "Nowhere/Land"}, "tz"),
        ({"format": "xml"}, "format"),
        # Days in New York before year 1.
        (
            {
                "from": "0001-01-01T00:00:00Z",
                "to": "0001-01-09T05:00:00Z",
                "tz": "America/New_York",
                "granularity": "day",
            },
            "tz",
        ),
    ],
)
def test_bad_report_queries_are_problems_naming_the_field(
    api: TestClient, usage: dict[str, Any], params: dict[str, str], field: str
) -> None:
    response = api.get("/v1/reports/spend", params=params, headers=usage["acme"])
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in response.text


@pytest.mark.parametrize("path", ["/v1/reports/spend", "/v1/reports/top", "/v1/reports/insights"])
def test_a_window_too_early_for_its_default_start_is_a_problem_naming_to(
    api: TestClient, usage: dict[str, Any], path: str
) -> None:
    # Found by schemathesis: 30 days before this is before year 1.
    params = {"to": "0001-01-16T10:00:00-21:10"}
    response = api.get(path, params=params, headers=usage["acme"])
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "to"


@pytest.mark.parametrize("path", ["/v1/reports/spend", "/v1/reports/top"])
@pytest.mark.parametrize(
    ("params", "field"),
    [
        # 04:30 and 10:30 UTC: not on the rollups' hours, whatever the offset's wall clock says.
        ({"from": "2026-01-01T10:00:00+05:30", "to": "2026-03-09T10:00:00+05:30"}, "from"),
        ({"from": "2026-01-01T10:00:00Z", "to": "2026-03-09T16:00:00+05:30"}, "to"),
        # Before year 1 and after year 9999 once in UTC.
        ({"to": "0001-01-31T00:00:00+14:00"}, "from"),
        ({"from": "9999-12-01T00:00:00Z", "to": "9999-12-31T23:00:00-05:00"}, "to"),
    ],
)
def test_windows_off_the_utc_hours_or_the_calendar_are_problems_naming_the_field(
    api: TestClient, usage: dict[str, Any], path: str, params: dict[str, str], field: str
) -> None:
    response = api.get(path, params=params, headers=usage["acme"])
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("0001-01-01T00:00:00Z", "0001-01-09T05:00:00Z"),
        ("9999-12-20T03:00:00Z", "9999-12-31T20:00:00Z"),
        ("1969-12-20T03:00:00Z", "1970-01-09T05:00:00Z"),
    ],
)
@pytest.mark.parametrize(
    "extra", [{"group_by": "subject_type,subject_id", "granularity": "all"}, {"granularity": "day"}]
)
def test_windows_at_the_ends_of_the_calendar_are_answered(
    api: TestClient, usage: dict[str, Any], start: str, end: str, extra: dict[str, str]
) -> None:
    params = {"from": start, "to": end, **extra}
    response = api.get("/v1/reports/spend", params=params, headers=usage["acme"])
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == []


def test_event_paging_and_request_story(
    api: TestClient, engine: Engine, usage: dict[str, Any]
) -> None:
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT count(*) FROM ledger_events WHERE org = 'acme'")
        ).scalar_one()
    seen: list[dict[str, Any]] = []
    after = "0"
    deadline = time.monotonic() + 180
    # An empty page means "caught up for now": events of transactions that other sessions of
    # the cluster could still precede appear once those finish, so poll like a consumer would.
    while len(seen) < stored and time.monotonic() < deadline:
        page = api.get(
            "/v1/events", params={"after": after, "limit": 2}, headers=usage["acme"]
        ).json()
        seen += page["events"]
        after = page["next_after"]
        if not page["events"]:
            time.sleep(0.05)
    assert len(seen) == stored
    assert {e["org"] for e in seen} == {"acme"}
    assert [int(e["seq"]) for e in seen] == sorted(int(e["seq"]) for e in seen)
    assert len({e["seq"] for e in seen}) == len(seen)
    assert {e["request_id"] for e in seen} == {"r1", "r2"}
    usage_payload = next(e for e in seen if e["type"] == "usage_recorded")["payload"]
    assert "cost_usd" in usage_payload and "cost_pico_usd" not in usage_payload

    only_r2 = api.get("/v1/events", params={"request_id": "r2"}, headers=usage["acme"]).json()
    assert {e["request_id"] for e in only_r2["events"]} == {"r2"}
    by_subject = api.get("/v1/events", params={"subject_id": "alice"}, headers=usage["acme"]).json()
    assert len(by_subject["events"]) == len(seen)

    story = api.get("/v1/requests/r1", headers=usage["acme"]).json()
    assert story["state"] == "recorded"
    assert [m["index"] for m in story["messages"]] == [0, 1]
    assert Decimal(story["cost_usd"]) == sum(Decimal(m["cost_usd"]) for m in story["messages"])
    assert api.get("/v1/requests/g1", headers=usage["acme"]).status_code == 404
    assert api.get("/v1/events", params={"after": "-1"}, headers=usage["acme"]).status_code == 422


def test_request_story_of_a_reservation(api: TestClient, engine: Engine) -> None:
    gateway = _key(engine, "gateway", "acme")
    reserved = api.post(
        "/v1/reservations",
        json={
            "request_id": "chat-1",
            "subjects": [{"type": "user", "id": "bob"}],
            "amount_usd": "0.5",
            "model": "gpt-4o",
        },
        headers=gateway,
    )
    assert reserved.status_code == 201, reserved.text
    reservation_id = reserved.json()["reservation_id"]
    committed = api.post(
        f"/v1/reservations/{reservation_id}/commit",
        json={"messages": [{"usage": {"prompt_tokens": 10, "completion_tokens": 5}}]},
        headers=gateway,
    )
    assert committed.status_code == 200, committed.text
    story = api.get("/v1/requests/chat-1", headers=_key(engine, "reader", "acme")).json()
    assert story["state"] == "committed"
    assert story["reserved_usd"] == "0.5"
    assert [e["type"] for e in story["timeline"]] == ["reserved", "committed", "usage_recorded"]
    assert story["messages"][0]["prompt_tokens"] == 10


def _price(model: str, field: str) -> Decimal:
    table = json.loads(PRICES.read_text(), parse_float=Decimal)
    return Decimal(table[model][field])


def test_insights_show_cache_rates_shares_and_cheaper_siblings_with_the_arithmetic(
    api: TestClient, engine: Engine
) -> None:
    gateway = _key(engine, "gateway", "acme")
    for index in range(3):
        response = api.post(
            "/v1/usage",
            json={
                "org": "acme",
                "request_id": f"i{index}",
                "subjects": [{"type": "user", "id": "ann"}],
                "messages": [
                    {
                        "model": "gpt-4o",
                        "usage": {
                            "prompt_tokens": 100_000,
                            "completion_tokens": 2_000,
                            "prompt_tokens_details": {"cached_tokens": 1_000},
                        },
                    }
                ],
            },
            headers=gateway,
        )
        assert response.status_code in (200, 201), response.text
    found = api.get(
        "/v1/reports/insights", params=WINDOW, headers=_key(engine, "reader", "acme")
    ).json()
    assert found["cache"] == [
        {
            "model": "gpt-4o",
            "provider": "openai",
            "prompt_tokens": 300_000,
            "cache_read_tokens": 3_000,
            "cache_write_tokens": 0,
            "hit_rate": "0.0100",
        }
    ]
    assert found["spend_share"][0]["share_percent"] == "100.00"
    assert any("cache reads" in text for text in found["recommendations"])
    mini = next(c for c in found["cheaper_models"] if c["candidate"] == "gpt-4o-mini")
    expected = (
        297_000 * _price("gpt-4o-mini", "input_cost_per_token")
        + 3_000 * _price("gpt-4o-mini", "cache_read_input_token_cost")
        + 6_000 * _price("gpt-4o-mini", "output_cost_per_token")
    )
    assert Decimal(mini["candidate_cost_usd"]) == expected
    listed = (
        297_000 * _price("gpt-4o", "input_cost_per_token")
        + 3_000 * _price("gpt-4o", "cache_read_input_token_cost")
        + 6_000 * _price("gpt-4o", "output_cost_per_token")
    )
    assert Decimal(mini["list_cost_usd"]) == listed == Decimal(mini["ledger_cost_usd"])
    assert Decimal(mini["saving_usd"]) == listed - expected
    assert mini["arithmetic"]["gpt-4o-mini"][0] == "297,000 input tokens x $0.00000015 = $0.04455"
    assert {c["provider"] for c in found["cheaper_models"]} == {"openai"}
