"""Estimates and differences of an analysis, with standard errors by the OECD's method (METHODS.md).

Every figure is computed with each of the 81 weights and, for a domain, each of its 10 plausible values: an (81, M)
array, from which `replicate_estimate` takes the estimate and its SE (replicates centred on the full-sample estimate,
then Rubin's rules). A difference between two groups of one country is taken weight by weight and PV by PV before
that step (the groups share schools); differences between countries and averages combine the countries' SEs
(independent samples). The formulas and their reasons are in docs/analysis.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from codebook.catalogue import VariableSpec
from metrics.analysis.data import CountryData
from metrics.analysis.request import LEVELS, PERCENTILES, AnalysisSpec, Breakdown
from metrics.analysis.state import AnalysisState, foldable
from metrics.estimators import (MIN_SCHOOLS, MIN_STUDENTS, Z_95, _flag_reason, member_minus_average,
                                replicate_estimate, weighted_quantiles)

QUARTER_PROBABILITIES = (0.25, 0.5, 0.75)
UNDEFINED = "not defined for these students (no variation, or a single student)"


# --- groups ------------------------------------------------------------------------------------------------------

def _weighted_cuts(values: np.ndarray, weight: np.ndarray, probabilities: Sequence[float]) -> np.ndarray:
    """The national quarter boundaries: weighted quantiles with the final weight (the same cuts for every replicate,
    as the OECD defines the quarters once)."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weight[order])
    positions = np.searchsorted(cumulative, np.asarray(probabilities) * cumulative[-1], side="left")
    return values[order][np.minimum(positions, len(values) - 1)]


def _groups_of(breakdown: Breakdown, spec: VariableSpec, values: np.ndarray, weight: np.ndarray
               ) -> tuple[list[dict], np.ndarray]:
    """(the groups, each student's group index or -1 when the value is missing)."""
    known = ~np.isnan(values)
    index = np.full(len(values), -1, dtype=np.int64)
    if breakdown.quarters:
        groups = [{"code": q, "label": f"quarter {q} of {spec.name}" + (" (bottom)" if q == 1 else " (top)" if q == 4
                                                                         else "")} for q in (1, 2, 3, 4)]
        if known.any():
            cuts = _weighted_cuts(values[known], weight[known], QUARTER_PROBABILITIES)
            # Quarter q holds values above the (q-1)th cut up to and including the qth: a value on a cut goes below.
            index[known] = np.searchsorted(cuts, values[known], side="left")
        return groups, index
    codes = sorted({float(code) for code in spec.value_labels if not spec.is_missing(code)}
                   | set(np.unique(values[known]).tolist()))
    groups = [{"code": int(code) if code.is_integer() else code,
               "label": spec.value_labels.get(code, str(int(code) if code.is_integer() else code))} for code in codes]
    index[known] = np.searchsorted(np.asarray(codes), values[known])
    return groups, index


def _cells(spec: AnalysisSpec, data: CountryData, specs: dict[str, VariableSpec]):
    """(cells: list of group tuples, each student's cell or -1, the missing summary per breakdown variable)."""
    weight = data.weights[:, 0]
    per_breakdown = [_groups_of(b, specs[b.variable], data.values[b.variable], weight) for b in spec.by]
    cell = np.zeros(len(data), dtype=np.int64)
    missing = {}
    total_weight = float(weight.sum())
    for breakdown, (groups, index) in zip(spec.by, per_breakdown):
        absent = index < 0
        missing[breakdown.label] = {
            "students": int(absent.sum()),
            "weighted_percent": float(100 * weight[absent].sum() / total_weight) if total_weight else None}
        cell = np.where((cell < 0) | absent, -1, cell * len(groups) + index)
    cells = [tuple(combination) for combination in itertools.product(*(groups for groups, _ in per_breakdown))]
    return cells, cell, missing


# --- figures per weight and plausible value ---------------------------------------------------------------------

def _target_matrix(spec: AnalysisSpec, data: CountryData) -> np.ndarray:
    values = data.values[spec.target]
    return values if values.ndim == 2 else values[:, None]


def figure_names(spec: AnalysisSpec, target_spec: VariableSpec | None, categories: Sequence[float] = ()) -> list[str]:
    if spec.statistic in ("mean", "sd"):
        return [spec.statistic]
    if spec.statistic == "percentiles":
        return [f"p{p}" for p in PERCENTILES]
    if spec.statistic == "correlation":
        return ["r"]
    if spec.statistic == "slope":
        return ["slope", "r2x100"]
    if spec.statistic == "levels":
        names = [name for name, _ in LEVELS[spec.target]]
        return ([f"below {names[0]}", *(f"level {name}" for name in names)]
                + [f"at or above {name}" for name in names[1:]])
    return [_code_text(code) for code in categories]


def _code_text(code: float) -> str:
    return str(int(code)) if float(code).is_integer() else str(code)


def _target_categories(spec: VariableSpec, data: CountryData | None) -> list[float]:
    codes = {float(code) for code in spec.value_labels if not spec.is_missing(code)}
    if data is not None:
        values = data.values[spec.name]
        codes |= set(np.unique(values[~np.isnan(values)]).tolist())
    return sorted(codes)


def _per_weight(spec: AnalysisSpec, weights: np.ndarray, y: np.ndarray, x: np.ndarray | None,
                categories: Sequence[float]) -> list[np.ndarray]:
    """Each figure as an (81, M) array, for the students given (all valid for the statistic)."""
    sw = weights.sum(axis=0)[:, None]  # (81, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if spec.statistic == "mean":
            return [weights.T @ y / sw]
        if spec.statistic == "sd":
            centred = y - (weights[:, 0] @ y) / sw[0]  # a constant shift: fewer digits lost to cancellation
            mean = weights.T @ centred / sw
            return [np.sqrt(np.maximum(weights.T @ (centred * centred) / sw - mean * mean, 0.0))]
        if spec.statistic == "percentiles":
            per_pv = [weighted_quantiles(y[:, m], weights, [p / 100 for p in PERCENTILES]) for m in range(y.shape[1])]
            stacked = np.stack(per_pv, axis=-1)  # (percentiles, 81, M)
            return [stacked[k] for k in range(len(PERCENTILES))]
        if spec.statistic == "percent":
            return [100 * (weights.T @ (y == code).astype(np.float64)) / sw for code in categories]
        if spec.statistic == "levels":
            bounds = [bound for _, bound in LEVELS[spec.target]]
            edges = [-np.inf, *bounds, np.inf]
            within = [100 * (weights.T @ ((y >= low) & (y < high)).astype(np.float64)) / sw
                      for low, high in zip(edges[:-1], edges[1:])]
            at_or_above = [sum(within[k:]) for k in range(2, len(within))]
            return within + at_or_above
        # correlation and slope: pairwise complete students, x and y shifted by constants first
        xc = (x - (weights[:, 0] @ x) / sw[0, 0])[:, None]
        yc = y - (weights[:, 0] @ y) / sw[0]
        mx, my = weights.T @ xc / sw, weights.T @ yc / sw
        cov = weights.T @ (xc * yc) / sw - mx * my
        vx = weights.T @ (xc * xc) / sw - mx * mx
        vy = weights.T @ (yc * yc) / sw - my * my
        if spec.statistic == "correlation":
            return [cov / np.sqrt(vx * vy)]
        return [cov / vx, 100 * cov * cov / (vx * vy)]


def _estimate(per_weight: np.ndarray | None, n_students: int, n_schools: int) -> dict:
    reason = _flag_reason(n_students, n_schools)
    if per_weight is None or n_students == 0:
        return {"value": None, "se": None, "students": n_students, "schools": n_schools, "flagged": True,
                "flag_reason": reason, "undefined": "no student with valid data"}
    if not np.isfinite(per_weight).all() or (n_students < 2):
        return {"value": None, "se": None, "students": n_students, "schools": n_schools, "flagged": True,
                "flag_reason": reason, "undefined": UNDEFINED}
    value, se = replicate_estimate(per_weight if per_weight.shape[1] > 1 else per_weight[:, 0])
    return {"value": value, "se": se, "students": n_students, "schools": n_schools, "flagged": reason is not None,
            "flag_reason": reason, "undefined": None}


def _difference(a: np.ndarray | None, b: np.ndarray | None) -> dict:
    if a is None or b is None or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return {"value": None, "se": None, "significant": None, "undefined": UNDEFINED}
    diff = a - b
    value, se = replicate_estimate(diff if diff.shape[1] > 1 else diff[:, 0])
    return {"value": value, "se": se, "significant": bool(abs(value) > Z_95 * se) if se > 0 else None,
            "undefined": None}


def country_analysis(spec: AnalysisSpec, data: CountryData, specs: dict[str, VariableSpec]) -> dict:
    """One country's cells (estimates per figure) and the differences between its groups, JSON-ready."""
    if foldable(spec):
        return state_analysis(spec, AnalysisState.from_data(spec, data, change_id=0), specs)
    # Percentiles, and any statistic by national quarters: from the students themselves.
    target_spec = None if spec.target_is_domain else specs[spec.target]
    categories = _target_categories(target_spec, data) if spec.statistic == "percent" else []
    figures = figure_names(spec, target_spec, categories)
    cells, cell_of, missing = _cells(spec, data, specs)
    y = _target_matrix(spec, data)
    valid = ~np.isnan(y[:, 0]) & (cell_of >= 0)
    x = None
    if spec.predictor:
        x = data.values[spec.predictor]
        valid &= ~np.isnan(x)
    per_cell, counts = [], []
    for k in range(len(cells)):
        members = valid & (cell_of == k)
        n_students = int(members.sum())
        counts.append((n_students, len(np.unique(data.school_id[members]))))
        per_cell.append(_per_weight(spec, data.weights[members], y[members], None if x is None else x[members],
                                    categories) if n_students else None)
    oecd = data.values.get("OECD")
    member = bool(len(data) and np.nanmean(oecd) > 0.5) if oecd is not None and len(data) else False
    return _result(spec, figures, [tuple(g["code"] for g in groups) for groups in cells], per_cell, counts, missing,
                   len(data), member)


def state_analysis(spec: AnalysisSpec, state: AnalysisState, specs: dict[str, VariableSpec]) -> dict:
    """`country_analysis` from a foldable analysis's running state."""
    target_spec = None if spec.target_is_domain else specs[spec.target]
    categories = state.categories(target_spec) if spec.statistic == "percent" else []
    figures = figure_names(spec, target_spec, categories)
    codes = [state.groups(position, specs[b.variable]) for position, b in enumerate(spec.by)]
    keys = list(itertools.product(*codes))
    missing = {b.label: {"students": students,
                         "weighted_percent": float(100 * weight / state.total_weight) if state.total_weight else None}
               for b, (students, weight) in zip(spec.by, state.missing)}
    return _result(spec, figures, [tuple(_code(c) for c in key) for key in keys],
                   [state.per_weight(spec, key, categories) for key in keys], [state.counts(key) for key in keys],
                   missing, state.students, state.oecd_member())


def _code(code: float):
    return int(code) if float(code).is_integer() else code


def _result(spec: AnalysisSpec, figures: list[str], cells: list[tuple], per_cell: list[list[np.ndarray] | None],
            counts: list[tuple[int, int]], missing: dict, students: int, member: bool) -> dict:
    out_cells = [{"group": list(group),
                  "figures": {figure: _estimate(None if arrays is None else arrays[f], n_students, n_schools)
                              for f, figure in enumerate(figures)}}
                 for group, arrays, (n_students, n_schools) in zip(cells, per_cell, counts)]
    within = []
    if spec.by:
        # Cells vary fastest in the last breakdown variable: each is compared with the first group of that variable
        # among the cells that share the other variables' groups (for one variable: every group with its first).
        last = len({group[-1] for group in cells})
        for k, group in enumerate(cells):
            reference = k - (k % last)
            if k == reference:
                continue
            for f, figure in enumerate(figures):
                a = None if per_cell[k] is None else per_cell[k][f]
                b = None if per_cell[reference] is None else per_cell[reference][f]
                within.append({"group": list(group), "versus": list(cells[reference]), "figure": figure,
                               **_difference(a, b)})
    return {"students": students, "oecd_member": member, "figures": figures, "cells": out_cells,
            "within_country_differences": within, "missing_breakdown": missing}


def group_labels(spec: AnalysisSpec, specs: dict[str, VariableSpec], results: dict[str, dict]) -> list[dict]:
    """Per breakdown variable, its groups' codes and labels (observed unlabelled codes included)."""
    out = []
    for position, breakdown in enumerate(spec.by):
        seen: dict = {}
        variable = specs[breakdown.variable]
        for result in results.values():
            for cell in result["cells"]:
                code = cell["group"][position]
                if breakdown.quarters:
                    label = f"quarter {code} of {variable.name}"
                else:
                    label = variable.value_labels.get(float(code), str(code))
                seen.setdefault(code, label)
        out.append({"variable": breakdown.label, "label": variable.label,
                    "groups": [{"code": code, "label": label} for code, label in sorted(seen.items())]})
    return out


# --- across countries --------------------------------------------------------------------------------------------

def _average(estimates: list[dict]) -> dict | None:
    usable = [e for e in estimates if e["value"] is not None]
    if not usable or len(usable) < len(estimates):
        return None
    n = len(usable)
    return {"value": sum(e["value"] for e in usable) / n,
            "se": math.sqrt(sum(e["se"] ** 2 for e in usable)) / n, "countries": n}


def _against_average(country: str, estimate: dict, average: dict | None, members: dict[str, dict]) -> dict:
    if average is None or estimate["value"] is None:
        return {"value": None, "se": None, "significant": None, "undefined": "no estimate to compare"}
    if country in members:  # the country is part of the average: its own error enters both sides
        value, se = member_minus_average(country, members)
    else:
        value, se = estimate["value"] - average["value"], math.sqrt(estimate["se"] ** 2 + average["se"] ** 2)
    return {"value": value, "se": se, "significant": bool(abs(value) > Z_95 * se) if se > 0 else None,
            "undefined": None}


def _against_country(estimate: dict, other: dict) -> dict:
    if estimate["value"] is None or other["value"] is None:
        return {"value": None, "se": None, "significant": None, "undefined": "no estimate to compare"}
    value = estimate["value"] - other["value"]
    se = math.sqrt(estimate["se"] ** 2 + other["se"] ** 2)
    return {"value": value, "se": se, "significant": bool(abs(value) > Z_95 * se) if se > 0 else None,
            "undefined": None}


def analysis_document(spec: AnalysisSpec, results: dict[str, dict], oecd_results: dict[str, dict],
                      specs: dict[str, VariableSpec]) -> dict:
    """The whole answer: each country's cells, the averages, and the comparisons asked for.

    results: the countries asked for; oecd_results: every OECD member with data (for the OECD average)."""
    countries = [c for c in spec.countries if c in results]
    figures = next((r["figures"] for r in results.values() if r["cells"]), [])
    averages, comparisons = [], []
    cell_groups = [cell["group"] for cell in next(iter(results.values()))["cells"]] if results else []
    for k, group in enumerate(cell_groups):
        for figure in figures:
            shown = {c: results[c]["cells"][k]["figures"].get(figure) for c in countries}
            shown = {c: e for c, e in shown.items() if e is not None}
            members = {c: r["cells"][k]["figures"][figure] for c, r in oecd_results.items()
                       if k < len(r["cells"]) and figure in r["cells"][k]["figures"]}
            average = _average(list(shown.values()))
            oecd = _average(list(members.values())) if members else None
            for name, summary in (("average", average), ("oecd", oecd)):
                if summary is not None or name == "average":
                    averages.append({"of": name, "group": group, "figure": figure,
                                     **(summary or {"value": None, "se": None, "countries": 0})})
            for country, estimate in shown.items():
                for versus in spec.compare:
                    if versus == "average":
                        diff = _against_average(country, estimate, average, shown)
                    elif versus == "oecd":
                        diff = _against_average(country, estimate, oecd, members)
                    elif versus == country:
                        continue
                    else:
                        diff = _against_country(estimate, shown[versus]) if versus in shown else None
                    if diff is not None:
                        comparisons.append({"country": country, "versus": versus, "group": group,
                                            "figure": figure, **diff})
    return {
        "analysis": spec.as_dict(), "key": spec.key, "figures": figures,
        "breakdown": group_labels(spec, specs, results),
        "countries": {c: results[c] for c in countries},
        "averages": averages, "comparisons": comparisons,
        "oecd_members": sorted(oecd_results),
        "reporting_rule": f"flagged under {MIN_STUDENTS} students or {MIN_SCHOOLS} schools",
        "significance": "5 %, two-sided: |difference| > 1.96 SE",
    }
