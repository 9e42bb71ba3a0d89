"""The callback's parts that need no proxy: settings, the subject mapping, the output cap, usage
shapes and the spool."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from usage_ledger.integrations import _calls, _config
from usage_ledger.integrations._spool import DELIVERED, REJECTED, RETRY, Spool


def test_the_plugin_parts_do_not_import_litellm() -> None:
    # Only the callback class needs litellm (it runs in the proxy); its parts do not.
    code = (
        "import sys\n"
        "import usage_ledger.integrations._calls, usage_ledger.integrations._config\n"
        "import usage_ledger.integrations._spool\n"
        "assert 'litellm' not in sys.modules, 'litellm imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_settings_from_the_environment() -> None:
    settings = _config.LedgerSettings.from_env(
        {
            "USAGE_LEDGER_URL": "http://ledger:8000",
            "USAGE_LEDGER_API_KEY": "ulk_x_y",
            "USAGE_LEDGER_FAILURE_POLICY": "OPEN",
            "USAGE_LEDGER_SUBJECTS": "team=team_id, key=key_alias|token",
            "USAGE_LEDGER_SPOOL": "/var/spool/ul.jsonl",
        }
    )
    assert settings.failure_policy == "open"
    assert settings.spool_path == Path("/var/spool/ul.jsonl")
    assert settings.subjects == (
        _config.SubjectRule("team", ("team_id",)),
        _config.SubjectRule("key", ("key_alias", "token")),
    )
    defaults = _config.LedgerSettings.from_env(
        {"USAGE_LEDGER_URL": "http://l", "USAGE_LEDGER_API_KEY": "k"}
    )
    assert defaults.failure_policy == "closed"
    assert [rule.subject_type for rule in defaults.subjects] == ["key", "user", "team", "org"]


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"USAGE_LEDGER_URL": "http://l"},
        {"USAGE_LEDGER_URL": "http://l", "USAGE_LEDGER_API_KEY": "k", "USAGE_LEDGER_SUBJECTS": "x"},
        {
            "USAGE_LEDGER_URL": "http://l",
            "USAGE_LEDGER_API_KEY": "k",
            "USAGE_LEDGER_FAILURE_POLICY": "sometimes",
        },
        {
            "USAGE_LEDGER_URL": "http://l",
            "USAGE_LEDGER_API_KEY": "k",
            "USAGE_LEDGER_TIMEOUT_SECONDS": "x",
        },
    ],
)
def test_unusable_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(_config.ConfigurationError):
        _config.LedgerSettings.from_env(env)


def test_subjects_follow_the_mapping_and_its_fallbacks() -> None:
    rules = _config.parse_subjects("key=key_alias|token,user=user_id,team=team_id,org=org_id")
    auth = SimpleNamespace(key_alias=None, token="abc123", user_id="ann@acme.com", team_id="")
    assert _config.subjects_for(rules, auth) == [("key", "abc123"), ("user", "ann@acme.com")]


def test_subject_ids_are_one_to_one_and_valid() -> None:
    values = ["ann smith", "ann=20smith", "=x", "0=x", "_a", "é", "a" * 300, "a" * 301, "a/b"]
    ids = [_config.subject_id(v) for v in values]
    assert len(set(ids)) == len(values)
    pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,199}$"
    assert all(re.match(pattern, i) for i in ids), ids
    assert _config.subject_id("ann smith") == "ann=20smith"
    assert _config.subject_id("team-ml") == "team-ml"


def test_key_metadata_overrides_team_metadata_and_the_default() -> None:
    auth = SimpleNamespace(
        team_metadata={"usage_ledger": {"failure_policy": "open"}},
        metadata={"usage_ledger": {"failure_policy": "closed"}},
    )
    assert _config.caller_policy("open", auth) == _config.CallerPolicy(True, "closed")
    team_only = SimpleNamespace(team_metadata={"usage_ledger": {"failure_policy": "open"}})
    assert _config.caller_policy("closed", team_only).failure_policy == "open"
    off = SimpleNamespace(metadata={"usage_ledger": {"enabled": False}})
    assert not _config.caller_policy("closed", off).enabled
    assert _config.caller_policy("closed", SimpleNamespace()) == _config.CallerPolicy(
        True, "closed"
    )


def test_the_output_cap_is_written_in_the_field_of_the_api() -> None:
    chat: dict[str, Any] = {"messages": []}
    assert _calls.apply_output_cap(chat, 500, "acompletion") == 500
    assert chat["max_tokens"] == 500
    responses: dict[str, Any] = {"input": "hi"}
    _calls.apply_output_cap(responses, 500, "aresponses")
    assert responses == {"input": "hi", "max_output_tokens": 500}
    lower: dict[str, Any] = {"max_completion_tokens": 100}
    _calls.apply_output_cap(lower, 500, "acompletion")
    assert lower == {"max_completion_tokens": 100}  # never raised
    higher: dict[str, Any] = {"max_completion_tokens": 900, "max_tokens": 800}
    _calls.apply_output_cap(higher, 500, "acompletion")
    assert higher == {"max_completion_tokens": 500, "max_tokens": 500}
    several: dict[str, Any] = {"n": 3}
    assert _calls.apply_output_cap(several, 500, "acompletion") == 166  # 3 answers <= 500


def test_the_estimated_body_keeps_only_what_reaches_the_provider() -> None:
    data = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10,
        "metadata": {"user_api_key_auth": object()},
        "litellm_logging_obj": object(),
        "proxy_server_request": {"body": "..."},
    }
    assert _calls.estimate_body(data) == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10,
    }


def test_litellms_usage_maps_to_canonical_fields() -> None:
    anthropic_via_litellm = {
        "prompt_tokens": 21000,
        "completion_tokens": 500,
        "total_tokens": 21500,
        "prompt_tokens_details": {
            "cached_tokens": 0,
            "cache_creation_tokens": 20000,
            "cache_creation_token_details": {
                "ephemeral_5m_input_tokens": 0,
                "ephemeral_1h_input_tokens": 20000,
            },
        },
        "completion_tokens_details": {"reasoning_tokens": 0},
        "cache_creation_input_tokens": 20000,
        "cache_read_input_tokens": 0,
    }
    assert _calls.canonical_usage(anthropic_via_litellm) == {
        "prompt_tokens": 21000,
        "completion_tokens": 500,
        "cache_creation_tokens": 20000,
        "cache_creation_1h_tokens": 20000,
    }
    assert _calls.canonical_usage(None) == {"prompt_tokens": 0, "completion_tokens": 0}


def test_native_usage_is_the_providers_own_object() -> None:
    openai = {"usage": {"prompt_tokens": 5, "completion_tokens": 7, "new_field": 1}}
    assert _calls.native_usage(json.dumps(openai)) == {"prompt_tokens": 5, "completion_tokens": 7}
    anthropic = {"usage": {"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 3}}
    assert _calls.native_usage(anthropic) == anthropic["usage"]
    gemini = {"usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 7}}
    assert _calls.native_usage(gemini) == gemini["usageMetadata"]
    assert _calls.native_usage("my-original-response") is None  # LiteLLM's mock_response
    assert _calls.native_usage(None) is None


def test_timings_and_request_context() -> None:
    assert _calls.milliseconds_between(1.0, 1.25) == 250
    assert _calls.milliseconds_between(None, 2.0) is None
    data = {"tags": ["a"], "metadata": {"tags": ["a", "b"]}}
    assert _calls.tags(data) == ["a", "b"]
    auth = SimpleNamespace(request_route=None)
    request = {"proxy_server_request": {"url": "http://proxy/v1/chat/completions?x=1"}}
    assert _calls.endpoint(request, auth) == "/v1/chat/completions"


def test_the_spool_delivers_in_order_and_keeps_what_must_wait(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    for n in range(4):
        spool.append("usage", {"n": n})
    outcomes = iter([DELIVERED, REJECTED, RETRY])
    seen: list[int] = []

    async def deliver(operation: str, payload: dict[str, Any]) -> tuple[str, str]:
        seen.append(payload["n"])
        if payload["n"] == 1:
            spool.append("cancel", {"n": 9})  # written by another worker mid-drain
        return next(outcomes), "402: budget exhausted"

    assert asyncio.run(spool.drain(deliver)) == 2
    assert seen == [0, 1, 2]  # stopped at the first entry that must wait
    assert [e["payload"]["n"] for e in spool.pending()] == [2, 3, 9]
    [rejected] = [json.loads(line) for line in spool.rejected_path.read_text().splitlines()]
    assert rejected == {
        "operation": "usage",
        "payload": {"n": 1},
        "reason": "402: budget exhausted",
    }

    async def accept(operation: str, payload: dict[str, Any]) -> tuple[str, str]:
        return DELIVERED, ""

    assert asyncio.run(spool.drain(accept)) == 3
    assert spool.pending() == []


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append("usage", {"n": 1})
    with (tmp_path / "spool.jsonl").open("a") as handle:
        handle.write('{"spool_id": "x", "operation": "us')  # a crash mid-append
    assert [e["payload"] for e in spool.pending()] == [{"n": 1}]
