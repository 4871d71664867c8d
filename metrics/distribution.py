"""The weighted distribution of any of the 1,118 codebook variables, by country, decoded with the codebook.

Read from the warehouse's raw lines (`split_part` of the variable's position), so every variable is available, not
only the analysis columns. That reads every student of a country, so it runs in the analysis worker, never in a
request: metrics.services.country_distribution_refresh stores each country's answer in Redis, which the API serves. Percentages and means carry standard
errors from the 80 replicate weights (METHODS.md); missing codes are reported apart, by reason, and never enter a
percentage's denominator or a mean.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from django.db import connection

from codebook.catalogue import Kind, VariableSpec
from codebook.decoding import missing_reason_of
from ingestion.warehouse import WEIGHTS, Student, pisa_variables
from pisa_site.errors import NotFound
from metrics.estimators import Estimate, _flag_reason, replicate_estimate, weighted_quantiles

# Text variables and unlabelled codes: at most this many distinct values are listed, the rest summed as "other".
MAX_CATEGORIES = 40
QUANTILES = (0.1, 0.5, 0.9)


class UnknownVariable(NotFound):
    pass


def variable_position(name: str) -> tuple[int, VariableSpec]:
    variables = pisa_variables()
    for position, spec in enumerate(variables):
        if spec.name == name:
            return position, spec
    for position, spec in enumerate(variables):
        if spec.name.lower() == name.lower():
            return position, spec
    raise UnknownVariable(f"unknown variable {name[:60]!r}: not in the codebook")


def _fetch(country: str, position: int) -> tuple[list[str | None], np.ndarray, np.ndarray]:
    weights = ", ".join(w.lower() for w in WEIGHTS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT split_part(raw, E'\\t', %s), cntschid, {weights} FROM {Student._meta.db_table} "
            "WHERE country = %s", [position + 1, country])
        rows = cursor.fetchall()
    raw = [None if r[0] in ("\\N", "", None) else r[0] for r in rows]
    schools = np.array([r[1] if r[1] is not None else -1 for r in rows], dtype=np.int64)
    matrix = np.array([r[2:] for r in rows], dtype=np.float64).reshape(len(rows), len(WEIGHTS))
    return raw, schools, np.nan_to_num(matrix)


def _estimate(per_weight: np.ndarray, n_students: int, n_schools: int) -> dict:
    value, se = replicate_estimate(per_weight)
    reason = _flag_reason(n_students, n_schools)
    return Estimate(value, se, n_students, n_schools, reason is not None, reason).to_dict()


def _missing_summary(spec: VariableSpec, values: list, is_missing: np.ndarray, weights: np.ndarray) -> list[dict]:
    total = weights[:, 0].sum()
    by_reason: dict[str, list] = {}
    for index in np.flatnonzero(is_missing):
        value = values[index]
        if value is None:
            reason = "system_missing"
        else:
            code = value if spec.is_text else float(value)
            reason = missing_reason_of(code, spec.value_labels.get(code))
        by_reason.setdefault(reason, []).append(index)
    return [
        {"reason": reason, "students": len(rows),
         "weighted_percent_of_all": float(100 * weights[rows, 0].sum() / total) if total else None}
        for reason, rows in sorted(by_reason.items())
    ]


def _parse(spec: VariableSpec, raw: list[str | None]) -> tuple[list, np.ndarray]:
    """(values, missing mask); values are floats for numeric variables, text otherwise; 'NA' counts as missing."""
    values: list = []
    missing = np.zeros(len(raw), dtype=bool)
    for i, text in enumerate(raw):
        if text is None or text == "NA":
            values.append(None)
            missing[i] = True
            continue
        if spec.is_text:
            value = text
        else:
            try:
                value = float(text)
            except ValueError:
                value = None
        values.append(value)
        missing[i] = value is None or spec.is_missing(value)
    return values, missing


def country_distribution(spec: VariableSpec, position: int, country: str) -> dict:
    raw, schools, weights = _fetch(country, position)
    values, missing = _parse(spec, raw)
    valid = ~missing
    n_valid = int(valid.sum())
    result = {"country": country, "students": len(raw), "valid": n_valid,
              "missing": _missing_summary(spec, values, missing, weights)}
    if not n_valid:
        return result
    valid_weights = weights[valid]
    n_schools = len(np.unique(schools[valid]))
    denominators = valid_weights.sum(axis=0)
    if spec.kind in (Kind.CATEGORICAL, Kind.TEXT) or (spec.kind == Kind.IDENTIFIER and spec.is_text):
        codes = np.array([values[i] for i in np.flatnonzero(valid)], dtype=object)
        frequent = [code for code, _ in Counter(codes.tolist()).most_common(MAX_CATEGORIES)]
        categories = []
        for code in sorted(frequent):
            members = codes == code
            per_weight = 100 * valid_weights[members].sum(axis=0) / denominators
            label = spec.value_labels.get(code)
            shown = code if spec.is_text else (int(code) if float(code).is_integer() else code)
            categories.append({"value": shown, "label": label if label is not None else str(shown),
                               "students": int(members.sum()),
                               "weighted_percent": _estimate(per_weight, n_valid, n_schools)})
        result["categories"] = categories
        return result
    numbers = np.array([values[i] for i in np.flatnonzero(valid)], dtype=np.float64)
    means = (valid_weights * numbers[:, None]).sum(axis=0) / denominators
    variances = (valid_weights * (numbers[:, None] - means) ** 2).sum(axis=0) / denominators
    quantiles = weighted_quantiles(numbers, valid_weights, QUANTILES)
    result["continuous"] = {
        "mean": _estimate(means, n_valid, n_schools),
        "sd": _estimate(np.sqrt(variances), n_valid, n_schools),
        **{f"p{round(q * 100)}": _estimate(quantiles[k], n_valid, n_schools) for k, q in enumerate(QUANTILES)},
    }
    return result


DISTRIBUTION_NOTE = "weighted with W_FSTUWT; standard errors from the 80 replicate weights; missing codes reported apart"
