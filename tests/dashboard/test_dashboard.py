"""The /dashboard page in headless Chromium, against a live server with API keys on.

Every figure the page shows is compared with what the JSON API answers for the same window:
the page must show the API's exact decimal strings, in the API's order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.dashboard.conftest import BUDGETS, MODELS, Dashboard


def _week_window() -> dict[str, str]:
    """The window the page asks for on "7 d": six whole UTC days and today up to the next hour."""
    now = datetime.now(UTC)
    next_hour = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=6)
    return {"from": start.isoformat(), "to": next_hour.isoformat()}


def _api(dashboard: Dashboard, path: str, key: str | None = None, **params: Any) -> Any:
    response = httpx.get(dashboard.url + path, params=params, headers=dashboard.headers(key))
    return response.json()


def _forecasts(dashboard: Dashboard) -> dict[str, Decimal]:
    """Each budget's projected period-end spend by subject id, where the API has one."""
    budgets = _api(dashboard, "/v1/budgets")["budgets"]
    return {
        b["subject"]["id"]: Decimal(b["forecast"]["projected_spent_usd"])
        for b in budgets
        if (b.get("forecast") or {}).get("projected_spent_usd") is not None
    }


def _open_with_key(page: Page, dashboard: Dashboard) -> None:
    page.goto(dashboard.url + "/dashboard")
    # Without a key the first load is refused, and the page says why.
    expect(page.locator("#error-detail")).to_have_text(
        "an API key is required: Authorization: Bearer <key>"
    )
    page.fill("#key", dashboard.reader_key)
    page.click("label[for=period-7d]")
    expect(page.locator("#period-7d")).to_be_checked()
    expect(page.locator('#chart svg[data-period="7d"]')).to_have_count(1)


def test_dashboard_shows_the_apis_spend_subjects_and_budgets(
    page: Page, dashboard: Dashboard
) -> None:
    before = _forecasts(dashboard)
    _open_with_key(page, dashboard)
    expect(page.locator("#error")).to_be_hidden()
    window = _week_window()

    chart = page.locator("#chart svg")
    expect(chart).to_have_attribute("data-granularity", "day")
    expect(chart).to_have_attribute("data-buckets", "7")
    series = chart.locator("g.series")
    expect(series).to_have_count(len(MODELS))
    assert set(series.evaluate_all("groups => groups.map(g => g.dataset.model)")) == MODELS
    spend = _api(
        dashboard, "/v1/reports/spend", granularity="day", group_by="model", tz="UTC", **window
    )
    bars = chart.locator("rect.bar").evaluate_all(
        "bars => bars.map(b => [b.parentNode.dataset.model, b.dataset.period, b.dataset.cost,"
        " b.getBBox().height])"
    )
    drawn = {(model, period, cost) for model, period, cost, _ in bars}
    expected = {
        (
            row["model"],
            datetime.fromisoformat(row["period_start"]).strftime("%Y-%m-%dT%H:%M:%SZ"),
            row["cost_usd"],
        )
        for row in spend["rows"]
    }
    assert drawn == expected
    assert all(height > 0 for *_, height in bars)

    per_model = _api(dashboard, "/v1/reports/spend", granularity="all", group_by="model", **window)
    legend = page.locator("#legend li")
    assert legend.evaluate_all(
        "items => items.map(i => [i.dataset.model, i.querySelector('.cost').textContent])"
    ) == [
        [row["model"], row["cost_usd"]]
        for row in sorted(per_model["rows"], key=lambda r: -Decimal(r["cost_usd"]))
    ]
    expect(page.locator("#total-cost")).to_have_text(per_model["totals"]["cost_usd"])
    # globex's 3.15 USD stays out of the acme key's totals.
    assert Decimal(per_model["totals"]["cost_usd"]) == Decimal("1.3975")

    top = _api(dashboard, "/v1/reports/top", by="subject_id", limit=10, **window)
    rows = page.locator("#top-subjects tbody tr")
    expect(rows).to_have_count(4)
    shown = rows.evaluate_all(
        "rows => rows.map(r => [r.dataset.subjectId, r.querySelector('.cost').textContent])"
    )
    assert shown == [[row["subject_id"], row["cost_usd"]] for row in top["rows"]]
    assert [subject for subject, _ in shown] == ["search", "ml", "ann", "bob"]
    costs = [Decimal(cost) for _, cost in shown]
    assert costs == sorted(costs, reverse=True) and len(set(costs)) == len(costs)

    budgets = {b["subject"]["id"]: b for b in _api(dashboard, "/v1/budgets")["budgets"]}
    expect(page.locator("#budgets .budget")).to_have_count(len(BUDGETS))
    for team, (limit, level) in BUDGETS.items():
        assert budgets[team]["alert_level"] == level and budgets[team]["limit_usd"] == limit
        card = page.locator(f'#budgets .budget[data-subject-id="{team}"]')
        expect(card).to_have_class(f"budget level-{level}")
        expect(card).to_have_attribute("data-budget-id", dashboard.budget_ids[team])
        expect(card.locator(f"svg.gauge path.spent.level-{level}")).to_have_count(1)
        expect(card.locator(".level")).to_have_text(level)
        expect(card.locator(".spent-usd")).to_have_text(budgets[team]["spent_usd"])
        expect(card.locator(".limit-usd")).to_have_text(limit)
        expect(card.locator(".remaining-usd")).to_have_text(budgets[team]["remaining_usd"])
    # The most alarming budget comes first.
    expect(page.locator("#budgets .budget").first).to_have_attribute("data-subject-id", "search")

    # The period-end forecast (docs/alerts.md) moves with the clock, so the page's, fetched in
    # between, lies between the API's before and after (when the server sends forecasts).
    after = _forecasts(dashboard)
    for team, projected in after.items():
        card = page.locator(f'#budgets .budget[data-subject-id="{team}"]')
        forecast = Decimal(card.locator(".forecast-usd").inner_text())
        assert min(before[team], projected) <= forecast <= max(before[team], projected)


def test_refusals_show_the_problem_detail_and_hide_the_figures(
    page: Page, dashboard: Dashboard
) -> None:
    _open_with_key(page, dashboard)
    expect(page.locator("#top-subjects tbody tr")).to_have_count(4)

    bad_key = "ulk_000000000000_not-a-real-secret"
    refused = _api(dashboard, "/v1/budgets", key=bad_key)
    assert refused["status"] == 401
    page.fill("#key", bad_key)
    page.click("#load")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-detail")).to_have_text(refused["detail"])
    expect(page.locator("#error-title")).to_contain_text("401")
    expect(page.locator("#top-subjects tbody tr")).to_have_count(0)
    expect(page.locator("#chart svg")).to_have_count(0)
    expect(page.locator("#budgets .budget")).to_have_count(0)
    expect(page.locator("#total-cost")).to_have_text("—")

    # A key confined to acme may not read another org: the 403's detail is shown.
    page.fill("#key", dashboard.reader_key)
    page.fill("#org", "globex")
    page.press("#org", "Enter")
    expect(page.locator("#error-detail")).to_have_text("this key is confined to org 'acme'")

    page.fill("#org", "")
    page.click("#load")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#top-subjects tbody tr")).to_have_count(4)
    # The key is kept for this tab only, and the period and org in the address.
    assert page.evaluate("sessionStorage.getItem('usage-ledger.dashboard.key')") == (
        dashboard.reader_key
    )
    assert page.url.endswith("/dashboard?period=7d")


def test_page_and_assets_are_public_and_carry_no_data(dashboard: Dashboard) -> None:
    with httpx.Client(base_url=dashboard.url) as client:
        html = client.get("/dashboard")
        assert html.status_code == 200
        assert html.headers["content-type"] == "text/html; charset=utf-8"
        assert "script-src 'self'" in html.headers["content-security-policy"]
        assert '<script src="/dashboard/static/dashboard.js" defer></script>' in html.text
        assert "acme" not in html.text and "0.7" not in html.text
        for name, media_type in [
            ("dashboard.js", "text/javascript"),
            ("dashboard.css", "text/css"),
        ]:
            asset = client.get(f"/dashboard/static/{name}")
            assert asset.status_code == 200
            assert asset.headers["content-type"].startswith(media_type)
            again = client.get(
                f"/dashboard/static/{name}", headers={"If-None-Match": asset.headers["etag"]}
            )
            assert again.status_code == 304
        for name in ["missing.js", "..%2Frouter.py", "%2E%2E%2F__init__.py"]:
            missing = client.get(f"/dashboard/static/{name}")
            assert missing.status_code == 404
            assert missing.headers["content-type"] == "application/problem+json"
        assert client.get("/v1/budgets").status_code == 401
