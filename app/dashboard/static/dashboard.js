// usage-ledger dashboard: plain JavaScript, no build step, no dependencies (docs/dashboard.md).
//
// Money: every amount shown is the API's decimal string, untouched. A string becomes a JS
// number only to place pixels (bar heights, gauge arcs), and a BigInt of pico-USD only to
// order models exactly; neither is ever displayed.
"use strict";

(() => {
  const HOUR = 3600 * 1000;
  const DAY = 24 * HOUR;
  const WEEK = 7 * DAY;
  const SVG = "http://www.w3.org/2000/svg";
  const KEY_STORAGE = "usage-ledger.dashboard.key";
  const PERIODS = ["24h", "7d", "30d", "90d"];
  const GRAIN_TITLES = { hour: "hour (UTC)", day: "day (UTC)", week: "week from Monday (UTC)" };
  const COLORS = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
    "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#2f4b7c", "#a05195",
  ];
  const LEVELS = ["ok", "warning", "critical", "exceeded"];
  const MONTHS = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
  ];

  const $ = (id) => document.getElementById(id);

  // ---- small helpers ------------------------------------------------------------------

  class Problem extends Error {
    constructor(title, detail, status) {
      super(detail);
      this.title = title;
      this.detail = detail;
      this.status = status;
    }
  }

  function element(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    for (const child of children) node.append(child);
    return node;
  }

  function svg(tag, attributes = {}, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
    for (const child of children) node.append(child);
    return node;
  }

  // Exact pico-USD of a decimal string, for ordering only ("0.5" -> 500000000000n).
  function pico(usd) {
    const negative = usd.startsWith("-");
    const [whole, fraction = ""] = (negative ? usd.slice(1) : usd).split(".");
    const value = BigInt(whole || "0") * 10n ** 12n + BigInt((fraction + "0".repeat(12)).slice(0, 12));
    return negative ? -value : value;
  }

  // A decimal string as a number: for pixel positions only, never shown.
  const pixels = (usd) => Number(usd) || 0;

  const pad = (n) => String(n).padStart(2, "0");
  const dayLabel = (t) => {
    const d = new Date(t);
    return `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}`;
  };
  const hourLabel = (t) => `${pad(new Date(t).getUTCHours())}:00`;
  const stamp = (t) => `${dayLabel(t)} ${hourLabel(t)}`;
  const iso = (t) => new Date(t).toISOString().replace(".000Z", "Z");

  // ---- the window of a period ---------------------------------------------------------

  // Reports are asked for in UTC: rollups are hourly, and a zone off UTC by a non-whole hour
  // cannot have daily periods (docs/api.md). Every window ends at the end of the current hour
  // and starts on a period boundary, so each bar is one whole period except the current one.
  function windowOf(period, now) {
    const nextHour = Math.floor(now / HOUR) * HOUR + HOUR;
    const midnight = Math.floor(now / DAY) * DAY;
    switch (period) {
      case "24h":
        return { period, granularity: "hour", step: HOUR, from: nextHour - 24 * HOUR, to: nextHour };
      case "7d":
        return { period, granularity: "day", step: DAY, from: midnight - 6 * DAY, to: nextHour };
      case "90d": {
        // date_trunc('week') starts weeks on Monday; 1970-01-01 was a Thursday.
        const sinceMonday = (Math.floor(now / DAY) + 3) % 7;
        const monday = midnight - sinceMonday * DAY;
        return { period, granularity: "week", step: WEEK, from: monday - 12 * WEEK, to: nextHour };
      }
      default:
        return { period: "30d", granularity: "day", step: DAY, from: midnight - 29 * DAY, to: nextHour };
    }
  }

  function bucketsOf(window) {
    const buckets = [];
    for (let t = window.from; t < window.to; t += window.step) buckets.push(t);
    return buckets;
  }

  // ---- the API ------------------------------------------------------------------------

  async function getJSON(path, params, key) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
    }
    const headers = { Accept: "application/json" };
    if (key) headers.Authorization = `Bearer ${key}`;
    let response;
    try {
      response = await fetch(url, { headers, cache: "no-store" });
    } catch (error) {
      throw new Problem("Network error", `could not reach ${url.pathname}: ${error.message}`);
    }
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!response.ok) {
      // Errors are RFC 9457 problem documents: show the server's own detail.
      const title = (body && body.title) || `HTTP ${response.status}`;
      const detail = (body && body.detail) || text || response.statusText;
      throw new Problem(title, detail, response.status);
    }
    return body;
  }

  // ---- state and controls -------------------------------------------------------------

  let generation = 0;
  let lastChart = null;

  function selectedPeriod() {
    const checked = document.querySelector('input[name="period"]:checked');
    return checked && PERIODS.includes(checked.value) ? checked.value : "30d";
  }

  function restore() {
    const params = new URLSearchParams(window.location.search);
    const period = params.get("period");
    if (period && PERIODS.includes(period)) $(`period-${period}`).checked = true;
    if (params.get("org")) $("org").value = params.get("org");
    // The key stays in this tab's sessionStorage: never in the URL, never on disk.
    $("key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function remember() {
    const key = $("key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    const params = new URLSearchParams();
    params.set("period", selectedPeriod());
    if ($("org").value.trim()) params.set("org", $("org").value.trim());
    window.history.replaceState(null, "", `${window.location.pathname}?${params}`);
  }

  function showError(error) {
    const problem = error instanceof Problem ? error : new Problem("Error", String(error && error.message || error));
    $("error-title").textContent = problem.status ? `${problem.title} (${problem.status})` : problem.title;
    $("error-detail").textContent = problem.detail;
    $("error").hidden = false;
  }

  function hideError() {
    $("error").hidden = true;
    $("error-title").textContent = "";
    $("error-detail").textContent = "";
  }

  async function load() {
    const mine = ++generation;
    remember();
    const key = $("key").value.trim();
    const org = $("org").value.trim();
    const window_ = windowOf(selectedPeriod(), Date.now());
    const common = { from: iso(window_.from), to: iso(window_.to), org };
    document.body.setAttribute("aria-busy", "true");
    $("status").textContent = "Loading…";
    try {
      const [series, perModel, top, budgets] = await Promise.all([
        getJSON("/v1/reports/spend", { ...common, granularity: window_.granularity, group_by: "model", tz: "UTC" }, key),
        getJSON("/v1/reports/spend", { ...common, granularity: "all", group_by: "model" }, key),
        getJSON("/v1/reports/top", { ...common, by: "subject_id", limit: 10 }, key),
        getJSON("/v1/budgets", { org }, key),
      ]);
      if (mine !== generation) return; // a newer load started: its answer wins
      hideError();
      renderSummary(window_, perModel);
      lastChart = { window: window_, series, perModel };
      renderChart(lastChart);
      renderTop(top);
      renderBudgets(budgets);
      const now = new Date();
      $("status").textContent = `Updated ${dayLabel(now)} ${pad(now.getUTCHours())}:${pad(now.getUTCMinutes())} UTC`;
    } catch (error) {
      if (mine !== generation) return;
      // Never leave figures on screen that the current key or org was not allowed to read.
      clearAll();
      showError(error);
      $("status").textContent = "";
    } finally {
      if (mine === generation) document.body.removeAttribute("aria-busy");
    }
  }

  function clearAll() {
    lastChart = null;
    for (const id of ["total-cost", "total-requests", "total-messages", "window"]) $(id).textContent = "—";
    $("spend-grain").textContent = "";
    $("chart").replaceChildren();
    $("legend").replaceChildren();
    document.querySelector("#top-subjects tbody").replaceChildren();
    $("top-empty").hidden = true;
    $("budgets").replaceChildren();
    $("budgets-empty").hidden = true;
  }

  // ---- summary ------------------------------------------------------------------------

  function renderSummary(window_, perModel) {
    $("total-cost").textContent = perModel.totals.cost_usd;
    $("total-requests").textContent = perModel.totals.requests.toLocaleString("en-US");
    $("total-messages").textContent = perModel.totals.messages.toLocaleString("en-US");
    $("window").textContent = `${stamp(window_.from)} – ${stamp(window_.to)}`;
  }

  // ---- spend chart: one stacked series of bars per model --------------------------------

  function niceScale(max) {
    if (!(max > 0)) return { top: 1, step: 0.25, decimals: 2 };
    const rough = max / 5;
    const magnitude = 10 ** Math.floor(Math.log10(rough));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= rough * (1 - 1e-9));
    const top = Math.ceil(max / step - 1e-9) * step;
    let decimals = 0;
    while (decimals < 12 && Math.abs(Math.round(step * 10 ** decimals) - step * 10 ** decimals) > 1e-6) decimals++;
    return { top, step, decimals };
  }

  function modelsOf(series, perModel) {
    const byKey = new Map();
    for (const row of perModel.rows) byKey.set(row.model ?? "", { key: row.model ?? "", cost: row.cost_usd });
    // A usage recorded between the two queries may name a model the totals have not seen.
    for (const row of series.rows) {
      if (!byKey.has(row.model ?? "")) byKey.set(row.model ?? "", { key: row.model ?? "", cost: null });
    }
    const models = [...byKey.values()];
    // The biggest spender first: it sits at the bottom of each stack and tops the legend.
    models.sort((a, b) => {
      const left = a.cost === null ? -1n : pico(a.cost);
      const right = b.cost === null ? -1n : pico(b.cost);
      return left === right ? a.key.localeCompare(b.key) : left > right ? -1 : 1;
    });
    models.forEach((model, index) => {
      model.label = model.key || "(no model)";
      model.color = COLORS[index % COLORS.length];
    });
    return models;
  }

  function renderChart({ window: window_, series, perModel }) {
    const figure = $("chart");
    const buckets = bucketsOf(window_);
    const position = new Map(buckets.map((t, i) => [t, i]));
    const models = modelsOf(series, perModel);
    const cells = new Map(models.map((m) => [m.key, buckets.map(() => null)]));
    for (const row of series.rows) {
      const index = position.get(Date.parse(row.period_start));
      if (index !== undefined) cells.get(row.model ?? "")[index] = row.cost_usd;
    }
    const stacks = buckets.map((_, i) => models.reduce((sum, m) => sum + pixels(cells.get(m.key)[i] || "0"), 0));
    const scale = niceScale(Math.max(0, ...stacks));

    const width = Math.max(360, Math.floor(figure.clientWidth || 900));
    const height = 280;
    const labels = [];
    for (let value = 0, i = 0; value <= scale.top + scale.step / 2; i++, value = i * scale.step) {
      labels.push({ value, text: value.toFixed(scale.decimals) });
    }
    const longest = Math.max(...labels.map((l) => l.text.length));
    const margin = { top: 14, right: 12, bottom: 46, left: 34 + longest * 7.2 };
    const plotWidth = width - margin.left - margin.right;
    const plotHeight = height - margin.top - margin.bottom;
    const y = (value) => margin.top + plotHeight - (value / scale.top) * plotHeight;
    const band = plotWidth / buckets.length;
    const barWidth = Math.max(1, band * (buckets.length > 40 ? 0.8 : 0.68));

    const root = svg("svg", {
      width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": `Spend per ${window_.granularity} by model`,
      "data-period": window_.period, "data-granularity": window_.granularity, "data-buckets": buckets.length,
    });

    const grid = svg("g", { class: "axis y-axis" });
    for (const label of labels) {
      const at = y(label.value);
      grid.append(svg("line", { class: label.value === 0 ? "baseline" : "grid", x1: margin.left, x2: width - margin.right, y1: at, y2: at }));
      grid.append(svg("text", { x: margin.left - 8, y: at, "text-anchor": "end", "dominant-baseline": "middle" }, label.text));
    }
    grid.append(svg("text", {
      class: "axis-title", transform: `translate(14 ${margin.top + plotHeight / 2}) rotate(-90)`, "text-anchor": "middle",
    }, "cost (USD)"));
    root.append(grid);

    const xAxis = svg("g", { class: "axis x-axis" });
    const every = Math.max(1, Math.ceil(58 / band));
    buckets.forEach((t, i) => {
      if (i % every !== 0) return;
      const x = margin.left + band * i + band / 2;
      const text = svg("text", { x, y: margin.top + plotHeight + 16, "text-anchor": "middle" });
      if (window_.granularity === "hour") {
        text.append(svg("tspan", { x }, hourLabel(t)));
        if (i === 0 || new Date(t).getUTCHours() < every) text.append(svg("tspan", { x, dy: 12, class: "minor" }, dayLabel(t)));
      } else {
        text.textContent = dayLabel(t);
      }
      xAxis.append(text);
    });
    xAxis.append(svg("text", {
      class: "axis-title", x: margin.left + plotWidth / 2, y: height - 4, "text-anchor": "middle",
    }, GRAIN_TITLES[window_.granularity]));
    root.append(xAxis);

    const bottoms = buckets.map(() => 0);
    for (const model of models) {
      const group = svg("g", { class: "series", "data-model": model.key, fill: model.color });
      cells.get(model.key).forEach((cost, i) => {
        if (cost === null) return;
        const value = pixels(cost);
        const top = y(bottoms[i] + value);
        const rect = svg("rect", {
          class: "bar", x: margin.left + band * i + (band - barWidth) / 2, y: top,
          width: barWidth, height: Math.max(0, y(bottoms[i]) - top),
          "data-period": iso(buckets[i]), "data-cost": cost,
        });
        rect.append(svg("title", {}, `${model.label}, ${stamp(buckets[i])} UTC: ${cost} USD`));
        group.append(rect);
        bottoms[i] += value;
      });
      root.append(group);
    }
    if (!models.length) {
      root.append(svg("text", { class: "empty", x: margin.left + plotWidth / 2, y: margin.top + plotHeight / 2, "text-anchor": "middle" }, "No spend in this period"));
    }
    figure.replaceChildren(root);
    $("spend-grain").textContent = `per ${window_.granularity}, UTC`;

    const legend = $("legend");
    legend.replaceChildren(...models.map((model) => {
      const swatch = element("span", { class: "swatch" });
      swatch.style.background = model.color;
      const item = element("li", { "data-model": model.key }, swatch, element("span", { class: "model" }, model.label));
      if (model.cost !== null) item.append(element("span", { class: "cost" }, model.cost));
      return item;
    }));
  }

  // ---- top subjects -------------------------------------------------------------------

  function renderTop(report) {
    const body = document.querySelector("#top-subjects tbody");
    const rows = report.rows;
    const largest = Math.max(0, ...rows.map((r) => pixels(r.cost_usd)));
    body.replaceChildren(...rows.map((row, index) => {
      const fill = element("div", { class: "fill" });
      fill.style.width = `${largest > 0 ? Math.max(0.5, (100 * pixels(row.cost_usd)) / largest) : 0}%`;
      return element(
        "tr",
        { "data-subject-type": row.subject_type ?? "", "data-subject-id": row.subject_id ?? "" },
        element("td", { class: "rank" }, String(index + 1)),
        element("td", { class: "subject" },
          element("span", { class: "subject-id" }, row.subject_id ?? "—"), " ",
          element("span", { class: "tag" }, row.subject_type ?? "")),
        element("td", { class: "num cost" }, row.cost_usd),
        element("td", { class: "share" }, element("div", { class: "track" }, fill)),
      );
    }));
    $("top-empty").hidden = rows.length > 0;
  }

  // ---- budgets ------------------------------------------------------------------------

  const CENTER_X = 60;
  const CENTER_Y = 58;
  const RADIUS = 46;

  // The point of a half-circle gauge at fraction f (0 = left end, 1 = right end).
  function gaugePoint(f, radius = RADIUS) {
    const angle = Math.PI * (1 - f);
    return [CENTER_X + radius * Math.cos(angle), CENTER_Y - radius * Math.sin(angle)];
  }

  function arc(from, to) {
    const [x0, y0] = gaugePoint(from);
    const [x1, y1] = gaugePoint(to);
    return `M ${x0.toFixed(2)} ${y0.toFixed(2)} A ${RADIUS} ${RADIUS} 0 0 1 ${x1.toFixed(2)} ${y1.toFixed(2)}`;
  }

  function ratio(part, whole) {
    const total = pixels(whole);
    if (total <= 0) return pixels(part) > 0 ? Infinity : 0;
    return pixels(part) / total;
  }

  function gauge(budget, level) {
    const spent = ratio(budget.spent_usd, budget.limit_usd);
    const spentShown = Math.min(1, spent);
    const heldShown = Math.min(1 - spentShown, ratio(budget.held_usd, budget.limit_usd));
    const root = svg("svg", { class: "gauge", viewBox: "0 0 120 72", width: 100, height: 60, "aria-hidden": "true" });
    root.append(svg("path", { class: "track", d: arc(0, 1) }));
    if (heldShown > 0) root.append(svg("path", { class: "held", d: arc(spentShown, spentShown + heldShown) }));
    if (spentShown > 0) root.append(svg("path", { class: `spent level-${level}`, d: arc(0, spentShown) }));
    for (const threshold of budget.alert_thresholds || []) {
      const f = Number(threshold);
      if (!(f > 0 && f <= 1)) continue;
      const [x0, y0] = gaugePoint(f, RADIUS - 9);
      const [x1, y1] = gaugePoint(f, RADIUS + 9);
      root.append(svg("line", { class: "threshold", x1: x0, y1: y0, x2: x1, y2: y1 }));
    }
    const projected = forecastOf(budget);
    if (projected !== null) {
      // Where spend is heading by the period end (docs/alerts.md): a dot on the rim.
      const [x, y] = gaugePoint(Math.min(1, ratio(projected, budget.limit_usd)), RADIUS + 10);
      root.append(svg("circle", { class: "forecast-mark", cx: x, cy: y, r: 3.2 }));
    }
    const percent = spent === Infinity || spent >= 10 ? ">999%" : `${Math.floor(spent * 100)}%`;
    root.append(svg("text", { class: "percent", x: CENTER_X, y: CENTER_Y - 4, "text-anchor": "middle" }, percent));
    root.append(svg("text", { class: "caption", x: CENTER_X, y: CENTER_Y + 11, "text-anchor": "middle" }, "spent"));
    return root;
  }

  // The projected period-end spend, when the server sends a forecast that has one.
  function forecastOf(budget) {
    const forecast = budget.forecast;
    return forecast && typeof forecast.projected_spent_usd === "string" ? forecast.projected_spent_usd : null;
  }

  function forecastLine(budget) {
    const projected = forecastOf(budget);
    if (projected === null) return [];
    const forecast = budget.forecast;
    const line = element("div", { class: "muted forecast" },
      "forecast ", element("span", { class: "forecast-usd" }, projected), " USD");
    if (forecast.projected_at) line.append(` by ${dayLabel(Date.parse(forecast.projected_at))}`);
    if (forecast.projected_alert_level) line.append(` (${forecast.projected_alert_level})`);
    if (forecast.limit_reached_at) line.append(` · limit on ${stamp(Date.parse(forecast.limit_reached_at))}`);
    return [line];
  }

  function periodText(budget, showOrg) {
    const zone = budget.timezone === "UTC" ? "" : ` (${budget.timezone})`;
    const period = budget.period === "total"
      ? "total"
      : `${budget.period} from ${dayLabel(Date.parse(budget.period_start))}${zone}`;
    return `${period} · ${budget.mode}${showOrg ? ` · org ${budget.org}` : ""}`;
  }

  function renderBudgets(report) {
    const budgets = [...report.budgets];
    // The most alarming first; within a level, the fullest first.
    budgets.sort((a, b) => {
      const byLevel = LEVELS.indexOf(b.alert_level) - LEVELS.indexOf(a.alert_level);
      return byLevel || ratio(b.spent_usd, b.limit_usd) - ratio(a.spent_usd, a.limit_usd);
    });
    // The org is named only when the list mixes orgs (an unconfined key, no org filter).
    const showOrg = new Set(budgets.map((b) => b.org)).size > 1;
    const span = (cls, text) => element("span", { class: cls }, text);
    $("budgets").replaceChildren(...budgets.map((budget) => {
      const level = LEVELS.includes(budget.alert_level) ? budget.alert_level : "ok";
      return element(
        "article",
        {
          class: `budget level-${level}`, "data-budget-id": budget.budget_id,
          "data-subject-type": budget.subject.type, "data-subject-id": budget.subject.id,
          "data-alert-level": level, title: `budget ${budget.budget_id} of org ${budget.org}`,
        },
        gauge(budget, level),
        element("div", { class: "info" },
          element("div", { class: "who" },
            span("subject-id", budget.subject.id), " ", span("tag", budget.subject.type), " ",
            span(`level level-${level}`, level), " ", span("muted budget-period", periodText(budget, showOrg))),
          element("div", { class: "amounts" },
            span("spent-usd", budget.spent_usd), " of ", span("limit-usd", budget.limit_usd), " USD spent",
            element("span", { class: "muted" },
              " · held ", span("held-usd", budget.held_usd), " · remaining ", span("remaining-usd", budget.remaining_usd))),
          ...forecastLine(budget)),
      );
    }));
    $("budgets-empty").hidden = budgets.length > 0;
  }

  // ---- wiring -------------------------------------------------------------------------

  function start() {
    restore();
    $("controls").addEventListener("submit", (event) => {
      event.preventDefault();
      load();
    });
    for (const radio of document.querySelectorAll('input[name="period"]')) radio.addEventListener("change", load);
    let pending = 0;
    window.addEventListener("resize", () => {
      window.clearTimeout(pending);
      pending = window.setTimeout(() => lastChart && renderChart(lastChart), 150);
    });
    // Load at once: with a remembered key, or on a server run with --insecure-no-auth, the
    // figures appear without a click; otherwise the 401's detail says what is missing.
    load();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
