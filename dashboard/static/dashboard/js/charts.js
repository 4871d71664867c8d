// The charts of the metrics: counter, submissions over time, map, scores, gaps, gradients.
import { $, CONFIG, DOMAINS, FLAGGED, FLAGGED_MAP_OPACITY, MAX_LEGEND_ENTRIES, PALETTE, PLOTLY_TOPOJSON_NAME, PRIMARY, countryName, escapeHtml, fmt, shownCountries, state } from "./state.js";
import { barPlot, baseLayout, dotPlot, draw, emptyChart, estimateHover, estimateRows } from "./chart-primitives.js";
import { renderSelector } from "./selector.js";

export function renderCounter() {
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

export function renderSubmissionsOverTime() {
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

export function renderLearningHours() {
  barPlot(
    "chart-learning-hours",
    estimateRows((s) => s.background.learning_hours_per_week),
    { digits: 1, unit: " h", axisTitle: "hours per week (TMINS / 60)", color: PALETTE[2] },
  );
}

/* TopoJSON (quantised, delta-encoded arcs) -> GeoJSON features, for plotly's choropleth. */
export function topologyFeatures(topology, objectName) {
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

export async function loadWorldMap() {
  const response = await fetch(document.body.dataset.worldMap);
  const topology = await response.json();
  // plotly.js asks for its own base map by name as soon as a choropleth is drawn, even with every base layer hidden,
  // and would fetch it from a CDN. Registered under that name, the installed package's topology is used instead.
  window.PlotlyGeoAssets.topojson[PLOTLY_TOPOJSON_NAME] = topology;
  state.worldFeatures = { type: "FeatureCollection", features: topologyFeatures(topology, "subunits") };
  if (state.metrics) renderEscsMap();
}

export function renderEscsMap() {
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

export function renderEarlyEducationBelonging() {
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

export function renderScores() {
  const domain = state.domain;
  const average = state.metrics.average && state.metrics.average.scores[domain].mean.value;
  dotPlot(
    "chart-scores",
    estimateRows((s) => s.scores[domain].mean),
    {
      digits: 1,
      axisTitle: `mean ${DOMAINS[domain].toLowerCase()} score`,
      reference: average === undefined ? null : average,
      versus: state.metrics.mean_score_versus_average && state.metrics.mean_score_versus_average[domain],
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

export function renderEscsGradient() {
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

// Each chart's "CSV" link: the figures of the metrics document it draws (its data-figures, {domain} the domain
// shown) for the countries shown, as the API's tidy table (docs/metrics.md, "Every answer as a CSV").
export function renderCsvLinks() {
  const countries = state.selected.length ? `countries=${state.selected.join(",")}&` : "";
  for (const link of document.querySelectorAll("a.csv-link[data-figures]")) {
    const figures = link.dataset.figures.replaceAll("{domain}", state.domain);
    link.href = `${CONFIG.urls.metrics}?${countries}format=csv&figures=${figures}`;
  }
}

export function renderMetrics() {
  if (!state.metrics) return;
  renderCsvLinks();
  renderCounter();
  renderSubmissionsOverTime();
  renderLearningHours();
  renderEscsMap();
  renderEarlyEducationBelonging();
  renderScores();
  renderEscsGradient();
  renderSelector();
}
