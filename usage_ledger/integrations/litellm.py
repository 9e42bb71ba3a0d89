"""usage-ledger as a LiteLLM proxy callback: budgets enforced and every call ledgered, enabled
from the proxy's ``config.yaml`` with no change to its clients (docs/litellm.md)::

    litellm_settings:
      callbacks: usage_ledger.integrations.litellm.ledger_callback

with ``USAGE_LEDGER_URL`` and ``USAGE_LEDGER_API_KEY`` (a gateway key) in the environment.

- Before the call (``async_pre_call_hook``): reserve the request's worst case against the
  subjects of the caller (key, user, team, org) with ``fit: clamp``, and write the returned
  output cap into the request, so it can neither overspend nor be refused for an imaginary
  maximum-length answer. A hard budget that cannot hold even the input refuses the call: 402.
- After success (``async_log_success_event``, streams included): commit the provider's usage,
  priced by the ledger (never LiteLLM's float ``response_cost``), with TTFT and duration.
- After failure (``async_post_call_failure_hook``): cancel. A stream the client abandons is
  committed with what was produced, or cancelled when nothing was.
- Ledger down or slow: fail closed (refuse, 503) or fail open (let the call through and
  record it later from a local spool), per configuration; closed by default.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyException

from app.client import (
    AsyncLedgerClient,
    AsyncReservationHandle,
    BudgetExceeded,
    InvalidInput,
    LedgerError,
    Unavailable,
)
from usage_ledger.integrations import _calls, _config
from usage_ledger.integrations._config import FAIL_CLOSED, LedgerSettings
from usage_ledger.integrations._spool import DELIVERED, REJECTED, RETRY, Spool

log = logging.getLogger("usage_ledger.litellm")

# Where a call carries its ticket: on LiteLLM's logging object, whose ``model_call_details``
# are the success event's ``kwargs``, and in the request's metadata, which the failure and
# streaming hooks get. Not the call id, which a client may choose (``x-litellm-call-id``). A
# client can write the metadata key too, but a ticket is honoured only while it is live in
# this process, and its id is a random UUID no client ever sees.
TICKET_KEY = "usage_ledger_ticket"

CLAMP_ATTEMPTS = 3
# A ticket outlives its hold (a commit after expiry is still charged, flagged late), so a call
# longer than the hold TTL is ledgered all the same; only a call silent for a day is forgotten.
TICKET_HORIZON_SECONDS = 86_400

_LEDGER_CALL_TYPES = {
    "completion": "chat",
    "acompletion": "chat",
    "text_completion": "completion",
    "atext_completion": "completion",
    "anthropic_messages": "messages",
    "responses": "responses",
    "aresponses": "responses",
    "embeddings": "embedding",
    "aembedding": "embedding",
}


@dataclass
class Ticket:
    """One proxied call between the pre-call hook and its settlement."""

    ticket_id: str
    request_id: str
    call_type: str
    subjects: list[tuple[str, str]]
    model: str
    metadata: dict[str, Any]
    reservation_id: str | None = None  # None: no hold (record-only, or admitted failing open)
    messages: Any = None
    created_at: float = field(default_factory=time.monotonic)  # money-safe: a clock reading
    claimed: bool = False
    stream_ended_at: float | None = None  # money-safe: a clock reading
    streamed: list[str] = field(default_factory=list)
    stream_usage: dict[str, Any] | None = None


def _refusal(
    status: int, kind: str, message: str, problem: Mapping[str, Any], retry_after: int | None
) -> ProxyException:
    """An OpenAI-style error the proxy sends to the end client as is, with this status;
    ``problem`` becomes ``error.provider_specific_fields.usage_ledger``."""
    headers = {"retry-after": str(retry_after)} if retry_after is not None else None
    return ProxyException(
        message=message,
        type=kind,
        param=None,
        code=status,
        headers=headers,
        provider_specific_fields={"usage_ledger": dict(problem)},
    )


class LedgerCallback(CustomLogger):  # type: ignore[misc]  # litellm is untyped for mypy here
    """The LiteLLM proxy callback. One instance per proxy worker process."""

    def __init__(
        self,
        settings: LedgerSettings | None = None,
        *,
        client: AsyncLedgerClient | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings or LedgerSettings.from_env()
        self.spool = Spool(self.settings.spool_path)
        self._client = client
        self._tickets: dict[str, Ticket] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._maintenance: asyncio.Task[None] | None = None

    # Plumbing

    def ledger(self) -> AsyncLedgerClient:
        """The ledger client, made in the proxy's event loop on first use."""
        if self._client is None:
            self._client = AsyncLedgerClient(
                self.settings.url,
                self.settings.api_key,
                org=self.settings.org,
                timeout=self.settings.timeout_seconds,
                max_retries=self.settings.max_retries,
            )
        return self._client

    def _spawn(self, coroutine: Any) -> None:
        """Run beside the request: a cancelled request (client gone) must not cancel it."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_maintenance(self) -> None:
        if self._maintenance is None or self._maintenance.done():
            self._maintenance = asyncio.get_running_loop().create_task(self._maintain())

    async def _maintain(self) -> None:
        """Drain the spool and settle streams whose success event never came, forever."""
        while True:
            try:
                await self.drain_spool()
                self._sweep()
            except Exception:
                log.exception("usage-ledger maintenance failed; retrying")
            await asyncio.sleep(self.settings.drain_interval_seconds)

    def _sweep(self) -> None:
        now = time.monotonic()
        for ticket in list(self._tickets.values()):
            if ticket.claimed:
                continue
            ended = ticket.stream_ended_at
            if ended is not None and now - ended > self.settings.stream_settle_grace_seconds:
                self._spawn(self._settle_stream(ticket))
            elif now - ticket.created_at > TICKET_HORIZON_SECONDS:
                # A call that neither ended nor failed in a day: its hold expired long ago.
                self._tickets.pop(ticket.ticket_id, None)

    def _lookup(self, source: Mapping[str, Any] | None) -> Ticket | None:
        """The live ticket a call's kwargs (or request data) carry, if this process issued it."""
        if not isinstance(source, Mapping):
            return None
        candidates = [source.get(TICKET_KEY)]
        for name in ("metadata", "litellm_metadata"):
            metadata = source.get(name)
            if isinstance(metadata, Mapping):
                candidates.append(metadata.get(TICKET_KEY))
        details = getattr(source.get("litellm_logging_obj"), "model_call_details", None)
        if isinstance(details, Mapping):
            candidates.append(details.get(TICKET_KEY))
        for ticket_id in candidates:
            if isinstance(ticket_id, str) and ticket_id in self._tickets:
                return self._tickets[ticket_id]
        return None

    def _claim(self, source: Mapping[str, Any] | None) -> Ticket | None:
        """The ticket, taken for settlement by exactly one caller (success, failure, stream end
        or sweep); claiming is synchronous, so no two of them settle the same call."""
        ticket = self._lookup(source)
        if ticket is None or ticket.claimed:
            return None
        ticket.claimed = True
        return ticket

    def _issue(self, ticket: Ticket, data: dict[str, Any]) -> None:
        """Register the ticket and mark the call with it: on the logging object for the success
        event, in the request's metadata for the failure and streaming hooks (the proxy hands
        those the request without its logging object)."""
        self._tickets[ticket.ticket_id] = ticket
        details = getattr(data.get("litellm_logging_obj"), "model_call_details", None)
        if isinstance(details, dict):
            details[TICKET_KEY] = ticket.ticket_id
        name = "litellm_metadata" if isinstance(data.get("litellm_metadata"), dict) else "metadata"
        metadata = data.get(name)
        if not isinstance(metadata, dict):
            metadata = data[name] = {}
        metadata[TICKET_KEY] = ticket.ticket_id

    # Before the call

    def _ledger_model(self, data: Mapping[str, Any]) -> str:
        """The priced model behind a proxy model group: a deployment's ``model_info``
        ``usage_ledger_model`` or ``base_model`` (Azure deployment names are not model ids),
        else its ``litellm_params.model`` (``openai/gpt-4o``); a group of several models is
        reserved at its first deployment's."""
        group = str(data.get("model") or "")
        try:
            from litellm.proxy.proxy_server import llm_router
        except ImportError:  # pragma: no cover - only without the proxy
            llm_router = None
        deployments = llm_router.get_model_list(model_name=group) if llm_router else None
        for deployment in deployments or []:
            info = deployment.get("model_info") or {}
            params = deployment.get("litellm_params") or {}
            name = (
                info.get("usage_ledger_model")
                or info.get("base_model")
                or params.get("base_model")
                or params.get("model")
            )
            if name:
                return str(name)
        return group

    async def _reserve(self, ticket: Ticket, data: Mapping[str, Any]) -> AsyncReservationHandle:
        """Reserve with clamp, re-clamping on a refusal that left money in the budget.

        The ledger sizes a clamp from the budget it reads before taking the budget's lock, so
        in a burst a clamp computed a moment ago may no longer fit when its hold is taken; a
        fresh attempt sizes it to what is left now. A refused attempt leaves no idempotency
        key behind, so it is resent with the same ``request_id``.
        """
        for attempt in range(CLAMP_ATTEMPTS):
            try:
                return await self.ledger().reserve(
                    ticket.subjects,
                    request=_calls.estimate_body(data),
                    model=ticket.model,
                    fit="clamp",
                    ttl_seconds=self.settings.hold_ttl_seconds,
                    metadata=ticket.metadata,
                    request_id=ticket.request_id,
                )
            except BudgetExceeded as refusal:
                left = refusal.remaining_usd
                if attempt == CLAMP_ATTEMPTS - 1 or left is None or left <= 0:
                    raise
        raise AssertionError("unreachable")

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        """Reserve the worst case, clamped to what the budgets hold, and cap the output."""
        self._start_maintenance()
        kind = str(getattr(call_type, "value", call_type))
        if kind not in _calls.CAP_FIELD and kind not in _calls.RECORD_ONLY:
            return data
        policy = _config.caller_policy(self.settings.failure_policy, user_api_key_dict)
        subjects = _config.subjects_for(self.settings.subjects, user_api_key_dict)
        if not policy.enabled or not subjects:
            return data
        ticket = Ticket(
            ticket_id=str(uuid.uuid4()),
            # Our own idempotency key: the call id can be chosen by the client (a header), and
            # a replayed key would be answered with someone else's reservation.
            request_id=f"litellm-{uuid.uuid4()}",
            call_type=kind,
            subjects=subjects,
            model=self._ledger_model(data),
            metadata={
                "source": "litellm",
                "litellm_call_id": data.get("litellm_call_id"),
                "model_group": data.get("model"),
                "endpoint": _calls.endpoint(data, user_api_key_dict),
                "tags": _calls.tags(data),
            },
            messages=data.get("messages"),
        )
        if kind in _calls.RECORD_ONLY:
            self._issue(ticket, data)
            return data
        try:
            reservation = await self._reserve(ticket, data)
        except BudgetExceeded as refusal:
            raise _refusal(
                402, "budget_exceeded", f"Budget exceeded: {refusal.detail}", refusal.problem, None
            ) from refusal
        except Unavailable as failure:
            if policy.failure_policy == FAIL_CLOSED:
                raise _refusal(
                    503,
                    "budget_unavailable",
                    "The spend ledger is unavailable and budgets are enforced (fail closed); "
                    "retry shortly",
                    {"status": 503, "retry_after_seconds": 5},
                    5,
                ) from failure
            log.warning(
                "usage-ledger unavailable; admitting %s without a hold (fail open): %s",
                ticket.request_id,
                failure,
            )
            self._issue(ticket, data)
            return data
        except LedgerError as error:
            # A configuration problem (unpriced model, wrong key): refusing keeps every call
            # accounted for, where letting it through would spend outside any budget.
            # The end client sees what kind of problem it is; the details are in the proxy's log.
            log.error("usage-ledger refused %s: %s", ticket.request_id, error)
            raise _refusal(
                500,
                "budget_error",
                f"The spend ledger could not account for this call ({error.condition})",
                {"status": error.status, "type": error.type},
                None,
            ) from error
        ticket.reservation_id = reservation.reservation_id
        if reservation.max_output_tokens is not None:
            _calls.apply_output_cap(data, reservation.max_output_tokens, kind)
        self._issue(ticket, data)
        return data

    # After the call

    def _message(
        self,
        ticket: Ticket,
        usage: Mapping[str, Any],
        *,
        model: str | None,
        provider: str | None,
        ttft_ms: int | None,
        duration_ms: int | None,
        extra: Mapping[str, Any],
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "usage": dict(usage),
            "call_type": _LEDGER_CALL_TYPES.get(ticket.call_type, "chat"),
            "metadata": {**ticket.metadata, **extra},
        }
        if model:
            message["model"] = model
        if provider:
            message["provider"] = provider
        if ttft_ms is not None:
            message["ttft_ms"] = ttft_ms
        if duration_ms is not None:
            message["duration_ms"] = duration_ms
        return message

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Commit the provider's usage (streams: the assembled response's usage)."""
        ticket = self._claim(kwargs)
        if ticket is None:
            return
        params = kwargs.get("litellm_params") or {}
        info = params.get("model_info") or (params.get("metadata") or {}).get("model_info") or {}
        provider = kwargs.get("custom_llm_provider")
        served = kwargs.get("model")
        model = (
            info.get("usage_ledger_model")
            or params.get("base_model")
            or (
                f"{provider}/{served}" if provider and served and "/" not in str(served) else served
            )
        )
        timing = {
            "ttft_ms": _calls.milliseconds_between(start_time, kwargs.get("completion_start_time")),
            "duration_ms": _calls.milliseconds_between(start_time, end_time),
        }
        canonical = _calls.canonical_usage(getattr(response_obj, "usage", None))
        native = (
            None if kwargs.get("stream") else _calls.native_usage(kwargs.get("original_response"))
        )
        attempts = []
        if native is not None:
            attempts.append(
                self._message(
                    ticket,
                    native,
                    model=model,
                    provider=provider,
                    extra={"usage_source": "provider"},
                    **timing,
                )
            )
        # The fallback: LiteLLM's token counts (never its cost), at the reserved model when the
        # served one is unknown to the ledger.
        attempts.append(
            self._message(
                ticket,
                canonical,
                model=model,
                provider=provider,
                extra={"usage_source": "litellm"},
                **timing,
            )
        )
        attempts.append(
            self._message(
                ticket,
                canonical,
                model=ticket.model,
                provider=None,
                extra={"usage_source": "litellm"},
                **timing,
            )
        )
        await self._settle(ticket, attempts)

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        """The proxy call failed for good (after LiteLLM's retries and fallbacks): cancel.

        Not ``async_log_failure_event``: that one also fires for a deployment attempt the
        router then retries, which must keep its hold.
        """
        ticket = self._claim(request_data)
        if ticket is not None:
            await self._release(ticket)

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        """Pass the stream through, noting what was produced; a stream that ends early (client
        gone, upstream error) is settled from that, in a task of its own."""
        ticket = self._lookup(request_data)
        finished = False
        try:
            async for item in response:
                if ticket is not None:
                    _observe(ticket, item)
                yield item
            finished = True
        finally:
            if ticket is not None:
                if finished:
                    ticket.stream_ended_at = time.monotonic()
                else:
                    self._spawn(self._settle_stream(ticket))

    async def _settle_stream(self, ticket: Ticket) -> None:
        """Settle a stream without its success event: its usage chunk if one came, else an
        estimate of what was produced (LiteLLM's tokenizer), else nothing to charge."""
        if ticket.claimed:
            return
        ticket.claimed = True
        usage = ticket.stream_usage
        source = "stream_usage"
        if usage is None and ticket.streamed:
            usage = {
                "prompt_tokens": _token_count(ticket.model, messages=ticket.messages),
                "completion_tokens": _token_count(ticket.model, text="".join(ticket.streamed)),
            }
            source = "estimated_partial_stream"
        if usage is None:
            await self._release(ticket)
            return
        extra = {"usage_source": source, "stream_incomplete": ticket.stream_ended_at is None}
        await self._settle(
            ticket,
            [
                self._message(
                    ticket,
                    usage,
                    model=None,
                    provider=None,
                    ttft_ms=None,
                    duration_ms=None,
                    extra=extra,
                )
            ],
        )

    # Settling

    async def _settle(self, ticket: Ticket, attempts: list[dict[str, Any]]) -> None:
        """Charge the first attempt the ledger can price; spool it when the ledger is down."""
        try:
            for index, message in enumerate(attempts):
                operation, payload = self._write(ticket, message)
                try:
                    await self._send(operation, payload)
                    return
                except InvalidInput as error:
                    if index == len(attempts) - 1:
                        log.error("usage-ledger could not price %s: %s", ticket.request_id, error)
                        self.spool.reject(operation, payload, str(error))
                        return
                except Unavailable:
                    self.spool.append(operation, payload)
                    log.warning(
                        "usage-ledger unavailable; %s %s spooled to %s",
                        operation,
                        ticket.request_id,
                        self.spool.path,
                    )
                    return
                except LedgerError as error:
                    log.error(
                        "usage-ledger refused %s of %s: %s", operation, ticket.request_id, error
                    )
                    self.spool.reject(operation, payload, str(error))
                    return
        finally:
            self._tickets.pop(ticket.ticket_id, None)

    def _write(self, ticket: Ticket, message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if ticket.reservation_id is not None:
            return "commit", {"reservation_id": ticket.reservation_id, "messages": [message]}
        payload = {
            "request_id": ticket.request_id,
            "subjects": [list(s) for s in ticket.subjects],
            "messages": [{**message, "model": message.get("model") or ticket.model}],
        }
        return "usage", payload

    async def _release(self, ticket: Ticket) -> None:
        """Cancel the hold (nothing to release for a call admitted without one)."""
        try:
            if ticket.reservation_id is None:
                return
            payload = {"reservation_id": ticket.reservation_id}
            try:
                await self._send("cancel", payload)
            except Unavailable:
                self.spool.append("cancel", payload)
            except LedgerError as error:
                log.error("usage-ledger could not cancel %s: %s", ticket.reservation_id, error)
        finally:
            self._tickets.pop(ticket.ticket_id, None)

    async def _send(self, operation: str, payload: Mapping[str, Any]) -> None:
        ledger = self.ledger()
        if operation == "commit":
            await ledger.commit(payload["reservation_id"], messages=payload["messages"])
        elif operation == "cancel":
            await ledger.cancel(payload["reservation_id"])
        elif operation == "usage":
            await ledger.record_usage(
                [tuple(s) for s in payload["subjects"]],
                messages=payload["messages"],
                request_id=payload["request_id"],
            )
        else:
            raise ValueError(f"unknown spooled operation {operation!r}")

    async def _deliver(self, operation: str, payload: dict[str, Any]) -> tuple[str, str]:
        try:
            await self._send(operation, payload)
        except Unavailable:
            return RETRY, ""
        except LedgerError as error:
            # Usage against a hard budget exhausted meanwhile, or that the ledger cannot
            # price: resending will never change the answer; the spool keeps it aside.
            log.error("usage-ledger refused spooled %s: %s", operation, error)
            return REJECTED, str(error)
        return DELIVERED, ""

    async def drain_spool(self) -> int:
        """Send what the spool holds, in order, until the ledger is unavailable again."""
        return await self.spool.drain(self._deliver)


def _observe(ticket: Ticket, item: Any) -> None:
    chunk = _calls.as_dict(item)
    for choice in chunk.get("choices") or []:
        delta = _calls.as_dict(_calls.as_dict(choice).get("delta"))
        if isinstance(delta.get("content"), str):
            ticket.streamed.append(delta["content"])
    usage = chunk.get("usage")
    if usage:
        ticket.stream_usage = _calls.canonical_usage(usage)


def _token_count(model: str, *, messages: Any = None, text: str | None = None) -> int:
    """LiteLLM's token count, for what a stream produced before it was abandoned; an estimate,
    flagged as such in the usage record's metadata."""
    try:
        if text is not None:
            return int(litellm.token_counter(model=model, text=text))
        return int(litellm.token_counter(model=model, messages=messages or []))
    except Exception:
        # No tokenizer for this model: the UTF-8 byte count, which no BPE tokenizer exceeds,
        # so the estimate errs towards charging, not towards free output.
        return len((text if text is not None else str(messages)).encode())


_instance: LedgerCallback | None = None


def __getattr__(name: str) -> LedgerCallback:
    """``ledger_callback``: the instance ``config.yaml`` names, built from the environment on
    first access (so importing this module needs no settings)."""
    global _instance
    if name != "ledger_callback":
        raise AttributeError(name)
    if _instance is None:
        _instance = LedgerCallback()
    return _instance
