"""Open analyses (metrics/analysis/engine.py) against independent implementations, to 1e-6 relative.

Every statistic, with no breakdown, a categorical breakdown (IMMIG), the national quarters of ESCS and a crossed
breakdown (IMMIG x gender), for each sample country. The references: PyPI `svy` (means, shares and percentiles per
PV and per group, BRR with Fay 0.5 centred on the estimate) and, where svy has no estimate-centred replicate variance
(SD, correlation, slope), the statistic computed here with each of the 81 weights. Groups, quarters and Rubin's rules
are written out here from METHODS.md, not taken from the product.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import svy

from codebook.catalogue import read_codebook_csv
from metrics.analysis.data import CountryData
from metrics.analysis.engine import country_analysis
from metrics.analysis.request import LEVELS, PERCENTILES, AnalysisSpec, Breakdown
from tests.conftest import codebook_csv_path
from tests.metrics.conftest import COUNTRIES, PV_COLUMNS, WEIGHT_COLUMNS
from tests.metrics.test_against_svy import PISA_REPLICATION, replicate_se, rubin

RELATIVE = 1e-6
BREAKDOWNS = {
    "none": (),
    "IMMIG": (Breakdown("IMMIG"),),
    "ESCS quarters": (Breakdown("ESCS", quarters=True),),
    "IMMIG x gender": (Breakdown("IMMIG"), Breakdown("ST004D01T")),
}
DESIGN = svy.Design(wgt="W_FSTUWT", rep_wgts=svy.RepWeights(method="BRR", prefix="W_FSTURWT", n_reps=80, fay_coef=0.5))


@pytest.fixture(scope="module")
def specs():
    return {spec.name: spec for spec in read_codebook_csv(codebook_csv_path())}


def country_data(columns) -> CountryData:
    return CountryData(
        weights=np.column_stack([columns[w] for w in WEIGHT_COLUMNS]),
        school_id=columns["CNTSCHID"].astype(np.int64),
        values={"READ": np.column_stack([columns[pv] for pv in PV_COLUMNS["READ"]]),
                "MATH": np.column_stack([columns[pv] for pv in PV_COLUMNS["MATH"]]),
                **{name: columns[name] for name in ("IMMIG", "REPEAT", "ST004D01T", "ESCS", "BELONG", "OECD")}})


def quarter_of(values: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """National quarters: cut at the smallest value whose cumulative final weight reaches 25/50/75 % of the total;
    a value equal to a cut belongs to the quarter below it."""
    known = ~np.isnan(values)
    order = np.argsort(values[known])
    sorted_values, cumulative = values[known][order], np.cumsum(weight[known][order])
    cuts = [sorted_values[np.argmax(cumulative >= p * cumulative[-1])] for p in (0.25, 0.5, 0.75)]
    quarter = np.full(len(values), np.nan)
    quarter[known] = [1 + sum(value > cut for cut in cuts) for value in values[known]]
    return quarter


def cell_labels(columns, breakdown_name: str) -> np.ndarray:
    """Each student's cell as a string ('' when a breakdown value is missing)."""
    parts = []
    for breakdown in BREAKDOWNS[breakdown_name]:
        values = columns[breakdown.variable]
        if breakdown.quarters:
            values = quarter_of(values, columns["W_FSTUWT"])
        parts.append(values)
    if not parts:
        return np.full(len(columns["W_FSTUWT"]), "all", dtype=object)
    labels = np.array(["|".join(str(int(v)) for v in row) if not np.isnan(row).any() else ""
                       for row in np.column_stack(parts)], dtype=object)
    return labels


def svy_mean_by_cell(frame: pl.DataFrame, columns: list[str]) -> dict[str, tuple[float, float]]:
    """Rubin over `columns` (one per PV) of svy's per-cell weighted means."""
    per_cell: dict[str, tuple[list, list]] = {}
    sample = svy.Sample(frame, DESIGN)
    for column in columns:
        for row in sample.estimation.mean(column, by="CELL", drop_nulls=True, **PISA_REPLICATION).to_polars().to_dicts():
            estimates, errors = per_cell.setdefault(row["CELL"], ([], []))
            estimates.append(row["est"])
            errors.append(row["se"])
    return {cell: (rubin(*pair) if len(columns) > 1 else (pair[0][0], pair[1][0])) for cell, pair in per_cell.items()}


def per_weight_reference(statistic: str, weights: np.ndarray, y: np.ndarray, x: np.ndarray | None):
    """(81, M) arrays of the statistic computed with each weight and PV, written out plainly."""
    out = {name: np.empty((weights.shape[1], y.shape[1])) for name in ("sd", "r", "slope", "r2x100")}
    for g in range(weights.shape[1]):
        w = weights[:, g]
        for m in range(y.shape[1]):
            mean_y = np.sum(w * y[:, m]) / np.sum(w)
            out["sd"][g, m] = math.sqrt(np.sum(w * (y[:, m] - mean_y) ** 2) / np.sum(w))
            if x is not None:
                mean_x = np.sum(w * x) / np.sum(w)
                cov = np.sum(w * (x - mean_x) * (y[:, m] - mean_y))
                var_x, var_y = np.sum(w * (x - mean_x) ** 2), np.sum(w * (y[:, m] - mean_y) ** 2)
                out["r"][g, m] = cov / math.sqrt(var_x * var_y)
                out["slope"][g, m] = cov / var_x
                out["r2x100"][g, m] = 100 * cov**2 / (var_x * var_y)
    return out


def pooled(per_weight: np.ndarray) -> tuple[float, float]:
    if per_weight.shape[1] == 1:
        return float(per_weight[0, 0]), replicate_se(per_weight[:, 0])
    return rubin(list(per_weight[0]), [replicate_se(per_weight[:, m]) for m in range(per_weight.shape[1])])


def reference(statistic: str, target: str, columns, breakdown_name: str, predictor: str | None = None) -> dict:
    """cell label -> figure -> (value, SE), independently of the product."""
    cells = cell_labels(columns, breakdown_name)
    y = (np.column_stack([columns[pv] for pv in PV_COLUMNS[target]]) if target in PV_COLUMNS
         else columns[target][:, None])
    valid = (cells != "") & ~np.isnan(y[:, 0])
    if predictor:
        valid &= ~np.isnan(columns[predictor])
    frame_columns = {"CELL": cells[valid].tolist(), **{w: columns[w][valid] for w in WEIGHT_COLUMNS}}
    result: dict[str, dict] = {}
    if statistic == "mean":
        for m in range(y.shape[1]):
            frame_columns[f"Y{m}"] = y[valid, m]
        for cell, pair in svy_mean_by_cell(pl.DataFrame(frame_columns), [f"Y{m}" for m in range(y.shape[1])]).items():
            result.setdefault(cell, {})["mean"] = pair
    elif statistic in ("percent", "levels"):
        indicators = {}
        if statistic == "percent":
            for code in np.unique(y[valid, 0]):
                indicators[str(int(code))] = [100.0 * (y[valid, 0] == code)]
        else:
            bounds = [bound for _, bound in LEVELS[target]]
            names = [name for name, _ in LEVELS[target]]
            edges = [-np.inf, *bounds, np.inf]
            labels = [f"below {names[0]}", *(f"level {name}" for name in names)]
            for label, low, high in zip(labels, edges[:-1], edges[1:]):
                indicators[label] = [100.0 * ((y[valid, m] >= low) & (y[valid, m] < high)) for m in range(10)]
            for name, bound in zip(names[1:], bounds[1:]):
                indicators[f"at or above {name}"] = [100.0 * (y[valid, m] >= bound) for m in range(10)]
        for figure, per_pv in indicators.items():
            frame = pl.DataFrame({**frame_columns, **{f"I{m}": values for m, values in enumerate(per_pv)}})
            for cell, pair in svy_mean_by_cell(frame, [f"I{m}" for m in range(len(per_pv))]).items():
                result.setdefault(cell, {})[figure] = pair
    elif statistic == "percentiles":
        for cell in sorted(set(cells[valid])):
            members = valid & (cells == cell)
            frame = pl.DataFrame({**{w: columns[w][members] for w in WEIGHT_COLUMNS},
                                  **{f"Y{m}": y[members, m] for m in range(y.shape[1])}})
            sample = svy.Sample(frame, DESIGN)
            per_p = {p: ([], []) for p in PERCENTILES}
            for m in range(y.shape[1]):
                rows = sample.estimation.quantile(f"Y{m}", p=tuple(p / 100 for p in PERCENTILES), q_method="higher",
                                                  **PISA_REPLICATION)
                for p, row in zip(PERCENTILES, rows):
                    row = row.to_polars().to_dicts()[0]
                    per_p[p][0].append(row["est"])
                    per_p[p][1].append(row["se"])
            result[cell] = {f"p{p}": rubin(*per_p[p]) for p in PERCENTILES}
    else:
        x = columns[predictor] if predictor else None
        for cell in sorted(set(cells[valid])):
            members = valid & (cells == cell)
            weights = np.column_stack([columns[w][members] for w in WEIGHT_COLUMNS])
            arrays = per_weight_reference(statistic, weights, y[members], None if x is None else x[members])
            figures = {"sd": ["sd"], "correlation": ["r"], "slope": ["slope", "r2x100"]}[statistic]
            result[cell] = {figure: pooled(arrays[figure]) for figure in figures}
    return result


def ours_by_cell(document_country: dict) -> dict:
    return {("|".join(str(code) for code in cell["group"]) or "all"): cell["figures"]
            for cell in document_country["cells"]}


CASES = [("mean", "READ", None), ("mean", "BELONG", None), ("sd", "MATH", None), ("percentiles", "READ", None),
         ("percent", "REPEAT", None), ("levels", "READ", None), ("correlation", "READ", "ESCS"),
         ("slope", "MATH", "ESCS")]


@pytest.mark.parametrize("country", COUNTRIES)
@pytest.mark.parametrize("breakdown_name", list(BREAKDOWNS))
@pytest.mark.parametrize(("statistic", "target", "predictor"), CASES, ids=lambda v: v or "-")
def test_every_statistic_by_every_kind_of_breakdown_matches_the_independent_reference(
    country, breakdown_name, statistic, target, predictor, sample_columns, specs,
):
    columns = sample_columns[country]
    spec = AnalysisSpec(statistic=statistic, target=target, by=BREAKDOWNS[breakdown_name], countries=(country,),
                        compare=(), predictor=predictor)
    ours = ours_by_cell(country_analysis(spec, country_data(columns), specs))
    expected = reference(statistic, target, columns, breakdown_name, predictor)
    assert expected, "the reference found students to compare"
    for cell, figures in expected.items():
        for figure, (value, se) in figures.items():
            estimate = ours[cell][figure]
            if estimate["value"] is None:  # e.g. a single student in a cell: undefined, with its reason
                assert estimate["undefined"] and (math.isnan(se) or se == 0 or estimate["students"] < 2), estimate
                continue
            assert estimate["value"] == pytest.approx(value, rel=RELATIVE, abs=1e-9), (cell, figure)
            assert estimate["se"] == pytest.approx(se, rel=RELATIVE, abs=1e-9), (cell, figure)
    # a cell the reference has no student in is empty for us too, never a made-up number
    for cell, figures in ours.items():
        if cell not in expected:
            assert all(e["value"] is None and e["students"] == 0 for e in figures.values()), cell
