"""Price tables fetched by URL: on-disk cache, stale fallback, a clear error without a copy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from app.pricing.errors import PricesUnavailable
from app.pricing.sources import cache_path, load_table, load_url, read_source
from app.pricing.table import default_table

URL = "https://prices.example.test/model_prices.json"
BODY = json.dumps({"m": {"input_cost_per_token": "1e-06", "output_cost_per_token": "1e-06"}})


def _client(status: int = 200, body: str = BODY) -> tuple[httpx.Client, list[str]]:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(status, text=body)

    return httpx.Client(transport=httpx.MockTransport(handler)), calls


def test_fetch_caches_and_reuses(tmp_path: Path) -> None:
    client, calls = _client()
    table = load_url(URL, directory=tmp_path, client=client)
    assert table.get("m") is not None and calls == [URL]
    assert cache_path(URL, tmp_path).exists()
    load_url(URL, directory=tmp_path, client=client)
    assert calls == [URL]  # fresh cache: no second fetch


def test_failed_fetch_uses_a_stale_copy(tmp_path: Path) -> None:
    good, _ = _client()
    load_url(URL, directory=tmp_path, client=good)
    cached = cache_path(URL, tmp_path)
    os.utime(cached, (0, 0))
    failing, calls = _client(status=503)
    table = load_url(URL, directory=tmp_path, client=failing)
    assert calls == [URL] and "stale" in table.label and table.get("m") is not None


def test_failed_fetch_without_a_copy_is_an_error(tmp_path: Path) -> None:
    failing, _ = _client(status=404)
    with pytest.raises(PricesUnavailable) as raised:
        load_url(URL, directory=tmp_path, client=failing)
    assert raised.value.status == 503 and "no cached copy" in raised.value.detail


def test_unreachable_host_is_an_error(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = httpx.Client(transport=httpx.MockTransport(refuse))
    with pytest.raises(PricesUnavailable):
        load_url(URL, directory=tmp_path, client=client)


def test_read_source_from_url() -> None:
    client, _ = _client()
    data, table = read_source(URL, client=client)
    assert data == BODY.encode() and table.get("m") is not None


def test_default_source_is_the_snapshot() -> None:
    assert load_table() is default_table()
