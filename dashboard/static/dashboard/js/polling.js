// Fetching: the API's answers with their ETags, the 1 Hz poll of the metrics and the sources.
import { $, CONFIG, REQUEST_TIMEOUT_MS, state, writeUrl } from "./state.js";
import { renderMetrics } from "./charts.js";
import { renderPipeline, renderStatus } from "./status.js";
import { renderSelector } from "./selector.js";
import { start } from "./main.js";

export async function getJson(url, etag, timeoutMs = REQUEST_TIMEOUT_MS) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const headers = etag ? { "If-None-Match": etag } : {};
    const response = await fetch(url, { headers, signal: controller.signal, cache: "no-cache" });
    if (response.status === 304) return { status: 304, etag };
    if (response.status === 503 && response.headers.get("Retry-After")) {
      // Overloaded (or the metrics not ready): wait as told before asking this server anything again.
      const seconds = Number(response.headers.get("Retry-After"));
      if (seconds > 0) state.busyUntil = Math.max(state.busyUntil, Date.now() + seconds * 1000);
    }
    const body = await response.json().catch(() => null);
    return { status: response.status, etag: response.headers.get("ETag"), body };
  } finally {
    clearTimeout(timer);
  }
}

export function metricsUrl() {
  const query = state.selected.length ? `?countries=${state.selected.join(",")}` : "";
  return CONFIG.urls.metrics + query;
}

export async function pollMetrics() {
  const url = metricsUrl();
  const etag = url === state.metricsQuery ? state.metricsEtag : null;
  const pushes = state.metricsPushes;
  const answer = await getJson(url, etag);
  state.lastContactAt = Date.now();
  // Unchanged, an answer for a former selection, or overtaken by a push (js/stream.js) received meanwhile.
  if (answer.status === 304 || url !== metricsUrl() || pushes !== state.metricsPushes) return;
  if (answer.status === 400) {
    // A shared link with a code the API does not know: say so, and show every country instead.
    state.apiError = answer.body && answer.body.error ? answer.body.error : "the API refused the country list";
    state.selected = [];
    writeUrl();
    renderSelector();
    return;
  }
  if (answer.status !== 200 || !answer.body) throw new Error(`metrics API answered ${answer.status}`);
  metricsApply(url, answer.body, answer.etag);
}

// The metrics of `url` (its answer, or the stream's push of the same bytes) drawn.
export function metricsApply(url, body, etag) {
  state.metrics = body;
  state.metricsEtag = etag;
  state.metricsQuery = url;
  state.lastChangeAt = Date.now();
  renderMetrics();
}

export async function pollSources() {
  const answer = await getJson(CONFIG.urls.sources, state.sourcesEtag);
  if (answer.status === 304) return;
  if (answer.status !== 200 || !answer.body) throw new Error(`sources API answered ${answer.status}`);
  sourcesApply(answer.body, answer.etag);
}

export function sourcesApply(body, etag) {
  state.sources = Array.isArray(body) ? body : body.results || [];
  state.sourcesEtag = etag;
  renderPipeline();
}

export async function refreshCountryList() {
  const answer = await getJson(CONFIG.urls.countries);
  if (answer.status === 200 && answer.body) {
    const known = new Map(answer.body.results.map((c) => [c.code, c.name]));
    for (const source of state.sources || []) if (!known.has(source.code)) known.set(source.code, source.name);
    state.countries = [...known].map(([code, name]) => ({ code, name }));
    renderSelector();
  }
}

export let sourcesInFlight = null;
// The stream pushes the sources' status every 5 s while it changes (it always does: it holds ages): while pushes come,
// the safety poll leaves the sources alone, which with thousands of streaming viewers is a request a second in five.
const SOURCES_PUSH_TRUSTED_MS = 15000;

/* One poll a second, counted from the start of the previous one, so a slow answer does not stretch the period. The
 * sources panel is polled alongside but never delays the metrics; a slow sources answer is not asked for twice. */
export async function tick() {
  const started = Date.now();
  if (started < state.busyUntil) {
    renderStatus();
    setTimeout(tick, state.busyUntil - started);
    return;
  }
  const sourcesPushed = state.streaming && Date.now() - state.sourcesPushedAt < SOURCES_PUSH_TRUSTED_MS;
  if (!sourcesInFlight && !sourcesPushed) {
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
  // With the change stream up (js/stream.js) the metrics come when they change: this poll is only a safety net.
  const period = state.streaming ? CONFIG.streamingPollSeconds : CONFIG.pollSeconds;
  setTimeout(tick, Math.max(0, period * 1000 - (Date.now() - started)));
}
