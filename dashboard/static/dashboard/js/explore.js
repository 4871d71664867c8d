// The Explore panel: any open analysis (GET /api/v1/analyses/) for the countries selected, estimates with 95 % CIs
// by country and group, differences significant at 5 % marked, polled with its ETag like the metrics, in the URL.
import { $, CONFIG, PALETTE, Z95, countryName, escapeHtml, fmt, state, writeUrl } from "./state.js";
import { getJson } from "./polling.js";
import { baseLayout, draw, emptyChart } from "./chart-primitives.js";

export const EXPLORE_POLL_MS = 1000;
const explore = { etag: null, url: null, figure: null, body: null, timer: null };

export function analysisQuery(form = "json") {
  const a = state.analysis;
  const params = new URLSearchParams({ statistic: a.statistic, target: a.target });
  if (a.by) params.set("by", a.by);
  if (a.predictor) params.set("predictor", a.predictor);
  if (state.selected.length) params.set("countries", state.selected.join(","));
  if (form !== "json") params.set("format", form);
  return `${CONFIG.urls.analyses}?${params.toString().replace(/%2C/g, ",").replace(/%3A/g, ":")}`;
}

function readForm() {
  state.analysis = {
    statistic: $("explore-statistic").value,
    target: $("explore-target").value.trim().toUpperCase(),
    by: $("explore-by").value.trim().replace(/\s+/g, ""),
    predictor: $("explore-predictor").value.trim().toUpperCase(),
  };
  explore.figure = null;
}

function fillForm() {
  const a = state.analysis;
  $("explore-statistic").value = a.statistic;
  $("explore-target").value = a.target;
  $("explore-by").value = a.by;
  $("explore-predictor").value = a.predictor;
}

export async function pollAnalysis() {
  clearTimeout(explore.timer);
  if (!state.analysis.target) return;
  const url = analysisQuery();
  $("explore-csv").href = analysisQuery("csv");
  const etag = url === explore.url ? explore.etag : null;
  let answer;
  try {
    answer = await getJson(url, etag);
  } catch (error) {
    answer = { status: 0 };
  }
  if (url === analysisQuery()) {
    if (answer.status === 200 && answer.body) {
      explore.url = url;
      explore.etag = answer.etag;
      explore.body = answer.body;
      renderAnalysis();
    } else if (answer.status === 202 && answer.body) {
      $("explore-note").textContent =
        `Computing… ${answer.body.ready.length} of ${answer.body.ready.length + answer.body.computing.length} countries ready.`;
    } else if (answer.status !== 304) {
      explore.url = null;
      $("explore-note").textContent =
        answer.body && answer.body.error ? `The API refused this analysis: ${answer.body.error}` : "The API did not answer; retrying.";
      emptyChart("chart-explore", "No analysis");
    }
  }
  explore.timer = setTimeout(pollAnalysis, EXPLORE_POLL_MS);
}

function groupText(body, group) {
  if (!group.length) return "all students";
  return group
    .map((code, position) => {
      const found = body.breakdown[position].groups.find((g) => g.code === code);
      return found ? found.label : String(code);
    })
    .join(" / ");
}

export function renderAnalysis() {
  const body = explore.body;
  const figures = body.figures || [];
  const picker = $("explore-figure");
  if (!explore.figure || !figures.includes(explore.figure)) explore.figure = figures[0] || null;
  picker.replaceChildren(
    ...figures.map((name) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      option.selected = name === explore.figure;
      return option;
    }),
  );
  const countries = Object.keys(body.countries);
  if (!explore.figure || !countries.length) return emptyChart("chart-explore", "No data yet for these countries");
  const significant = new Set(
    countries.flatMap((code) =>
      body.countries[code].within_country_differences
        .filter((d) => d.figure === explore.figure && d.significant)
        .map((d) => `${code}|${d.group.join("|")}`),
    ),
  );
  const groups = body.countries[countries[0]].cells.map((cell) => cell.group);
  const traces = groups.map((group, k) => {
    const points = countries.map((code) => {
      const cell = body.countries[code].cells[k];
      return { code, estimate: cell ? cell.figures[explore.figure] : null, group };
    });
    const usable = points.filter((p) => p.estimate && p.estimate.value !== null);
    const marked = usable.map((p) => significant.has(`${p.code}|${group.join("|")}`));
    return {
      type: "scatter",
      mode: "markers",
      name: groupText(body, group),
      x: usable.map((p) => countryName(p.code)),
      y: usable.map((p) => p.estimate.value),
      customdata: usable.map((p) => p.code),
      meta: marked,
      error_y: { type: "data", array: usable.map((p) => Z95 * (p.estimate.se || 0)), thickness: 1.3, width: 3 },
      marker: {
        size: 10,
        color: PALETTE[k % PALETTE.length],
        symbol: usable.map((p, i) => (marked[i] ? "star" : p.estimate.flagged ? "circle-open" : "circle")),
      },
      hovertext: usable.map(
        (p, i) =>
          `<b>${escapeHtml(countryName(p.code))}</b>, ${escapeHtml(groupText(body, group))}<br>` +
          `${fmt(p.estimate.value, 2)} (SE ${fmt(p.estimate.se, 2)}), ${p.estimate.students} students` +
          (marked[i] ? "<br>significantly different from the first group" : "") +
          (p.estimate.flagged ? `<br>${escapeHtml(p.estimate.flag_reason || "flagged")}` : ""),
      ),
      hoverinfo: "text",
    };
  });
  const stars = significant.size;
  const students = countries.reduce((total, code) => total + body.countries[code].students, 0);
  $("explore-note").dataset.students = String(students);
  $("explore-note").textContent =
    `${body.analysis.statistic} of ${body.analysis.target}, ${students} students` +
    (body.breakdown.length ? ` by ${body.breakdown.map((b) => b.variable).join(" x ")}` : "") +
    `: dots are estimates with 95 % confidence intervals; ${stars ? `${stars} star${stars === 1 ? "" : "s"} mark` : "a star would mark"} ` +
    "a group significantly different (5 %) from its country's first group; open circles: fewer than 30 students or 5 schools.";
  draw(
    "chart-explore",
    traces,
    baseLayout({
      showlegend: groups.length > 1,
      legend: { orientation: "h", y: -0.3 },
      margin: { l: 60, r: 20, t: 10, b: 90 },
      yaxis: { title: { text: explore.figure }, gridcolor: "#eef0f2" },
      xaxis: { automargin: true },
    }),
  );
}

export function setUpExplore() {
  fillForm();
  $("explore-form").addEventListener("submit", (event) => {
    event.preventDefault();
    readForm();
    writeUrl();
    pollAnalysis();
  });
  $("explore-figure").addEventListener("change", () => {
    explore.figure = $("explore-figure").value;
    if (explore.body) renderAnalysis();
  });
  pollAnalysis();
}
