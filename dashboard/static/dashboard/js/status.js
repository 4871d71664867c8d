// The pipeline panel and the banner: sources late or failing, figures stale, the API unreachable.
import { $, CONFIG, fmt, secondsAgo, state } from "./state.js";

export function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

export function renderPipeline() {
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

/* Sources whose ingestion is late: behind by more than the limit, failing, or no successful sync for a while (they
 * run every second). An idle source is not late: its idle time grows only because nobody answers. */
export function staleSources() {
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
export function staleFigures() {
  const byCountry = (state.metrics && state.metrics.by_country) || {};
  return Object.values(byCountry).filter((doc) => doc && doc.freshness && doc.freshness.stale);
}

export function renderStatus() {
  const banner = $("banner");
  const dot = $("live-dot");
  const unreachable =
    state.failingSince !== null && (Date.now() - state.failingSince) / 1000 >= CONFIG.unreachableAfterSeconds;
  const ago = state.lastContactAt === null ? null : secondsAgo(state.lastContactAt);
  $("updated-ago").textContent =
    ago === null
      ? "Connecting…"
      : `${state.streaming ? "Updated live: changes are pushed" : `Updated ${ago} s ago`}` +
        `${state.lastChangeAt ? ` · data changed ${secondsAgo(state.lastChangeAt)} s ago` : ""}`;
  dot.className = `live-dot ${unreachable ? "down" : state.lastContactAt ? "ok" : ""}`;
  let message = null;
  let kind = "";
  const busyFor = Math.ceil((state.busyUntil - Date.now()) / 1000);
  if (busyFor > 0) {
    kind = "stale";
    message =
      `The PISA Live server is very busy; asking again in ${busyFor} s. The figures below are the last received` +
      `${ago === null ? "" : `, ${ago} s ago`}.`;
  } else if (unreachable) {
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
