"""The fast weighted quantiles (a window of running sums around the full-sample quantile) against the definition
written out plainly: running sums of every weight over all the sorted students."""

from __future__ import annotations

import numpy as np
import pytest

from metrics.estimators import score_percentiles, weighted_quantiles
from metrics.sufficient import DOMAINS, N_PLAUSIBLE_VALUES, N_WEIGHTS
from tests.metrics.conftest import synthetic_batch

PROBABILITIES = (0.01, 0.1, 0.25, 0.5, 0.9, 0.99)


def quantiles_by_definition(scores: np.ndarray, weights: np.ndarray, probabilities) -> np.ndarray:
    """The smallest score whose cumulative weight reaches p times the total, per weight: every running sum."""
    order = np.argsort(scores, kind="stable")
    cumulative = np.cumsum(weights[order], axis=0)
    out = np.empty((len(probabilities), weights.shape[1]))
    for k, probability in enumerate(probabilities):
        first_reaching = (cumulative < probability * cumulative[-1]).sum(axis=0)
        out[k] = scores[order[np.minimum(first_reaching, len(scores) - 1)]]
    return out


def pisa_like_weights(rng, n: int, n_schools: int) -> tuple[np.ndarray, np.ndarray]:
    """Replicate factors 0.5 / 1.5 drawn per school (as Fay's BRR does by school pairs), so the replicates' quantiles
    wander further from the full sample's than with factors drawn per student."""
    school = rng.integers(0, n_schools, n)
    base = rng.lognormal(3, 0.6, n)
    factors = rng.choice([0.5, 1.5], size=(n_schools, N_WEIGHTS - 1))[school]
    return np.column_stack([base, base[:, None] * factors]), school


@pytest.mark.parametrize("n, n_schools", [(1, 1), (2, 1), (7, 3), (60, 8), (1_000, 40), (20_000, 150)])
def test_agrees_with_the_definition_on_pisa_like_weights(n, n_schools):
    rng = np.random.default_rng(n)
    weights, _ = pisa_like_weights(rng, n, n_schools)
    scores = rng.normal(480, 95, n).round(3)  # PVs have three decimals: some scores tie
    assert np.array_equal(weighted_quantiles(scores, weights, PROBABILITIES),
                          quantiles_by_definition(scores, weights, PROBABILITIES))


def test_agrees_where_every_running_sum_is_exact_and_hits_the_probability():
    """Integer weights: every sum is exact in floating point, F(x) hits p at many scores, ties everywhere."""
    rng = np.random.default_rng(3)
    n = 5_000
    scores = rng.integers(300, 700, n).astype(float)
    weights = rng.integers(0, 4, (n, N_WEIGHTS)).astype(float)
    probabilities = (0.1, 0.2, 0.25, 0.5, 0.75, 0.9)
    assert np.array_equal(weighted_quantiles(scores, weights, probabilities),
                          quantiles_by_definition(scores, weights, probabilities))


def test_a_replicate_whose_quantile_is_far_from_the_full_samples_widens_the_window():
    rng = np.random.default_rng(4)
    n = 10_000
    scores = rng.normal(500, 100, n)
    weights = np.repeat(rng.uniform(5, 50, n)[:, None], N_WEIGHTS, axis=1)
    top, bottom = scores > np.quantile(scores, 0.95), scores < np.quantile(scores, 0.02)
    weights[top, 7] *= 1_000.0  # replicate 7 puts nearly all its weight on the top 5%: its P10 is near the P95
    weights[bottom, 8] *= 1_000.0  # replicate 8 on the bottom 2%: its P90 is near the P2
    weights[:, 9] = 0.0  # no weight at all: every target is 0, reached by the first score
    weights[rng.random(n) < 0.3, 10] = 0.0  # students with no weight in one replicate
    found = weighted_quantiles(scores, weights, PROBABILITIES)
    assert np.array_equal(found, quantiles_by_definition(scores, weights, PROBABILITIES))
    assert found[1, 7] > np.quantile(scores, 0.94) and found[4, 8] < np.quantile(scores, 0.03)
    assert (found[:, 9] == scores.min()).all()


def test_score_percentiles_equal_the_definition_for_every_pv_weight_and_domain():
    batch = synthetic_batch(3_000, seed=11, n_schools=60)
    pv = dict(batch.pv)
    pv["MATH"] = pv["MATH"].copy()
    pv["MATH"][::7] = np.nan  # students without mathematics scores are left out of its percentiles
    pv["MATH"][batch.school_id == batch.school_id[1]] = np.nan  # and so is a school
    percentiles = score_percentiles(weights=batch.weights, pv=pv, school_id=batch.school_id,
                                    probabilities=(0.1, 0.9))
    for domain in DOMAINS:
        has = ~np.isnan(pv[domain][:, 0])
        per_weight = np.stack([quantiles_by_definition(pv[domain][has, m], batch.weights[has], (0.1, 0.9))
                               for m in range(N_PLAUSIBLE_VALUES)], axis=-1)
        full = per_weight[:, 0, :]  # (probabilities, PVs) with W_FSTUWT
        for k, key in enumerate(("p10", "p90")):
            assert percentiles[domain][key].value == pytest.approx(full[k].mean(), rel=1e-15)
            assert percentiles[domain][key].n_students == int(has.sum())
            assert percentiles[domain][key].n_schools == len(np.unique(batch.school_id[has]))
