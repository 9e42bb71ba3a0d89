"""The Python client against a real server (uvicorn in a thread) on a real database."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest

from app.client import (
    AsyncLedgerClient,
    BudgetExceeded,
    Conflict,
    ConnectionFailed,
    Forbidden,
    IdempotencyConflict,
    InvalidInput,
    LedgerClient,
    LedgerError,
    NotFound,
    ReservationSettled,
    Unauthorized,
    Unavailable,
    UnknownModel,
)
from tests.client.conftest import ORG, LiveServer, free_port

USAGE = {"prompt_tokens": 1000, "completion_tokens": 500}
TEAM = ("team", "search")
FAST: dict[str, Any] = {"backoff_base": 0.001, "backoff_max": 0.01}


class Boom(Exception):
    pass


def admin(live: LiveServer, **kwargs: Any) -> LedgerClient:
    return LedgerClient(live.url, live.admin_key, org=ORG, **kwargs)


def gateway(live: LiveServer, **kwargs: Any) -> LedgerClient:
    return LedgerClient(live.url, live.gateway_key, **{**FAST, **kwargs})


class LoseFirstResponses(httpx.BaseTransport):
    """Sends every request to the server; the first ``failures`` responses to POSTs on a path
    ending in ``suffix`` are thrown away and the client sees a read timeout instead, as if the
    connection dropped after the server had done the work."""

    def __init__(self, suffix: str, failures: int = 1) -> None:
        self.inner = httpx.HTTPTransport()
        self.suffix = suffix
        self.failures = failures
        self.bodies: list[dict[str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path.endswith(self.suffix):
            self.bodies.append(json.loads(request.content))
            if self.failures > 0:
                self.failures -= 1
                response.read()
                response.close()
                raise httpx.ReadTimeout("response lost", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncLoseFirstResponses(httpx.AsyncBaseTransport):
    def __init__(self, suffix: str, failures: int = 1) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.suffix = suffix
        self.failures = failures
        self.bodies: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path.endswith(self.suffix):
            self.bodies.append(json.loads(request.content))
            if self.failures > 0:
                self.failures -= 1
                await response.aread()
                await response.aclose()
                raise httpx.ReadTimeout("response lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class Busy(httpx.BaseTransport):
    """Answers the first ``busy`` requests with 503 and Retry-After, then forwards."""

    def __init__(self, busy: int, retry_after: str = "1") -> None:
        self.inner = httpx.HTTPTransport()
        self.busy = busy
        self.retry_after = retry_after
        self.seen = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        if self.busy > 0:
            self.busy -= 1
            problem = {
                "type": "https://usage-ledger.dev/problems/unavailable",
                "title": "Service unavailable",
                "status": 503,
                "detail": "busy",
            }
            return httpx.Response(
                503,
                json=problem,
                headers={
                    "Retry-After": self.retry_after,
                    "Content-Type": "application/problem+json",
                },
            )
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class RecordingSleeps(LedgerClient):
    sleeps: list[float]

    def _sleep(self, seconds: float) -> None:
        self.sleeps = [*getattr(self, "sleeps", []), seconds]


def test_budgets_create_get_list_change(live: LiveServer) -> None:
    with admin(live) as ledger:
        created = ledger.create_budget(
            "team", "search", Decimal("50"), "month", alert_thresholds=[Decimal("0.5")]
        )
        assert created.org == ORG
        assert created.subject.type == "team" and created.subject.id == "search"
        assert created.limit_usd == Decimal("50") and created.remaining_usd == Decimal("50")
        assert created.spent_usd == Decimal(0) and created.held_usd == Decimal(0)
        assert created.mode == "hard" and created.period == "month"
        assert created.alert_thresholds == (Decimal("0.5"),)
        assert created.period_start < created.period_end
        other = ledger.create_budget("user", "ann", "3.25", "day", mode="soft")

        assert ledger.get_budget(created.budget_id) == created
        assert {b.budget_id for b in ledger.list_budgets()} == {
            created.budget_id,
            other.budget_id,
        }
        assert [b.budget_id for b in ledger.list_budgets("user", "ann")] == [other.budget_id]

        changed = ledger.change_budget(created.budget_id, limit_usd=Decimal("75.5"), mode="soft")
        assert changed.limit_usd == Decimal("75.5") and changed.mode == "soft"
        assert changed.version == created.version + 1
        with pytest.raises(NotFound) as missing:
            ledger.get_budget(str(uuid.uuid4()))
        assert missing.value.status == 404
    with LedgerClient(live.url, live.reader_key) as reader:
        assert len(reader.list_budgets()) == 2
        with pytest.raises(Forbidden):
            reader.create_budget("team", "x", 1, "day")


def test_budget_creation_is_idempotent(live: LiveServer) -> None:
    with admin(live) as ledger:
        first = ledger.create_budget("team", "search", 10, "day", request_id="budget-1")
        again = ledger.create_budget("team", "search", 10, "day", request_id="budget-1")
        assert again.budget_id == first.budget_id
        with pytest.raises(Conflict):
            ledger.create_budget("team", "search", 11, "day", request_id="budget-1")


def test_reserve_commit_with_context_manager_charges_exactly(live: LiveServer) -> None:
    with admin(live) as ledger, gateway(live) as gw:
        budget = ledger.create_budget(*TEAM, Decimal("10"), "month")
        with gw.reserve([TEAM], amount_usd=Decimal("0.05"), model="gpt-4o") as r:
            assert r.amount_usd == Decimal("0.05")
            assert r.org == ORG and r.state == "held"
            assert [b.budget_id for b in r.budgets] == [budget.budget_id]
            assert r.budgets[0].remaining_usd == Decimal("9.95")
            assert ledger.get_budget(budget.budget_id).held_usd == Decimal("0.05")
            settlement = r.commit(USAGE)
        assert settlement.cost_usd == Decimal("0.0075")
        assert settlement.held_usd == Decimal("0.05")
        assert not settlement.overrun and not settlement.late
        assert settlement.reservation_id == r.reservation_id
        after = ledger.get_budget(budget.budget_id)
        assert after.spent_usd == Decimal("0.0075") and after.held_usd == Decimal(0)
        assert gw.get_reservation(r.reservation_id).state == "committed"
        # A retried commit with the same body is answered with the same settlement.
        assert gw.commit(r.reservation_id, USAGE) == settlement
        with pytest.raises(ReservationSettled) as settled:
            gw.cancel(r.reservation_id)
        assert settled.value.status == 409
        assert ledger.get_budget(budget.budget_id).spent_usd == Decimal("0.0075")


def test_leaving_the_block_without_commit_cancels(live: LiveServer) -> None:
    with admin(live) as ledger, gateway(live) as gw:
        budget = ledger.create_budget(*TEAM, 1, "day")
        with (
            pytest.raises(Boom),
            gw.reserve([{"type": "team", "id": "search"}], amount_usd="0.4") as r,
        ):
            assert ledger.get_budget(budget.budget_id).held_usd == Decimal("0.4")
            raise Boom
        assert gw.get_reservation(r.reservation_id).state == "cancelled"
        with gw.reserve([TEAM], amount_usd="0.3") as quiet:
            pass
        assert gw.get_reservation(quiet.reservation_id).state == "cancelled"
        # A commit that fails (unpriceable model) leaves the hold to be cancelled on exit.
        with pytest.raises(UnknownModel), gw.reserve([TEAM], amount_usd="0.2") as failed:
            failed.commit(USAGE, model="no-such-model-xyz")
        assert gw.get_reservation(failed.reservation_id).state == "cancelled"
        status = ledger.get_budget(budget.budget_id)
        assert status.held_usd == Decimal(0) and status.spent_usd == Decimal(0)


def test_extend_and_record_usage_and_quote(live: LiveServer) -> None:
    with admin(live) as ledger, gateway(live) as gw:
        budget = ledger.create_budget(*TEAM, 5, "total")
        with gw.reserve([TEAM], amount_usd="0.1", ttl_seconds=60) as r:
            first_expiry = r.expires_at
            extended = r.extend(amount_usd=Decimal("0.25"), ttl_seconds=600)
            assert extended.amount_usd == Decimal("0.25") == r.amount_usd
            assert r.expires_at > first_expiry
            assert ledger.get_budget(budget.budget_id).held_usd == Decimal("0.25")
            r.commit(USAGE, model="gpt-4o", ttft_ms=120, duration_ms=900)
        direct = gw.record_usage([TEAM], USAGE, model="gpt-4o", request_id="direct-1")
        assert direct.cost_usd == Decimal("0.0075") and direct.reservation_id is None
        assert gw.record_usage([TEAM], USAGE, model="gpt-4o", request_id="direct-1") == direct
        assert ledger.get_budget(budget.budget_id).spent_usd == Decimal("0.015")

        quote = gw.quote("gpt-4o", USAGE)
        assert quote.cost_usd == Decimal("0.0075") and quote.model_key == "gpt-4o"
        worst = gw.quote(
            "gpt-4o", request={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
        )
        assert worst.max_output_tokens == 100 and worst.cost_usd > 0


def test_budget_exceeded_is_typed(live: LiveServer) -> None:
    with admin(live) as ledger, gateway(live) as gw:
        budget = ledger.create_budget(*TEAM, Decimal("1"), "month")
        gw.reserve([TEAM], amount_usd="0.75")
        with pytest.raises(BudgetExceeded) as refused:
            gw.reserve([TEAM], amount_usd=Decimal("0.5"))
        error = refused.value
        assert error.status == 402
        assert error.budget_id == budget.budget_id
        assert error.limit_usd == Decimal("1")
        assert error.remaining_usd == Decimal("0.25")
        assert error.requested_usd == Decimal("0.5")
        assert error.problem["type"].endswith("/budget-exceeded")
        assert isinstance(error, LedgerError)


def test_unknown_model_and_invalid_input_are_typed(live: LiveServer) -> None:
    with gateway(live) as gw:
        with pytest.raises(UnknownModel) as unknown:
            gw.quote("gpt-4oo", USAGE)
        assert unknown.value.status == 422
        assert unknown.value.model == "gpt-4oo"
        assert "gpt-4o" in unknown.value.suggestions
        with pytest.raises(InvalidInput) as invalid:
            gw.reserve([TEAM], model="gpt-4o")
        assert invalid.value.field == "amount_usd"
        assert not isinstance(invalid.value, UnknownModel)
        with pytest.raises(TypeError):
            gw.reserve([TEAM], amount_usd=0.5)  # type: ignore[arg-type]


def test_reused_request_id_with_other_content_is_a_conflict(live: LiveServer) -> None:
    with admin(live) as ledger, gateway(live) as gw:
        budget = ledger.create_budget(*TEAM, 10, "month")
        first = gw.reserve([TEAM], amount_usd="1", request_id="req-42")
        same = gw.reserve([TEAM], amount_usd="1", request_id="req-42")
        assert same.reservation_id == first.reservation_id
        with pytest.raises(IdempotencyConflict) as conflict:
            gw.reserve([TEAM], amount_usd="2", request_id="req-42")
        assert isinstance(conflict.value, Conflict) and conflict.value.status == 409
        assert ledger.get_budget(budget.budget_id).held_usd == Decimal("1")


def test_auth_errors_are_typed(live: LiveServer) -> None:
    with LedgerClient(live.url, "ulk_nope_nope") as stranger, pytest.raises(Unauthorized) as e:
        stranger.list_budgets()
    assert e.value.status == 401
    with LedgerClient(live.url) as anonymous, pytest.raises(Unauthorized):
        anonymous.list_budgets()
    with gateway(live) as gw:
        with pytest.raises(Forbidden) as other_org:
            gw.reserve([TEAM], amount_usd="1", org="globex")
        assert other_org.value.problem["field"] == "org"
        with pytest.raises(Forbidden):
            gw.create_budget(*TEAM, 1, "day")


def test_a_lost_response_is_retried_with_the_same_request_id(live: LiveServer) -> None:
    transport = LoseFirstResponses("/v1/reservations")
    with admin(live) as ledger, gateway(live, transport=transport) as gw:
        budget = ledger.create_budget(*TEAM, 10, "month")
        r = gw.reserve([TEAM], amount_usd="0.5", model="gpt-4o")
        # Two attempts reached the server, with one body and so one request_id.
        assert len(transport.bodies) == 2
        assert transport.bodies[0] == transport.bodies[1]
        request_id = transport.bodies[0]["request_id"]
        assert r.request_id == request_id
        # The retry got the first attempt's reservation: the hold is counted once.
        assert ledger.get_budget(budget.budget_id).held_usd == Decimal("0.5")
        assert gw.reserve(
            [TEAM], amount_usd="0.5", model="gpt-4o", request_id=request_id
        ).reservation_id == (r.reservation_id)

        # A commit whose response is lost is retried and charged once.
        commits = LoseFirstResponses("/commit")
        with gateway(live, transport=commits) as flaky:
            settlement = flaky.commit(r.reservation_id, USAGE)
        assert len(commits.bodies) == 2 and settlement.cost_usd == Decimal("0.0075")
        status = ledger.get_budget(budget.budget_id)
        assert status.spent_usd == Decimal("0.0075") and status.held_usd == Decimal(0)


def test_503_is_retried_after_retry_after_then_given_up(live: LiveServer) -> None:
    transport = Busy(busy=2, retry_after="1")
    client = RecordingSleeps(live.url, live.gateway_key, transport=transport, max_retries=3)
    with client:
        assert client.quote("gpt-4o", USAGE).cost_usd == Decimal("0.0075")
    assert transport.seen == 3 and client.sleeps == [1.0, 1.0]

    always = Busy(busy=100, retry_after="0")
    with gateway(live, transport=always, max_retries=2) as gw, pytest.raises(Unavailable) as e:
        gw.quote("gpt-4o", USAGE)
    assert always.seen == 3 and e.value.status == 503 and e.value.retry_after == 0.0

    # A Retry-After longer than the client will wait is raised at once, with its value.
    patient = Busy(busy=100, retry_after="120")
    with gateway(live, transport=patient) as gw, pytest.raises(Unavailable) as late:
        gw.quote("gpt-4o", USAGE)
    assert patient.seen == 1 and late.value.retry_after == 120.0


def test_no_server_is_a_connection_failure_after_retries() -> None:
    port = free_port()
    client = RecordingSleeps(f"http://127.0.0.1:{port}", "ulk_x_y", max_retries=2, timeout=2)
    with client, pytest.raises(ConnectionFailed) as failed:
        client.list_budgets()
    assert failed.value.status is None and isinstance(failed.value, Unavailable)
    assert isinstance(failed.value.__cause__, httpx.ConnectError)
    assert len(client.sleeps) == 2 and client.sleeps[1] > client.sleeps[0] / 2


def test_async_client(live: LiveServer) -> None:
    async def scenario() -> None:
        async with (
            AsyncLedgerClient(live.url, live.admin_key, org=ORG) as ledger,
            AsyncLedgerClient(live.url, live.gateway_key, **FAST) as gw,
        ):
            budget = await ledger.create_budget(*TEAM, Decimal("1"), "month")
            assert (await ledger.get_budget(budget.budget_id)).limit_usd == Decimal("1")
            assert [b.budget_id for b in await ledger.list_budgets(*TEAM)] == [budget.budget_id]
            changed = await ledger.change_budget(budget.budget_id, limit_usd="2")
            assert changed.limit_usd == Decimal("2")

            async with gw.reserve([TEAM], amount_usd="0.05", model="gpt-4o") as r:
                await r.extend(amount_usd="0.06")
                settlement = await r.commit(USAGE)
            assert settlement.cost_usd == Decimal("0.0075")

            with pytest.raises(Boom):
                async with gw.reserve([TEAM], amount_usd="0.5") as doomed:
                    assert (await ledger.get_budget(budget.budget_id)).held_usd == Decimal("0.5")
                    raise Boom
            assert (await gw.get_reservation(doomed.reservation_id)).state == "cancelled"

            handle = await gw.reserve([TEAM], amount_usd="1.5")
            with pytest.raises(BudgetExceeded) as refused:
                await gw.reserve([TEAM], amount_usd="1")
            assert refused.value.remaining_usd == Decimal("0.4925")
            assert refused.value.limit_usd == Decimal("2")
            await handle.cancel()

            with pytest.raises(UnknownModel):
                await gw.quote("gpt-4oo", USAGE)
            await gw.reserve([TEAM], amount_usd="0.1", request_id="async-1")
            with pytest.raises(Conflict):
                await gw.reserve([TEAM], amount_usd="0.2", request_id="async-1")

            status = await ledger.get_budget(budget.budget_id)
            assert status.spent_usd == Decimal("0.0075") and status.held_usd == Decimal("0.1")

        transport = AsyncLoseFirstResponses("/v1/reservations")
        async with AsyncLedgerClient(
            live.url, live.gateway_key, transport=transport, **FAST
        ) as flaky:
            retried = await flaky.reserve([TEAM], amount_usd="0.2")
        assert len(transport.bodies) == 2 and transport.bodies[0] == transport.bodies[1]
        async with AsyncLedgerClient(live.url, live.admin_key) as ledger:
            held = (await ledger.get_budget(budget.budget_id)).held_usd
            assert held == Decimal("0.3")
            assert (await ledger.get_reservation(retried.reservation_id)).amount_usd == (
                Decimal("0.2")
            )

    asyncio.run(scenario())
