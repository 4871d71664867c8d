"""PISA estimates with their standard errors, from a `CountryState` (and, for percentiles, from the raw score arrays).

Every estimate follows /shared/pisa2018/METHODS.md: the statistic is computed with each of the 81 weights (and, for
scores, each of the 10 plausible values); the sampling variance is `0.05 * sum_g (t_g - t)^2`, centred on the
full-sample estimate; plausible values are combined by Rubin's rules. The formulas are in docs/metrics.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from metrics.sufficient import (
    BACKGROUND_VARIABLES,
    DOMAINS,
    LEVEL2_CUT_SCORES,
    N_PLAUSIBLE_VALUES,
    N_WEIGHTS,
    SCORE_ORIGIN,
    CountryState,
)

REPLICATES = N_WEIGHTS - 1
FAY_FACTOR = 0.5
REPLICATE_VARIANCE_FACTOR = 1.0 / (REPLICATES * (1.0 - FAY_FACTOR) ** 2)  # = 0.05
MIN_STUDENTS = 30
MIN_SCHOOLS = 5
PERCENTILES = (0.10, 0.90)
SECONDS_PER_HOUR = 3600
HOURS_PER_DAY = 24
MINUTES_PER_HOUR = 60
# A variance below this fraction of E[v^2] is what float rounding leaves of a zero variance.
VARIANCE_NOISE_FLOOR = 1e-9
GENDER_GAP_NOTE = "girls minus boys (OECD tables show boys minus girls)"

# Background statistics: (key in the output, state variable, factor applied to the mean, unit)
BACKGROUND_MEANS = (
    ("escs_mean", "ESCS", 1.0, "index points"),
    ("learning_hours_per_week", "TMINS", 1.0 / 60.0, "hours per week"),
    ("durecec_mean", "DURECEC", 1.0, "years"),
    ("belong_mean", "BELONG", 1.0, "index points"),
)


@dataclass(frozen=True)
class Estimate:
    """One published figure: value and standard error, or None with the reason, and the sample it rests on."""

    value: float | None
    se: float | None
    n_students: int
    n_schools: int
    flagged: bool
    flag_reason: str | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def replicate_estimate(estimates: np.ndarray) -> tuple[float, float]:
    """(t, SE) from the statistic computed with each weight: shape (81,), or (81, M) for M plausible values.

    Replicate variance per plausible value U_m = 0.05 * sum_g (t_gm - t_0m)^2; with several plausible values, Rubin:
    t = mean_m t_0m, SE = sqrt(mean_m U_m + (1 + 1/M) * sum_m (t_0m - t)^2 / (M - 1)).
    """
    full, replicates = estimates[0], estimates[1:]
    sampling = REPLICATE_VARIANCE_FACTOR * ((replicates - full) ** 2).sum(axis=0)
    if estimates.ndim == 1:
        return float(full), float(math.sqrt(sampling))
    m = estimates.shape[1]
    value = float(full.mean())
    imputation = float(((full - value) ** 2).sum() / (m - 1))
    return value, float(math.sqrt(sampling.mean() + (1.0 + 1.0 / m) * imputation))


def _flag_reason(n_students: int, n_schools: int) -> str | None:
    reasons = []
    if n_students < MIN_STUDENTS:
        reasons.append(f"fewer than {MIN_STUDENTS} students ({n_students})")
    if n_schools < MIN_SCHOOLS:
        reasons.append(f"fewer than {MIN_SCHOOLS} schools ({n_schools})")
    return "; ".join(reasons) or None


def _estimate(
    state: CountryState, populations: Sequence[str], compute, note: str | None = None
) -> Estimate:
    """Estimate from `compute()` -> (81,) or (81, 10) array, unless a population it needs has no student.

    With several populations (girls and boys for a gap), the counts reported are those of the smaller one, which is
    what the reporting rule should judge.
    """
    counts = [(state.n_students(p), state.n_schools(p)) for p in populations]
    n_students = min(n for n, _ in counts)
    n_schools = min(s for _, s in counts)
    if n_students == 0:
        return Estimate(None, None, 0, n_schools, True, "no student with valid data", note)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_weight = compute()
    if not np.isfinite(per_weight).all():
        return Estimate(None, None, n_students, n_schools, True, "not defined for these students (no variation)",
                        note)
    value, se = replicate_estimate(per_weight)
    reason = _flag_reason(n_students, n_schools)
    return Estimate(value, se, n_students, n_schools, reason is not None, reason, note)


def _variance(mean_of_squares: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """E[v^2] - E[v]^2, NaN where that is only rounding noise (every value equal): a slope on it is not defined."""
    variance = mean_of_squares - mean**2
    return np.where(variance > VARIANCE_NOISE_FLOOR * mean_of_squares, variance, np.nan)


def _domain_statistics(state: CountryState, d: int, domain: str) -> dict[str, Estimate]:
    sums = state.sums

    def mean():
        return sums["score_wy"][d] / sums["score_w"][d][:, None] + SCORE_ORIGIN

    def below_level2():
        return 100.0 * sums["score_w_below_level2"][d] / sums["score_w"][d][:, None]

    def gender_gap():
        girls = sums["girls_wy"][d] / sums["girls_w"][d][:, None]
        boys = sums["boys_wy"][d] / sums["boys_w"][d][:, None]
        return girls - boys

    def moments():
        w = sums["pair_w"][d][:, None]
        mean_x, mean_y = sums["pair_wx"][d][:, None] / w, sums["pair_wy"][d] / w
        mean_xx, mean_yy = sums["pair_wxx"][d][:, None] / w, sums["pair_wyy"][d] / w
        cov_xy = sums["pair_wxy"][d] / w - mean_x * mean_y
        return _variance(mean_xx, mean_x), _variance(mean_yy, mean_y), cov_xy

    def gradient():
        var_x, _, cov_xy = moments()
        return cov_xy / var_x

    def strength():
        var_x, var_y, cov_xy = moments()
        return 100.0 * cov_xy**2 / (var_x * var_y)

    pair = f"{domain}_ESCS"
    return {
        "mean": _estimate(state, [domain], mean),
        "below_level2": _estimate(
            state, [domain], below_level2, f"% of students with PV < {LEVEL2_CUT_SCORES[domain]} (Level 2)"),
        "gender_gap": _estimate(state, [f"{domain}_girls", f"{domain}_boys"], gender_gap, GENDER_GAP_NOTE),
        "escs_gradient": _estimate(state, [pair], gradient, "score points per ESCS unit"),
        "escs_strength": _estimate(state, [pair], strength, "100 x R^2 of score on ESCS"),
    }


def _background_statistics(state: CountryState) -> dict[str, Estimate]:
    sums = state.sums
    out = {}
    for key, variable, factor, unit in BACKGROUND_MEANS:
        b = BACKGROUND_VARIABLES.index(variable)
        out[key] = _estimate(
            state, [variable], lambda b=b, factor=factor: factor * sums["background_wv"][b] / sums["background_w"][b],
            unit,
        )
    out["girls_share"] = _estimate(
        state, ["gender"], lambda: 100.0 * sums["female_w"] / sums["gender_w"], "% of students with a known gender")
    return out


def submission_rates(state: CountryState, now: float) -> dict[str, float]:
    """Submissions (by the source rows' created_at) per minute over the last 60 complete minutes before `now`'s
    minute, and per hour over the last 24 x 60 complete minutes."""
    last_hour = state.submissions_between(now - SECONDS_PER_HOUR, now)
    last_day = state.submissions_between(now - HOURS_PER_DAY * SECONDS_PER_HOUR, now)
    return {
        "per_minute_last_hour": last_hour / MINUTES_PER_HOUR,
        "per_hour_last_24h": last_day / HOURS_PER_DAY,
    }


def country_statistics(
    state: CountryState, *, percentiles: Mapping[str, Mapping[str, Estimate]] | None = None, now: float | None = None
) -> dict:
    """Every statistic of one country as a JSON-ready dict (shape in docs/metrics.md); floats are not rounded.

    `percentiles` is `score_percentiles(...)`'s result, computed from the raw arrays, merged under each domain.
    """
    scores = {}
    for d, domain in enumerate(DOMAINS):
        estimates = _domain_statistics(state, d, domain)
        for key, estimate in (percentiles or {}).get(domain, {}).items():
            estimates[key] = estimate
        scores[domain] = {key: estimate.to_dict() for key, estimate in estimates.items()}
    return {
        "n_students": state.n_students(),
        "n_schools": state.n_schools(),
        "scores": scores,
        "background": {key: estimate.to_dict() for key, estimate in _background_statistics(state).items()},
        "submissions": submission_rates(state, time.time() if now is None else now),
    }


# The first window searched around the full-sample quantile holds this fraction of the students on each side (at
# least QUANTILE_MIN_HALF_WINDOW); after each plausible value the next window is sized to what the replicates needed.
QUANTILE_FIRST_HALF_WINDOW = 1 / 32
QUANTILE_MIN_HALF_WINDOW = 64


def weighted_quantiles(scores: np.ndarray, weights: np.ndarray, probabilities: Sequence[float]) -> np.ndarray:
    """(len(probabilities), 81): per weight, the smallest score whose weighted CDF reaches each probability.

    scores (n,), weights (n, 81). F(x) = sum of w over scores <= x / sum of w, and the p-quantile is the smallest x
    with F(x) >= p, evaluated as "cumulative weight >= p * total weight": svy's "higher" rule (its default), R's
    svyquantile(qrule="math"). No interpolation. How it is computed: `_weighted_quantiles`.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    return _weighted_quantiles(scores, weights, np.ascontiguousarray(weights[:, 0]), tuple(probabilities),
                               weights.sum(axis=0), None)[0]


def _weighted_quantiles(
    scores: np.ndarray, weights: np.ndarray, full_sample_weight: np.ndarray, probabilities: tuple[float, ...],
    totals: np.ndarray, half_window: int | None,
) -> tuple[np.ndarray, int]:
    """`weighted_quantiles`, given the full-sample weight as a contiguous array, the column sums of the weights and
    the half window to start with (None: a fraction of n); returns the quantiles and the half window the next
    plausible value may start with.

    Exact, without a running sum of all n x 81 weights: the scores are sorted once; the running sum of the full-sample
    weight alone locates its quantile, and the 81 quantiles lie near it, so the cumulative weights of all 81 columns
    are computed only over a window of the sorted students around it, starting from the weight of the students below
    the window (summed over the smaller side). The window is checked to hold every column's crossing (weight below
    it < target <= weight up to its end) and widened until it does, so the answer is the one a running sum over all
    students gives. Only float rounding differs (these sums are added in another order), which could matter only
    where F(x) equals p to within the rounding of a sum of n floats (at most ~n * 1e-16 relative); sums that are
    exact in floating point (the test's equal weights, where F hits p exactly) give exactly the same answer.
    """
    n = len(scores)
    if n == 0:
        raise ValueError("weighted quantiles of no score")
    order = np.argsort(scores)  # ties in any order: tied scores are one value, whichever of them is reached first
    ordered_scores = scores[order]
    full_sample = np.cumsum(full_sample_weight[order])
    half = half_window or max(QUANTILE_MIN_HALF_WINDOW, int(n * QUANTILE_FIRST_HALF_WINDOW))
    needed = 0
    out = np.empty((len(probabilities), weights.shape[1]))
    for k, probability in enumerate(probabilities):
        targets = probability * totals
        centre = int(np.searchsorted(full_sample, probability * full_sample[-1]))
        while True:
            start, stop = max(0, centre - half), min(n, centre + half + 1)
            if start <= n - start:
                below = weights[order[:start]].sum(axis=0)
            else:
                below = totals - weights[order[start:]].sum(axis=0)
            running = np.cumsum(weights[order[start:stop]], axis=0)
            running += below
            reached_before = (below >= targets) if start > 0 else False
            reached_after = (running[-1] < targets) if stop < n else False
            if not (np.any(reached_before) or np.any(reached_after)):
                break
            half *= 4
        first_reaching = start + (running < targets).sum(axis=0)
        needed = max(needed, int(np.abs(first_reaching - centre).max()))
        out[k] = ordered_scores[np.minimum(first_reaching, n - 1)]
    return out, max(QUANTILE_MIN_HALF_WINDOW, 2 * needed)


def _count_distinct(values: np.ndarray) -> int:
    if not len(values):
        return 0
    ordered = np.sort(values)
    return int(np.count_nonzero(ordered[1:] != ordered[:-1])) + 1


def score_percentiles(
    *, weights: np.ndarray, pv: Mapping[str, np.ndarray], school_id: np.ndarray,
    probabilities: Iterable[float] = PERCENTILES,
) -> dict[str, dict[str, Estimate]]:
    """Weighted percentiles of each domain from one country's raw arrays: {"READ": {"p10": Estimate, ...}, ...}.

    weights (n, 81), pv domain -> (n, 10) (rows without scores, NaN, are left out), school_id (n,). Per plausible
    value and weight, `weighted_quantiles`; then replicates and Rubin as for every score statistic. Cost per domain:
    ten sorts, and running sums of the 81 weights over a window of the students around each quantile.
    """
    weights = np.asarray(weights, dtype=np.float64)
    school_id = np.asarray(school_id)
    probabilities = tuple(probabilities)
    keys = [f"p{round(probability * 100):d}" for probability in probabilities]
    out: dict[str, dict[str, Estimate]] = {}
    schools_of_everyone = None
    for domain, plausible in pv.items():
        plausible = np.asarray(plausible, dtype=np.float64)
        has_scores = ~np.isnan(plausible[:, 0])
        n_students = int(has_scores.sum())
        if n_students < len(has_scores):
            n_schools = _count_distinct(school_id[has_scores])
        else:  # the usual case, in every domain: count once
            schools_of_everyone = schools_of_everyone or _count_distinct(school_id)
            n_schools = schools_of_everyone
        if n_students == 0:
            out[domain] = {key: Estimate(None, None, 0, 0, True, "no student with valid data") for key in keys}
            continue
        everyone = n_students == len(has_scores)
        students_weights = weights if everyone else weights[has_scores]
        students_scores = plausible if everyone else plausible[has_scores]
        totals = students_weights.sum(axis=0)
        full_sample_weight = np.ascontiguousarray(students_weights[:, 0])
        per_weight = np.empty((len(probabilities), N_WEIGHTS, N_PLAUSIBLE_VALUES))
        half_window = None
        for m in range(N_PLAUSIBLE_VALUES):
            per_weight[:, :, m], half_window = _weighted_quantiles(
                np.ascontiguousarray(students_scores[:, m]), students_weights, full_sample_weight, probabilities,
                totals, half_window)
        reason = _flag_reason(n_students, n_schools)
        out[domain] = {
            key: Estimate(*replicate_estimate(per_weight[k]), n_students, n_schools, reason is not None, reason)
            for k, key in enumerate(keys)
        }
    return out


def _is_estimate(node) -> bool:
    return isinstance(node, dict) and "value" in node and "se" in node


def _average_estimates(countries: Sequence[str], estimates: Sequence[dict | None]) -> dict:
    """A country whose statistics lack this estimate (no percentiles computed, say) counts as one without it."""
    present = [(c, e) for c, e in zip(countries, estimates) if e is not None and e["value"] is not None]
    absent = [c for c, e in zip(countries, estimates) if e is None or e["value"] is None]
    known = [e for e in estimates if e is not None]
    n_students = sum(e["n_students"] for e in known)
    n_schools = sum(e["n_schools"] for e in known)
    note = known[0].get("note")
    if not present:
        return Estimate(None, None, n_students, n_schools, True, "no country has an estimate", note).to_dict()
    value = sum(e["value"] for _, e in present) / len(present)
    se = math.sqrt(sum(e["se"] ** 2 for _, e in present)) / len(present)
    reason = None
    if absent:
        reason = f"average of {len(present)} of {len(countries)} countries (none for {', '.join(absent)})"
    return Estimate(value, se, n_students, n_schools, bool(absent), reason, note).to_dict()


def average_of_countries(statistics: Mapping[str, dict]) -> dict:
    """The average over the countries shown, in the same shape as `country_statistics`.

    Each estimate is the unweighted mean of the country estimates with SE = sqrt(sum_c SE_c^2) / N (countries
    without the estimate are left out and the average is flagged); counts and submission rates are summed.
    """
    countries = sorted(statistics)

    def walk(nodes: list):
        present = [node for node in nodes if node is not None]
        if _is_estimate(present[0]):
            return _average_estimates(countries, nodes)
        if isinstance(present[0], dict):
            keys = dict.fromkeys(key for node in present for key in node)
            return {key: walk([None if node is None else node.get(key) for node in nodes]) for key in keys}
        return sum(present)

    if not countries:
        raise ValueError("the average of countries needs at least one country")
    return walk([statistics[country] for country in countries])


Z_95 = 1.959963984540054  # two-sided 5 %: a difference is significant when |difference| > Z_95 * SE


def significant(value: float, se: float) -> bool | None:
    return bool(abs(value) > Z_95 * se) if se > 0 else None


def member_minus_average(country: str, members: Mapping[str, dict]) -> tuple[float, float]:
    """A country's estimate minus the average of `members` (estimates with a value and an SE), the country one of
    them: (difference, SE). Its own sampling error enters both sides, so it is not counted twice (the OECD's formula
    for a country against the OECD average; docs/analysis.md):
    SE^2 = ((N-1)/N)^2 SE_c^2 + sum_{j != c} SE_j^2 / N^2."""
    n = len(members)
    average = sum(e["value"] for e in members.values()) / n
    own = members[country]
    variance = ((n - 1) / n) ** 2 * own["se"] ** 2 + sum(
        e["se"] ** 2 for code, e in members.items() if code != country) / n ** 2
    return own["value"] - average, math.sqrt(variance)


def differences_from_average(estimates: Mapping[str, dict | None]) -> dict[str, dict]:
    """Each country's estimate against the average of the countries that have one: {country: {value, se,
    significant}}; empty under two countries (a country against an average of itself)."""
    members = {code: e for code, e in estimates.items()
               if e is not None and e.get("value") is not None and e.get("se") is not None}
    if len(members) < 2:
        return {}
    out = {}
    for country in members:
        value, se = member_minus_average(country, members)
        out[country] = {"value": value, "se": se, "significant": significant(value, se)}
    return out

