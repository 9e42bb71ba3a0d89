"""The test proxy's ``custom_auth``: LiteLLM's own virtual keys need its database (Prisma), so
the tests name the caller in the bearer token instead, and get the same ``UserAPIKeyAuth`` a
virtual key would give the callback.

- ``sk-ul:<team>:<user>`` a caller whose calls go through usage-ledger;
  ``sk-ul:<team>:<user>:open`` the same with the key's metadata asking to fail open.
- ``sk-ll:<name>:<budget>`` a caller under LiteLLM's own key budget (``max_budget``), with
  usage-ledger switched off by the key's metadata: the comparison in test_budget_burst.
"""

from __future__ import annotations

from typing import Any

from litellm.proxy._types import UserAPIKeyAuth

ORG = "acme-org"


async def user_api_key_auth(request: Any, api_key: str) -> Any:
    parts = api_key.split(":")
    if parts[0] == "sk-ll" and len(parts) == 3:
        return UserAPIKeyAuth(
            api_key=api_key,
            user_id=f"litellm-{parts[1]}",
            max_budget=float(parts[2]),  # money-safe: LiteLLM's own budget field is a float
            spend=0.0,  # money-safe: LiteLLM's own spend field is a float
            metadata={"usage_ledger": {"enabled": False}},
        )
    if parts[0] == "sk-ul" and len(parts) in (3, 4):
        policy = {"usage_ledger": {"failure_policy": "open"}} if parts[3:] == ["open"] else {}
        return UserAPIKeyAuth(
            api_key=api_key,
            key_alias=f"{parts[1]}-{parts[2]}",
            team_id=parts[1],
            user_id=parts[2],
            org_id=ORG,
            metadata=policy,
        )
    raise ValueError("unknown test key")
