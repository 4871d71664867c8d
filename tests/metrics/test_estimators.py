"""Reporting rules, degenerate countries, the average over countries, the quantile rule and submission rates."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import svy

from metrics.estimators import average_of_countries, country_statistics, score_percentiles
from metrics.sufficient import DOMAINS, CountryState
from tests.metrics.conftest import FIRST_CREATED_AT, synthetic_batch


def every_estimate(statistics: dict):
    for section in ("scores", "background"):
        for node in statistics[section].values():
            if "value" in node:
                yield node
            else:
                yield from node.values()


def test_an_empty_state_gives_no_value_and_says_why():
    statistics = country_statistics(CountryState.empty(), now=FIRST_CREATED_AT)
    estimates = list(every_estimate(statistics))
    assert len(estimates) == 3 * 5 + 5
    for estimate in estimates:
        assert estimate["value"] is None and estimate["se"] is None
        assert estimate["flagged"] and estimate["flag_reason"] == "no student with valid data"
    assert statistics["n_students"] == 0 and statistics["n_schools"] == 0
    assert statistics["submissions"] == {"per_minute_last_hour": 0.0, "per_hour_last_24h": 0.0}


def test_percentiles_of_no_student_give_no_value():
    empty = synthetic_batch(0)
    percentiles = score_percentiles(weights=empty.weights, pv=empty.pv, school_id=empty.school_id)
    assert percentiles["READ"]["p10"].value is None
    assert percentiles["READ"]["p90"].flag_reason == "no student with valid data"


def test_fewer_than_30_students_or_5_schools_are_flagged_but_still_estimated():
    small = country_statistics(CountryState.from_batch(synthetic_batch(29, n_schools=4)), now=0)
    mean = small["scores"]["MATH"]["mean"]
    assert mean["value"] is not None and mean["flagged"]
    assert mean["flag_reason"] == "fewer than 30 students (29); fewer than 5 schools (4)"

    large = country_statistics(
        CountryState.from_batch(synthetic_batch(400, school_id=np.repeat(np.arange(5), 80))), now=0)
    assert not large["scores"]["MATH"]["mean"]["flagged"]
    assert large["scores"]["MATH"]["mean"]["flag_reason"] is None


def test_a_gender_gap_is_flagged_on_the_smaller_group():
    gender = np.array([1.0] * 20 + [2.0] * 300)
    statistics = country_statistics(
        CountryState.from_batch(synthetic_batch(320, gender=gender, school_id=np.arange(320) % 40)), now=0)
    gap = statistics["scores"]["READ"]["gender_gap"]
    assert gap["n_students"] == 20 and gap["flagged"]
    assert not statistics["scores"]["READ"]["mean"]["flagged"]


def test_a_country_without_any_valid_escs_has_no_escs_statistics_but_everything_else():
    batch = synthetic_batch(200, escs=np.full(200, np.nan))
    statistics = country_statistics(CountryState.from_batch(batch), now=0)
    assert statistics["background"]["escs_mean"]["value"] is None
    for domain in DOMAINS:
        assert statistics["scores"][domain]["escs_gradient"]["value"] is None
        assert statistics["scores"][domain]["escs_strength"]["flag_reason"] == "no student with valid data"
        assert statistics["scores"][domain]["mean"]["value"] is not None


def test_a_gradient_without_variation_in_escs_is_not_defined():
    statistics = country_statistics(CountryState.from_batch(synthetic_batch(100, escs=np.full(100, 0.3))), now=0)
    gradient = statistics["scores"]["READ"]["escs_gradient"]
    assert gradient["value"] is None and "no variation" in gradient["flag_reason"]


def test_a_gradient_left_with_equal_escs_after_subtractions_is_not_defined_despite_rounding_noise():
    others = synthetic_batch(500, seed=3)
    equal = synthetic_batch(40, seed=4, escs=np.full(40, -1.7))
    state = CountryState.from_batch(others) + CountryState.from_batch(equal) - CountryState.from_batch(others)
    gradient = country_statistics(state, now=0)["scores"]["MATH"]["escs_gradient"]
    assert gradient["value"] is None and "no variation" in gradient["flag_reason"]


def test_the_gender_gap_is_girls_minus_boys():
    """Girls score exactly 25 points above boys on every plausible value: the gap is +25 with no variance at all."""
    n = 200
    gender = np.where(np.arange(n) % 2 == 0, 1.0, 2.0)
    shifted = {domain: np.repeat(np.where(gender == 1, 525.0, 500.0)[:, None], 10, axis=1) for domain in DOMAINS}
    gap = country_statistics(CountryState.from_batch(synthetic_batch(n, gender=gender, pv=shifted)), now=0)[
        "scores"]["SCIE"]["gender_gap"]
    assert gap["value"] == pytest.approx(25.0, rel=1e-12)
    assert gap["se"] == pytest.approx(0.0, abs=1e-9)
    assert gap["note"].startswith("girls minus boys")


def test_the_average_of_countries_is_unweighted_with_the_root_sum_of_squared_ses_over_n(sample_batches):
    statistics = {
        country: country_statistics(CountryState.from_batch(batch), now=0) for country, batch in sample_batches.items()
    }
    average = average_of_countries(statistics)
    countries = [statistics[c]["scores"]["READ"]["mean"] for c in ("FRA", "ITA", "MEX")]
    reading = average["scores"]["READ"]["mean"]
    assert reading["value"] == pytest.approx(sum(c["value"] for c in countries) / 3, rel=1e-12)
    assert reading["se"] == pytest.approx(math.sqrt(sum(c["se"] ** 2 for c in countries)) / 3, rel=1e-12)
    assert reading["n_students"] == 311 + 593 + 365
    assert not reading["flagged"]
    assert average["n_students"] == 311 + 593 + 365
    assert average["scores"]["MATH"]["gender_gap"]["note"].startswith("girls minus boys")


def test_an_average_over_countries_lacking_an_estimate_says_which(sample_batches):
    statistics = {
        "FRA": country_statistics(CountryState.from_batch(sample_batches["FRA"]), now=0),
        "XXX": country_statistics(CountryState.empty(), now=0),
    }
    escs = average_of_countries(statistics)["background"]["escs_mean"]
    assert escs["value"] == pytest.approx(statistics["FRA"]["background"]["escs_mean"]["value"])
    assert escs["flagged"] and escs["flag_reason"] == "average of 1 of 2 countries (none for XXX)"


def test_the_quantile_rule_agrees_with_svy_where_the_weighted_cdf_hits_the_probability_exactly():
    """Ten students, equal weights: F(x) is exactly 0.1, 0.2, ... so the tie rule decides every percentile."""
    n = 10
    scores = np.arange(1.0, n + 1) * 50
    weights = np.column_stack([np.ones(n)] + [np.where(np.arange(n) < g % n, 1.5, 0.5) for g in range(1, 81)])
    frame = pl.DataFrame({"y": scores, "W": weights[:, 0], **{f"R{g}": weights[:, g] for g in range(1, 81)}})
    sample = svy.Sample(frame, svy.Design(wgt="W", rep_wgts=svy.RepWeights(
        method="BRR", prefix="R", n_reps=80, fay_coef=0.5)))
    probabilities = (0.1, 0.25, 0.5, 0.9)
    expected = sample.estimation.quantile(
        "y", p=probabilities, q_method="higher", method="replication", variance_center="estimate")

    batch = synthetic_batch(n, weights=weights, pv={domain: np.repeat(scores[:, None], 10, axis=1)
                                                    for domain in DOMAINS})
    ours = score_percentiles(weights=batch.weights, pv=batch.pv, school_id=batch.school_id,
                             probabilities=probabilities)["READ"]
    for key, result in zip(("p10", "p25", "p50", "p90"), expected):
        row = result.to_polars().to_dicts()[0]
        assert ours[key].value == pytest.approx(row["est"], rel=1e-12)
        assert ours[key].se == pytest.approx(row["se"], rel=1e-9)
    assert ours["p50"].value == 250.0  # F(250) = 0.5 exactly: the smallest score whose CDF reaches 0.5


def test_submission_rates_count_the_complete_minutes_before_now_by_created_at():
    now = 60 * 29_200_000 + 30  # half a minute into a minute
    created_at = np.concatenate([
        now - 30 + np.arange(120) * 30 - 3_600,      # 120 students over the last 60 complete minutes
        now - 30 - 5 * 3_600 + np.arange(48),        # 48 students five hours earlier
        now - 30 - 30 * 3_600 + np.arange(10),       # 10 students more than a day before
        now + np.arange(7),                          # 7 in the minute still running
    ])
    state = CountryState.from_batch(synthetic_batch(len(created_at), created_at=created_at))
    rates = country_statistics(state, now=now)["submissions"]
    assert rates["per_minute_last_hour"] == 120 / 60
    assert rates["per_hour_last_24h"] == (120 + 48) / 24


def test_a_country_against_the_average_it_is_part_of_counts_its_own_error_once():
    from metrics.estimators import Z_95, differences_from_average

    estimates = {"ALB": {"value": 520.0, "se": 2.0}, "ARG": {"value": 500.0, "se": 3.0},
                 "FRA": {"value": 503.0, "se": 4.0}, "ZZZ": {"value": None, "se": None}}
    found = differences_from_average(estimates)
    assert set(found) == {"ALB", "ARG", "FRA"}  # a country without an estimate is not in the average
    codes = ["ALB", "ARG", "FRA"]
    ses = np.array([estimates[c]["se"] for c in codes])
    for k, code in enumerate(codes):
        # The difference as a linear combination a . x of independent country estimates: a = e_k - 1/n.
        a = -np.full(3, 1 / 3)
        a[k] += 1
        value = a @ np.array([estimates[c]["value"] for c in codes])
        se = math.sqrt(np.sum(a ** 2 * ses ** 2))
        assert found[code]["value"] == pytest.approx(value) and found[code]["se"] == pytest.approx(se)
        assert found[code]["significant"] == (abs(value) > Z_95 * se)
    assert found["ALB"]["significant"] and not found["FRA"]["significant"]
    assert differences_from_average({"ALB": estimates["ALB"]}) == {}
