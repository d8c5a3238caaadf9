// Charts with uPlot from GET /api/v1/metrics (through the console's cookie-authenticated copy).
// One chart per number; one line per group (environment, region, ...) or, on the agent page,
// per percentile. Redrawn on resize and theme change, refetched every minute for live ranges.
"use strict";

(() => {
  const section = document.querySelector(".charts[data-charts]");
  if (!section || !window.uPlot) return;
  const config = JSON.parse(section.dataset.charts);
  const agentMode = Boolean(config.agent);
  const status = document.getElementById("chart-status");
  const rangeSelect = section.querySelector("[data-chart-range]");
  const PALETTE = ["#3b7ddd", "#e0762b", "#2fa36b", "#c94f7c", "#8c6bd6", "#c9a227", "#26a5b8", "#7d8a99",
    "#d64545", "#5aa02c", "#b0569c", "#3f5fa8"];
  const MAX_POINTS = 240;

  const fmt = {
    ms: (v) => (v == null ? "–" : v >= 1000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`),
    pct: (v) => (v == null ? "–" : `${Math.round(v * 100)}%`),
    num: (v) => (v == null ? "–" : v >= 100 ? Math.round(v).toLocaleString() : v.toFixed(1)),
    usd: (v) => (v == null ? "–" : `$${v.toFixed(v < 10 ? 2 : 0)}`),
  };
  const CHARTS = {
    latency: { title: agentMode ? "Reasoning latency" : "Reasoning latency, p95", metrics: agentMode ? ["reasoning_latency_p50_ms", "reasoning_latency_p95_ms"] : ["reasoning_latency_p95_ms"], fmt: fmt.ms },
    success: { title: "Tool success rate", metrics: ["tool_success_rate"], fmt: fmt.pct, range: [0, 1] },
    tokens: { title: "Tokens per action", metrics: ["tokens_per_action"], fmt: fmt.num },
    cost: { title: "Cost per hour", metrics: ["cost_usd_per_hour"], fmt: fmt.usd },
    events: { title: "Events per second", metrics: ["events_per_s"], fmt: fmt.num },
    errors: { title: "stderr lines per second", metrics: ["error_lines_per_s"], fmt: fmt.num },
  };
  const METRIC_NAMES = {
    reasoning_latency_p50_ms: "p50", reasoning_latency_p95_ms: "p95", tool_success_rate: "success",
    tokens_per_action: "tokens/action", cost_usd_per_hour: "$/h", events_per_s: "events/s", error_lines_per_s: "stderr/s",
  };

  const figures = Array.from(section.querySelectorAll("figure[data-chart]"));
  const wanted = figures.map((f) => f.dataset.chart).filter((name) => CHARTS[name]);
  const metrics = [...new Set(wanted.flatMap((name) => CHARTS[name].metrics))];
  const groups = agentMode ? [{ label: config.agent, params: { agent: config.agent } }] : config.groups;
  let plots = [];
  let lastData = null;

  function window_() {
    if (rangeSelect) return { seconds: Number(rangeSelect.value) };
    return config.window;
  }

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  async function fetchGroup(group, since, until, step) {
    const query = new URLSearchParams({ since: String(since), until: String(until), step: String(step) });
    metrics.forEach((m) => query.append("metric", m));
    for (const [key, value] of Object.entries(group.params)) query.set(key, value);
    const result = await window.ClawTrace.callApi(`/console/api/v1/metrics?${query}`, "GET");
    if (!result.ok) throw new Error(`${group.label}: ${result.message}`);
    const byMetric = {};
    for (const series of result.data.series) byMetric[series.metric] = series.points;
    return byMetric;
  }

  async function load() {
    const range = window_();
    const until = range.until ?? Date.now() / 1000;
    const since = range.since ?? until - range.seconds;
    const step = Math.max(60, Math.ceil((until - since) / MAX_POINTS / 60) * 60);
    if (status) status.textContent = "loading…";
    try {
      const perGroup = await Promise.all(groups.map((g) => fetchGroup(g, since, until, step)));
      lastData = { perGroup, step };
      draw();
      if (status) status.textContent = `${groups.length} ${groups.length === 1 ? "line" : "lines"} per chart · one point per ${step / 60} min · updated ${new Date().toISOString().slice(11, 19)}Z`;
    } catch (err) {
      if (status) status.textContent = `Charts could not be loaded: ${err.message}`;
      else window.ClawTrace.toast(`Charts could not be loaded: ${err.message}`, true);
    }
  }

  function chartData(name) {
    const chart = CHARTS[name];
    const first = lastData.perGroup[0][chart.metrics[0]] || [];
    const xs = first.map((p) => p[0]);
    const data = [xs];
    // Times are UTC, as everywhere in the console.
    const series = [{ label: "UTC", value: (u, ts) => (ts == null ? "--" : utc(ts, true)) }];
    let color = 0;
    lastData.perGroup.forEach((byMetric, g) => {
      for (const metric of chart.metrics) {
        const points = byMetric[metric] || [];
        data.push(xs.map((_, i) => (points[i] ? points[i][1] : null)));
        const label = agentMode ? METRIC_NAMES[metric] : chart.metrics.length > 1 ? `${groups[g].label} ${METRIC_NAMES[metric]}` : groups[g].label;
        const present = data[data.length - 1].filter((v) => v != null).length;
        series.push({
          label, stroke: PALETTE[color++ % PALETTE.length], width: 1.6, spanGaps: false, value: (u, v) => chart.fmt(v),
          // Isolated minutes draw no line: show the points while there are few of them.
          points: { show: present < 60, size: 5 },
        });
      }
    });
    const hasData = data.slice(1).some((line) => line.some((v) => v != null));
    return { data, series, hasData };
  }

  function utc(ts, withDate) {
    const iso = new Date(ts * 1000).toISOString();
    return withDate ? `${iso.slice(5, 10)} ${iso.slice(11, 16)}` : iso.slice(11, 16);
  }

  function draw() {
    if (!lastData) return;
    plots.forEach((p) => p.destroy());
    plots = [];
    const axis = { stroke: css("--muted"), grid: { stroke: css("--line"), width: 1 }, ticks: { stroke: css("--line") } };
    for (const figure of figures) {
      const name = figure.dataset.chart;
      const chart = CHARTS[name];
      if (!chart) continue;
      figure.replaceChildren();
      const caption = document.createElement("figcaption");
      caption.textContent = chart.title;
      figure.appendChild(caption);
      const { data, series, hasData } = chartData(name);
      if (!hasData) {
        const empty = document.createElement("div");
        empty.className = "empty";
        empty.textContent = "no data in this range";
        figure.appendChild(empty);
        continue;
      }
      const width = Math.max(220, figure.clientWidth - 12);
      const options = {
        width,
        height: 150,
        series,
        // From zero: a 2 % wobble must not look like a cliff at 3 AM.
        scales: { x: { time: true }, y: { range: chart.range || ((u, min, max) => [0, max > 0 ? max * 1.1 : 1]) } },
        axes: [
          { ...axis, values: (u, ticks) => ticks.map((ts) => utc(ts, u.scales.x.max - u.scales.x.min > 86400)) },
          { ...axis, size: 56, values: (u, ticks) => ticks.map(chart.fmt) },
        ],
        legend: { live: true },
        cursor: { drag: { x: false, y: false } },
      };
      plots.push(new window.uPlot(options, data, figure));
    }
  }

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(draw, 150);
  });
  document.addEventListener("clawtrace:theme", draw);
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", draw);
  if (rangeSelect) rangeSelect.addEventListener("change", load);
  setInterval(() => {
    if (document.visibilityState === "visible" && window_().seconds) load();
  }, 60000);
  load();
})();
