"""One country's students as the arrays an analysis needs, read from the warehouse in one binary COPY.

Weights, the three main domains' plausible values and the covariates (ST004D01T, ESCS, TMINS, DURECEC, BELONG, IMMIG)
are typed warehouse columns; every other variable (a breakdown, a continuous target, a subscale's PVs) is read from the
student's raw line by its codebook position and decoded here: PISA's missing codes become NaN, so they never form a
group or enter a sum. A raw field costs: `split_part` detoasts the ~4 KB line and scans it up to the field (about
10-15 us a student), so the OECD membership, the same for a whole country, is read once.

Fast path: when everything asked for is typed (the OECD membership aside), a student's values come as its one
`analysis_packed` value (ingestion/layout.py) instead of ~100 float8 fields, the per-field work of the COPY being what
costs (30,000 students: ~80 ms instead of ~250 ms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from django.db import connection, transaction

from codebook.catalogue import VariableSpec
from ingestion.warehouse import (COVARIATES, PACKED_COLUMNS, SCORE_DOMAINS, WEIGHTS, Student, StudentChange,
                                 country_write_lock, pisa_variables)
from metrics.analysis.request import AnalysisSpec
from metrics.sufficient import N_PLAUSIBLE_VALUES
from metrics.warehouse import _copy_floats, _copy_floats_and_packed

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


def domains_needed(spec: AnalysisSpec) -> list[str]:
    return [spec.target] if spec.target_is_domain else []


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
    data, _, _ = _read(variables_needed(spec), domains_needed(spec), Student._meta.db_table, "WHERE country = %s",
                       [country])
    return data


def country_data_at_change(spec: AnalysisSpec, country: str) -> tuple[CountryData, int]:
    """Every student of `country`, and the change-log position they are as of (what a running state built from them
    folds on from): both read by one statement, so from one snapshot, without holding the country's loads."""
    from metrics.models import CountryMetricsState

    position = (f"greatest((SELECT max(id) FROM {StudentChange._meta.db_table} WHERE country = %s), "
                f"(SELECT last_change_id FROM {CountryMetricsState._meta.db_table} WHERE country = %s), 0)")
    data, ids, _ = _read(variables_needed(spec), domains_needed(spec), Student._meta.db_table, "WHERE country = %s",
                         [country, country, country], leading=[position])
    if len(data):
        return data, int(ids[0])
    with transaction.atomic(), connection.cursor() as cursor:  # no student: the position under the country's lock
        country_write_lock(cursor.cursor, country=country)
        data, _, _ = _read(variables_needed(spec), domains_needed(spec), Student._meta.db_table,
                           "WHERE country = %s", [country])
        cursor.execute(f"SELECT {position}", [country, country])
        return data, int(cursor.fetchone()[0])


def country_changes(specs: Sequence[AnalysisSpec], country: str, *, after_id: int, up_to_id: int
                    ) -> tuple[CountryData, np.ndarray, np.ndarray]:
    """The versions a country's change log holds in (after_id, up_to_id], with what any of these analyses needs:
    (data, change ids, signs: +1 a version that entered, -1 one that left)."""
    names = list(dict.fromkeys(name for spec in specs for name in variables_needed(spec)))
    domains = list(dict.fromkeys(domain for spec in specs for domain in domains_needed(spec)))
    return _read(names, domains, StudentChange._meta.db_table, "WHERE country = %s AND id > %s AND id <= %s",
                 [country, after_id, up_to_id], with_changes=True)


def rows_of(data: CountryData, rows: np.ndarray) -> CountryData:
    """The students of `data` a boolean mask (or index array) picks."""
    return CountryData(weights=data.weights[rows], school_id=data.school_id[rows],
                       values={name: values[rows] for name, values in data.values.items()})


def _read(names: Sequence[str], domains: Sequence[str], table: str, where: str, params: list, *,
          with_changes: bool = False, leading: Sequence[str] = ()) -> tuple[CountryData, np.ndarray, np.ndarray]:
    """(data, first column, second column): the change ids and signs with_changes, else the `leading` expression's
    value per row (and an empty array). `params` are those of `leading`, then of `where`."""
    positions = {variable.name: (position, variable) for position, variable in enumerate(pisa_variables())}
    expressions = ["id", "sign"] if with_changes else list(leading)
    first = len(expressions)
    # Fast path: students whose every value asked for is a typed column come as their analysis_packed value.
    packed = table == Student._meta.db_table and all(d in SCORE_DOMAINS for d in domains) and all(
        name in COVARIATES or name == "OECD" or name not in positions for name in names)
    column: dict[str, int] = {}  # a typed column's name -> its index in the packed block (after the expressions)
    if packed:
        column = {name: k for k, name in enumerate(PACKED_COLUMNS)}
    else:
        expressions += [f"coalesce({c}, -1)" if c == "cntschid" else c for c in PACKED_COLUMNS[:1 + len(WEIGHTS)]]
        column = {name: k for k, name in enumerate(PACKED_COLUMNS[:1 + len(WEIGHTS)])}
    # Per value asked for: its parts ("typed", column) or ("sql", expression), and the spec to decode it with.
    fields: list[tuple[str, list[tuple[str, str]], VariableSpec | None]] = []
    for domain in domains:
        pvs = [f"pv{m}{domain.lower()}" for m in range(1, N_PLAUSIBLE_VALUES + 1)]
        if domain in SCORE_DOMAINS:
            fields.append((domain, [("typed", pv) for pv in pvs], None))
        else:
            fields.append((domain, [("sql", _raw_field(positions[f"PV{m}{domain}"][0]))
                                    for m in range(1, N_PLAUSIBLE_VALUES + 1)], None))
    country_wide = []  # OECD is the same for every student of a country: read from one of them (fast path)
    for name in names:
        if name not in positions:  # OECD, in a warehouse whose codebook lacks it: membership unknown
            fields.append((name, [("sql", "NULL::float8")], None))
            continue
        position, variable = positions[name]
        if name in COVARIATES:  # typed columns, missing codes already NULL (ingestion.warehouse): no raw to parse
            fields.append((name, [("typed", name.lower())], variable))
        elif name == "OECD" and not with_changes:
            fields.append((name, [("sql", f"(SELECT {_raw_field(position)} FROM {table} {where} LIMIT 1)")], variable))
            country_wide = params[len(params) - where.count("%s"):]
        else:
            fields.append((name, [("sql", _raw_field(position))], variable))
    # The SQL expressions first (their place is known now), then the typed columns not packed.
    sql_at: dict[tuple[str, int], int] = {}
    for f, (_, parts, _) in enumerate(fields):
        for p, (kind, text) in enumerate(parts):
            if kind == "sql":
                expressions.append(text)
                sql_at[(f, p)] = len(expressions) - 1
    if not packed:
        for _, parts, _ in fields:
            for kind, name in parts:
                if kind == "typed" and name not in column:
                    expressions.append(name)
                    column[name] = len(expressions) - 1 - first
    head = params[:len(params) - where.count("%s")]
    query = (expressions, f"FROM {table} {where}" + (" ORDER BY id" if with_changes else ""),
             [*head, *country_wide, *params[len(head):]])
    if packed:
        fields_matrix, packed_values = _copy_floats_and_packed(*query)
    else:
        fields_matrix, packed_values = _copy_floats(*query), None

    def block(indices: list[int], kind: str) -> np.ndarray:
        """Columns as float64: typed ones of the packed fast path converted from the COPY's buffer (a contiguous
        run in one pass), the others picked from the fields."""
        if kind != "typed" or packed_values is None:
            return fields_matrix[:, indices]
        first = indices[0]
        if indices == list(range(first, first + len(indices))):
            return packed_values[:, first:first + len(indices)].astype(np.float64)
        return packed_values[:, indices].astype(np.float64)

    def at(f: int, p: int, kind: str, name: str) -> int:
        return sql_at[(f, p)] if kind == "sql" else (0 if packed else first) + column[name]

    weights = block([at(-1, 0, "typed", w.lower()) for w in WEIGHTS], "typed")
    np.copyto(weights, 0.0, where=np.isnan(weights))  # a weight never set counts as no weight
    values = {}
    for f, (name, parts, variable) in enumerate(fields):
        kind = parts[0][0]  # a field's parts are all typed (a domain's PVs, a covariate) or one SQL expression
        values_block = block([at(f, p, k, text) for p, (k, text) in enumerate(parts)], kind)
        values[name] = values_block if len(parts) > 1 else (
            values_block[:, 0] if variable is None else _decoded(values_block[:, 0], variable))
    school_id = block([at(-1, 0, "typed", "cntschid")], "typed")[:, 0]
    data = CountryData(weights=weights, school_id=np.nan_to_num(school_id, nan=-1).astype(np.int64), values=values)
    if not with_changes:
        return data, fields_matrix[:, 0].astype(np.int64) if leading else np.empty(0, dtype=np.int64), np.empty(0)
    return data, fields_matrix[:, 0].astype(np.int64), fields_matrix[:, 1]
