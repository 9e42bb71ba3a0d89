"""POST /v1/usage:batch through HTTP against a real PostgreSQL: each record accepted or
refused on its own, idempotent on its own request_id, confined to the key's org, and safe to
run next to single calls on the same budgets."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app.auth import service as auth
from app.budgets.replay import verify
from app.client import AsyncLedgerClient, BudgetExceeded, LedgerClient, UnknownModel
from app.config import Settings
from app.db.engine import make_engine
from app.main import create_app

BATCH = "/v1/usage:batch"
USAGE = {"prompt_tokens": 1000, "completion_tokens": 500}  # gpt-4o: 0.0075 USD
COST = Decimal("0.0075")
ML = {"type": "team", "id": "ml"}


def _record(request_id: str, *subjects: dict[str, str], **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "request_id": request_id,
        "subjects": list(subjects) or [ML],
        "model": "gpt-4o",
        "usage": USAGE,
    }
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not None}


def _budget(
    client: TestClient,
    subject: dict[str, str],
    limit_usd: str,
    headers: dict[str, str] | None = None,
) -> str:
    response = client.post(
        "/v1/budgets",
        json={"org": "acme", "subject": subject, "limit_usd": limit_usd, "period": "month"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    budget_id: str = response.json()["budget_id"]
    return budget_id


def _spent(client: TestClient, budget_id: str, headers: dict[str, str] | None = None) -> Decimal:
    response = client.get(f"/v1/budgets/{budget_id}", headers=headers)
    assert response.status_code == 200, response.text
    return Decimal(response.json()["spent_usd"])


def _batch(client: TestClient, records: Sequence[Any], **body: Any) -> dict[str, Any]:
    response = client.post(BATCH, json={"org": "acme", "records": list(records), **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _mixed_batch(client: TestClient) -> tuple[list[Any], str, str]:
    """Budgets for a batch with every kind of outcome, and the batch."""
    ml = _budget(client, ML, "1")
    broke = {"type": "team", "id": "broke"}
    broke_id = _budget(client, broke, "0.001")
    exhausting = client.post("/v1/usage", json={"org": "acme", **_record("pre", broke)})
    assert exhausting.status_code == 201, exhausting.text
    records: list[Any] = [
        _record("u-0"),
        _record("u-1", broke),
        _record("u-2", model="gpt-4oo"),
        _record(
            "u-3",
            model=None,
            usage=None,
            messages=[
                {"model": "gpt-4o", "usage": USAGE},
                {"model": "claude-sonnet-4-5", "usage": {"prompt_tokens": -5}},
            ],
        ),
        {"request_id": "u-4", "usage": USAGE, "model": "gpt-4o"},
        "not an object",
        _record("u-0"),
        _record("u-0", usage={"prompt_tokens": 1}),
        {**_record("u-8"), "org": "acme"},
        _record("u-9", messages=[{"usage": USAGE}]),
        _record("u-10", model=None, usage=None, messages=[{"model": "gpt-5-nope", "usage": USAGE}]),
        _record("u-11", usage={"prompt_tokens": 10, "completion_tokens": 0}),
        _record(
            "u-12", model=None, usage=None, messages=[{"model": "gpt-4o", "usage": {"input": -1}}]
        ),
    ]
    return records, ml, broke_id


def _outcomes(result: dict[str, Any]) -> list[tuple[int, str | None, str | None]]:
    """(status, problem type's condition, problem field) of each result, in order."""
    outcomes = []
    for item in result["results"]:
        problem = item.get("problem") or {}
        condition = problem["type"].rsplit("/", 1)[-1] if problem else None
        outcomes.append((item["status"], condition, problem.get("field")))
    return outcomes


def test_each_record_is_accepted_or_refused_on_its_own(client: TestClient) -> None:
    records, ml, broke = _mixed_batch(client)
    result = _batch(client, records)
    assert _outcomes(result) == [
        (201, None, None),
        (402, "budget-exceeded", None),
        (422, "unknown-model", "records[2].model"),
        (422, "invalid-usage", "records[3].messages[1].usage.prompt_tokens"),
        (422, "invalid-input", "records[4].subjects"),
        (422, "invalid-input", "records[5]"),
        (201, None, None),
        (409, "idempotency-conflict", None),
        (422, "invalid-input", "records[8].org"),
        (422, "invalid-input", "records[9].usage"),
        (422, "unknown-model", "records[10].messages[0].model"),
        (201, None, None),
        (422, "invalid-usage", "records[12].messages[0].usage.input"),
    ]
    assert (result["accepted"], result["refused"]) == (3, 10)
    results = result["results"]
    assert [r["index"] for r in results] == list(range(13))
    assert [r["request_id"] for r in results][:6] == ["u-0", "u-1", "u-2", "u-3", "u-4", None]
    first = results[0]["settlement"]
    assert first["cost_usd"] == "0.0075" and first["reservation_id"] is None
    assert first["breakdown"]["messages"][0]["model_key"] == "gpt-4o"
    # The same request_id and content again is the original settlement, charged once.
    assert results[6]["settlement"] == first
    assert results[11]["settlement"]["cost_usd"] == "0.000025"
    refused = results[1]["problem"]
    assert refused["budget_id"] == broke and refused["instance"] == BATCH
    assert refused["limit_usd"] == "0.001" and refused["remaining_usd"] == "0"
    assert results[2]["problem"]["suggestions"]
    assert results[4]["problem"]["errors"] == [
        {"field": "records[4].subjects", "message": "Field required"}
    ]
    assert results[7]["problem"]["idempotency_key"] == "u-0"
    assert "settlement" not in results[1] and "problem" not in results[0]
    # Refused records left nothing behind: no charge, no idempotency key.
    assert _spent(client, ml) == Decimal("0.0075") + Decimal("0.000025")
    assert _spent(client, broke) == COST
    fixed = _batch(client, [_record("u-2"), _record("u-4")])
    assert _outcomes(fixed) == [(201, None, None)] * 2


def test_single_calls_name_the_message_whose_usage_is_invalid(client: TestClient) -> None:
    """The batch's field paths come from POST /v1/usage's and commit's own: a usage error in
    a `messages` body names the message."""
    _budget(client, ML, "1")
    bad = {"usage": {"prompt_tokens": -1}}
    one = _record("m-1", usage=None, messages=[bad])
    two = _record("m-2", usage=None, messages=[{"usage": USAGE}, bad])
    for record, field in ((one, "messages[0].usage.prompt_tokens"), (two, "messages[1].usage")):
        response = client.post("/v1/usage", json={"org": "acme", **record})
        assert response.status_code == 422 and response.json()["field"].startswith(field)
    reserved = client.post(
        "/v1/reservations",
        json={"org": "acme", "request_id": "m-3", "subjects": [ML], "amount_usd": "0.1"},
    ).json()
    commit = client.post(
        f"/v1/reservations/{reserved['reservation_id']}/commit",
        json={"model": "gpt-4o", "messages": [bad]},
    )
    assert commit.status_code == 422
    assert commit.json()["field"] == "messages[0].usage.prompt_tokens"


def test_a_retried_batch_gets_the_same_outcomes_and_charges_once(client: TestClient) -> None:
    records, ml, broke = _mixed_batch(client)
    first = _batch(client, records)
    retried = _batch(client, records)
    assert retried == first
    assert _spent(client, ml) == Decimal("0.0075") + Decimal("0.000025")
    assert _spent(client, broke) == COST


def test_a_batch_has_one_to_a_thousand_records(client: TestClient) -> None:
    ml = _budget(client, ML, "100")
    # Ten requests, each sent a hundred times: charged once each, the rest are replays.
    full = _batch(client, [_record(f"k-{n % 10}") for n in range(1000)])
    assert (full["accepted"], full["refused"]) == (1000, 0)
    assert {r["status"] for r in full["results"]} == {201}
    assert full["results"][999]["settlement"] == full["results"][9]["settlement"]
    assert _spent(client, ml) == 10 * COST
    for records, field in (
        ([_record(f"x-{n}") for n in range(1001)], "records"),
        ([], "records"),
        ("not a list", "records"),
    ):
        response = client.post(BATCH, json={"org": "acme", "records": records})
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["field"] == field
    unknown = client.post(BATCH, json={"org": "acme", "records": [_record("y")], "extra": 1})
    assert unknown.status_code == 422 and unknown.json()["field"] == "extra"
    missing_org = client.post(BATCH, json={"records": [_record("y")]})
    assert missing_org.status_code == 422 and missing_org.json()["field"] == "org"
    assert _spent(client, ml) == 10 * COST


@pytest.fixture
def secured(engine: Engine) -> Iterator[TestClient]:
    app = create_app(engine, Settings(), sweep=False)
    with TestClient(app) as test_client:
        yield test_client


def _key(engine: Engine, scope: str, org: str | None = None) -> dict[str, str]:
    with engine.begin() as conn:
        _, key = auth.create_key(conn, scope=scope, org=org)
    return {"Authorization": f"Bearer {key}"}


def test_a_confined_key_charges_its_own_org_only(secured: TestClient, engine: Engine) -> None:
    admin = _key(engine, "admin")
    gateway = _key(engine, "gateway", org="acme")
    ml = _budget(secured, ML, "5", headers=admin)
    body = {"records": [_record("t-1")]}
    other = secured.post(BATCH, json={**body, "org": "globex"}, headers=gateway)
    assert other.status_code == 403 and other.json()["field"] == "org"
    assert secured.post(BATCH, json=body, headers=_key(engine, "reader", "acme")).status_code == 403
    assert secured.post(BATCH, json=body).status_code == 401
    inside = {"records": [{**_record("t-2"), "org": "globex"}]}
    smuggled = secured.post(BATCH, json=inside, headers=gateway).json()
    assert _outcomes(smuggled) == [(422, "invalid-input", "records[0].org")]
    assert _spent(secured, ml, headers=admin) == 0
    implied = secured.post(BATCH, json=body, headers=gateway)
    assert implied.status_code == 200, implied.text
    assert implied.json()["results"][0]["settlement"]["org"] == "acme"
    named = secured.post(BATCH, json={**body, "org": "acme"}, headers=gateway)
    assert named.json() == implied.json()
    # A record is the body of POST /v1/usage: sent alone, it is the same request.
    alone = secured.post("/v1/usage", json=_record("t-1"), headers=gateway)
    assert alone.status_code == 201 and alone.json() == implied.json()["results"][0]["settlement"]
    unconfined = _key(engine, "gateway")
    assert secured.post(BATCH, json=body, headers=unconfined).json()["field"] == "org"
    globex = secured.post(BATCH, json={**body, "org": "globex"}, headers=unconfined).json()
    assert globex["results"][0]["settlement"]["org"] == "globex"
    assert _spent(secured, ml, headers=admin) == COST


def test_a_record_that_waits_too_long_for_a_lock_is_503_alone(engine: Engine, db_url: str) -> None:
    impatient = make_engine(db_url, settings=Settings(lock_timeout_ms=200))
    try:
        app = create_app(impatient, Settings(insecure_no_auth=True), sweep=False)
        with TestClient(app) as client:
            locked = {"type": "team", "id": "locked"}
            locked_id = _budget(client, locked, "5")
            ml = _budget(client, ML, "5")
            records = [_record("w-1", locked), _record("w-2")]
            with engine.connect() as holder:
                holder.execute(
                    text("SELECT 1 FROM budgets WHERE budget_id = :id FOR UPDATE"),
                    {"id": locked_id},
                )
                waited = _batch(client, records)
                holder.rollback()
            assert _outcomes(waited) == [(503, "unavailable", None), (201, None, None)]
            retried = _batch(client, records)
            assert _outcomes(retried) == [(201, None, None)] * 2
            assert retried["results"][1] == waited["results"][1]
            assert (_spent(client, locked_id), _spent(client, ml)) == (COST, COST)
    finally:
        impatient.dispose()


def test_concurrent_batches_and_single_calls_never_deadlock(
    client: TestClient, engine: Engine
) -> None:
    subjects = [{"type": "team", "id": t} for t in ("a", "b", "c")] + [{"type": "org", "id": "x"}]
    budget_ids = {s["id"]: _budget(client, s, "1000") for s in subjects}
    lock = threading.Lock()
    expected: dict[str, Decimal] = dict.fromkeys(budget_ids, Decimal(0))
    statuses: list[int] = []

    def subject_set(rng: random.Random) -> list[dict[str, str]]:
        # Overlapping sets, listed in random order: the server locks them in its own order.
        chosen = rng.sample(subjects, rng.randint(2, 4))
        rng.shuffle(chosen)
        return chosen

    def charged(records: Sequence[dict[str, Any]], outcome: Sequence[int]) -> None:
        with lock:
            statuses.extend(outcome)
            for record, status in zip(records, outcome, strict=True):
                if status == 201:
                    for subject in record["subjects"]:
                        expected[subject["id"]] += COST

    def batch_worker(worker: int) -> None:
        rng = random.Random(worker)
        for round_ in range(3):
            records = [_record(f"b{worker}-{round_}-{n}", *subject_set(rng)) for n in range(25)]
            result = _batch(client, records)
            charged(records, [r["status"] for r in result["results"]])

    def single_worker(worker: int) -> None:
        rng = random.Random(1000 + worker)
        for n in range(15):
            record = _record(f"s{worker}-{n}", *subject_set(rng))
            response = client.post("/v1/usage", json={"org": "acme", **record})
            charged([record], [response.status_code])

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(batch_worker, w) for w in range(4)]
        futures += [pool.submit(single_worker, w) for w in range(4)]
        for future in futures:
            future.result()
    assert statuses == [201] * (4 * 3 * 25 + 4 * 15)
    for subject_id, budget_id in budget_ids.items():
        assert _spent(client, budget_id) == expected[subject_id]
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        report = verify(conn)
        conn.rollback()
    assert report.ok, report.differences[:5]


def _forward(client: TestClient) -> httpx.MockTransport:
    """A transport that hands every request to the app under test."""

    def handle(request: httpx.Request) -> httpx.Response:
        response = client.request(
            request.method, request.url.path, content=request.content, headers=request.headers
        )
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.content
        )

    return httpx.MockTransport(handle)


def test_the_clients_send_a_batch_and_type_each_outcome(client: TestClient) -> None:
    ml = _budget(client, ML, "1")
    broke = {"type": "team", "id": "broke"}
    _budget(client, broke, "0")
    records: list[dict[str, Any]] = [
        {"subjects": [("team", "ml")], "usage": USAGE, "model": "gpt-4o", "request_id": "c-1"},
        {"subjects": [broke], "usage": USAGE, "model": "gpt-4o"},
        {"subjects": [("team", "ml")], "usage": USAGE, "model": "gpt-4oo"},
    ]
    with LedgerClient("http://ledger", org="acme", transport=_forward(client)) as ledger:
        batch = ledger.record_usage_batch(records)
        assert (batch.accepted, batch.refused) == (1, 2)
        first, refused, unknown = batch.results
        assert first.ok and first.status == 201 and first.request_id == "c-1"
        assert first.settlement is not None and first.settlement.cost_usd == COST
        assert first.error is None
        assert not refused.ok and refused.settlement is None
        assert isinstance(refused.error, BudgetExceeded)
        assert refused.error.remaining_usd == Decimal(0)
        assert isinstance(unknown.error, UnknownModel)
        assert unknown.error.problem["field"] == "records[2].model"
        # Records without a request_id get one each, generated once per call (so the client's
        # retries resend it) and returned so that the caller can resend the record later.
        assert refused.request_id and refused.request_id != unknown.request_id
        assert ledger.record_usage_batch(records[:1]).results[0].settlement == first.settlement
        with pytest.raises(TypeError):
            ledger.record_usage_batch([{"subjects": [ML], "usgae": USAGE}])

    async def scenario() -> None:
        async with AsyncLedgerClient(
            "http://ledger", org="acme", transport=_forward(client)
        ) as ledger:
            batch = await ledger.record_usage_batch(
                [{"subjects": [ML], "usage": USAGE, "model": "gpt-4o", "request_id": "c-2"}]
            )
            assert batch.accepted == 1 and batch.results[0].settlement is not None
            assert batch.results[0].settlement.cost_usd == COST

    asyncio.run(scenario())
    assert _spent(client, ml) == 2 * COST


def test_a_batch_whose_answer_was_lost_is_resent_and_charged_once(client: TestClient) -> None:
    ml = _budget(client, ML, "1")
    forward = _forward(client)
    sent: list[bytes] = []

    def lose_the_first_answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        response = forward.handle_request(request)
        if len(sent) == 1:
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    records = [{"subjects": [ML], "usage": USAGE, "model": "gpt-4o"} for _ in range(3)]
    with LedgerClient(
        "http://ledger",
        org="acme",
        transport=httpx.MockTransport(lose_the_first_answer),
        backoff_base=0.001,
    ) as ledger:
        batch = ledger.record_usage_batch(records)
    assert len(sent) == 2 and sent[0] == sent[1]
    assert batch.accepted == 3 and len({r.request_id for r in batch.results}) == 3
    assert _spent(client, ml) == 3 * COST
