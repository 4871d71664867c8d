// Push (docs/scaling.md): the API's change stream brings the page, within milliseconds of a change, the new metrics
// it shows (and every 5 s the sources' status when it changed), as the ETag and gzip of the very answer a GET would
// get; an event without them (the server could not build it) is fetched instead. While the stream is up the poll
// slows to a safety net; when the stream cannot be opened, goes quiet or breaks (a proxy that buffers, a 503), the
// page polls every second again and tries the stream later.
import { CONFIG, state } from "./state.js";
import { metricsApply, metricsUrl, pollMetrics, sourcesApply } from "./polling.js";

// No event (not even the 5 s heartbeat) for this long: the stream is taken for broken.
const QUIET_MS = 12000;
// The first event must come this soon after opening: a buffering proxy would hold it.
const READY_MS = 3000;
const RETRY_MS = [2000, 5000, 15000, 30000];
// A 304 right after an event: that web process's snapshot of the versions was read just before the change
// (METRICS_VERSIONS_CACHE_SECONDS, 0.1 s): ask again this much later, so many times at most.
const AFTER_304_MS = 150;
const AFTER_304_TRIES = 3;

let source = null;
let watchdog = null;
let failures = 0;
let fetching = null;
let fetchAgain = false;
let unpacked = 0; // pushes unpacked so far: one overtaken by a later one while unpacking is dropped

// A pushed document: base64 of its gzip, unpacked by the browser.
async function unpack(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const inflated = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Response(inflated).json();
}

async function pushedMetrics(event) {
  const data = JSON.parse(event.data);
  if (!data.gzip) return fetchChanged();
  const url = metricsUrl();
  const mine = (unpacked += 1);
  try {
    const body = await unpack(data.gzip);
    if (mine !== unpacked || url !== metricsUrl()) return; // a later push came, or the selection changed
    state.metricsPushes += 1;
    metricsApply(url, body, data.etag);
  } catch (error) {
    fetchChanged();
  }
}

async function pushedSources(event) {
  const data = JSON.parse(event.data);
  try {
    sourcesApply(await unpack(data.gzip), data.etag);
    state.sourcesPushedAt = Date.now();
  } catch (error) {
    // the safety poll reads them
  }
}

function streamUrl() {
  const query = state.selected.length ? `?countries=${state.selected.join(",")}` : "";
  return CONFIG.urls.stream + query;
}

function alive() {
  state.lastContactAt = Date.now();
  state.failingSince = null;
  clearTimeout(watchdog);
  watchdog = setTimeout(() => broken("no event for a while"), QUIET_MS);
}

function broken(why) {
  if (source) source.close();
  source = null;
  clearTimeout(watchdog);
  state.streaming = false;
  state.streamError = why;
  const wait = RETRY_MS[Math.min(failures, RETRY_MS.length - 1)];
  failures += 1;
  setTimeout(openStream, wait);
}

async function fetchChanged() {
  if (fetching) {
    fetchAgain = true; // one more fetch when this one is done: it may have been answered before the change
    return;
  }
  const before = state.metricsEtag;
  fetching = (async () => {
    for (let attempt = 0; attempt <= AFTER_304_TRIES; attempt += 1) {
      await pollMetrics();
      if (state.metricsEtag !== before || metricsUrl() !== state.metricsQuery) return;
      await new Promise((resolve) => setTimeout(resolve, AFTER_304_MS));
    }
  })();
  try {
    await fetching;
  } catch (error) {
    state.failingSince = state.failingSince || Date.now();
  } finally {
    fetching = null;
  }
  if (fetchAgain) {
    fetchAgain = false;
    fetchChanged();
  }
}

export function openStream() {
  if (!CONFIG.urls.stream || typeof EventSource === "undefined" || typeof DecompressionStream === "undefined") return;
  if (source) source.close();
  const opened = new EventSource(streamUrl());
  source = opened;
  clearTimeout(watchdog);
  watchdog = setTimeout(() => broken("the stream did not start"), READY_MS);
  opened.addEventListener("ready", () => {
    failures = 0;
    state.streaming = true;
    state.streamError = null;
    alive();
    pollMetrics().catch(() => {}); // whatever changed before the stream was heard
  });
  opened.addEventListener("heartbeat", alive);
  opened.addEventListener("metrics", (event) => {
    alive();
    pushedMetrics(event);
  });
  opened.addEventListener("sources", (event) => {
    alive();
    pushedSources(event);
  });
  opened.addEventListener("resync", () => {
    alive();
    fetchChanged();
  });
  // EventSource would reconnect by itself, but a broken stream is not trusted again at once: poll, retry later.
  opened.onerror = () => {
    if (source === opened) broken("the stream broke");
  };
}

// The selection changed: the stream announces other countries.
export function reopenStream() {
  if (source) openStream();
}
