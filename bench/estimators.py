"""How the metrics core scales: a delta's cost must not depend on the size of the state it is applied to.

    .venv/bin/python bench/estimators.py [--large 200000]

Prints timings and, above all, ratios (large state / small state) for applying the same 100-row delta; the ratio
should be close to 1. Made-up students, no database.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metrics.estimators import country_statistics, score_percentiles  # noqa: E402
from metrics.sufficient import DOMAINS, N_PLAUSIBLE_VALUES, CountryState, StudentBatch  # noqa: E402

SMALL_STATE = 10_000
DELTA_ROWS = 100
REPEATS = 50
# A country's sample grows by students, not schools (PISA 2018 samples have roughly 150 to 1,100 schools).
SCHOOLS = 400
DAYS_OF_SUBMISSIONS = 7


def made_up_students(n: int, seed: int) -> StudentBatch:
    rng = np.random.default_rng(seed)
    base = rng.uniform(5, 50, n)
    ability = rng.normal(480, 90, n)
    return StudentBatch(
        weights=np.column_stack([base, base[:, None] * rng.choice([0.5, 1.5], (n, 80))]),
        pv={d: ability[:, None] + rng.normal(0, 30, (n, N_PLAUSIBLE_VALUES)) for d in DOMAINS},
        gender=rng.choice([1.0, 2.0, np.nan], n, p=[0.49, 0.49, 0.02]),
        escs=np.where(rng.random(n) < 0.05, np.nan, rng.normal(-0.2, 1, n)),
        tmins=rng.uniform(1200, 2100, n), durecec=rng.integers(0, 9, n).astype(float), belong=rng.normal(0, 1, n),
        school_id=rng.integers(0, SCHOOLS, n),
        created_at=1.75e9 + rng.uniform(0, DAYS_OF_SUBMISSIONS * 86_400, n),
    )


def seconds_per_call(function, repeats: int = REPEATS) -> float:
    """The fastest of `repeats` calls: the least disturbed by whatever else the machine is doing."""
    fastest = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        fastest = min(fastest, time.perf_counter() - start)
    return fastest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=200_000, help="students in the large state")
    large_n = parser.parse_args().large

    print(f"building states of {SMALL_STATE:,} and {large_n:,} students ...", flush=True)
    small_batch, large_batch = made_up_students(SMALL_STATE, 1), made_up_students(large_n, 2)
    start = time.perf_counter()
    small, large = CountryState.from_batch(small_batch), CountryState.from_batch(large_batch)
    build = time.perf_counter() - start
    delta_batch = made_up_students(DELTA_ROWS, 3)
    delta = CountryState.from_batch(delta_batch)

    build_delta = seconds_per_call(lambda: CountryState.from_batch(delta_batch))
    add_small = seconds_per_call(lambda: small + delta)
    add_large = seconds_per_call(lambda: large + delta)
    stats_small = seconds_per_call(lambda: country_statistics(small, now=1.75e9), 10)
    stats_large = seconds_per_call(lambda: country_statistics(large, now=1.75e9), 10)
    stored = large.to_bytes()
    start = time.perf_counter()
    score_percentiles(weights=large_batch.weights, pv=large_batch.pv, school_id=large_batch.school_id)
    percentiles = time.perf_counter() - start

    print(f"from_batch of {SMALL_STATE + large_n:,} students in all: {build:.2f} s")
    print(f"from_batch of a {DELTA_ROWS}-row delta: {build_delta * 1e3:.2f} ms")
    print(f"state + delta: {add_small * 1e3:.3f} ms on {SMALL_STATE:,}, {add_large * 1e3:.3f} ms on {large_n:,} "
          f"(ratio {add_large / add_small:.2f}; count tables: {len(small.school_ids)} schools and "
          f"{len(small.minutes)} minutes vs {len(large.school_ids)} and {len(large.minutes)})")
    print(f"country_statistics: {stats_small * 1e3:.2f} ms on {SMALL_STATE:,}, {stats_large * 1e3:.2f} ms on "
          f"{large_n:,} (ratio {stats_large / stats_small:.2f})")
    print(f"stored state of {large_n:,} students: {len(stored) / 1024:.0f} KiB "
          f"({len(large.school_ids)} schools, {len(large.minutes)} minutes)")
    print(f"score_percentiles on {large_n:,} students (3 domains x 10 PVs x 81 weights x 2): {percentiles:.2f} s")


if __name__ == "__main__":
    main()
