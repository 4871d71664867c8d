"""One country's students as the arrays an analysis needs, read from the warehouse in one binary COPY.

Weights and the three main domains' plausible values are typed warehouse columns; every other variable (a
breakdown, a continuous target, a subscale's PVs, the OECD membership) is read from the student's raw line by its
codebook position and decoded here: PISA's missing codes become NaN, so they never form a group or enter a sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codebook.catalogue import VariableSpec
from ingestion.warehouse import SCORE_DOMAINS, WEIGHTS, Student, pisa_variables
from metrics.analysis.request import AnalysisSpec
from metrics.sufficient import N_PLAUSIBLE_VALUES
from metrics.warehouse import _copy_floats

# A raw field that is a number (the COPY text of a float or an integer); anything else ('NA', '\N', text) is NULL.
_NUMBER = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"


@dataclass(frozen=True)
class CountryData:
    weights: np.ndarray            # (n, 81)
    school_id: np.ndarray          # (n,) int64
    values: dict[str, np.ndarray]  # variable -> (n,), missing codes as NaN; a domain -> (n, 10)

    def __len__(self) -> int:
        return self.weights.shape[0]


def _raw_field(position: int) -> str:
    field = f"split_part(raw, E'\\t', {position + 1})"
    return f"CASE WHEN {field} ~ '{_NUMBER}' THEN {field}::float8 END"


def variables_needed(spec: AnalysisSpec) -> list[str]:
    names = [] if spec.target_is_domain else [spec.target]
    names += [b.variable for b in spec.by]
    if spec.predictor:
        names.append(spec.predictor)
    return list(dict.fromkeys(names + ["OECD"]))


def _decoded(values: np.ndarray, spec: VariableSpec) -> np.ndarray:
    missing = np.isnan(values)
    if spec.na_values:
        codes = [code for code in spec.na_values if not isinstance(code, str)]
        missing |= np.isin(values, codes)
    if spec.na_range is not None:
        low, high = spec.na_range
        missing |= (values >= low) & (values <= high)
    return np.where(missing, np.nan, values)


def country_data(spec: AnalysisSpec, country: str) -> CountryData:
    """Every student of `country` with what `spec` needs."""
    positions = {variable.name: (position, variable) for position, variable in enumerate(pisa_variables())}
    expressions = ["coalesce(cntschid, -1)", *(w.lower() for w in WEIGHTS)]
    layout: list[tuple[str, int, VariableSpec | None]] = []  # (name, width, spec to decode with)
    if spec.target_is_domain:
        if spec.target in SCORE_DOMAINS:
            expressions += [f"pv{m}{spec.target.lower()}" for m in range(1, N_PLAUSIBLE_VALUES + 1)]
        else:
            expressions += [_raw_field(positions[f"PV{m}{spec.target}"][0]) for m in range(1, N_PLAUSIBLE_VALUES + 1)]
        layout.append((spec.target, N_PLAUSIBLE_VALUES, None))
    for name in variables_needed(spec):
        position, variable = positions[name]
        expressions.append(_raw_field(position))
        layout.append((name, 1, variable))
    matrix = _copy_floats(expressions, f"FROM {Student._meta.db_table} WHERE country = %s", [country])
    weights = np.nan_to_num(matrix[:, 1:1 + len(WEIGHTS)])
    column = 1 + len(WEIGHTS)
    values = {}
    for name, width, variable in layout:
        block = matrix[:, column:column + width]
        values[name] = block if variable is None else _decoded(block[:, 0], variable)
        column += width
    return CountryData(weights=weights, school_id=matrix[:, 0].astype(np.int64), values=values)

