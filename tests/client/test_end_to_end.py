"""End to end: ``usage-ledger serve`` as a real process (API keys on), keys made with the real
``keys`` command, driven over HTTP by the Python client, then stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from app.auth import service as auth
from app.client import Forbidden, LedgerClient, Unauthorized
from tests.client.conftest import free_port

REQUEST = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Summarise the history of double-entry bookkeeping."},
    ],
}  # no max_tokens: the worst case is the model's whole output window


def _start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "USAGE_"))}


def _create_keys(db_url: str, *scopes: list[str]) -> list[tuple[str, str]]:
    """(key id, key) for each ``keys create`` argument list, run concurrently; the command
    prints the key alone on its last stdout line."""
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli.main",
                "keys",
                "create",
                *args,
                "--database-url",
                db_url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for args in scopes
    ]
    keys = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=60)
        assert run.returncode == 0, stderr
        key = stdout.strip().splitlines()[-1]
        assert key.startswith("ulk_")
        keys.append((key.removeprefix("ulk_").partition("_")[0], key))
    return keys


@pytest.fixture
def serve(db_url: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli.main",
            "serve",
            "--database-url",
            db_url,
            "--port",
            str(port),
        ],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _wait_ready(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "serve exited early"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail("serve did not become ready")


def test_serve_driven_by_the_client(
    db_url: str, serve: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, url = serve
    # The keys are made while the server starts.
    (_, admin_key), (_, gateway_key), (doomed_id, doomed_key) = _create_keys(
        db_url,
        ["--scope", "admin"],
        ["--scope", "gateway", "--org", "acme"],
        ["--scope", "gateway", "--org", "acme", "--name", "to be revoked"],
    )
    _wait_ready(process, url)

    with (
        LedgerClient(url, admin_key, org="acme") as admin,
        LedgerClient(url, gateway_key) as gateway,
        LedgerClient(url, doomed_key) as doomed,
    ):
        # The third key works until `keys revoke` (run while the rest goes on) has revoked it.
        assert doomed.quote("gpt-4o", {"prompt_tokens": 1}).cost_usd == Decimal("0.0000025")
        revoke = _start_cli("keys", "revoke", doomed_id, "--database-url", db_url)

        budget = admin.create_budget("team", "search", Decimal("0.05"), "month", mode="hard")
        assert budget.remaining_usd == Decimal("0.05")
        worst = gateway.quote("gpt-4o", request=REQUEST)
        assert worst.cost_usd > budget.limit_usd  # so the reservation must be clamped
        assert worst.max_output_tokens is not None

        with gateway.reserve(
            [("team", "search")], request=REQUEST, model="gpt-4o", fit="clamp"
        ) as reservation:
            cap = reservation.max_output_tokens
            assert cap is not None and 0 < cap < worst.max_output_tokens
            assert reservation.amount_usd <= budget.remaining_usd
            assert reservation.org == "acme"
            held = admin.get_budget(budget.budget_id)
            assert held.held_usd == reservation.amount_usd
            settlement = reservation.commit(
                {"prompt_tokens": 40, "completion_tokens": min(cap, 300)}
            )
        assert settlement.cost_usd > 0 and not settlement.overrun
        after = admin.get_budget(budget.budget_id)
        assert after.spent_usd == settlement.cost_usd
        assert after.held_usd == Decimal(0)
        assert after.remaining_usd == budget.limit_usd - settlement.cost_usd

        # A key confined to acme may not name another org.
        with pytest.raises(Forbidden) as forbidden:
            gateway.reserve([("team", "search")], amount_usd="0.001", org="globex")
        assert forbidden.value.status == 403

        # A revoked key is refused from then on: the CLI's revocation notifies the server,
        # whose key cache forgets it (at worst, its memory lapses after VERIFIED_TTL_SECONDS).
        revoke.wait(timeout=60)
        assert revoke.returncode == 0
        deadline = time.monotonic() + auth.VERIFIED_TTL_SECONDS + 5
        refused: Unauthorized | None = None
        while refused is None and time.monotonic() < deadline:
            try:
                doomed.quote("gpt-4o", {"prompt_tokens": 1})
            except Unauthorized as error:
                refused = error
            else:
                time.sleep(0.5)
        assert refused is not None, "a revoked key was still accepted after the cache TTL"
        assert refused.status == 401
        with pytest.raises(Unauthorized):
            doomed.quote("gpt-4o", {"prompt_tokens": 1})

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
