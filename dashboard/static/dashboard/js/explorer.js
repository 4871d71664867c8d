// The variable explorer: search the codebook, show a variable's weighted distribution.
import { $, CONFIG, DISTRIBUTION_TIMEOUT_MS, PALETTE, SEARCH_DEBOUNCE_MS, Z95, countryName, escapeHtml, fmt, state, writeUrl } from "./state.js";
import { getJson } from "./polling.js";
import { baseLayout, dotPlot, draw, emptyChart, estimateHover } from "./chart-primitives.js";

export let searchTimer = null;
export let searchSerial = 0;

export async function searchVariables(text) {
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

export function pickVariable(name) {
  state.variable = name;
  writeUrl();
  for (const button of $("variable-results").querySelectorAll("button"))
    button.setAttribute("aria-selected", String(button.dataset.variable === name));
  loadDistribution(name);
}

export let distributionSerial = 0;

export async function loadDistribution(name) {
  const serial = ++distributionSerial;
  const countries = state.selected.length ? `?countries=${state.selected.join(",")}` : "";
  const url = CONFIG.urls.distribution.replace("__name__", encodeURIComponent(name)) + countries;
  $("variable-title").textContent = `${name}: computing the weighted distribution…`;
  $("variable-csv").hidden = true;
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
  $("variable-csv").href = `${url}${countries ? "&" : "?"}format=csv`;
  $("variable-csv").hidden = false;
}

export const MISSING_REASONS = {
  valid_skip: "valid skip",
  not_applicable: "not applicable",
  invalid: "invalid",
  no_response: "no response",
  system_missing: "system missing",
};

export function renderDistribution(distribution) {
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

export function setUpExplorer() {
  const input = $("variable-search");
  input.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => searchVariables(input.value), SEARCH_DEBOUNCE_MS);
  });
  searchVariables("");
  if (state.variable) loadDistribution(state.variable);
}
