"""`usage-ledger quote` and `usage-ledger prices update`, through app.cli.main."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli.main import main
from app.cli.quote import quote_stream
from app.pricing.table import default_table

ROOT = Path(__file__).parents[2]


def _run_quote(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    lines: list[str],
    *args: str,
) -> list[dict[str, object]]:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["quote", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_quote_lines_in_order_with_errors_in_place(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        json.dumps(
            {
                "model": "gpt-4o",
                "provider": None,
                "billing_time": None,
                "usage": {"prompt_tokens": 1000, "completion_tokens": 500},
            }
        ),
        "{garbage",
        json.dumps({"model": "gpt-9000", "provider": None, "usage": {"prompt_tokens": 1}}),
        json.dumps({"model": "gpt-4o", "usage": {"prompt_tokens": 1, "cache_read_tokens": 2}}),
        json.dumps({"model": "gpt-4o", "usage": {"prompt_tokens": -1}}),
        json.dumps([1]),
        json.dumps(
            {
                "model": "claude-sonnet-4-5",
                "provider": "anthropic",
                "usage": {"prompt_tokens": 1000},
                "billing_time": "2026-11-18T08:00:00Z",
            }
        ),
    ]
    out = _run_quote(monkeypatch, capsys, lines)
    assert len(out) == 7
    assert out[0]["total_usd"] == "0.0075" and out[0]["model_key"] == "gpt-4o"
    assert out[0]["prompt_usd"] == "0.0025" and out[0]["completion_usd"] == "0.005"
    assert out[0]["provider"] == "openai"
    assert out[1]["error"]["type"] == "invalid_usage"  # type: ignore[index]
    assert out[2]["error"]["type"] == "unknown_model"  # type: ignore[index]
    assert out[2]["error"]["suggestions"]  # type: ignore[index]
    assert out[3]["error"]["type"] == "invalid_usage"  # type: ignore[index]
    assert out[3]["error"]["field"] == "usage.cache_read_tokens"  # type: ignore[index]
    assert out[4]["error"]["field"] == "usage.prompt_tokens"  # type: ignore[index]
    assert out[5]["error"]["type"] == "invalid_usage"  # type: ignore[index]
    assert out[6]["total_usd"] == "0.003"


def test_quote_with_a_prices_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(
        '{"house-model": {"input_cost_per_token": 1e-06, "output_cost_per_token": 0}}'
    )
    line = json.dumps({"model": "house-model", "usage": {"prompt_tokens": 7}})
    out = _run_quote(monkeypatch, capsys, [line], "--prices", str(prices))
    assert out[0]["total_usd"] == "0.000007"
    monkeypatch.setenv("USAGE_LEDGER_PRICES", str(prices))
    assert _run_quote(monkeypatch, capsys, [line])[0]["total_usd"] == "0.000007"


def test_quote_stream_counts_errors() -> None:
    out = io.StringIO()
    assert quote_stream(default_table(), ["{}", "", '{"model": "gpt-4o"}'], out) == 1
    assert len(out.getvalue().splitlines()) == 2


def test_quote_in_a_subprocess() -> None:
    line = json.dumps(
        {
            "model": "openai/gpt-4o-mini",
            "provider": None,
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500},
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "quote"],
        input=line + "\n",
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(done.stdout)["total_usd"] == "0.00045"


def test_prices_update_prints_changes_and_writes_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.json"
    old.write_text(
        json.dumps({"a": {"input_cost_per_token": "1e-06"}, "b": {"input_cost_per_token": "1e-06"}})
    )
    new = tmp_path / "new.json"
    new.write_text(
        json.dumps({"a": {"input_cost_per_token": "2e-06"}, "c": {"input_cost_per_token": "1e-06"}})
    )
    output = tmp_path / "out" / "prices.json"
    code = main(
        ["prices", "update", "--from", str(new), "--prices", str(old), "--output", str(output)]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "added 1, removed 1, repriced 1" in printed
    assert "+ c" in printed and "- b" in printed
    assert "~ a: input_cost_per_token: 0.000001 -> 0.000002" in printed
    assert output.read_bytes() == new.read_bytes()


def test_prices_update_from_a_bad_source_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prices", "update", "--from", str(tmp_path / "missing.json")]) == 2
    assert "cannot read price table" in capsys.readouterr().err
