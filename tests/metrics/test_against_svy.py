"""Every statistic type agrees with an independent implementation, PyPI `svy`, to 1e-6 relative.

svy computes each statistic for one plausible value with its replicate-weight SE (BRR, Fay 0.5, deviations centred on
the full-sample estimate, as METHODS.md prescribes); svy does not pool plausible values, so these tests loop over the
ten PVs and combine them with Rubin's rules written out below from METHODS.md, not taken from the product.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import svy

from metrics.estimators import country_statistics, score_percentiles
from metrics.sufficient import DOMAINS, LEVEL2_CUT_SCORES, CountryState
from tests.metrics.conftest import COUNTRIES, PV_COLUMNS, WEIGHT_COLUMNS

RELATIVE = 1e-6
PISA_REPLICATION = {"method": "replication", "variance_center": "estimate"}


def rubin(estimates: list[float], standard_errors: list[float]) -> tuple[float, float]:
    """METHODS.md: t = mean t_m, U = mean U_m (U_m = SE_m^2), B = sum (t_m - t)^2 / (M - 1),
    SE = sqrt(U + (1 + 1/M) B)."""
    m = len(estimates)
    value = sum(estimates) / m
    within = sum(se**2 for se in standard_errors) / m
    between = sum((t - value) ** 2 for t in estimates) / (m - 1)
    return value, math.sqrt(within + (1 + 1 / m) * between)


def replicate_se(per_weight: np.ndarray) -> float:
    """METHODS.md: V = 1 / (G (1 - k)^2) * sum_g (t_g - t)^2, G = 80, k = 0.5."""
    return math.sqrt(((per_weight[1:] - per_weight[0]) ** 2).sum() / (80 * (1 - 0.5) ** 2))


def only_row(result) -> dict:
    rows = result.to_polars().to_dicts()
    assert len(rows) == 1, rows
    return rows[0]


def assert_matches(ours: dict, value: float, se: float) -> None:
    assert ours["value"] == pytest.approx(value, rel=RELATIVE)
    assert ours["se"] == pytest.approx(se, rel=RELATIVE)


@pytest.fixture(scope="module")
def svy_frames(sample_columns) -> dict[str, pl.DataFrame]:
    """The decoded sample with NaN as null, plus the derived columns the statistics are means of."""
    frames = {}
    for country, columns in sample_columns.items():
        frame = pl.DataFrame(columns).fill_nan(None)
        gender = pl.col("ST004D01T")
        derived = [
            pl.when(gender == 1).then(pl.lit("Female")).when(gender == 2).then(pl.lit("Male")).alias("GENDER"),
            pl.when(gender == 1).then(100.0).when(gender == 2).then(0.0).alias("GIRL_PERCENT"),
            (pl.col("TMINS") / 60).alias("LEARNING_HOURS"),
        ]
        for domain in DOMAINS:
            derived += [
                pl.when(pl.col(pv) < LEVEL2_CUT_SCORES[domain]).then(100.0).otherwise(0.0).alias(f"BELOW_{pv}")
                for pv in PV_COLUMNS[domain]
            ]
        frames[country] = frame.with_columns(derived)
    return frames


@pytest.fixture(scope="module")
def svy_samples(svy_frames) -> dict[str, svy.Sample]:
    design = svy.Design(
        wgt="W_FSTUWT", rep_wgts=svy.RepWeights(method="BRR", prefix="W_FSTURWT", n_reps=80, fay_coef=0.5))
    return {country: svy.Sample(frame, design) for country, frame in svy_frames.items()}


@pytest.fixture(scope="module")
def our_statistics(sample_batches) -> dict[str, dict]:
    statistics = {}
    for country, batch in sample_batches.items():
        percentiles = score_percentiles(weights=batch.weights, pv=batch.pv, school_id=batch.school_id)
        statistics[country] = country_statistics(CountryState.from_batch(batch), percentiles=percentiles, now=0)
    return statistics


def svy_pooled(sample: svy.Sample, columns: list[str], **options) -> tuple[float, float, int]:
    rows = [only_row(sample.estimation.mean(column, **PISA_REPLICATION, **options)) for column in columns]
    value, se = rubin([row["est"] for row in rows], [row["se"] for row in rows])
    return value, se, rows[0]["n"]


@pytest.mark.parametrize("country", COUNTRIES)
@pytest.mark.parametrize("domain", DOMAINS)
def test_mean_score(country, domain, svy_samples, our_statistics):
    value, se, n = svy_pooled(svy_samples[country], PV_COLUMNS[domain])
    ours = our_statistics[country]["scores"][domain]["mean"]
    assert_matches(ours, value, se)
    assert ours["n_students"] == n


@pytest.mark.parametrize("country", COUNTRIES)
@pytest.mark.parametrize("domain", DOMAINS)
def test_share_below_level2_is_the_mean_of_the_pv_below_cut_indicator(country, domain, svy_samples, our_statistics):
    value, se, _ = svy_pooled(svy_samples[country], [f"BELOW_{pv}" for pv in PV_COLUMNS[domain]])
    assert_matches(our_statistics[country]["scores"][domain]["below_level2"], value, se)


@pytest.mark.parametrize("country", COUNTRIES)
@pytest.mark.parametrize("domain", DOMAINS)
def test_gender_gap_is_girls_minus_boys_with_the_se_of_the_replicate_differences(
    country, domain, svy_samples, our_statistics
):
    """svy's contrast of its two domain means uses their replicate covariance: the SE of the replicate differences."""
    estimates, errors = [], []
    for pv in PV_COLUMNS[domain]:
        by_gender = svy_samples[country].estimation.mean(pv, by="GENDER", drop_nulls=True, **PISA_REPLICATION)
        gap = only_row(by_gender.contrast(svy.estd("Female") - svy.estd("Male")))
        estimates.append(gap["est"])
        errors.append(gap["se"])
    ours = our_statistics[country]["scores"][domain]["gender_gap"]
    assert_matches(ours, *rubin(estimates, errors))
    assert "girls minus boys" in ours["note"]


@pytest.mark.parametrize("country", COUNTRIES)
@pytest.mark.parametrize("domain", DOMAINS)
def test_percentiles_use_svys_higher_rule_per_pv_and_replicate(country, domain, svy_samples, our_statistics):
    by_probability = {0.1: ([], []), 0.9: ([], [])}
    for pv in PV_COLUMNS[domain]:
        results = svy_samples[country].estimation.quantile(
            pv, p=(0.1, 0.9), q_method="higher", **PISA_REPLICATION)
        for probability, result in zip((0.1, 0.9), results):
            row = only_row(result)
            by_probability[probability][0].append(row["est"])
            by_probability[probability][1].append(row["se"])
    scores = our_statistics[country]["scores"][domain]
    assert_matches(scores["p10"], *rubin(*by_probability[0.1]))
    assert_matches(scores["p90"], *rubin(*by_probability[0.9]))


@pytest.mark.parametrize("country", COUNTRIES)
def test_escs_gradient_and_strength_match_a_weighted_regression_per_pv_and_weight(
    country, svy_frames, our_statistics
):
    """svy's regression has no estimate-centred replicate variance, so it is refitted with each of the 81 weights
    as the design weight (811 fits): its slope and R^2 per PV and weight then go through the METHODS.md formulas."""
    domain = "READ"
    frame = svy_frames[country].select(["ESCS", *WEIGHT_COLUMNS, *PV_COLUMNS[domain]])
    slopes = np.empty((len(WEIGHT_COLUMNS), len(PV_COLUMNS[domain])))
    strengths = np.empty_like(slopes)
    for g, weight in enumerate(WEIGHT_COLUMNS):
        sample = svy.Sample(frame, svy.Design(wgt=weight))
        for m, pv in enumerate(PV_COLUMNS[domain]):
            model = sample.glm.fit(y=pv, x=["ESCS"])
            slopes[g, m] = model.to_polars().filter(pl.col("term") == "ESCS")["estimate"][0]
            strengths[g, m] = 100 * model.stats.r_squared
    scores = our_statistics[country]["scores"][domain]
    for ours, per_weight in ((scores["escs_gradient"], slopes), (scores["escs_strength"], strengths)):
        assert_matches(ours, *rubin(list(per_weight[0]), [replicate_se(per_weight[:, m]) for m in range(10)]))
    assert scores["escs_gradient"]["n_students"] == model.stats.n


@pytest.mark.parametrize("country", COUNTRIES)
@pytest.mark.parametrize(
    ("key", "column"),
    [("escs_mean", "ESCS"), ("learning_hours_per_week", "LEARNING_HOURS"), ("durecec_mean", "DURECEC"),
     ("belong_mean", "BELONG"), ("girls_share", "GIRL_PERCENT")],
)
def test_background_means_and_share_of_girls_use_replicates_without_rubin(
    country, key, column, svy_samples, our_statistics
):
    row = only_row(svy_samples[country].estimation.mean(column, drop_nulls=True, **PISA_REPLICATION))
    ours = our_statistics[country]["background"][key]
    assert_matches(ours, row["est"], row["se"])
    assert ours["n_students"] == row["n"]
