"""The running state of one country's part of an analysis: per cell, for each of the 81 weights and each PV, the sums
its statistic is computed from, so keeping it current costs what the new rows cost (as metrics/sufficient.py does
for the fixed metrics):

    state.fold(added=new_versions, removed=old_versions, change_id=newest)

Sums add and subtract exactly up to float rounding; the counts that decide what is reported (students per school of
each cell, students per group code, students per target category) are exact integers, so a group or a category whose
last student leaves disappears, as in a rebuild. Means, SDs, shares, proficiency levels, correlations and slopes fold;
percentiles and national quarters (their cut points move with every student) do not: `foldable` says which, and the
others are recomputed on a period (docs/analysis.md).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from codebook.catalogue import VariableSpec
from metrics.analysis.data import CountryData
from metrics.analysis.request import LEVELS, AnalysisSpec
from metrics.sufficient import N_WEIGHTS, SCORE_ORIGIN

FOLDABLE_STATISTICS = ("mean", "sd", "percent", "levels", "correlation", "slope")
STATE_FORMAT = 2  # 2: each cell's students per school as two int64 arrays after its sums, not JSON pairs
STATE_MAGIC = b"PISA-ANALYSIS\n"
# A variance below this share of the mean square is float rounding of a constant: no variation.
NO_VARIATION = 1e-12


def foldable(spec: AnalysisSpec) -> bool:
    return spec.statistic in FOLDABLE_STATISTICS and not any(b.quarters for b in spec.by)


@dataclass
class Cell:
    """The students of one group (a tuple of breakdown codes) with valid data for the statistic."""

    schools: Counter = field(default_factory=Counter)  # school id -> students
    sums: dict[str, np.ndarray] = field(default_factory=dict)

    def students(self) -> int:
        return sum(self.schools.values())


@dataclass
class AnalysisState:
    change_id: int  # the change log is folded up to this id
    shifts: tuple[float, float]  # subtracted from the target and the predictor before summing (fewer digits lost)
    students: int = 0
    total_weight: float = 0.0  # final weight of every student (the base of the missing shares)
    oecd: list = field(default_factory=lambda: [0.0, 0])  # sum and count of the OECD variable
    codes: list[Counter] = field(default_factory=list)  # per breakdown: students per known code
    missing: list[list] = field(default_factory=list)  # per breakdown: [students, final weight] with no code
    target_codes: Counter = field(default_factory=Counter)  # students per code of the target (for percent)
    cells: dict[tuple, Cell] = field(default_factory=dict)

    # --- building and folding ---------------------------------------------------------------------------------

    @classmethod
    def from_data(cls, spec: AnalysisSpec, data: CountryData, *, change_id: int,
                  shifts: tuple[float, float] | None = None) -> AnalysisState:
        weights = data.weights
        final = weights[:, 0]
        y = _target(spec, data)
        x = data.values[spec.predictor] if spec.predictor else None
        if shifts is None:
            shifts = (0.0 if spec.statistic == "percent" else _shift(spec.target_is_domain, y, final),
                      0.0 if x is None else _shift(False, x[:, None], final))
        state = cls(change_id=change_id, shifts=shifts, students=len(data), total_weight=float(final.sum()))
        oecd = data.values.get("OECD")
        if oecd is not None:
            known = ~np.isnan(oecd)
            state.oecd = [float(oecd[known].sum()), int(known.sum())]
        valid = ~np.isnan(y[:, 0])
        if x is not None:
            valid &= ~np.isnan(x)
        breakdown_values = []
        for breakdown in spec.by:
            values = data.values[breakdown.variable]
            known = ~np.isnan(values)
            code_values, students = np.unique(values[known], return_counts=True)
            state.codes.append(Counter(dict(zip(code_values.tolist(), students.tolist()))))
            state.missing.append([int((~known).sum()), float(final[~known].sum())])
            breakdown_values.append(values)
            valid &= known
        if spec.statistic == "percent":
            state.target_codes = Counter(y[~np.isnan(y[:, 0]), 0].tolist())
        if not valid.any():
            return state
        members = np.flatnonzero(valid)
        cell_of, cell_codes = _cell_index([values[members] for values in breakdown_values], len(members))
        # The students in cell order, gathered once: each cell is then a slice (a view), not a masked copy.
        order = members[np.argsort(cell_of, kind="stable")]
        bounds = np.concatenate([[0], np.cumsum(np.bincount(cell_of, minlength=len(cell_codes)))])
        members_weights, members_y = weights[order], y[order] - shifts[0]
        members_x = None if x is None else x[order] - shifts[1]
        schools = data.school_id[order]
        for k, codes in enumerate(cell_codes):
            rows = slice(bounds[k], bounds[k + 1])
            school_ids, students = np.unique(schools[rows], return_counts=True)
            state.cells[codes] = Cell(
                schools=Counter(dict(zip(school_ids.tolist(), students.tolist()))),
                sums=_sums(spec, members_weights[rows], members_y[rows], None if x is None else members_x[rows]))
        return state

    def fold(self, spec: AnalysisSpec, *, added: CountryData, removed: CountryData, change_id: int) -> None:
        """Add the versions that entered and take out those that left (added first: a version added and replaced
        within one fold must be there to be taken out)."""
        for data, sign in ((added, 1), (removed, -1)):
            if len(data):
                self._combine(AnalysisState.from_data(spec, data, change_id=change_id, shifts=self.shifts), sign)
        self.change_id = change_id

    def _combine(self, other: AnalysisState, sign: int) -> None:
        self.students += sign * other.students
        self.total_weight += sign * other.total_weight
        self.oecd = [self.oecd[0] + sign * other.oecd[0], self.oecd[1] + sign * other.oecd[1]]
        for mine, theirs in zip(self.codes, other.codes):
            _count(mine, theirs, sign)
        for mine, theirs in zip(self.missing, other.missing):
            mine[0] += sign * theirs[0]
            mine[1] += sign * theirs[1]
        _count(self.target_codes, other.target_codes, sign)
        for key, cell in other.cells.items():
            own = self.cells.setdefault(key, Cell())
            _count(own.schools, cell.schools, sign)
            for name, values in cell.sums.items():
                own.sums[name] = own.sums[name] + sign * values if name in own.sums else sign * values
            if not own.schools:
                del self.cells[key]

    # --- reading -----------------------------------------------------------------------------------------------

    def groups(self, position: int, spec: VariableSpec) -> list[float]:
        """A breakdown's codes: the codebook's (missing codes aside) and every code a student has."""
        labelled = {float(code) for code in spec.value_labels if not spec.is_missing(code)}
        return sorted(labelled | {code for code, n in self.codes[position].items() if n > 0})

    def categories(self, spec: VariableSpec) -> list[float]:
        labelled = {float(code) for code in spec.value_labels if not spec.is_missing(code)}
        return sorted(labelled | {code for code, n in self.target_codes.items() if n > 0})

    def per_weight(self, spec: AnalysisSpec, key: tuple, categories: Sequence[float]) -> list[np.ndarray] | None:
        """Each figure of a cell as an (81, M) array (None when the cell has no student)."""
        cell = self.cells.get(key)
        if cell is None or not cell.schools:
            return None
        sums = cell.sums
        w = sums["w"][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            if spec.statistic in ("mean", "sd"):
                mean = sums["wy"] / w
                if spec.statistic == "mean":
                    return [mean + self.shifts[0]]
                return [np.sqrt(_variance(sums["wyy"] / w, mean))]
            if spec.statistic == "percent":
                zero = np.zeros(N_WEIGHTS)
                return [100 * sums.get(_category(code), zero)[:, None] / w for code in categories]
            if spec.statistic == "levels":
                within = [100 * sums[f"band{b}"] / w for b in range(len(LEVELS[spec.target]) + 1)]
                return within + [sum(within[k:]) for k in range(2, len(within))]
            mx, my = sums["wx"][:, None] / w, sums["wy"] / w
            cov = sums["wxy"] / w - mx * my
            vx = _variance(sums["wxx"][:, None] / w, mx, undefined_when_constant=True)
            vy = _variance(sums["wyy"] / w, my, undefined_when_constant=True)
            if spec.statistic == "correlation":
                return [cov / np.sqrt(vx * vy)]
            return [cov / vx, 100 * cov * cov / (vx * vy)]

    def counts(self, key: tuple) -> tuple[int, int]:
        cell = self.cells.get(key)
        if cell is None:
            return 0, 0
        return cell.students(), sum(1 for n in cell.schools.values() if n > 0)

    def oecd_member(self) -> bool:
        return bool(self.oecd[1] and self.oecd[0] / self.oecd[1] > 0.5)

    def difference(self, other: AnalysisState, spec: AnalysisSpec, *, relative_tolerance: float = 1e-9) -> list[str]:
        """Where two states of one analysis differ beyond float rounding (a fold against a rebuild)."""
        found = []
        for name in ("students", "oecd", "codes", "target_codes"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if name == "oecd":
                mine, theirs = mine[1], theirs[1]
            if isinstance(mine, list):
                mine, theirs = [+c for c in mine], [+c for c in theirs]
            elif isinstance(mine, Counter):
                mine, theirs = +mine, +theirs
            if mine != theirs:
                found.append(f"{name}: {mine} != {theirs}")
        if [m[0] for m in self.missing] != [m[0] for m in other.missing]:
            found.append("missing students differ")
        if set(self.cells) != set(other.cells):
            found.append(f"cells: {sorted(self.cells)} != {sorted(other.cells)}")
        for key in set(self.cells) & set(other.cells):
            mine, theirs = self.cells[key], other.cells[key]
            if +mine.schools != +theirs.schools:
                found.append(f"cell {key}: students per school differ")
            for name in set(mine.sums) | set(theirs.sums):
                a, b = mine.sums.get(name, 0.0), theirs.sums.get(name, 0.0)
                scale = max(np.max(np.abs(a)) if np.size(a) else 0.0, np.max(np.abs(b)) if np.size(b) else 0.0, 1.0)
                if not np.allclose(a, b, rtol=0, atol=relative_tolerance * scale):
                    found.append(f"cell {key}: {name} differs")
        return found

    # --- storing -----------------------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        arrays: list[np.ndarray] = []
        cells = []
        for key, cell in self.cells.items():
            names = sorted(cell.sums)
            cells.append({"key": list(key), "schools": len(cell.schools),
                          "sums": [[name, list(cell.sums[name].shape)] for name in names]})
            arrays += [np.ascontiguousarray(cell.sums[name], dtype="<f8") for name in names]
            # A thousand schools as JSON pairs cost more to write and read than every sum of the cell.
            arrays += [np.fromiter(cell.schools.keys(), "<i8", len(cell.schools)),
                       np.fromiter(cell.schools.values(), "<i8", len(cell.schools))]
        header = json.dumps({
            "format": STATE_FORMAT, "change_id": self.change_id, "shifts": list(self.shifts),
            "students": self.students, "total_weight": self.total_weight, "oecd": self.oecd,
            "codes": [list(c.items()) for c in self.codes], "missing": self.missing,
            "target_codes": list(self.target_codes.items()), "cells": cells,
        }, separators=(",", ":")).encode()
        out = io.BytesIO()
        out.write(STATE_MAGIC + len(header).to_bytes(8, "little") + header)
        for array in arrays:
            out.write(array.tobytes())
        return out.getvalue()

    @classmethod
    def from_bytes(cls, body: bytes) -> AnalysisState:
        if not body.startswith(STATE_MAGIC):
            raise ValueError("not an analysis state")
        start = len(STATE_MAGIC)
        size = int.from_bytes(body[start:start + 8], "little")
        header = json.loads(body[start + 8:start + 8 + size])
        if header["format"] != STATE_FORMAT:
            raise ValueError(f"analysis state format {header['format']}, this code reads {STATE_FORMAT}")
        offset = start + 8 + size
        state = cls(change_id=header["change_id"], shifts=tuple(header["shifts"]), students=header["students"],
                    total_weight=header["total_weight"], oecd=header["oecd"],
                    codes=[Counter(dict((code, n) for code, n in c)) for c in header["codes"]],
                    missing=header["missing"], target_codes=Counter(dict((c, n) for c, n in header["target_codes"])))
        for cell in header["cells"]:
            sums = {}
            for name, shape in cell["sums"]:
                count = int(np.prod(shape))
                sums[name] = np.frombuffer(body, "<f8", count, offset).reshape(shape).copy()
                offset += 8 * count
            n_schools = cell["schools"]
            schools = np.frombuffer(body, "<i8", n_schools, offset).tolist()
            counts = np.frombuffer(body, "<i8", n_schools, offset + 8 * n_schools).tolist()
            offset += 16 * n_schools
            state.cells[tuple(cell["key"])] = Cell(schools=Counter(dict(zip(schools, counts))), sums=sums)
        return state


def _cell_index(columns: Sequence[np.ndarray], n: int) -> tuple[np.ndarray, list[tuple]]:
    """(each student's cell number, each cell's codes in sorted order) for the breakdown values of the students (no
    NaN); one cell of all students without a breakdown. Codes are numbered per variable, then combined: a sort of
    floats per variable, not a row-wise unique over all of them."""
    if not columns:
        return np.zeros(n, dtype=np.int64), [()]
    combined, uniques = np.zeros(n, dtype=np.int64), []
    for values in columns:
        unique, inverse = np.unique(values, return_inverse=True)
        combined = combined * len(unique) + inverse.reshape(-1)
        uniques.append(unique.tolist())
    present, cell_of = np.unique(combined, return_inverse=True)
    codes = []
    for key in present.tolist():
        parts = []
        for unique in reversed(uniques):
            key, k = divmod(key, len(unique))
            parts.append(unique[k])
        codes.append(tuple(reversed(parts)))
    return cell_of.reshape(-1), codes


def _target(spec: AnalysisSpec, data: CountryData) -> np.ndarray:
    values = data.values[spec.target]
    return values if values.ndim == 2 else values[:, None]


def _shift(is_domain: bool, values: np.ndarray, weight: np.ndarray) -> float:
    """SCORE_ORIGIN for scores; for a variable, its weighted mean when the state is built, rounded (any constant
    works: it only has to stay the same for the state's life)."""
    if is_domain:
        return SCORE_ORIGIN
    known = ~np.isnan(values[:, 0])
    total = weight[known].sum()
    return float(np.round(weight[known] @ values[known, 0] / total, 6)) if total > 0 else 0.0


def _category(code: float) -> str:
    return f"category{code!r}"


def _sums(spec: AnalysisSpec, weights: np.ndarray, y: np.ndarray, x: np.ndarray | None) -> dict[str, np.ndarray]:
    """What a cell's statistic needs, summed with each of the 81 weights: (81,) or (81, M) arrays."""
    sums = {"w": weights.sum(axis=0)}
    if spec.statistic in ("mean", "sd"):
        sums["wy"] = weights.T @ y
        if spec.statistic == "sd":
            sums["wyy"] = weights.T @ (y * y)
    elif spec.statistic == "percent":
        for code in np.unique(y[:, 0]).tolist():
            sums[_category(code)] = weights.T @ (y[:, 0] == code).astype(np.float64)
    elif spec.statistic == "levels":
        bounds = [bound - SCORE_ORIGIN for _, bound in LEVELS[spec.target]]
        edges = [-np.inf, *bounds, np.inf]
        for b, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
            sums[f"band{b}"] = weights.T @ ((y >= low) & (y < high)).astype(np.float64)
    else:  # correlation, slope
        sums.update(wx=weights.T @ x, wxx=weights.T @ (x * x), wy=weights.T @ y, wyy=weights.T @ (y * y),
                    wxy=weights.T @ (x[:, None] * y))
    return sums


def _variance(mean_square: np.ndarray, mean: np.ndarray, *, undefined_when_constant: bool = False) -> np.ndarray:
    variance = mean_square - mean * mean
    constant = variance <= NO_VARIATION * np.abs(mean_square)
    return np.where(constant, np.nan if undefined_when_constant else 0.0, np.maximum(variance, 0.0))


def _count(mine: Counter, theirs: Mapping, sign: int) -> None:
    for key, n in theirs.items():
        total = mine.get(key, 0) + sign * n
        if total < 0:  # a version taken out that never went in: the state no longer describes the warehouse
            raise ValueError(f"analysis state: {key!r} would count {total} students")
        if total:
            mine[key] = total
        else:
            mine.pop(key, None)
