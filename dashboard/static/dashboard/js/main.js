/* PISA Live dashboard (ES modules, served as they are: no build step): hears of changes on the API's stream, else polls it every second (If-None-Match, so mostly 304s), and redraws the
 * charts in place with Plotly.react. Every figure comes from /api/; country and variable labels come from the
 * codebook through it, so an edit in the admin shows on the next poll. */
// This module starts it: read the URL, set up the controls, and poll. The others, along the page's seams:
// state.js (configuration, state, helpers), polling.js, chart-primitives.js, charts.js, status.js (pipeline panel
// and banner), selector.js (countries), explorer.js (variables), explore.js (open analyses), stream.js (push).
import { COUNTRY_LIST_REFRESH_MS, readUrl } from "./state.js";
import { refreshCountryList, tick } from "./polling.js";
import { emptyChart } from "./chart-primitives.js";
import { loadWorldMap } from "./charts.js";
import { renderStatus } from "./status.js";
import { renderSelector, setUpSelector } from "./selector.js";
import { setUpExplorer } from "./explorer.js";
import { setUpExplore } from "./explore.js";
import { openStream } from "./stream.js";

export function start() {
  readUrl();
  setUpSelector();
  setUpExplorer();
  setUpExplore();
  renderSelector();
  loadWorldMap().catch(() => emptyChart("chart-escs-map", "The world map could not be loaded"));
  // A failed refresh is retried by the next one; the banner already tells when the API is down.
  const refreshCountries = () => refreshCountryList().catch(() => {});
  refreshCountries();
  setInterval(refreshCountries, COUNTRY_LIST_REFRESH_MS);
  setInterval(renderStatus, 1000);
  tick();
  openStream();
}

document.addEventListener("DOMContentLoaded", start);
