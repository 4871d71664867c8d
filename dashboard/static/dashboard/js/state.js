// Configuration, constants, the page's state, and small helpers every module uses.
import { tick } from "./polling.js";

export const CONFIG = JSON.parse(document.getElementById("dashboard-config").textContent);
export const DOMAINS = { READ: "Reading", MATH: "Mathematics", SCIE: "Science" };
// Okabe-Ito: distinguishable with every common colour-vision deficiency.
export const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000"];
export const PRIMARY = PALETTE[0];
export const FLAGGED = "#8c959f";
export const FLAGGED_MAP_OPACITY = 0.35; // on the map a flagged estimate keeps its colour, faded
export const MAX_LEGEND_ENTRIES = 8; // more lines than colours: the tooltip names them instead
export const Z95 = 1.96;
export const MAX_CHIPS = 6; // beyond this the selector shows "+N", as the course's dashboard does
export const REQUEST_TIMEOUT_MS = 2500;
// A distribution is computed by the analysis worker on demand (202 until ready): this long, at most, then give up.
export const DISTRIBUTION_TIMEOUT_MS = 120000;
export const COUNTRY_LIST_REFRESH_MS = 10000;
export const SEARCH_DEBOUNCE_MS = 250;
export const ROW_PX = 28;
export const ROW_CHART_BASE_PX = 90;
export const ROW_CHART_MIN_PX = 220;
export const PLOTLY_TOPOJSON_NAME = "world_110m"; // plotly's name for scope "world" at resolution 110
export const PLOT_CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

export const state = {
  selected: [], // country codes in the URL; empty = every country with data
  domain: "READ",
  sort: "value",
  countries: [], // [{code, name}] every country the API knows, for the selector
  metrics: null,
  metricsEtag: null,
  metricsQuery: null,
  metricsPushes: 0, // metrics pushed by the stream: a poll answered after a push is older than it, not drawn
  sources: null,
  sourcesEtag: null,
  sourcesPushedAt: 0, // when the stream last brought the sources' status (epoch ms)
  sourcesError: null,
  lastContactAt: null, // last answer from the API (200 or 304)
  lastChangeAt: null, // last time the metrics changed
  failingSince: null,
  busyUntil: 0, // a 503 with Retry-After: no request before then (epoch ms)
  streaming: false, // the change stream is up (js/stream.js)
  streamError: null,
  apiError: null,
  showAllChips: false,
  worldFeatures: null,
  variable: null, // the explorer's variable name
  // The Explore panel's analysis (js/explore.js), in the URL as a_stat, a_target, a_by, a_pred.
  analysis: null, // set from DEFAULT_ANALYSIS or the URL
};
export const DEFAULT_ANALYSIS = { statistic: "mean", target: "READ", by: "ST004D01T", predictor: "" };
state.analysis = { ...DEFAULT_ANALYSIS };

export const $ = (id) => document.getElementById(id);

export function readUrl() {
  const params = new URLSearchParams(window.location.search);
  state.selected = (params.get("countries") || "")
    .split(",")
    .map((c) => c.trim().toUpperCase())
    .filter(Boolean);
  state.selected = [...new Set(state.selected)];
  if (DOMAINS[params.get("domain")]) state.domain = params.get("domain");
  if (["value", "name"].includes(params.get("sort"))) state.sort = params.get("sort");
  if (params.get("variable")) state.variable = params.get("variable");
  if (params.get("a_target")) {
    state.analysis = {
      statistic: params.get("a_stat") || "mean",
      target: params.get("a_target"),
      by: params.get("a_by") || "",
      predictor: params.get("a_pred") || "",
    };
  }
}

export function writeUrl() {
  const params = new URLSearchParams();
  if (state.selected.length) params.set("countries", state.selected.join(","));
  if (state.domain !== "READ") params.set("domain", state.domain);
  if (state.sort !== "value") params.set("sort", state.sort);
  if (state.variable) params.set("variable", state.variable);
  const a = state.analysis;
  if (Object.keys(DEFAULT_ANALYSIS).some((name) => a[name] !== DEFAULT_ANALYSIS[name])) {
    params.set("a_stat", a.statistic);
    params.set("a_target", a.target);
    if (a.by) params.set("a_by", a.by);
    if (a.predictor) params.set("a_pred", a.predictor);
  }
  const query = params.toString().replace(/%2C/g, ",").replace(/%3A/g, ":");
  history.replaceState(null, "", query ? `?${query}` : window.location.pathname);
}

/* Labels are staff-edited text: plotly reads a little HTML in tooltips and tick labels, so escape it. */
export function escapeHtml(text) {
  return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

export function countryName(code) {
  const labels = state.metrics && state.metrics.labels && state.metrics.labels.countries;
  if (labels && labels[code]) return labels[code];
  const known = state.countries.find((c) => c.code === code);
  return known ? known.name : code;
}

export function shownCountries() {
  if (!state.metrics) return [];
  return state.metrics.countries.filter((code) => {
    const doc = state.metrics.by_country[code];
    return doc && doc.statistics && doc.statistics.n_students > 0;
  });
}

export function fmt(value, digits = 1) {
  return value === null || value === undefined ? "n/a" : Number(value).toFixed(digits);
}

export function secondsAgo(timestamp) {
  return Math.max(0, Math.round((Date.now() - timestamp) / 1000));
}
