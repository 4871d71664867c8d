"""Metrics refresh cost follows the delta, not the warehouse.

    .venv/bin/python -m bench.metrics [--quick]

Three countries in one warehouse: 10,000 students, a full-size country of 35,000 (the largest PISA 2018 samples hold
about that many), and 200,000 (--quick: 2,000, 35,000 and 40,000). The small and the large one get the same 100 new
students (+1 rows in the change log), then `country_metrics_refresh` runs; repeated, medians kept. Reported: both
times and their ratio (target < 1.5).

Percentiles, which need every student and run on a slower clock (METRICS_PERCENTILES_SECONDS), are timed apart: a
refresh with percentiles forced (read every student's weights and scores, P10/P90 of 3 domains x 10 PVs x 81
weights), interleaved over the three countries and repeated, medians kept; the target is well under a second for the
full-size country. Besides the wall time, the CPU time it took (this process plus its PostgreSQL backend, when that
runs on this machine): on a machine shared with other work, the wall time also counts the time spent waiting for a
core, the CPU time does not.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np

from bench.common import bench_environment, median, report

DELTA = 100
REPEATS = 7
FULL_SIZE_COUNTRY = 35_000
PERCENTILE_REPEATS = 5


def made_up_rows(n: int, rng: np.random.Generator, first_id: int, country: str):
    from ingestion.layout import ANALYSIS_COLUMNS

    base = rng.uniform(5, 50, n)
    ability = rng.normal(480, 90, n)
    columns = {"w_fstuwt": base}
    for g in range(1, 81):
        columns[f"w_fsturwt{g}"] = base * rng.choice([0.5, 1.5], n)
    for domain in ("read", "math", "scie"):
        for m in range(1, 11):
            columns[f"pv{m}{domain}"] = ability + rng.normal(0, 30, n)
    columns["st004d01t"] = rng.choice([1.0, 2.0], n)
    columns["escs"] = rng.normal(-0.2, 1, n)
    columns["tmins"] = rng.uniform(1200, 2100, n)
    columns["durecec"] = rng.integers(0, 9, n).astype(float)
    columns["belong"] = rng.normal(0, 1, n)
    columns["immig"] = rng.choice([1.0, 2.0, 3.0, np.nan], n, p=[0.8, 0.08, 0.08, 0.04])  # NaN: a missing code
    analysis = np.column_stack([columns[c] for c in ANALYSIS_COLUMNS])
    schools = rng.integers(0, 600, n)
    ids = np.arange(first_id, first_id + n)
    return ids, schools, analysis


def copy_text(values: list[float]) -> str:
    """A row of floats as COPY text, NaN as NULL (the warehouse's missing value)."""
    return "\t".join("\\N" if value != value else repr(value) for value in values)


def copy_rows(table: str, fields: str, lines: list[str]) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.cursor.copy_expert(f"COPY {table} ({fields}) FROM STDIN", io.StringIO("\n".join(lines) + "\n"))


def add_students(source, country: str, n: int, rng, first_id: int, *, log_changes: bool) -> None:
    from ingestion.layout import ANALYSIS_COLUMNS

    ids, schools, analysis = made_up_rows(n, rng, first_id, country)
    values = [copy_text(row) for row in analysis.tolist()]
    common = [f"{country}\t{school}\t2026-11-25 00:00:{i % 60:02d}+00" for i, school in zip(range(n), schools)]
    copy_rows("ingestion_student",
              f"source_id, cntstuid, source_row_id, raw, raw_md5, loaded_at, country, cntschid, source_created_at, "
              f"{', '.join(ANALYSIS_COLUMNS)}",
              [f"{source.pk}\t{i}\t{i}\t\tbench\t2026-11-25 00:00:00+00\t{c}\t{v}" for i, c, v in
               zip(ids, common, values)])
    if log_changes:
        copy_rows("ingestion_studentchange",
                  f"sign, recorded_at, country, cntschid, source_created_at, {', '.join(ANALYSIS_COLUMNS)}",
                  [f"1\t2026-11-25 00:00:00+00\t{c}\t{v}" for c, v in zip(common, values)])


def backend_process():
    """This connection's PostgreSQL backend, when it is a process on this machine (None otherwise)."""
    import psutil
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        process = psutil.Process(pid)
        return process if "postgres" in " ".join(process.cmdline()) else None
    except (psutil.Error, OSError):
        return None


def cpu_seconds(backend) -> float:
    own = time.process_time()
    return own + (sum(backend.cpu_times()[:2]) if backend is not None else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    small, large = (2_000, 40_000) if quick else (10_000, 200_000)
    percentile_repeats = 3 if quick else PERCENTILE_REPEATS
    with bench_environment():
        from django.utils import timezone

        from ingestion.models import Source
        from metrics.models import CountryMetricsState
        from metrics.services import country_metrics_rebuild, country_metrics_refresh

        rng = np.random.default_rng(2018)
        sizes = {"SML": small, "FUL": FULL_SIZE_COUNTRY, "LRG": large}
        next_id = 1
        for country, n in sizes.items():
            source = Source.objects.create(code=country, name=country, url="postgresql+psycopg2://bench@/none")
            print(f"warehouse: {n:,} students for {country}...", flush=True)
            add_students(source, country, n, rng, next_id, log_changes=False)
            next_id += n
            country_metrics_rebuild(country=country)
        timings = {country: [] for country in ("SML", "LRG")}
        for _ in range(REPEATS):
            for country in timings:
                source = Source.objects.get(code=country)
                add_students(source, country, DELTA, rng, next_id, log_changes=True)
                next_id += DELTA
                CountryMetricsState.objects.filter(country=country).update(percentiles_at=timezone.now())
                started = time.perf_counter()
                result = country_metrics_refresh(country=country)
                timings[country].append(time.perf_counter() - started)
                assert result.changes == DELTA and not result.percentiles_recomputed
        percentiles = {country: [] for country in sizes}
        percentiles_cpu = {country: [] for country in sizes}
        backend = backend_process()
        for _ in range(percentile_repeats):
            for country in sizes:
                started, cpu_started = time.perf_counter(), cpu_seconds(backend)
                result = country_metrics_refresh(country=country, force_percentiles=True)
                percentiles[country].append(time.perf_counter() - started)
                percentiles_cpu[country].append(cpu_seconds(backend) - cpu_started)
                assert result.percentiles_recomputed
        percentile_seconds = {country: median(values) for country, values in percentiles.items()}
        percentile_cpu = {country: round(median(values), 3) for country, values in percentiles_cpu.items()}
        small_t, large_t = median(timings["SML"]), median(timings["LRG"])
        report("metrics", {
            "what": f"refresh after {DELTA} new rows, median of {REPEATS}",
            "small_warehouse_students": small, "large_warehouse_students": large,
            "refresh_seconds_small": round(small_t, 4), "refresh_seconds_large": round(large_t, 4),
            "ratio_large_over_small": round(large_t / small_t, 3), "target_ratio": "< 1.5",
            "full_size_country_students": FULL_SIZE_COUNTRY,
            "percentiles_what": f"refresh with percentiles forced, median of {percentile_repeats}",
            "refresh_with_percentiles_seconds_small": round(percentile_seconds["SML"], 3),
            "refresh_with_percentiles_seconds_full_size": round(percentile_seconds["FUL"], 3),
            "refresh_with_percentiles_seconds_large": round(percentile_seconds["LRG"], 3),
            "percentiles_ratio_full_size_over_small": round(percentile_seconds["FUL"] / percentile_seconds["SML"], 2),
            "refresh_with_percentiles_cpu_seconds": {
                "what": "this process + its PostgreSQL backend" if backend else "this process (remote PostgreSQL)",
                "small": percentile_cpu["SML"], "full_size": percentile_cpu["FUL"], "large": percentile_cpu["LRG"]},
            "percentiles_target": "full size well under 1 s",
        }, quick=quick)


if __name__ == "__main__":
    main()
