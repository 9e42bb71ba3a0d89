"""Take docs/dashboard.png: the dashboard at 1280x900 over 30 days of realistic demo spend.

    .venv/bin/python scripts/dashboard-screenshot.py [--database-url URL] [--out PATH]

Without --database-url it starts an embedded PostgreSQL in a temporary directory and throws
it away afterwards; a given URL must be a scratch database with no events yet (the script
writes demo data into it). The spend is written through the service API with past times (the
HTTP API records usage at the time of the call), then a live server answers headless Chromium
(scripts/ensure-chromium) exactly as it would a person.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright
from sqlalchemy import Engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.auth.service import create_key  # noqa: E402
from app.budgets import holds  # noqa: E402
from app.budgets import service as budgets_service  # noqa: E402
from app.budgets.model import Subject  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import migrate  # noqa: E402
from app.db.engine import Database, make_engine  # noqa: E402
from app.ledger.records import UsageRecord  # noqa: E402
from app.main import create_app  # noqa: E402
from app.pricing import service as pricing  # noqa: E402
from app.pricing.sources import load_table  # noqa: E402
from app.pricing.table import PriceTable  # noqa: E402

ORG = "acme"
DAYS = 30
HELD = Subject("team", "search")


@dataclass(frozen=True)
class Team:
    name: str
    requests_per_day: int
    models: tuple[tuple[str, float], ...]  # (model, share of requests)
    users: tuple[str, ...]
    prompt_tokens: tuple[int, int]
    completion_tokens: tuple[int, int]


TEAMS = (
    Team(
        "search",
        14,
        (("gpt-4o", 0.7), ("gpt-4o-mini", 0.3)),
        ("ann", "bob"),
        (5000, 40000),
        (300, 3000),
    ),
    Team(
        "ml-research",
        6,
        (("claude-sonnet-4-5-20250929", 0.6), ("gemini-2.5-pro", 0.4)),
        ("chen", "eve"),
        (20000, 120000),
        (1000, 6000),
    ),
    Team(
        "support-bot",
        16,
        (("claude-haiku-4-5", 0.85), ("gpt-4o-mini", 0.15)),
        (),
        (4000, 20000),
        (200, 1500),
    ),
    Team(
        "growth",
        5,
        (("gpt-4o", 0.5), ("gemini-2.5-pro", 0.5)),
        ("dara", "finn"),
        (4000, 30000),
        (500, 3000),
    ),
)

# (subject, period, mode, fraction of the limit spent): one budget at each alert level.
BUDGETS = (
    (Subject("team", "search"), "month", "hard", "0.62"),
    (Subject("team", "ml-research"), "month", "hard", "0.86"),
    (Subject("team", "support-bot"), "week", "soft", "0.97"),
    (Subject("team", "growth"), "day", "soft", "1.25"),
)


def _record(table: PriceTable, rng: random.Random, team: Team, at: datetime) -> UsageRecord:
    model = rng.choices([m for m, _ in team.models], weights=[w for _, w in team.models])[0]
    usage = {
        "prompt_tokens": rng.randint(*team.prompt_tokens),
        "completion_tokens": rng.randint(*team.completion_tokens),
    }
    quote = pricing.quote(table, model=model, provider=None, usage=usage, billing_time=at)
    return UsageRecord(
        cost_pico_usd=quote.total_pico_usd,
        model=model,
        provider=quote.provider,
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        model_key=quote.model_key,
        priced_by=quote.priced_by,
    )


def seed(engine: Engine, table: PriceTable, now: datetime) -> None:
    """Thirty days of traffic, growing and quieter at weekends, and a budget per alert level."""
    rng = random.Random(20261122)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=DAYS - 1)
    with engine.begin() as conn:
        budgets = [
            budgets_service.define_budget(
                conn,
                org=ORG,
                subject=subject,
                limit_pico_usd=10**18,
                period=period,
                mode="soft",
                now=start - timedelta(days=1),
            )
            for subject, period, _, _ in BUDGETS
        ]
    serial = 0
    for day in range(DAYS):
        midnight = start + timedelta(days=day)
        volume = (0.55 if midnight.weekday() >= 5 else 1.0) * (0.7 + 0.6 * day / DAYS)
        moments = []
        for team in TEAMS:
            for _ in range(round(team.requests_per_day * volume * rng.uniform(0.8, 1.2))):
                at = midnight + timedelta(seconds=rng.randint(0, 86_399))
                if at < now - timedelta(minutes=1):
                    moments.append((at, team))
        moments.sort(key=lambda item: item[0])
        with engine.begin() as conn:
            for at, team in moments:
                serial += 1
                record = _record(table, rng, team, at)
                subjects = [Subject("team", team.name)]
                if team.users:
                    subjects.append(Subject("user", rng.choice(team.users)))
                holds.record_usage(
                    conn,
                    org=ORG,
                    request_id=f"demo-{serial}",
                    subjects=subjects,
                    cost_pico_usd=record.cost_pico_usd,
                    records=[record],
                    model=record.model,
                    provider=record.provider,
                    now=at,
                )
    with engine.begin() as conn:
        # Limits are set after the fact so that each budget lands at its intended level.
        for budget, (_, _, mode, fraction) in zip(budgets, BUDGETS, strict=True):
            spent = budgets_service.status_of(conn, budget).spent_pico_usd
            budgets_service.change_budget(
                conn,
                org=ORG,
                budget_id=budget.budget_id,
                limit_pico_usd=_round_limit(spent, Decimal(fraction)),
                mode=mode,
            )
        # A request in flight, so one gauge shows money held as well as spent.
        held = [
            s
            for s in budgets_service.list_budget_statuses(conn, org=ORG)
            if s.budget.subject == HELD
        ]
        holds.reserve(
            conn,
            org=ORG,
            request_id="demo-in-flight",
            subjects=[HELD],
            amount_pico_usd=held[0].remaining_pico_usd // 3,
            ttl_seconds=86_400,
            model="gpt-4o",
        )


def _round_limit(spent_pico_usd: int, fraction: Decimal) -> int:
    """The limit at which ``spent`` is ``fraction`` of it, to three significant digits (which
    moves the fraction by at most 0.5 %, so the budget stays at the level intended)."""
    if spent_pico_usd <= 0:
        return 10**12
    limit = Decimal(spent_pico_usd) / fraction
    step = Decimal(10) ** (limit.adjusted() - 2)
    return int((limit / step).to_integral_value() * step)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(engine: Engine) -> tuple[uvicorn.Server, threading.Thread, str]:
    app = create_app(engine, Settings(insecure_no_auth=False), sweep=False)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def screenshot(url: str, key: str, out: Path, chromium: str, period: str) -> None:
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
        page = context.new_page()
        page.goto(url + "/dashboard")
        page.fill("#key", key)
        page.click(f"label[for=period-{period}]")
        page.click("#load")
        page.wait_for_selector(f'#chart svg[data-period="{period}"]')
        page.wait_for_selector("#budgets .budget")
        page.wait_for_selector("#error", state="hidden")
        page.wait_for_function("!document.body.hasAttribute('aria-busy')")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()


def run(database_url: str | None, out: Path, chromium: str, period: str) -> None:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="ul-dashboard-") as directory:
        database = Database(Settings(database_url=database_url, data_dir=Path(directory)))
        try:
            migrate.upgrade(database.url)
            engine = make_engine(database.url, settings=Settings(pool_size=8))
            with engine.connect() as conn:
                if conn.execute(text("SELECT count(*) FROM ledger_events")).scalar_one():
                    raise SystemExit("that database already has events: give a scratch one")
            table = load_table(prices_path=None, prices_url=None)
            seed(engine, table, now)
            with engine.begin() as conn:
                _, key = create_key(conn, scope="reader", org=ORG, name="dashboard-screenshot")
            server, thread, url = serve(engine)
            try:
                screenshot(url, key, out, chromium, period)
            finally:
                server.should_exit = True
                thread.join(timeout=15)
                engine.dispose()
        finally:
            database.close()
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--database-url", help="a scratch database (default: embedded, temporary)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--period", choices=["24h", "7d", "30d", "90d"], default="30d")
    args = parser.parse_args()
    run(args.database_url, args.out, args.chromium, args.period)


if __name__ == "__main__":
    main()
