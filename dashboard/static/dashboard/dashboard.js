/* PISA Live dashboard: polls the project's API every second (If-None-Match, so mostly 304s) and redraws the
 * charts in place with Plotly.react. Every figure comes from /api/; country and variable labels come from the
 * codebook through it, so an edit in the admin shows on the next poll. */
"use strict";

const CONFIG = JSON.parse(document.getElementById("dashboard-config").textContent);
const DOMAINS = { READ: "Reading", MATH: "Mathematics", SCIE: "Science" };
// Okabe-Ito: distinguishable with every common colour-vision deficiency.
const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000"];
const PRIMARY = PALETTE[0];
const FLAGGED = "#8c959f";
const FLAGGED_MAP_OPACITY = 0.35; // on the map a flagged estimate keeps its colour, faded
const MAX_LEGEND_ENTRIES = 8; // more lines than colours: the tooltip names them instead
const Z95 = 1.96;
const MAX_CHIPS = 6; // beyond this the selector shows "+N", as the course's dashboard does
const REQUEST_TIMEOUT_MS = 2500;
// A distribution is computed by the analysis worker on demand (202 until ready): this long, at most, then give up.
const DISTRIBUTION_TIMEOUT_MS = 120000;
const COUNTRY_LIST_REFRESH_MS = 10000;
const SEARCH_DEBOUNCE_MS = 250;
const ROW_PX = 28;
const ROW_CHART_BASE_PX = 90;
const ROW_CHART_MIN_PX = 220;
const PLOTLY_TOPOJSON_NAME = "world_110m"; // plotly's name for scope "world" at resolution 110
const PLOT_CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

const state = {
  selected: [], // country codes in the URL; empty = every country with data
  domain: "READ",
  sort: "value",
  countries: [], // [{code, name}] every country the API knows, for the selector
  metrics: null,
  metricsEtag: null,
  metricsQuery: null,
  sources: null,
  sourcesEtag: null,
  sourcesError: null,
  lastContactAt: null, // last answer from the API (200 or 304)
  lastChangeAt: null, // last time the metrics changed
  failingSince: null,
  apiError: null,
  showAllChips: false,
  worldFeatures: null,
  variable: null, // the explorer's variable name
};

const $ = (id) => document.getElementById(id);

/* ---------------------------------------------------------------- URL state */

function readUrl() {
  const params = new URLSearchParams(window.location.search);
  state.selected = (params.get("countries") || "")
    .split(",")
    .map((c) => c.trim().toUpperCase())
    .filter(Boolean);
  state.selected = [...new Set(state.selected)];
  if (DOMAINS[params.get("domain")]) state.domain = params.get("domain");
  if (["value", "name"].includes(params.get("sort"))) state.sort = params.get("sort");
  if (params.get("variable")) state.variable = params.get("variable");
}

function writeUrl() {
  const params = new URLSearchParams();
  if (state.selected.length) params.set("countries", state.selected.join(","));
  if (state.domain !== "READ") params.set("domain", state.domain);
  if (state.sort !== "value") params.set("sort", state.sort);
  if (state.variable) params.set("variable", state.variable);
  const query = params.toString().replace(/%2C/g, ",");
  history.replaceState(null, "", query ? `?${query}` : window.location.pathname);
}

/* ---------------------------------------------------------------- fetching */

async function getJson(url, etag, timeoutMs = REQUEST_TIMEOUT_MS) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const headers = etag ? { "If-None-Match": etag } : {};
    const response = await fetch(url, { headers, signal: controller.signal, cache: "no-cache" });
    if (response.status === 304) return { status: 304, etag };
    const body = await response.json().catch(() => null);
    return { status: response.status, etag: response.headers.get("ETag"), body };
  } finally {
    clearTimeout(timer);
  }
}

function metricsUrl() {
  const query = state.selected.length ? `?countries=${state.selected.join(",")}` : "";
  return CONFIG.urls.metrics + query;
}

async function pollMetrics() {
  const url = metricsUrl();
  const etag = url === state.metricsQuery ? state.metricsEtag : null;
  const answer = await getJson(url, etag);
  state.lastContactAt = Date.now();
  if (answer.status === 304 || url !== metricsUrl()) return; // unchanged, or an answer for a former selection
  if (answer.status === 400) {
    // A shared link with a code the API does not know: say so, and show every country instead.
    state.apiError = answer.body && answer.body.error ? answer.body.error : "the API refused the country list";
    state.selected = [];
    writeUrl();
    renderSelector();
    return;
  }
  if (answer.status !== 200 || !answer.body) throw new Error(`metrics API answered ${answer.status}`);
  state.metrics = answer.body;
  state.metricsEtag = answer.etag;
  state.metricsQuery = url;
  state.lastChangeAt = Date.now();
  renderMetrics();
}

async function pollSources() {
  const answer = await getJson(CONFIG.urls.sources, state.sourcesEtag);
  if (answer.status === 304) return;
  if (answer.status !== 200 || !answer.body) throw new Error(`sources API answered ${answer.status}`);
  state.sources = Array.isArray(answer.body) ? answer.body : answer.body.results || [];
  state.sourcesEtag = answer.etag;
  renderPipeline();
}

async function refreshCountryList() {
  const answer = await getJson(CONFIG.urls.countries);
  if (answer.status === 200 && answer.body) {
    const known = new Map(answer.body.results.map((c) => [c.code, c.name]));
    for (const source of state.sources || []) if (!known.has(source.code)) known.set(source.code, source.name);
    state.countries = [...known].map(([code, name]) => ({ code, name }));
    renderSelector();
  }
}

let sourcesInFlight = null;

/* One poll a second, counted from the start of the previous one, so a slow answer does not stretch the period. The
 * sources panel is polled alongside but never delays the metrics; a slow sources answer is not asked for twice. */
async function tick() {
  const started = Date.now();
  if (!sourcesInFlight) {
    sourcesInFlight = pollSources()
      .then(
        () => {
          state.sourcesError = null;
        },
        (error) => {
          state.sourcesError = String(error.message || error);
        },
      )
      .finally(() => {
        sourcesInFlight = null;
      });
  }
  try {
    await pollMetrics(); // reachability is judged by the metrics view alone
    state.failingSince = null;
  } catch (error) {
    state.failingSince = state.failingSince || Date.now();
  }
  renderStatus();
  setTimeout(tick, Math.max(0, CONFIG.pollSeconds * 1000 - (Date.now() - started)));
}

/* ---------------------------------------------------------------- helpers */

/* Labels are staff-edited text: plotly reads a little HTML in tooltips and tick labels, so escape it. */
function escapeHtml(text) {
  return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function countryName(code) {
  const labels = state.metrics && state.metrics.labels && state.metrics.labels.countries;
  if (labels && labels[code]) return labels[code];
  const known = state.countries.find((c) => c.code === code);
  return known ? known.name : code;
}

function shownCountries() {
  if (!state.metrics) return [];
  return state.metrics.countries.filter((code) => {
    const doc = state.metrics.by_country[code];
    return doc && doc.statistics && doc.statistics.n_students > 0;
  });
}

function fmt(value, digits = 1) {
  return value === null || value === undefined ? "n/a" : Number(value).toFixed(digits);
}

function secondsAgo(timestamp) {
  return Math.max(0, Math.round((Date.now() - timestamp) / 1000));
}

function estimateHover(estimate, digits = 1, unit = "") {
  if (!estimate || estimate.value === null)
    return `no estimate${estimate && estimate.flag_reason ? `: ${estimate.flag_reason}` : ""}`;
  const low = estimate.value - Z95 * estimate.se;
  const high = estimate.value + Z95 * estimate.se;
  let text = `${fmt(estimate.value, digits)}${unit} (95% CI ${fmt(low, digits)} to ${fmt(high, digits)}; SE ${fmt(estimate.se, 2)})`;
  text += `<br>${estimate.n_students} students, ${estimate.n_schools} schools`;
  if (estimate.flagged) text += `<br><b>Caution:</b> ${estimate.flag_reason}`;
  return text;
}

/* Rows of one estimate per country, sorted as the user asked; countries without an estimate go last. */
function estimateRows(pick) {
  const rows = shownCountries().map((code) => ({
    code,
    name: countryName(code),
    estimate: pick(state.metrics.by_country[code].statistics),
  }));
  const valueOf = (row) => (row.estimate && row.estimate.value !== null ? row.estimate.value : -Infinity);
  rows.sort(state.sort === "name" ? (a, b) => a.name.localeCompare(b.name) : (a, b) => valueOf(b) - valueOf(a));
  return rows;
}

function baseLayout(extra = {}) {
  return {
    margin: { l: 60, r: 20, t: 10, b: 50 },
    font: { family: "system-ui, -apple-system, Segoe UI, Roboto, DejaVu Sans, sans-serif", size: 12 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    hoverlabel: { align: "left" },
    showlegend: false,
    ...extra,
  };
}

/* Charts with one row per country grow with the rows, so that 3 or 30 countries both read well. */
function fitHeight(id, rowCount) {
  const height = `${Math.max(ROW_CHART_MIN_PX, ROW_CHART_BASE_PX + ROW_PX * rowCount)}px`;
  if ($(id).style.height !== height) $(id).style.height = height;
}

function draw(id, traces, layout) {
  // uirevision keeps the user's zoom and legend choices across updates; it changes only with the view itself.
  layout.uirevision = `${id}:${state.selected.join(",")}:${state.domain}:${state.sort}`;
  Plotly.react($(id), traces, layout, PLOT_CONFIG);
}

function emptyChart(id, message) {
  Plotly.react(
    $(id),
    [],
    baseLayout({
      xaxis: { visible: false },
      yaxis: { visible: false },
      annotations: [{ text: message, showarrow: false, font: { size: 14, color: "#57606a" } }],
    }),
    PLOT_CONFIG,
  );
}

/* A horizontal dot plot of one estimate per country with 95% CIs; flagged estimates grey and open. */
function dotPlot(id, rows, { digits = 1, unit = "", axisTitle, reference = null, zeroLine = false }) {
  const usable = rows.filter((r) => r.estimate && r.estimate.value !== null);
  if (!usable.length) return emptyChart(id, "No data yet for these countries");
  fitHeight(id, usable.length);
  const y = usable.map((r) => r.name);
  const trace = {
    type: "scatter",
    mode: "markers",
    orientation: "h",
    x: usable.map((r) => r.estimate.value),
    y,
    customdata: usable.map((r) => r.code),
    error_x: {
      type: "data",
      array: usable.map((r) => Z95 * r.estimate.se),
      color: "#57606a",
      thickness: 1.5,
      width: 4,
    },
    marker: {
      size: 10,
      color: usable.map((r) => (r.estimate.flagged ? FLAGGED : PRIMARY)),
      symbol: usable.map((r) => (r.estimate.flagged ? "circle-open" : "circle")),
      line: { width: 2, color: usable.map((r) => (r.estimate.flagged ? FLAGGED : PRIMARY)) },
    },
    hovertext: usable.map((r) => `<b>${escapeHtml(r.name)}</b><br>${estimateHover(r.estimate, digits, unit)}`),
    hoverinfo: "text",
  };
  const shapes = [];
  if (reference !== null)
    shapes.push({
      type: "line",
      xref: "x",
      yref: "paper",
      x0: reference,
      x1: reference,
      y0: 0,
      y1: 1,
      line: { dash: "dash", color: PALETTE[3], width: 1.5 },
    });
  if (zeroLine)
    shapes.push({
      type: "line",
      xref: "x",
      yref: "paper",
      x0: 0,
      x1: 0,
      y0: 0,
      y1: 1,
      line: { color: "#1b1f24", width: 1 },
    });
  draw(
    id,
    [trace],
    baseLayout({
      margin: { l: 130, r: 20, t: 10, b: 50 },
      xaxis: { title: { text: axisTitle }, zeroline: false, gridcolor: "#eef0f2" },
      yaxis: { autorange: "reversed", type: "category", automargin: true },
      shapes,
    }),
  );
}

/* Horizontal bars with 95% CIs; flagged estimates hatched and grey. */
function barPlot(id, rows, { digits = 1, unit = "", axisTitle, color = PRIMARY }) {
  const usable = rows.filter((r) => r.estimate && r.estimate.value !== null);
  if (!usable.length) return emptyChart(id, "No data yet for these countries");
  fitHeight(id, usable.length);
  draw(
    id,
    [
      {
        type: "bar",
        orientation: "h",
        x: usable.map((r) => r.estimate.value),
        y: usable.map((r) => r.name),
        customdata: usable.map((r) => r.code),
        error_x: {
          type: "data",
          array: usable.map((r) => Z95 * r.estimate.se),
          color: "#1b1f24",
          thickness: 1.2,
          width: 3,
        },
        marker: {
          color: usable.map((r) => (r.estimate.flagged ? FLAGGED : color)),
          pattern: { shape: usable.map((r) => (r.estimate.flagged ? "/" : "")), fgcolor: "#ffffff", solidity: 0.3 },
        },
        hovertext: usable.map((r) => `<b>${escapeHtml(r.name)}</b><br>${estimateHover(r.estimate, digits, unit)}`),
        hoverinfo: "text",
      },
    ],
    baseLayout({
      margin: { l: 130, r: 20, t: 10, b: 50 },
      xaxis: { title: { text: axisTitle }, gridcolor: "#eef0f2", rangemode: "tozero" },
      yaxis: { autorange: "reversed", type: "category", automargin: true },
    }),
  );
}

/* ---------------------------------------------------------------- charts */

function renderCounter() {
  const codes = shownCountries();
  const total = codes.reduce((sum, code) => sum + state.metrics.by_country[code].statistics.n_students, 0);
  const perMinute = codes.reduce(
    (sum, code) => sum + (state.metrics.by_country[code].statistics.submissions || {}).per_minute_last_hour || 0,
    0,
  );
  const counter = $("submissions-count");
  counter.textContent = total.toLocaleString("en");
  counter.dataset.value = String(total);
  const scope = state.selected.length
    ? `${codes.length} selected ${codes.length === 1 ? "country" : "countries"}`
    : `all ${codes.length} countries with data`;
  $("submissions-note").textContent = `Students in ${scope}; ${perMinute.toFixed(1)} per minute over the last hour.`;
}

function renderSubmissionsOverTime() {
  const hours = Array.from({ length: 24 }, (_, h) => `${String(h).padStart(2, "0")}:00`);
  const totals = hours.map(() => 0);
  for (const code of shownCountries()) {
    const byHour = state.metrics.by_country[code].submissions_by_hour_of_day || {};
    hours.forEach((hour, i) => {
      totals[i] += byHour[hour] || 0;
    });
  }
  draw(
    "chart-submissions-time",
    [
      {
        type: "scatter",
        mode: "lines+markers",
        x: hours,
        y: totals,
        line: { color: PRIMARY, width: 2.5, shape: "spline" },
        marker: { size: 5 },
        fill: "tozeroy",
        fillcolor: "rgba(0,114,178,0.12)",
        hovertemplate: "%{x} UTC: %{y} submissions<extra></extra>",
      },
    ],
    baseLayout({
      xaxis: { title: { text: "hour of day (UTC)" }, nticks: 12 },
      yaxis: { title: { text: "submissions" }, rangemode: "tozero", gridcolor: "#eef0f2" },
    }),
  );
}

function renderLearningHours() {
  barPlot(
    "chart-learning-hours",
    estimateRows((s) => s.background.learning_hours_per_week),
    { digits: 1, unit: " h", axisTitle: "hours per week (TMINS / 60)", color: PALETTE[2] },
  );
}

/* TopoJSON (quantised, delta-encoded arcs) -> GeoJSON features, for plotly's choropleth. */
function topologyFeatures(topology, objectName) {
  const transform = topology.transform || { scale: [1, 1], translate: [0, 0] };
  const arcs = topology.arcs.map((arc) => {
    let x = 0;
    let y = 0;
    return arc.map(([dx, dy]) => {
      x += dx;
      y += dy;
      return [x * transform.scale[0] + transform.translate[0], y * transform.scale[1] + transform.translate[1]];
    });
  });
  const ring = (indexes) => {
    const points = [];
    indexes.forEach((index, k) => {
      const arc = index < 0 ? arcs[~index].slice().reverse() : arcs[index];
      points.push(...(k ? arc.slice(1) : arc));
    });
    return points;
  };
  const geometry = (g) => {
    if (g.type === "Polygon") return { type: "Polygon", coordinates: g.arcs.map(ring) };
    if (g.type === "MultiPolygon")
      return { type: "MultiPolygon", coordinates: g.arcs.map((polygon) => polygon.map(ring)) };
    return null;
  };
  return topology.objects[objectName].geometries
    .map((g) => ({ type: "Feature", id: String(g.id), properties: g.properties || {}, geometry: geometry(g) }))
    .filter((feature) => feature.geometry);
}

async function loadWorldMap() {
  const response = await fetch(document.body.dataset.worldMap);
  const topology = await response.json();
  // plotly.js asks for its own base map by name as soon as a choropleth is drawn, even with every base layer hidden,
  // and would fetch it from a CDN. Registered under that name, the installed package's topology is used instead.
  window.PlotlyGeoAssets.topojson[PLOTLY_TOPOJSON_NAME] = topology;
  state.worldFeatures = { type: "FeatureCollection", features: topologyFeatures(topology, "subunits") };
  if (state.metrics) renderEscsMap();
}

function renderEscsMap() {
  if (!state.worldFeatures) return emptyChart("chart-escs-map", "Loading the world map…");
  const rows = estimateRows((s) => s.background.escs_mean).filter((r) => r.estimate && r.estimate.value !== null);
  const onMap = rows.filter((r) => CONFIG.mapCodes[r.code] !== undefined);
  const reliable = onMap.filter((r) => !r.estimate.flagged);
  const flagged = onMap.filter((r) => r.estimate.flagged);
  const asPoints = rows.filter((r) => CONFIG.mapPoints[r.code]);
  const elsewhere = rows.filter((r) => CONFIG.mapCodes[r.code] === undefined && !CONFIG.mapPoints[r.code]);
  const values = rows.map((r) => r.estimate.value);
  const coloraxis = {
    colorscale: "Viridis",
    cmin: Math.min(...values, -0.5),
    cmax: Math.max(...values, 0.5),
    colorbar: { title: { text: "ESCS" }, thickness: 12, len: 0.8 },
  };
  const hover = (r) => `<b>${escapeHtml(r.name)}</b><br>${estimateHover(r.estimate, 2)}`;
  const traces = [
    {
      // every country, light grey: the map stays a world map whatever is selected
      type: "choropleth",
      geojson: state.worldFeatures,
      locations: state.worldFeatures.features.map((f) => f.id),
      z: state.worldFeatures.features.map(() => 0),
      colorscale: [
        [0, "#e6e9ed"],
        [1, "#e6e9ed"],
      ],
      showscale: false,
      marker: { line: { color: "#ffffff", width: 0.4 } },
      hoverinfo: "skip",
    },
    ...[
      [reliable, 1],
      [flagged, FLAGGED_MAP_OPACITY],
    ].map(([group, opacity]) => ({
      type: "choropleth",
      geojson: state.worldFeatures,
      locations: group.map((r) => String(CONFIG.mapCodes[r.code])),
      z: group.map((r) => r.estimate.value),
      coloraxis: "coloraxis",
      customdata: group.map((r) => r.code),
      marker: { opacity, line: { color: "#ffffff", width: 0.6 } },
      hovertext: group.map(hover),
      hoverinfo: "text",
    })),
    {
      type: "scattergeo",
      lat: asPoints.map((r) => CONFIG.mapPoints[r.code][0]),
      lon: asPoints.map((r) => CONFIG.mapPoints[r.code][1]),
      customdata: asPoints.map((r) => r.code),
      mode: "markers",
      marker: {
        size: 11,
        color: asPoints.map((r) => r.estimate.value),
        coloraxis: "coloraxis",
        line: { color: "#1b1f24", width: 1 },
        opacity: asPoints.map((r) => (r.estimate.flagged ? FLAGGED_MAP_OPACITY : 1)),
      },
      hovertext: asPoints.map(hover),
      hoverinfo: "text",
    },
  ];
  draw(
    "chart-escs-map",
    traces,
    baseLayout({
      margin: { l: 0, r: 0, t: 0, b: 0 },
      coloraxis,
      // Only our own GeoJSON is drawn: plotly's base layers (coastlines, land, ...) stay hidden.
      geo: {
        scope: "world",
        resolution: 110,
        visible: false,
        projection: { type: "natural earth" },
        showframe: false,
        lataxis: { range: [-58, 85] },
      },
    }),
  );
  const legend =
    "Dots: participants too small for the map's scale, or regions of a country. Faded: fewer than 30 students or 5 schools.";
  $("map-note").textContent = elsewhere.length
    ? `${legend} Not on the map: ${elsewhere.map((r) => `${r.name} ${fmt(r.estimate.value, 2)}`).join(", ")}.`
    : legend;
}

function renderEarlyEducationBelonging() {
  const codes = shownCountries().filter((code) => {
    const b = state.metrics.by_country[code].statistics.background;
    return b.durecec_mean.value !== null && b.belong_mean.value !== null;
  });
  if (!codes.length) return emptyChart("chart-early-belonging", "No data yet for these countries");
  const counts = codes.map((code) => state.metrics.by_country[code].statistics.n_students);
  const largest = Math.max(...counts);
  const traces = codes.map((code, i) => {
    const s = state.metrics.by_country[code].statistics;
    const b = s.background;
    const flagged = b.durecec_mean.flagged || b.belong_mean.flagged;
    return {
      type: "scatter",
      mode: "markers+text",
      name: countryName(code),
      customdata: [code],
      x: [b.durecec_mean.value],
      y: [b.belong_mean.value],
      text: [code],
      textposition: "middle center",
      textfont: { size: 10, color: "#1b1f24" },
      marker: {
        size: [s.n_students],
        sizemode: "area",
        sizeref: (2 * largest) / (48 * 48),
        sizemin: 6,
        color: flagged ? FLAGGED : PALETTE[i % PALETTE.length],
        opacity: 0.75,
        line: { color: "#1b1f24", width: 1 },
      },
      hovertext: [
        `<b>${escapeHtml(countryName(code))}</b>: ${s.n_students} submissions<br>Early education: ${estimateHover(b.durecec_mean, 2, " years")}<br>Belonging: ${estimateHover(b.belong_mean, 3)}`,
      ],
      hoverinfo: "text",
    };
  });
  draw(
    "chart-early-belonging",
    traces,
    baseLayout({
      xaxis: { title: { text: "early childhood education (years)" }, gridcolor: "#eef0f2" },
      yaxis: { title: { text: "sense of belonging (index)" }, gridcolor: "#eef0f2", zeroline: false },
    }),
  );
}

function renderScores() {
  const domain = state.domain;
  const average = state.metrics.average && state.metrics.average.scores[domain].mean.value;
  dotPlot(
    "chart-scores",
    estimateRows((s) => s.scores[domain].mean),
    {
      digits: 1,
      axisTitle: `mean ${DOMAINS[domain].toLowerCase()} score`,
      reference: average === undefined ? null : average,
    },
  );
  dotPlot(
    "chart-gender-gap",
    estimateRows((s) => s.scores[domain].gender_gap),
    { digits: 1, axisTitle: "girls minus boys (score points)", zeroLine: true },
  );
  barPlot(
    "chart-below-level2",
    estimateRows((s) => s.scores[domain].below_level2),
    { digits: 1, unit: "%", axisTitle: "% of students below Level 2", color: PALETTE[3] },
  );
  for (const element of document.querySelectorAll(".domain-name")) element.textContent = DOMAINS[domain];
}

function renderEscsGradient() {
  const domain = state.domain;
  const codes = shownCountries().filter((code) => {
    const s = state.metrics.by_country[code].statistics;
    return (
      s.scores[domain].escs_gradient.value !== null &&
      s.background.escs_mean.value !== null &&
      s.scores[domain].mean.value !== null
    );
  });
  if (!codes.length) return emptyChart("chart-escs-gradient", "No data yet for these countries");
  const traces = codes.map((code, i) => {
    const s = state.metrics.by_country[code].statistics;
    const gradient = s.scores[domain].escs_gradient;
    const x0 = s.background.escs_mean.value;
    const y0 = s.scores[domain].mean.value;
    const color = gradient.flagged ? FLAGGED : PALETTE[i % PALETTE.length];
    const text = `<b>${escapeHtml(countryName(code))}</b><br>Gradient: ${estimateHover(gradient, 1, " points per ESCS unit")}<br>Strength: ${fmt(s.scores[domain].escs_strength.value, 1)}% of score variance explained`;
    return {
      type: "scatter",
      mode: "lines+markers",
      name: countryName(code),
      customdata: [code, code, code],
      x: [x0 - 1, x0, x0 + 1],
      y: [y0 - gradient.value, y0, y0 + gradient.value],
      line: { color, width: 2.5, dash: gradient.flagged ? "dot" : "solid" },
      marker: { size: [0, 9, 0], color },
      hovertext: [text, text, text],
      hoverinfo: "text",
    };
  });
  const legend = traces.length <= MAX_LEGEND_ENTRIES;
  draw(
    "chart-escs-gradient",
    traces,
    baseLayout({
      showlegend: legend,
      legend: { orientation: "h", y: -0.25 },
      margin: { l: 60, r: 20, t: 10, b: legend ? 90 : 50 },
      xaxis: { title: { text: "ESCS (index)" }, gridcolor: "#eef0f2", zeroline: false },
      yaxis: { title: { text: `${DOMAINS[domain].toLowerCase()} score` }, gridcolor: "#eef0f2" },
    }),
  );
}

function renderMetrics() {
  if (!state.metrics) return;
  renderCounter();
  renderSubmissionsOverTime();
  renderLearningHours();
  renderEscsMap();
  renderEarlyEducationBelonging();
  renderScores();
  renderEscsGradient();
  renderSelector();
}

/* ---------------------------------------------------------------- pipeline */

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function renderPipeline() {
  const body = $("pipeline-table").querySelector("tbody");
  const rows = (state.sources || []).map((source) => {
    const tr = document.createElement("tr");
    tr.dataset.source = source.code;
    const lag = source.lag_seconds;
    const idle = source.idle_seconds;
    if (!source.enabled) tr.className = "disabled";
    else if (staleSources().includes(source)) tr.className = "behind";
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = `${source.code} ${source.name}${source.enabled ? "" : " (disabled)"}`;
    tr.append(
      th,
      cell(lag === null || lag === undefined ? "–" : fmt(lag, 1), "behind"),
      cell(idle === null || idle === undefined ? "–" : fmt(idle, 1)),
      cell(Number(source.rows_loaded || 0).toLocaleString("en")),
      cell(
        source.rows_per_second === null || source.rows_per_second === undefined ? "–" : fmt(source.rows_per_second, 1),
      ),
      cell(Number(source.quarantined_count || 0).toLocaleString("en")),
      cell(source.last_success_at ? `${secondsAgo(Date.parse(source.last_success_at))} s ago` : "never"),
      cell(source.last_error || "", "error"),
    );
    tr.lastChild.title = source.last_error || "";
    return tr;
  });
  body.replaceChildren(...rows);
}

/* ---------------------------------------------------------------- status and banner */

/* Sources whose ingestion is late: behind by more than the limit, failing, or no successful sync for a while (they
 * run every second). An idle source is not late: its idle time grows only because nobody answers. */
function staleSources() {
  const limit = CONFIG.staleAfterSeconds;
  return (state.sources || []).filter(
    (s) =>
      s.enabled &&
      ((s.lag_seconds || 0) > limit ||
        (s.consecutive_failures > 0 && (!s.last_success_at || secondsAgo(Date.parse(s.last_success_at)) > limit)) ||
        (s.last_success_at && secondsAgo(Date.parse(s.last_success_at)) > limit)),
  );
}

/* Countries whose figures are the last good ones: their refresh failed (the API says why) and is being retried. */
function staleFigures() {
  const byCountry = (state.metrics && state.metrics.by_country) || {};
  return Object.values(byCountry).filter((doc) => doc && doc.freshness && doc.freshness.stale);
}

function renderStatus() {
  const banner = $("banner");
  const dot = $("live-dot");
  const unreachable =
    state.failingSince !== null && (Date.now() - state.failingSince) / 1000 >= CONFIG.unreachableAfterSeconds;
  const ago = state.lastContactAt === null ? null : secondsAgo(state.lastContactAt);
  $("updated-ago").textContent =
    ago === null
      ? "Connecting…"
      : `Updated ${ago} s ago${state.lastChangeAt ? ` · data changed ${secondsAgo(state.lastChangeAt)} s ago` : ""}`;
  dot.className = `live-dot ${unreachable ? "down" : state.lastContactAt ? "ok" : ""}`;
  let message = null;
  let kind = "";
  if (unreachable) {
    const since = new Date(state.failingSince).toLocaleTimeString();
    message =
      `The PISA Live API cannot be reached (since ${since}). The figures below are the last received` +
      `${ago === null ? "" : `, ${ago} s ago`}; retrying every second.`;
  } else if (state.apiError) {
    message = `Showing every country: ${state.apiError}.`;
    kind = "stale";
  } else if (staleFigures().length) {
    kind = "stale";
    message = `Figures not refreshed: ${staleFigures()
      .map((doc) => `${doc.country} shows its figures of ${new Date(doc.freshness.stale.since).toLocaleTimeString()}` +
        ` (${doc.freshness.stale.reason.slice(0, 100)})`)
      .join("; ")}. Retrying.`;
  } else {
    const stale = staleSources();
    if (stale.length) {
      kind = "stale";
      message = `Data may be stale: ${stale.map((s) => `${s.code} ${s.last_success_at ? `not synced for ${secondsAgo(Date.parse(s.last_success_at))} s` : "never synced"}${s.last_error ? ` (${s.last_error.slice(0, 80)})` : ""}`).join("; ")}.`;
    }
  }
  $("pipeline-error").textContent =
    state.sourcesError && !unreachable
      ? `The sources' status could not be read (${state.sourcesError}); showing the last one received.`
      : "";
  banner.hidden = message === null;
  banner.className = `banner ${kind}`;
  banner.dataset.kind = unreachable ? "unreachable" : kind;
  if (message !== null && banner.textContent !== message) banner.textContent = message;
}

/* ---------------------------------------------------------------- country selector */

function optionMatches(country, text) {
  const needle = text.trim().toLowerCase();
  return !needle || country.code.toLowerCase().includes(needle) || country.name.toLowerCase().includes(needle);
}

function setSelection(codes) {
  state.selected = codes;
  state.apiError = null;
  writeUrl();
  renderSelector();
  if (state.metrics) renderMetrics(); // immediate feedback with what we have; the next poll fetches the rest
  if (state.variable) loadDistribution(state.variable);
  pollMetrics().catch(() => {
    state.failingSince = state.failingSince || Date.now();
  });
}

function toggleCountry(code) {
  const selected = state.selected.includes(code) ? state.selected.filter((c) => c !== code) : [...state.selected, code];
  setSelection(selected);
}

function chip(label, { remove, className = "", buttonLabel, buttonText = "×" } = {}) {
  const li = document.createElement("li");
  li.className = `chip ${className}`;
  const span = document.createElement("span");
  span.textContent = label;
  li.append(span);
  if (remove) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = buttonText;
    button.setAttribute("aria-label", buttonLabel);
    button.addEventListener("click", remove);
    li.append(button);
  }
  return li;
}

function renderSelector() {
  const chips = $("country-chips");
  const items = [];
  if (!state.selected.length) items.push(chip("All countries with data", { className: "all" }));
  const visible = state.showAllChips ? state.selected : state.selected.slice(0, MAX_CHIPS);
  for (const code of visible) {
    items.push(
      chip(countryName(code), { remove: () => toggleCountry(code), buttonLabel: `Remove ${countryName(code)}` }),
    );
  }
  if (state.selected.length > visible.length) {
    const more = chip("", {
      className: "more",
      buttonText: `+${state.selected.length - visible.length}`,
      buttonLabel: `Show all ${state.selected.length} selected countries`,
      remove: () => {
        state.showAllChips = true;
        renderSelector();
      },
    });
    more.firstChild.remove();
    items.push(more);
  }
  chips.replaceChildren(...items);
  $("country-clear").hidden = !state.selected.length;
  if (!$("country-options").hidden) renderOptions();
}

let activeOption = -1;

function renderOptions() {
  const list = $("country-options");
  const input = $("country-search");
  const matches = state.countries
    .filter((c) => optionMatches({ code: c.code, name: countryName(c.code) }, input.value))
    .sort((a, b) => countryName(a.code).localeCompare(countryName(b.code)));
  activeOption = Math.min(activeOption, matches.length - 1);
  const items = matches.map((country, index) => {
    const li = document.createElement("li");
    li.id = `country-option-${country.code}`;
    li.setAttribute("role", "option");
    li.dataset.code = country.code;
    li.setAttribute("aria-selected", String(state.selected.includes(country.code)));
    if (index === activeOption) li.classList.add("active");
    const name = document.createElement("span");
    name.textContent = countryName(country.code);
    const code = document.createElement("span");
    code.className = "code";
    code.textContent = country.code;
    li.append(name, code);
    li.addEventListener("mousedown", (event) => {
      event.preventDefault();
      toggleCountry(country.code);
    });
    return li;
  });
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "No country matches";
    items.push(li);
  }
  list.replaceChildren(...items);
  const active = list.querySelector("li.active");
  input.setAttribute("aria-activedescendant", active ? active.id : "");
  if (active) active.scrollIntoView({ block: "nearest" });
}

function openOptions(open) {
  $("country-options").hidden = !open;
  $("country-search").setAttribute("aria-expanded", String(open));
  if (open) renderOptions();
}

function setUpSelector() {
  const input = $("country-search");
  input.addEventListener("focus", () => openOptions(true));
  input.addEventListener("blur", () => openOptions(false));
  input.addEventListener("input", () => {
    activeOption = 0;
    openOptions(true);
  });
  input.addEventListener("keydown", (event) => {
    const options = [...$("country-options").querySelectorAll("li[role=option]")];
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      if ($("country-options").hidden) openOptions(true);
      const step = event.key === "ArrowDown" ? 1 : -1;
      activeOption = Math.max(0, Math.min(options.length - 1, activeOption + step));
      renderOptions();
    } else if (event.key === "Enter") {
      event.preventDefault();
      const option = options[Math.max(0, activeOption)];
      if (option) {
        toggleCountry(option.dataset.code);
        input.value = "";
        activeOption = -1;
        renderOptions();
      }
    } else if (event.key === "Escape") {
      openOptions(false);
    } else if (event.key === "Backspace" && input.value === "" && state.selected.length) {
      setSelection(state.selected.slice(0, -1));
    }
  });
  $("country-clear").addEventListener("click", () => setSelection([]));
  for (const radio of document.querySelectorAll("input[name=domain]")) {
    radio.checked = radio.value === state.domain;
    radio.addEventListener("change", () => {
      state.domain = radio.value;
      writeUrl();
      renderMetrics();
    });
  }
  const sort = $("sort-order");
  sort.value = state.sort;
  sort.addEventListener("change", () => {
    state.sort = sort.value;
    writeUrl();
    renderMetrics();
  });
}

/* ---------------------------------------------------------------- variable explorer */

let searchTimer = null;
let searchSerial = 0;

async function searchVariables(text) {
  const serial = ++searchSerial;
  let answer;
  try {
    answer = await getJson(`${CONFIG.urls.variables}?search=${encodeURIComponent(text)}`);
  } catch (error) {
    answer = { status: 0 };
  }
  if (serial !== searchSerial) return;
  if (answer.status !== 200 || !answer.body) {
    $("variable-count").textContent = "The codebook could not be searched; try again.";
    return;
  }
  const list = $("variable-results");
  const items = answer.body.results.map((variable) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.variable = variable.name;
    button.setAttribute("role", "option");
    button.setAttribute("aria-selected", String(variable.name === state.variable));
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = variable.name;
    button.append(name, document.createTextNode(variable.label));
    button.addEventListener("click", () => pickVariable(variable.name));
    li.append(button);
    return li;
  });
  list.replaceChildren(...items);
  const count = answer.body.count;
  $("variable-count").textContent =
    count > items.length
      ? `${items.length} of ${count} variables shown: refine the search.`
      : `${count} variable${count === 1 ? "" : "s"}.`;
}

function pickVariable(name) {
  state.variable = name;
  writeUrl();
  for (const button of $("variable-results").querySelectorAll("button"))
    button.setAttribute("aria-selected", String(button.dataset.variable === name));
  loadDistribution(name);
}

let distributionSerial = 0;

async function loadDistribution(name) {
  const serial = ++distributionSerial;
  const countries = state.selected.length ? `?countries=${state.selected.join(",")}` : "";
  const url = CONFIG.urls.distribution.replace("__name__", encodeURIComponent(name)) + countries;
  $("variable-title").textContent = `${name}: computing the weighted distribution…`;
  const giveUpAt = Date.now() + DISTRIBUTION_TIMEOUT_MS;
  let answer;
  for (;;) {
    try {
      answer = await getJson(url, null);
    } catch (error) {
      answer = { status: 0, body: { error: "the API did not answer; pick the variable again to retry" } };
    }
    if (serial !== distributionSerial) return;
    // 202: the analysis worker is computing some countries' distribution; ask again when it says to.
    if (answer.status !== 202 || !answer.body) break;
    const body = answer.body;
    $("variable-title").textContent =
      `${name}: computing the weighted distribution… (${body.ready.length} of ` +
      `${body.ready.length + body.computing.length} countries ready)`;
    if (Date.now() > giveUpAt) {
      answer = { status: 0, body: { error: "still computing; pick the variable again in a moment" } };
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000 * body.retry_after_seconds));
    if (serial !== distributionSerial) return;
  }
  if (answer.status !== 200 || !answer.body) {
    $("variable-title").textContent = `${name}: no distribution available`;
    $("variable-note").textContent =
      answer.body && answer.body.error ? answer.body.error : `The API answered ${answer.status}.`;
    return emptyChart("chart-variable", "No distribution");
  }
  renderDistribution(answer.body);
}

const MISSING_REASONS = {
  valid_skip: "valid skip",
  not_applicable: "not applicable",
  invalid: "invalid",
  no_response: "no response",
  system_missing: "system missing",
};

function renderDistribution(distribution) {
  const variable = distribution.variable;
  $("variable-title").textContent = `${variable.name}: ${variable.label}`;
  const answered = distribution.countries.filter((c) => c.valid > 0);
  const missing = distribution.countries
    .map((c) =>
      c.missing.length
        ? `${countryName(c.country)} ${c.missing.map((m) => `${MISSING_REASONS[m.reason] || m.reason} ${fmt(m.weighted_percent_of_all, 1)}%`).join(", ")}`
        : null,
    )
    .filter(Boolean);
  $("variable-note").textContent =
    `${distribution.note}. ${missing.length ? `Missing (weighted % of all students): ${missing.join("; ")}.` : "No missing answers."}`;
  if (!answered.length) return emptyChart("chart-variable", "No valid answers yet for these countries");
  if (answered[0].categories) {
    const traces = answered.map((c, i) => ({
      type: "bar",
      name: countryName(c.country),
      customdata: c.categories.map(() => c.country),
      x: c.categories.map((category) => category.label),
      y: c.categories.map((category) => category.weighted_percent.value),
      error_y: {
        type: "data",
        array: c.categories.map((category) => Z95 * (category.weighted_percent.se || 0)),
        thickness: 1.2,
        width: 3,
      },
      marker: {
        color: PALETTE[i % PALETTE.length],
        pattern: {
          shape: c.categories.map((category) => (category.weighted_percent.flagged ? "/" : "")),
          fgcolor: "#ffffff",
          solidity: 0.3,
        },
      },
      hovertext: c.categories.map(
        (category) =>
          `<b>${escapeHtml(countryName(c.country))}</b>, ${escapeHtml(category.label)}<br>${estimateHover(category.weighted_percent, 1, "%")}`,
      ),
      hoverinfo: "text",
    }));
    $("chart-variable").style.height = "";
    return draw(
      "chart-variable",
      traces,
      baseLayout({
        showlegend: true,
        barmode: "group",
        legend: { orientation: "h", y: -0.35 },
        margin: { l: 60, r: 20, t: 10, b: 120 },
        yaxis: { title: { text: "% of valid answers" }, rangemode: "tozero", gridcolor: "#eef0f2" },
        xaxis: { automargin: true },
      }),
    );
  }
  const rows = answered.map((c) => ({ code: c.country, name: countryName(c.country), estimate: c.continuous.mean }));
  dotPlot("chart-variable", rows, { digits: 2, axisTitle: `weighted mean of ${variable.name}` });
}

function setUpExplorer() {
  const input = $("variable-search");
  input.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => searchVariables(input.value), SEARCH_DEBOUNCE_MS);
  });
  searchVariables("");
  if (state.variable) loadDistribution(state.variable);
}

/* ---------------------------------------------------------------- start */

function start() {
  readUrl();
  setUpSelector();
  setUpExplorer();
  renderSelector();
  loadWorldMap().catch(() => emptyChart("chart-escs-map", "The world map could not be loaded"));
  // A failed refresh is retried by the next one; the banner already tells when the API is down.
  const refreshCountries = () => refreshCountryList().catch(() => {});
  refreshCountries();
  setInterval(refreshCountries, COUNTRY_LIST_REFRESH_MS);
  setInterval(renderStatus, 1000);
  tick();
}

document.addEventListener("DOMContentLoaded", start);
