// Plotly building blocks: layouts, dot and bar plots of estimates with their 95 % intervals.
import { $, FLAGGED, PALETTE, PLOT_CONFIG, PRIMARY, ROW_CHART_BASE_PX, ROW_CHART_MIN_PX, ROW_PX, Z95, countryName, escapeHtml, fmt, shownCountries, state } from "./state.js";

export function estimateHover(estimate, digits = 1, unit = "") {
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
export function estimateRows(pick) {
  const rows = shownCountries().map((code) => ({
    code,
    name: countryName(code),
    estimate: pick(state.metrics.by_country[code].statistics),
  }));
  const valueOf = (row) => (row.estimate && row.estimate.value !== null ? row.estimate.value : -Infinity);
  rows.sort(state.sort === "name" ? (a, b) => a.name.localeCompare(b.name) : (a, b) => valueOf(b) - valueOf(a));
  return rows;
}

export function baseLayout(extra = {}) {
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
export function fitHeight(id, rowCount) {
  const height = `${Math.max(ROW_CHART_MIN_PX, ROW_CHART_BASE_PX + ROW_PX * rowCount)}px`;
  if ($(id).style.height !== height) $(id).style.height = height;
}

export function draw(id, traces, layout) {
  // uirevision keeps the user's zoom and legend choices across updates; it changes only with the view itself.
  layout.uirevision = `${id}:${state.selected.join(",")}:${state.domain}:${state.sort}`;
  Plotly.react($(id), traces, layout, PLOT_CONFIG);
}

export function emptyChart(id, message) {
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
export function significantSide(versus, code) {
  const difference = versus && versus[code];
  if (!difference || !difference.significant) return null;
  return difference.value > 0 ? "above" : "below";
}

/* `versus`: {code: {value, se, significant}} against the reference line; a significant difference is drawn as a
 * triangle pointing up (above) or down (below), and said in the tooltip. */
export function dotPlot(id, rows, { digits = 1, unit = "", axisTitle, reference = null, zeroLine = false, versus = null }) {
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
      symbol: usable.map((r) => {
        const side = significantSide(versus, r.code);
        const shape = side ? `triangle-${side === "above" ? "up" : "down"}` : "circle";
        return r.estimate.flagged ? `${shape}-open` : shape;
      }),
      line: { width: 2, color: usable.map((r) => (r.estimate.flagged ? FLAGGED : PRIMARY)) },
    },
    hovertext: usable.map((r) => {
      const side = significantSide(versus, r.code);
      const difference = side ? `<br>significantly ${side} the average shown (${fmt(versus[r.code].value, digits)})` : "";
      return `<b>${escapeHtml(r.name)}</b><br>${estimateHover(r.estimate, digits, unit)}${difference}`;
    }),
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
export function barPlot(id, rows, { digits = 1, unit = "", axisTitle, color = PRIMARY }) {
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
