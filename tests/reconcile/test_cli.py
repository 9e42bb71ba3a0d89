"""`usage-ledger reconcile` as a user runs it, against a real database."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.cli.main import main
from tests.reconcile.helpers import ANTHROPIC_CSV, OPENAI_JSON, at, openai_scenario, spend


def _reconcile(capsys: pytest.CaptureFixture[str], db_url: str, *args: str) -> tuple[int, str, str]:
    code = main(["reconcile", "--database-url", db_url, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_table_orders_by_difference_and_ends_with_totals(
    engine: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    openai_scenario(engine)
    code, out, err = _reconcile(
        capsys, db_url, "--provider", "openai", "--org", "acme", str(OPENAI_JSON)
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("reconciliation ")
    assert "(imported): openai, org acme, 2026-11-01 to 2026-11-03 (UTC)" in lines[0]
    header = lines[2].split()
    assert header == ["day", "model", "ledger", "USD", "provider", "USD", "difference", "USD"]
    table = [line.split() for line in lines[3:10]]
    assert [row[:2] for row in table] == [
        ["2026-11-01", "o3-mini"],
        ["2026-11-02", "gpt-4.1"],
        ["2026-11-01", "[web"],
        ["2026-11-01", "gpt-4o"],
        ["2026-11-02", "text-embedding-3-small"],
        ["2026-11-01", "gpt-4o-mini"],
        ["2026-11-02", "gpt-4o"],
    ]
    assert table[0][2:] == ["0.5", "0", "-0.5", "ledger", "only"]
    assert table[3][2:5] == ["4.7345", "4.7645", "0.03"]
    assert "rounded" in lines[6]
    assert lines[-1].split() == ["total", "13.13525", "13.31567", "0.18042"]

    code, out, _ = _reconcile(
        capsys, db_url, "--provider", "openai", "--org", "acme", str(OPENAI_JSON)
    )
    assert code == 0
    assert "(already imported, unchanged)" in out.splitlines()[0]
    assert out.splitlines()[-1].split() == ["total", "13.13525", "13.31567", "0.18042"]


def test_json_and_csv_output(
    engine: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spend(
        engine,
        request_id="r1",
        model="claude-sonnet-4-5",
        provider="anthropic",
        usd="17.25",
        when=at(1),
    )
    args = ["--provider", "anthropic", str(ANTHROPIC_CSV)]
    code, out, err = _reconcile(capsys, db_url, *args, "--format", "json")
    assert code == 0, err
    document = json.loads(out)
    assert document["created"] is True
    assert document["org"] == "acme"  # the only org of the ledger
    assert document["format"] == "anthropic-cost-csv"
    assert document["totals"] == {
        "ledger_usd": "17.25",
        "provider_usd": "20.8784",
        "difference_usd": "3.6284",
    }
    code, out, _ = _reconcile(capsys, db_url, *args, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0] == {
        "day": "2026-11-02",
        "model": "claude-3-7-sonnet",
        "line_item": "",
        "status": "provider_only",
        "ledger_usd": "0",
        "provider_usd": "2.5",
        "difference_usd": "2.5",
    }
    assert rows[-1]["day"] == "total"
    assert rows[-1]["difference_usd"] == "3.6284"
    sonnet = next(r for r in rows if r["model"] == "claude-sonnet-4-5")
    assert (sonnet["ledger_usd"], sonnet["provider_usd"]) == ("17.25", "17.255")


def test_errors_name_the_option_or_the_place_in_the_file(
    engine: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _reconcile(capsys, db_url, "--provider", "openai", str(OPENAI_JSON))
    assert code == 2
    assert "--org" in err
    code, _, err = _reconcile(
        capsys, db_url, "--provider", "anthropic", "--org", "acme", str(OPENAI_JSON)
    )
    assert code == 2
    assert "--provider: the file is an OpenAI costs export" in err
    bad = OPENAI_JSON.parent / "does-not-exist.json"
    code, _, err = _reconcile(capsys, db_url, "--provider", "openai", "--org", "a", str(bad))
    assert code == 2 and "cannot read" in err


def test_a_malformed_file_as_a_subprocess(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "costs.json"
    bucket = {
        "start_time": 1793491200,
        "end_time": 1793577600,
        "results": [{"amount": {"value": "1,5", "currency": "usd"}}],
    }
    path.write_text(json.dumps({"object": "page", "data": [bucket]}))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli.main",
            "reconcile",
            "--provider",
            "openai",
            "--org",
            "acme",
            "--database-url",
            db_url,
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert f"{path}: data[0].results[0].amount.value: '1,5' is not a plain decimal" in result.stderr
