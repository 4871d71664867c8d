"""Per-country sufficient statistics: everything the moment-based PISA estimates need, in arrays of a fixed size.

A `CountryState` holds, for every weight (W_FSTUWT then the 80 replicates) and every plausible value, the weighted sums
that means, shares, gender gaps and the ESCS gradient are computed from. Its float arrays have the same size whether
the country has 100 students or 100,000, so keeping it up to date costs what the changed rows cost:

    state = state + CountryState.from_batch(new_rows)
    state = state - CountryState.from_batch(old_versions) + CountryState.from_batch(new_versions)   # updated rows
    state = state - CountryState.from_batch(deleted_rows)

Adding and subtracting are exact up to float rounding, so an incrementally kept state equals one rebuilt from scratch
(`difference` says where it does not). Besides the sums, the state keeps exact integer counts: students per school for
each population an estimate is computed over (so a school vanishes when its last student is subtracted, and a
population with no student is recognised without trusting a float sum that rounded to 1e-13), and submissions per
minute of the source rows' `created_at`.

This module does no database access and no decoding: missing values arrive as NaN.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

N_WEIGHTS = 81  # W_FSTUWT, then W_FSTURWT1..W_FSTURWT80
N_PLAUSIBLE_VALUES = 10
DOMAINS = ("READ", "MATH", "SCIE")
BACKGROUND_VARIABLES = ("ESCS", "TMINS", "DURECEC", "BELONG")
# Lower bound of proficiency Level 2, PISA 2018; "below Level 2" is PV < cut.
LEVEL2_CUT_SCORES = {"READ": 407.47, "MATH": 420.07, "SCIE": 409.54}
FEMALE, MALE = 1.0, 2.0
# Scores are summed as (PV - SCORE_ORIGIN): sums of squares and cross-products of values near 0 rather than near 500
# lose far fewer digits to cancellation when a variance or slope is taken from them. The origin is a constant, so
# states built at different times still add up.
SCORE_ORIGIN = 500.0
SECONDS_PER_MINUTE = 60
STATE_FORMAT_VERSION = 3
# Format 1 was an .npz archive of the same arrays, format 2 the same layout as 3 without the peaks; both are still
# read (their peaks start at the sums they hold), so a deployment upgrades without a rebuild.
READABLE_FORMAT_VERSIONS = (1, 2, 3)
STATE_MAGIC = b"PISA-STATE\n"
# Sums that are equal "up to float rounding": relative to the largest magnitude either array has ever held (its peak),
# since a sum that went up and came back down carries the rounding of the larger values it once held.
DEFAULT_RELATIVE_TOLERANCE = 1e-9
# Students per matrix product when building a state: bounds the temporary factor matrix (~260 columns) to ~40 MB.
ROWS_PER_CHUNK = 20_000


def _populations() -> tuple[str, ...]:
    """The groups of students an estimate is computed over; each has its own student and school counts."""
    names = ["students", "gender", "girls", "boys", *BACKGROUND_VARIABLES]
    for domain in DOMAINS:
        names += [domain, f"{domain}_girls", f"{domain}_boys", f"{domain}_ESCS"]
    return tuple(names)


POPULATIONS = _populations()

_D, _B, _G, _M = len(DOMAINS), len(BACKGROUND_VARIABLES), N_WEIGHTS, N_PLAUSIBLE_VALUES
# name -> shape. Every sum is over the students of one population, weighted by each of the 81 weights.
# y is a plausible value minus SCORE_ORIGIN, x the ESCS, v a background variable.
SUM_SHAPES: dict[str, tuple[int, ...]] = {
    "score_w": (_D, _G),                  # students with the domain's PVs
    "score_wy": (_D, _G, _M),
    "score_wyy": (_D, _G, _M),
    "score_w_below_level2": (_D, _G, _M),  # sum of w * [PV < Level 2 cut]
    "girls_w": (_D, _G),
    "girls_wy": (_D, _G, _M),
    "boys_w": (_D, _G),
    "boys_wy": (_D, _G, _M),
    "pair_w": (_D, _G),                   # pairwise complete: students with the domain's PVs and an ESCS
    "pair_wx": (_D, _G),
    "pair_wxx": (_D, _G),
    "pair_wy": (_D, _G, _M),
    "pair_wyy": (_D, _G, _M),
    "pair_wxy": (_D, _G, _M),
    "background_w": (_B, _G),             # students with a valid value of each background variable
    "background_wv": (_B, _G),
    "background_wvv": (_B, _G),
    "gender_w": (_G,),                    # students whose gender is known
    "female_w": (_G,),
}


class StateMismatchError(ValueError):
    """Raised when a subtraction removes students the state does not hold (its counts would go negative)."""


def _magnitude(array: np.ndarray) -> float:
    return float(np.abs(array).max(initial=0.0))


def _as_float_array(name: str, values, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {shape}")
    return array


@dataclass(frozen=True, eq=False)
class StudentBatch:
    """Some students of one country, column by column, decoded: every missing value is NaN.

    weights: (n, 81), W_FSTUWT then W_FSTURWT1..80. pv: domain -> (n, 10), PV1..PV10 (a student has all ten PVs of a
    domain or none). gender: ST004D01T, 1 female, 2 male, NaN unknown. escs, tmins (minutes per week), durecec,
    belong: (n,). school_id: CNTSCHID as integers. created_at: the source row's creation time, epoch seconds.
    """

    weights: np.ndarray
    pv: Mapping[str, np.ndarray]
    gender: np.ndarray
    escs: np.ndarray
    tmins: np.ndarray
    durecec: np.ndarray
    belong: np.ndarray
    school_id: np.ndarray
    created_at: np.ndarray

    def __post_init__(self) -> None:
        weights = np.asarray(self.weights, dtype=np.float64)
        if weights.ndim != 2 or weights.shape[1] != N_WEIGHTS:
            raise ValueError(f"weights has shape {weights.shape}, expected (n, {N_WEIGHTS})")
        n = weights.shape[0]
        if not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("weights must be finite and non-negative for every student")
        object.__setattr__(self, "weights", weights)

        if set(self.pv) != set(DOMAINS):
            raise ValueError(f"pv must have exactly the domains {DOMAINS}, got {sorted(self.pv)}")
        pv = {}
        for domain in DOMAINS:
            values = _as_float_array(f"pv[{domain!r}]", self.pv[domain], (n, N_PLAUSIBLE_VALUES))
            missing = np.isnan(values)
            partly = missing.any(axis=1) & ~missing.all(axis=1)
            if partly.any():
                raise ValueError(f"{int(partly.sum())} student(s) have some but not all {domain} plausible values")
            if np.isinf(values).any():
                raise ValueError(f"pv[{domain!r}] has infinite values")
            pv[domain] = values
        object.__setattr__(self, "pv", pv)

        for name in ("gender", "escs", "tmins", "durecec", "belong", "created_at"):
            object.__setattr__(self, name, _as_float_array(name, getattr(self, name), (n,)))
        unknown_gender = ~np.isnan(self.gender) & (self.gender != FEMALE) & (self.gender != MALE)
        if unknown_gender.any():
            found = np.unique(self.gender[unknown_gender])
            raise ValueError(f"gender must be 1 (female), 2 (male) or NaN; got {found}")
        if not np.isfinite(self.created_at).all():
            raise ValueError("created_at must be a finite epoch time for every student")

        school_id = np.asarray(self.school_id)
        if school_id.shape != (n,):
            raise ValueError(f"school_id has shape {school_id.shape}, expected ({n},)")
        if school_id.dtype.kind == "f":
            if not np.isfinite(school_id).all() or (school_id != np.round(school_id)).any():
                raise ValueError("school_id must be an integer for every student")
        elif school_id.dtype.kind not in "iu":
            raise ValueError(f"school_id must be integers, got dtype {school_id.dtype}")
        object.__setattr__(self, "school_id", school_id.astype(np.int64))

    def __len__(self) -> int:
        return self.weights.shape[0]

    def background(self, variable: str) -> np.ndarray:
        return getattr(self, variable.lower())

    def population_masks(self) -> np.ndarray:
        """(n, len(POPULATIONS)) booleans: which populations each student belongs to."""
        girls, boys = self.gender == FEMALE, self.gender == MALE
        has_escs = ~np.isnan(self.escs)
        columns = [np.ones(len(self), dtype=bool), girls | boys, girls, boys]
        columns += [~np.isnan(self.background(variable)) for variable in BACKGROUND_VARIABLES]
        for domain in DOMAINS:
            has_scores = ~np.isnan(self.pv[domain][:, 0])
            columns += [has_scores, has_scores & girls, has_scores & boys, has_scores & has_escs]
        return np.column_stack(columns)


def _factor_columns(batch: StudentBatch, rows: slice) -> list[tuple[str, int | None, np.ndarray]]:
    """What each weighted sum multiplies the weights by: (sum name, index along its first axis or None, (n, k)).

    Every sum of SUM_SHAPES is weights.T @ factor, so one matrix product computes them all. A student outside a
    sum's population has a factor of 0 there (NaN is replaced first: NaN * 0 would still be NaN).
    """
    gender = batch.gender[rows]
    girls, boys = (gender == FEMALE).astype(np.float64), (gender == MALE).astype(np.float64)
    escs = batch.escs[rows]
    escs_known = ~np.isnan(escs)
    x = np.where(escs_known, escs, 0.0)
    columns: list[tuple[str, int | None, np.ndarray]] = []
    for d, domain in enumerate(DOMAINS):
        plausible = batch.pv[domain][rows]
        has_scores = ~np.isnan(plausible[:, 0])
        y = np.where(has_scores[:, None], plausible - SCORE_ORIGIN, 0.0)
        yy = y * y
        pair = (has_scores & escs_known).astype(np.float64)
        columns += [
            ("score_w", d, has_scores.astype(np.float64)),
            ("score_wy", d, y),
            ("score_wyy", d, yy),
            ("score_w_below_level2", d, (has_scores[:, None] & (plausible < LEVEL2_CUT_SCORES[domain])) * 1.0),
            ("girls_w", d, has_scores * girls),
            ("girls_wy", d, y * girls[:, None]),
            ("boys_w", d, has_scores * boys),
            ("boys_wy", d, y * boys[:, None]),
            ("pair_w", d, pair),
            ("pair_wx", d, pair * x),
            ("pair_wxx", d, pair * x * x),
            ("pair_wy", d, y * pair[:, None]),
            ("pair_wyy", d, yy * pair[:, None]),
            ("pair_wxy", d, y * (pair * x)[:, None]),
        ]
    for b, variable in enumerate(BACKGROUND_VARIABLES):
        values = batch.background(variable)[rows]
        known = ~np.isnan(values)
        v = np.where(known, values, 0.0)
        columns += [("background_w", b, known * 1.0), ("background_wv", b, v), ("background_wvv", b, v * v)]
    columns += [("gender_w", None, girls + boys), ("female_w", None, girls)]
    return columns


def _weighted_sums(batch: StudentBatch) -> dict[str, np.ndarray]:
    """The sums of SUM_SHAPES for one batch: one matrix product per chunk of students, no loop over rows."""
    sums = {name: np.zeros(shape) for name, shape in SUM_SHAPES.items()}
    for start in range(0, len(batch), ROWS_PER_CHUNK):
        rows = slice(start, start + ROWS_PER_CHUNK)
        columns = _factor_columns(batch, rows)
        factors = np.column_stack([factor for _, _, factor in columns])
        products = batch.weights[rows].T @ factors  # (81, number of factor columns)
        offset = 0
        for name, index, factor in columns:
            width = 1 if factor.ndim == 1 else factor.shape[1]
            block = products[:, offset] if factor.ndim == 1 else products[:, offset:offset + width]
            if index is None:
                sums[name] += block
            else:
                sums[name][index] += block
            offset += width
    return sums


def _count_table(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum the rows (n, k) of equal keys: (sorted distinct keys, (m, k) int64 totals)."""
    distinct, inverse = np.unique(keys, return_inverse=True)
    totals = np.zeros((len(distinct), rows.shape[1]), dtype=np.int64)
    np.add.at(totals, inverse, rows.astype(np.int64))
    return distinct, totals


def _merge_count_tables(
    keys_a: np.ndarray, counts_a: np.ndarray, keys_b: np.ndarray, counts_b: np.ndarray, sign: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    positions = np.searchsorted(keys_a, keys_b)
    if len(keys_a) and (keys_a[np.minimum(positions, len(keys_a) - 1)] == keys_b).all():
        # The usual delta touches only schools and minutes the state already has: add into a copy of the table at
        # their positions rather than sorting the union of the keys.
        keys, counts = keys_a, counts_a.copy()
        counts[positions] += sign * counts_b
    else:
        keys = np.union1d(keys_a, keys_b)
        counts = np.zeros((len(keys), counts_a.shape[1]), dtype=np.int64)
        counts[np.searchsorted(keys, keys_a)] += counts_a
        counts[np.searchsorted(keys, keys_b)] += sign * counts_b
    if (counts < 0).any():
        raise StateMismatchError(
            f"the subtraction leaves negative student counts (in {what} "
            f"{keys[(counts < 0).any(axis=1)][:5].tolist()}): it subtracts students that were never added"
        )
    occupied = counts.any(axis=1)
    return keys[occupied], counts[occupied]


@dataclass(frozen=True, eq=False)
class CountryState:
    """Sufficient statistics of one country's students; see the module docstring and docs/metrics.md."""

    sums: dict[str, np.ndarray]
    # CNTSCHID (sorted) and, per school, its number of students in each of POPULATIONS
    school_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    school_counts: np.ndarray = field(default_factory=lambda: np.zeros((0, len(POPULATIONS)), dtype=np.int64))
    # floor(created_at / 60) (sorted) and the number of students created in that minute
    minutes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    minute_counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), dtype=np.int64))
    # name -> the largest magnitude that sum array has held: the scale of the rounding it carries (see `difference`)
    peaks: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        peaks = {name: float(self.peaks.get(name, 0.0)) for name in SUM_SHAPES}
        for name in SUM_SHAPES:
            peaks[name] = max(peaks[name], _magnitude(self.sums[name]))
        object.__setattr__(self, "peaks", peaks)

    @classmethod
    def empty(cls) -> CountryState:
        return cls(sums={name: np.zeros(shape) for name, shape in SUM_SHAPES.items()})

    @classmethod
    def from_batch(cls, batch: StudentBatch) -> CountryState:
        if len(batch) == 0:
            return cls.empty()
        school_ids, school_counts = _count_table(batch.school_id, batch.population_masks())
        minute_keys = np.floor(batch.created_at / SECONDS_PER_MINUTE).astype(np.int64)
        minutes, minute_counts = _count_table(minute_keys, np.ones((len(batch), 1), dtype=np.int64))
        return cls(
            sums=_weighted_sums(batch), school_ids=school_ids, school_counts=school_counts, minutes=minutes,
            minute_counts=minute_counts,
        )

    def _combine(self, other: CountryState, sign: int) -> CountryState:
        if not isinstance(other, CountryState):
            return NotImplemented
        school_ids, school_counts = _merge_count_tables(
            self.school_ids, self.school_counts, other.school_ids, other.school_counts, sign, "schools")
        minutes, minute_counts = _merge_count_tables(
            self.minutes, self.minute_counts, other.minutes, other.minute_counts, sign, "minutes")
        return CountryState(
            sums={name: self.sums[name] + sign * other.sums[name] for name in SUM_SHAPES},
            school_ids=school_ids, school_counts=school_counts, minutes=minutes, minute_counts=minute_counts,
            peaks={name: max(self.peaks[name], other.peaks[name]) for name in SUM_SHAPES},
        )

    def __add__(self, other: CountryState) -> CountryState:
        return self._combine(other, +1)

    def __sub__(self, other: CountryState) -> CountryState:
        return self._combine(other, -1)

    # --- counts -------------------------------------------------------------------------------------------------

    def n_students(self, population: str = "students") -> int:
        return int(self.school_counts[:, POPULATIONS.index(population)].sum())

    def n_schools(self, population: str = "students") -> int:
        return int((self.school_counts[:, POPULATIONS.index(population)] > 0).sum())

    def submissions_between(self, start: float, end: float) -> int:
        """Students whose created_at falls in the minutes from start's minute up to, not including, end's minute."""
        first, stop = (int(np.floor(t / SECONDS_PER_MINUTE)) for t in (start, end))
        inside = (self.minutes >= first) & (self.minutes < stop)
        return int(self.minute_counts[inside].sum())

    # --- storage ------------------------------------------------------------------------------------------------

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"school_ids": self.school_ids, "school_counts": self.school_counts, "minutes": self.minutes,
                "minute_counts": self.minute_counts, **{f"sum_{name}": array for name, array in self.sums.items()},
                "peaks": np.array([self.peaks[name] for name in SUM_SHAPES])}

    def to_bytes(self) -> bytes:
        """A JSON header (format version, populations, each array's name, dtype and shape) and the arrays' bytes.

        Fast path: a refresh reads and writes the state every second for every changing country, and this layout
        costs a memory copy each way (~0.1 ms) where an .npz archive cost ~10 ms (zip headers, CRCs, 43 members)."""
        arrays = {name: np.ascontiguousarray(array) for name, array in self._arrays().items()}
        header = json.dumps({
            "format_version": STATE_FORMAT_VERSION, "populations": list(POPULATIONS),
            "arrays": [[name, array.dtype.str, list(array.shape)] for name, array in arrays.items()],
        }).encode()
        return b"".join([STATE_MAGIC, struct.pack("<I", len(header)), header,
                         *(array.tobytes() for array in arrays.values())])

    @classmethod
    def from_bytes(cls, data: bytes) -> CountryState:
        """Read `to_bytes` output (or the .npz archive of format 1); ValueError when it is not a state of this
        layout."""
        try:
            header, arrays = _read_state(bytes(data))
        except (OSError, ValueError, KeyError, struct.error) as exc:
            raise ValueError(f"not a stored CountryState: {exc}") from exc
        if header.get("format_version") not in READABLE_FORMAT_VERSIONS or header.get("populations") != list(POPULATIONS):
            raise ValueError(
                f"stored CountryState has format {header.get('format_version')}, this code reads "
                f"{STATE_FORMAT_VERSION}: rebuild the state (python manage.py metrics rebuild)"
            )
        sums = {}
        for name, shape in SUM_SHAPES.items():
            key = f"sum_{name}"
            if key not in arrays or arrays[key].shape != shape:
                raise ValueError(f"stored CountryState lacks {name} of shape {shape}: rebuild the state")
            sums[name] = arrays[key]
        stored_peaks = arrays.get("peaks", np.zeros(0))
        if stored_peaks.shape not in ((0,), (len(SUM_SHAPES),)):
            raise ValueError(f"stored CountryState has {stored_peaks.shape} peaks, expected {len(SUM_SHAPES)}")
        return cls(
            sums=sums, school_ids=arrays["school_ids"], school_counts=arrays["school_counts"],
            minutes=arrays["minutes"], minute_counts=arrays["minute_counts"],
            peaks=dict(zip(SUM_SHAPES, stored_peaks.tolist())),
        )

    # --- comparison ---------------------------------------------------------------------------------------------

    def difference(self, other: CountryState, rtol: float = DEFAULT_RELATIVE_TOLERANCE) -> list[str]:
        """What differs from `other` beyond float rounding, one line per part; empty when the states agree."""
        problems = []
        for name in SUM_SHAPES:
            mine, theirs = self.sums[name], other.sums[name]
            scale = max(self.peaks[name], other.peaks[name])
            gap = np.abs(mine - theirs)
            off = gap > rtol * scale
            if off.any():
                problems.append(
                    f"{name}: {int(off.sum())} of {off.size} sums differ (largest difference {gap.max():.6g}, "
                    f"{gap.max() / scale:.3g} of the largest sum)"
                )
        for what, keys_a, counts_a, keys_b, counts_b in (
            ("schools", self.school_ids, self.school_counts, other.school_ids, other.school_counts),
            ("minutes", self.minutes, self.minute_counts, other.minutes, other.minute_counts),
        ):
            if not (np.array_equal(keys_a, keys_b) and np.array_equal(counts_a, counts_b)):
                only_a = np.setdiff1d(keys_a, keys_b)
                only_b = np.setdiff1d(keys_b, keys_a)
                problems.append(
                    f"{what}: student counts differ ({len(keys_a)} vs {len(keys_b)} {what}; only in this state: "
                    f"{only_a[:5].tolist()}, only in the other: {only_b[:5].tolist()})"
                )
        return problems


def _read_state(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays by name) of a stored state, in either format. The arrays are copies (writable)."""
    if not data.startswith(STATE_MAGIC):
        archive = np.load(io.BytesIO(data), allow_pickle=False)  # format 1
        header = json.loads(archive["header"].tobytes())
        return header, {name: archive[name] for name in archive.files if name != "header"}
    offset = len(STATE_MAGIC)
    (header_length,) = struct.unpack_from("<I", data, offset)
    offset += 4
    header = json.loads(data[offset:offset + header_length])
    offset += header_length
    arrays = {}
    for name, dtype, shape in header["arrays"]:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape).copy()
        offset += count * dtype.itemsize
    if offset != len(data):
        raise ValueError(f"{len(data) - offset} bytes left after the arrays")
    return header, arrays
