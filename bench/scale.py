"""Full PISA size: 612,004 students (the size of the real PISA 2018 student file) over the 20 sources, each figure next
to the same figure at the seed size (20 x 2,000 students) measured in the same run.

    .venv/bin/python -m bench.scale [--quick] [--students 612004] [--seconds 60]

The rows are replicated. Generating 612,004 rows of 1,120 columns with the simulator's factory would take hours
(~3,000 rows/s on a free machine), so each source gets 2,000 realistic rows from the factory (--quick: 500 of
30,000), which SQL then multiplies inside the source database: INSERT ... SELECT of the seed rows again and again,
each copy re-keyed (CNTSTUID + copy x the seed's span, so keys stay unique within the country and keep its
five-digit serial) and given a later created_at, so that ids and created_at rise together over the last
SPREAD_DAYS days. Answers repeat every 2,000 students; sizes, row widths and every code path are those of real
data, the statistics are not.

At each size, from an empty warehouse:
1. backfill by real Celery ingest workers (bench/ingest.py's run_pipeline, its default of 2 processes): seconds,
   rows/s, peak RSS per worker process;
2. size on disk: pg_total_relation_size of ingestion_student, of the change log and of the 20 sources' tables,
   pg_database_size of the bench warehouse;
3. metrics: the first refresh of every country (folding the backfill's whole change log, percentiles included),
   then REPEATS times: 100 new rows in ALB's source, synced, and `country_metrics_refresh` timed (incremental:
   percentiles not due); then REPEATS refreshes with `force_percentiles=True` (which read every student of ALB);
4. with the Procfile's processes up (bench/stack.py): GET /api/v1/metrics/?countries=<all 20> from one keep-alive
   client, without If-None-Match (200) and with it (304): p50/p99;
5. freshness while the simulator adds 200 rows/s for --seconds (bench/stack.py's observer).
Between the two sizes the rows added at the seed size are deleted from the sources and the seeds replicated.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import math
import time
from collections import Counter

from bench.common import bench_environment, median, percentile, report
from bench.ingest import DEFAULT_WORKERS, provision, run_pipeline, student_factory
from bench.stack import COUNTRIES, SourceDatabases, Stack, say, warehouse_reset

PISA_2018_STUDENTS = 612_004
QUICK_STUDENTS = 30_000
SEED_ROWS_PER_SOURCE, QUICK_SEED_ROWS_PER_SOURCE = 2_000, 500
SPREAD_DAYS = 3
SERIAL_LIMIT = 10**5  # CNTSTUID is the country id followed by a five-digit serial (simulator/students.py)
DELTA_COUNTRY, DELTA_ROWS, REPEATS = "ALB", 100, 5
API_REQUESTS_200, API_REQUESTS_304 = 300, 1_000
SIMULATOR_RATE = 200.0


# --- the sources -----------------------------------------------------------------------------------------------

def students_per_source(total: int) -> dict[str, int]:
    base, extra = divmod(total, len(COUNTRIES))
    return {code: base + (1 if k < extra else 0) for k, code in enumerate(COUNTRIES)}


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def trim_to_seed(handles: dict, seed_rows: int) -> None:
    """Delete from each source what was added after its seed rows (ids 1..seed_rows): simulator rows, deltas."""
    for handle in handles.values():
        with handle.engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM responses WHERE id > %s", (seed_rows,))


def replicate(handles: dict, targets: dict[str, int], seed_rows: int) -> None:
    """Multiply each source's seed rows in SQL up to its target count (see the module's docstring)."""
    step_seconds = SPREAD_DAYS * 86_400 / max(targets.values())
    for code, handle in handles.items():
        copies = math.ceil(targets[code] / seed_rows)
        columns = [column.name for column in handle.table.columns if column.name != "id"]
        with handle.engine.begin() as connection:
            low, high = connection.exec_driver_sql("SELECT min(cntstuid), max(cntstuid) FROM responses").one()
            span = high - low + 1
            if high % SERIAL_LIMIT + (copies - 1) * span >= SERIAL_LIMIT:
                raise ValueError(f"{targets[code]:,} students do not fit {code}'s five-digit CNTSTUID serials")
            renamed = {
                "cntstuid": "seed.cntstuid + copy.k * %(span)s",
                # Later copies, later rows: created_at rises with the id, one step per student.
                "created_at": "seed.created_at + (copy.k * %(seed_rows)s + seed.rank) * %(step)s * interval '1 s'",
            }
            select = ", ".join(renamed.get(name, f"seed.{_quoted(name)}") for name in columns)
            connection.exec_driver_sql(
                f"INSERT INTO responses ({', '.join(map(_quoted, columns))}) "
                f"SELECT {select} FROM (SELECT *, row_number() OVER (ORDER BY id) - 1 AS rank FROM responses) seed "
                "CROSS JOIN generate_series(1, %(last_copy)s) AS copy(k) ORDER BY copy.k, seed.id LIMIT %(extra)s",
                {"span": span, "seed_rows": seed_rows, "step": step_seconds, "last_copy": max(copies - 1, 1),
                 "extra": targets[code] - seed_rows})
        with handle.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE responses")  # as a long-lived source would be
        say(f"  source {code}: {targets[code]:,} rows")


def add_delta(handle, factory, rows: int) -> None:
    """`rows` new realistic students in a source, with CNTSTUIDs after every one it holds."""
    from simulator.services import responses_insert

    with handle.engine.connect() as connection:
        newest = connection.exec_driver_sql("SELECT max(cntstuid) FROM responses").scalar()
    students = factory.students(handle.code, rows)
    for offset, student in enumerate(students, start=1):
        student["cntstuid"] = newest + offset
    responses_insert(engine=handle.engine, table=handle.table, rows=students)


# --- the figures at one size -----------------------------------------------------------------------------------

def sizes_on_disk(handles: dict) -> dict:
    from django.db import connection

    mb = 2**20
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_total_relation_size('ingestion_student'), "
                       "pg_total_relation_size('ingestion_studentchange'), pg_database_size(current_database()), "
                       "(SELECT count(*) FROM ingestion_student)")
        students_table, change_log, warehouse, students = cursor.fetchone()
    sources = 0
    for handle in handles.values():  # the tables alone: an empty database already takes ~8 MB of catalog
        with handle.engine.connect() as source:
            sources += source.exec_driver_sql("SELECT pg_total_relation_size('responses')").scalar()
    return {"warehouse_students_table_mb": round(students_table / mb),
            "warehouse_change_log_mb": round(change_log / mb),
            "warehouse_database_mb": round(warehouse / mb), "source_tables_mb": round(sources / mb),
            "warehouse_kb_per_student": round(students_table / students / 1024, 2)}


def metrics_timings(handles: dict, factory) -> dict:
    """The first refresh of every country, then ALB's incremental refreshes and refreshes with percentiles."""
    from django.utils import timezone

    from ingestion.models import Source
    from ingestion.pipeline import source_sync
    from metrics.models import CountryMetricsState
    from metrics.services import country_metrics_refresh

    started = time.perf_counter()
    for code in COUNTRIES:
        country_metrics_refresh(country=code)
    first_refresh = time.perf_counter() - started
    source = Source.objects.get(code=DELTA_COUNTRY)
    incremental = []
    for _ in range(REPEATS):
        add_delta(handles[DELTA_COUNTRY], factory, DELTA_ROWS)
        loaded = source_sync(source_id=source.pk).loaded
        if loaded != DELTA_ROWS:
            raise RuntimeError(f"the sync loaded {loaded} rows of the {DELTA_ROWS} added")
        CountryMetricsState.objects.filter(country=DELTA_COUNTRY).update(percentiles_at=timezone.now())
        started = time.perf_counter()
        result = country_metrics_refresh(country=DELTA_COUNTRY)
        incremental.append(time.perf_counter() - started)
        assert result.changes == DELTA_ROWS and not result.percentiles_recomputed, result
    with_percentiles = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        country_metrics_refresh(country=DELTA_COUNTRY, force_percentiles=True)
        with_percentiles.append(time.perf_counter() - started)
    return {"metrics_first_refresh_all_countries_s": round(first_refresh, 2),
            "metrics_incremental_refresh_ms": round(median(incremental) * 1000, 1),
            "metrics_refresh_with_percentiles_ms": round(median(with_percentiles) * 1000, 1),
            "metrics_refresh_with_percentiles_max_ms": round(max(with_percentiles) * 1000, 1)}


def api_latencies(port: int, *, etag: str | None, requests: int) -> tuple[list[float], Counter]:
    """Latencies (s) of sequential GETs of the 20-country metrics URL on one keep-alive connection, and statuses."""
    path = f"/api/v1/metrics/?countries={','.join(COUNTRIES)}"
    headers = {"If-None-Match": etag} if etag else {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies, statuses = [], Counter()
    for _ in range(requests):
        started = time.perf_counter()
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        statuses[response.status] += 1
    connection.close()
    return latencies, statuses


def api_figures(port: int, quick: bool) -> dict:
    scale = 0.3 if quick else 1.0
    figures = {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", f"/api/v1/metrics/?countries={','.join(COUNTRIES)}")
    response = connection.getresponse()
    body, etag = response.read(), response.headers["ETag"]
    connection.close()
    for status, etag_sent, requests in ((200, None, API_REQUESTS_200), (304, etag, API_REQUESTS_304)):
        latencies, statuses = api_latencies(port, etag=etag_sent, requests=int(requests * scale))
        figures[f"api_{status}_p50_ms"] = round(percentile(latencies, 0.5) * 1000, 2)
        figures[f"api_{status}_p99_ms"] = round(percentile(latencies, 0.99) * 1000, 2)
        if set(statuses) != {status}:  # the data moved under the test (it should not: no simulator yet)
            figures[f"api_{status}_statuses"] = dict(statuses)
    figures["api_body_kb"] = round(len(body) / 1024, 1)
    return figures


def measure_at_size(label: str, students: int, *, handles: dict, sources: SourceDatabases, factory, seconds: float,
                    quick: bool) -> dict:
    warehouse_reset()
    say(f"{label}: backfill of {students:,} students by {DEFAULT_WORKERS} worker processes...")
    backfill_seconds, peaks = run_pipeline(students, DEFAULT_WORKERS)
    figures = {"students": students, "backfill_s": round(backfill_seconds, 1),
               "backfill_rows_per_second": round(students / backfill_seconds),
               "peak_worker_rss_mb": round(max(peaks.values()), 1) if peaks else None,
               **sizes_on_disk(handles)}
    say(f"{label}: {figures['backfill_rows_per_second']} rows/s; metrics refreshes...")
    figures.update(metrics_timings(handles, factory))
    with Stack(f"scale-{label}") as stack:
        stack.wait_until_settled()
        say(f"{label}: API latency...")
        figures.update(api_figures(stack.port, quick))
        say(f"{label}: freshness, simulator at {SIMULATOR_RATE:g} rows/s for {seconds:g}s...")
        freshness = stack.freshness(sources, rate=SIMULATOR_RATE, seconds=seconds, seed=8)
    figures.update({f"freshness_{name}": value for name, value in freshness.items()})
    return figures


def side_by_side(full: dict, seed: dict) -> dict:
    """Each figure at full size, the same at the seed size, and their ratio when both are numbers."""
    figures = {}
    for name, value in full.items():
        figures[name] = value
        figures[f"{name}_seed_size"] = seed.get(name)
        if isinstance(value, (int, float)) and isinstance(seed.get(name), (int, float)) and seed[name]:
            figures[f"ratio_{name}"] = round(value / seed[name], 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_STUDENTS:,} students from {QUICK_SEED_ROWS_PER_SOURCE} seeds per source, "
                             "phases of 15 s")
    parser.add_argument("--students", type=int, help=f"default {PISA_2018_STUDENTS:,} (--quick: {QUICK_STUDENTS:,})")
    parser.add_argument("--seconds", type=float, help="the freshness phase's simulator run (default 60, quick 15)")
    args = parser.parse_args()
    students = args.students or (QUICK_STUDENTS if args.quick else PISA_2018_STUDENTS)
    seed_rows = QUICK_SEED_ROWS_PER_SOURCE if args.quick else SEED_ROWS_PER_SOURCE
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    targets = students_per_source(students)
    if min(targets.values()) < seed_rows:
        parser.error(f"--students must be at least {seed_rows * len(COUNTRIES):,}")
    started = time.perf_counter()
    with bench_environment(), SourceDatabases("pisa_scale_src_") as sources:
        from django.utils import timezone

        spread_start = timezone.now() - dt.timedelta(days=SPREAD_DAYS)
        say(f"provisioning {len(COUNTRIES)} sources of {seed_rows:,} seed rows...")
        handles = provision(seed_rows, url_template=sources.template, created_at=spread_start)
        factory = student_factory(seed=9)
        seed = measure_at_size("seed-size", seed_rows * len(COUNTRIES), handles=handles, sources=sources,
                               factory=factory, seconds=seconds, quick=args.quick)
        say(f"replicating the seeds up to {students:,} students...")
        replicate_started = time.perf_counter()
        trim_to_seed(handles, seed_rows)
        replicate(handles, targets, seed_rows)
        replicate_seconds = time.perf_counter() - replicate_started
        full = measure_at_size("full-size", students, handles=handles, sources=sources, factory=factory,
                               seconds=seconds, quick=args.quick)
        for handle in handles.values():
            handle.dispose()
    report("scale", {
        "what": f"{students:,} students over {len(COUNTRIES)} sources (rows replicated in SQL from "
                f"{seed_rows:,} factory rows per source), next to the seed size ({seed_rows * len(COUNTRIES):,}); "
                f"backfill by {DEFAULT_WORKERS} worker processes; freshness with the simulator at "
                f"{SIMULATOR_RATE:g} rows/s for {seconds:g}s on top",
        **side_by_side(full, seed),
        "replication_s": round(replicate_seconds, 1),
        "whole_run_minutes": round((time.perf_counter() - started) / 60, 1),
    }, quick=args.quick)


if __name__ == "__main__":
    main()
