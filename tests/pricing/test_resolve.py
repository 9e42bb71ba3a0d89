"""Model resolution against the embedded snapshot: boundaries, prefixes, revisions, routes."""

from __future__ import annotations

import pytest

from app.pricing.errors import UnknownModel
from app.pricing.resolve import resolve
from app.pricing.table import default_table
from tests.pricing.helpers import make_table


@pytest.mark.parametrize(
    ("model", "provider", "key"),
    [
        ("gpt-4o", None, "gpt-4o"),
        ("gpt-4o-mini", None, "gpt-4o-mini"),
        ("openai/gpt-4o-mini", None, "gpt-4o-mini"),
        ("openai/openai/gpt-4o", None, "gpt-4o"),
        ("gpt-4o", "openai", "gpt-4o"),
        ("openai/gpt-4o", "openai", "gpt-4o"),
        ("GPT-4o", None, "gpt-4o"),
        ("gpt-4o-2024-08-06", None, "gpt-4o-2024-08-06"),
        ("gpt-4o-mini-2099-01-01", None, "gpt-4o-mini"),
        ("claude-sonnet-4-5-20250929", None, "claude-sonnet-4-5-20250929"),
        ("claude-sonnet-4-5-20991231", None, "claude-sonnet-4-5"),
        ("anthropic/claude-haiku-4-5", None, "claude-haiku-4-5"),
        ("claude-opus-4-6", "anthropic", "claude-opus-4-6"),
        (
            "bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            None,
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        (
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "bedrock",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        (
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            "bedrock",
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        (
            "bedrock/converse/global.anthropic.claude-haiku-4-5-20251001-v1:0",
            None,
            "global.anthropic.claude-haiku-4-5-20251001-v1:0",
        ),
        (
            "bedrock/invoke/anthropic.claude-sonnet-4-5-20250929-v1:0",
            None,
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        (
            "bedrock/us-east-1/anthropic.claude-sonnet-4-5-20250929-v1:0",
            None,
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        (
            "bedrock/ap-northeast-1/anthropic.claude-instant-v1",
            None,
            "bedrock/ap-northeast-1/anthropic.claude-instant-v1",
        ),
        ("bedrock/amazon.nova-pro-v1:0", None, "amazon.nova-pro-v1:0"),
        ("vertex_ai/gemini-2.5-pro", None, "gemini-2.5-pro"),
        ("gemini-2.5-pro", "vertex_ai", "gemini-2.5-pro"),
        ("gemini-2.5-pro", "gemini", "gemini/gemini-2.5-pro"),
        ("gemini/gemini-2.5-flash", None, "gemini/gemini-2.5-flash"),
        ("vertex_ai/claude-sonnet-4-5@20250929", None, "vertex_ai/claude-sonnet-4-5@20250929"),
        ("claude-sonnet-4-5@20250929", "vertex_ai", "vertex_ai/claude-sonnet-4-5@20250929"),
        ("vertex_ai/claude-sonnet-4-5@20991231", None, "vertex_ai/claude-sonnet-4-5"),
        ("azure/gpt-4o", None, "azure/gpt-4o"),
        ("gpt-4o", "azure", "azure/gpt-4o"),
        ("azure/eu/gpt-4o", None, "azure/eu/gpt-4o"),
        ("deepseek/deepseek-chat", None, "deepseek/deepseek-chat"),
        ("fireworks_ai/deepseek-r1", None, "fireworks_ai/accounts/fireworks/models/deepseek-r1"),
    ],
)
def test_resolves(model: str, provider: str | None, key: str) -> None:
    assert resolve(default_table(), model=model, provider=provider).entry.key == key


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt-4o-mini-nonexistent", None),
        ("gpt-4", "bedrock"),
        ("claude-sonnet-4-5", "bedrock"),
        ("gpt-9000", None),
        ("", None),
        ("azure/my-deployment", None),
    ],
)
def test_unknown_models_are_errors_with_suggestions(model: str, provider: str | None) -> None:
    with pytest.raises(UnknownModel) as raised:
        resolve(default_table(), model=model, provider=provider)
    problem = raised.value.problem()
    assert problem["status"] == 422
    assert problem["type"].endswith("/unknown-model")
    assert problem["model"] == model
    assert isinstance(problem["suggestions"], list)


def test_suggestions_are_near_neighbours() -> None:
    with pytest.raises(UnknownModel) as raised:
        resolve(default_table(), model="gpt-4o-minii", provider=None)
    assert "gpt-4o-mini" in raised.value.suggestions


def test_a_prefix_never_slides_onto_a_shorter_neighbour() -> None:
    table = make_table(
        {
            "gpt-4": {"litellm_provider": "openai", "input_cost_per_token": "3e-05"},
            "gpt-4o": {"litellm_provider": "openai", "input_cost_per_token": "2.5e-06"},
        }
    )
    assert resolve(table, model="gpt-4o", provider=None).entry.key == "gpt-4o"
    for model in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4-turbo", "gpt-4o-", "gpt-4o2"):
        with pytest.raises(UnknownModel):
            resolve(table, model=model, provider=None)


def test_dated_id_wins_over_its_base_when_present() -> None:
    table = make_table(
        {
            "claude-x": {"litellm_provider": "anthropic", "input_cost_per_token": "1e-06"},
            "claude-x-20250101": {"litellm_provider": "anthropic", "input_cost_per_token": "2e-06"},
        }
    )
    assert resolve(table, model="claude-x-20250101", provider=None).entry.key == "claude-x-20250101"
    assert resolve(table, model="claude-x-20260101", provider=None).entry.key == "claude-x"


def test_provider_hint_picks_the_provider_specific_entry() -> None:
    table = make_table(
        {
            "m": {"litellm_provider": "openai", "input_cost_per_token": "1e-06"},
            "azure/m": {"litellm_provider": "azure", "input_cost_per_token": "2e-06"},
            "bedrock/m": {"litellm_provider": "bedrock", "input_cost_per_token": "3e-06"},
        }
    )
    assert resolve(table, model="m", provider=None).entry.key == "m"
    assert resolve(table, model="m", provider="azure").entry.key == "azure/m"
    assert resolve(table, model="m", provider="bedrock").entry.key == "bedrock/m"
    assert resolve(table, model="m", provider="bedrock_converse").entry.key == "bedrock/m"
    with pytest.raises(UnknownModel):
        resolve(table, model="m", provider="gemini")


def test_first_party_provider_found_for_a_bare_id() -> None:
    table = make_table(
        {
            "xai/grok-z": {"litellm_provider": "xai", "input_cost_per_token": "1e-06"},
            "azure_ai/grok-z": {"litellm_provider": "azure_ai", "input_cost_per_token": "2e-06"},
        }
    )
    assert resolve(table, model="grok-z", provider=None).entry.key == "xai/grok-z"
    assert resolve(table, model="grok-z", provider="azure_ai").entry.key == "azure_ai/grok-z"
