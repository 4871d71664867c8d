"""Open analyses (issue 16): the first answer, the refresh cost of registered analyses, and the API's throughput.

    .venv/bin/python -m bench.analysis [--quick]

20 countries of made-up students (bench/metrics.py's rows, with a raw line holding IMMIG, ST004D01T, OECD and ESCS
at their codebook positions, ~3.4 KB like a real one), at the seed size (20 x 2,000) and at the full size of
bench.scale (612,004; --quick: 20 x 500 and 20 x 3,000). Measured, in this order:

1. first answer of "mean READ by IMMIG x ST004D01T, 20 countries", at each size, two ways:
   - through the product: the Procfile's analysis worker (ANALYSIS_CONCURRENCY processes) running, the seconds from
     the GET that queues the 20 parts (202) to the first GET that answers 200, asked every POLL_SECONDS;
   - in one process: the 20 parts computed one after the other, as one analysis process computes them (each reads
     its country's students once), then the GET that answers 200;
2. the metrics refresh of one country after 100 new rows with 50 registered analyses of it next to the same refresh
   of a country of the same size with none, interleaved, REPEATS times, medians: the cost per analysis
   (target < 5 ms);
3. GET /api/v1/analyses/ (the analysis of 1., 200 and 304) next to GET /api/v1/metrics/ (the 20 countries) from
   bench.api's client processes against gunicorn, interleaved slices (target: at least 0.8 of the metrics URL).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import psutil

from bench.api import COUNTRIES, WEB_THREADS, WEB_WORKERS, requests_per_second
from bench.common import ROOT, bench_environment, median, report
from bench.metrics import copy_text, made_up_rows

SEED_PER_COUNTRY, QUICK_SEED_PER_COUNTRY = 2_000, 500
FULL_SIZE, QUICK_FULL_PER_COUNTRY = 612_004, 3_000
QUERY = "statistic=mean&target=READ&by=IMMIG,ST004D01T"
REGISTERED, DELTA, REPEATS = 50, 100, 7
SLICE_SECONDS, ROUNDS = 3, 6
POLL_SECONDS = 0.05  # how often the product-path measurement asks again (a browser waits Retry-After: 1 s)
WORKER_READY_TIMEOUT_SECONDS = 60
PRODUCT_REPEATS = 5
WARM_UP_QUERY = "statistic=mean&target=MATH&by=ST004D01T"  # another analysis: each worker process has run a part
ANALYSIS_PROCESSES = os.environ.get("ANALYSIS_CONCURRENCY", "2")  # the Procfile's default


def _copy(table: str, fields: str, lines: list[str]) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.cursor.copy_expert(f"COPY {table} ({fields}) FROM STDIN", io.StringIO("\n".join(lines) + "\n"))


def _raw_lines(n: int, rng, analysis: np.ndarray) -> list[str]:
    """Raw lines in codebook order, every field NULL but the few the analyses read, COPY-escaped."""
    from ingestion.layout import ANALYSIS_COLUMNS, pisa_variables

    names = [variable.name for variable in pisa_variables()]
    template = ["\\N"] * len(names)
    at = {name: names.index(name) for name in ("IMMIG", "ST004D01T", "OECD", "ESCS")}
    gender, escs = ANALYSIS_COLUMNS.index("st004d01t"), ANALYSIS_COLUMNS.index("escs")
    immig = np.nan_to_num(analysis[:, ANALYSIS_COLUMNS.index("immig")], nan=9).astype(int)  # 9: no response
    lines = []
    for k in range(n):
        fields = template.copy()
        fields[at["IMMIG"]], fields[at["OECD"]] = str(immig[k]), "1"
        fields[at["ST004D01T"]], fields[at["ESCS"]] = repr(analysis[k, gender]), repr(analysis[k, escs])
        lines.append("\t".join(fields).replace("\\", "\\\\").replace("\t", "\\t"))
    return lines


def students_add(source, country: str, n: int, rng, first_id: int, *, log_changes: bool) -> None:
    """n students in the warehouse (and, with log_changes, their +1 rows in the change log, as a load writes)."""
    from ingestion.layout import ANALYSIS_COLUMNS

    ids, schools, analysis = made_up_rows(n, rng, first_id, country)
    raws = _raw_lines(n, rng, analysis)
    values = [copy_text(row) for row in analysis.tolist()]
    common = [f"{country}\t{school}\t2026-11-25 00:00:{i % 60:02d}+00" for i, school in zip(range(n), schools)]
    columns = ", ".join(ANALYSIS_COLUMNS)
    _copy("ingestion_student", f"source_id, cntstuid, source_row_id, raw, raw_md5, loaded_at, country, cntschid, "
                               f"source_created_at, {columns}",
          [f"{source.pk}\t{i}\t{i}\t{r}\tbench\t2026-11-25 00:00:00+00\t{c}\t{v}"
           for i, r, c, v in zip(ids, raws, common, values)])
    if log_changes:
        _copy("ingestion_studentchange", f"sign, recorded_at, country, cntschid, source_created_at, {columns}, raw",
              [f"1\t2026-11-25 00:00:00+00\t{c}\t{v}\t{r}" for c, v, r in zip(common, values, raws)])


def warehouse_grow(sources: dict, per_country: dict[str, int], rng, next_id: int) -> int:
    from metrics.services import country_metrics_rebuild

    for country, n in per_country.items():
        for start in range(0, n, 5_000):
            count = min(5_000, n - start)
            students_add(sources[country], country, count, rng, next_id, log_changes=False)
            next_id += count
        country_metrics_rebuild(country=country)
    return next_id


def warehouse_vacuum() -> None:
    """What autovacuum does to the students within a minute of a bulk load (its insert threshold): hint bits and the
    visibility map set, statistics current. Measured right after the load instead, the first reads of each page pay
    for that (first answer 2.2-2.3 s rather than 1.6-2.0 s on 2026-12-07), which no steady warehouse does."""
    from django.db import connection

    from ingestion.models import Student

    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {Student._meta.db_table}")


def read_plan(country: str) -> dict:
    """How PostgreSQL reads a country's packed values for an analysis (the fast path of metrics/analysis/data.py):
    the scan and index it takes, and how many rows it had to fetch from the heap (0 when the index covers them)."""
    from django.db import connection

    from ingestion.models import Student

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT analysis_packed FROM {Student._meta.db_table} "
                       "WHERE country = %s", [country])
        [[plan]] = cursor.fetchone()  # psycopg2 decodes the json
    node = plan["Plan"]
    return {"scan": node["Node Type"], "index": node.get("Index Name"), "heap_fetches": node.get("Heap Fetches"),
            "rows": node["Actual Rows"]}


def analyses_forget() -> None:
    """Every analysis forgotten: its entries in Redis, and the answers this process remembers."""
    from metrics import cache
    from pisa_site.cache import redis_client

    cache.versions_forget()

    client = redis_client()
    names = list(client.scan_iter("pisa:metrics:analys*"))
    if names:
        client.delete(*names)


def first_answer_seconds(client) -> tuple[float, float, float]:
    """(seconds to the first 200, of which computing the 20 parts, the answering GET)."""
    from metrics import selectors
    from metrics.services import country_analysis_refresh

    analyses_forget()
    url = f"/api/v1/analyses/?{QUERY}&countries={','.join(COUNTRIES)}"
    spec = selectors.analysis_parse(_query(f"{QUERY}&countries={','.join(COUNTRIES)}"))
    started = time.perf_counter()
    for country in COUNTRIES:  # what the analysis worker does for each country of a 202
        country_analysis_refresh(spec=spec, country=country)
    computed = time.perf_counter()
    response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    done = time.perf_counter()
    return done - started, computed - started, done - computed


def first_answer_through_workers(client, *, query: str = QUERY) -> float:
    """Seconds from the GET that queues an analysis's parts on the analysis worker (a 202) to the first GET that
    answers 200."""
    analyses_forget()
    url = f"/api/v1/analyses/?{query}&countries={','.join(COUNTRIES)}"
    started = time.perf_counter()
    response = client.get(url)
    while response.status_code == 202:
        time.sleep(POLL_SECONDS)
        response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    return time.perf_counter() - started


@contextlib.contextmanager
def analysis_worker():
    """The Procfile's analysis worker on the bench warehouse, once it answers a ping."""
    from bench.stack import Processes, child_environment, procfile_commands
    from pisa_site.celery import app

    with Processes(ROOT / "bench" / "analysis.log") as processes:
        processes.start(["bash", "-c", f"exec {procfile_commands()['analysis']}"], env=child_environment())
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_SECONDS
        while not any(name.startswith("analysis@") for reply in app.control.ping(timeout=1.0) for name in reply):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the analysis worker did not answer; see {processes.log_path}")
        yield


def _query(text: str):
    from django.http import QueryDict

    return QueryDict(text)


def registered_specs(n: int):
    """n different analysis parts, all foldable."""
    from metrics.analysis.request import AnalysisSpec, Breakdown

    statistics = [("mean", "READ"), ("mean", "MATH"), ("sd", "SCIE"), ("levels", "READ"), ("levels", "MATH"),
                  ("percent", "IMMIG"), ("mean", "ESCS"), ("sd", "READ"), ("levels", "SCIE"), ("mean", "SCIE")]
    breakdowns = [(), (Breakdown("ST004D01T"),), (Breakdown("IMMIG"),), (Breakdown("IMMIG"), Breakdown("ST004D01T")),
                  (Breakdown("ST004D01T"), Breakdown("IMMIG"))]
    specs = [AnalysisSpec(statistic, target, by, (), ()) for (statistic, target), by
             in itertools.product(statistics, breakdowns)]
    specs += [AnalysisSpec("slope", "READ", (), (), (), predictor="ESCS")]
    return specs[:n]


def refresh_cost(sources: dict, rng, next_id: int) -> tuple[dict, int]:
    from metrics import cache
    from metrics.models import CountryMetricsState
    from metrics.services import country_analysis_refresh, country_metrics_refresh
    from pisa_site.cache import redis_client
    from django.utils import timezone

    country, other = COUNTRIES[0], COUNTRIES[1]  # the same size: one with the analyses registered, one without
    analyses_forget()
    for spec in registered_specs(REGISTERED):
        country_analysis_refresh(spec=spec, country=country)
    assert redis_client().zcard(cache.ANALYSES_REGISTERED) == REGISTERED
    timings: dict[str, list[float]] = {other: [], country: []}
    for k in range(REPEATS):
        for code in ((other, country) if k % 2 == 0 else (country, other)):
            students_add(sources[code], code, DELTA, rng, next_id, log_changes=True)
            next_id += DELTA
            CountryMetricsState.objects.filter(country=code).update(percentiles_at=timezone.now())
            started = time.perf_counter()
            result = country_metrics_refresh(country=code)
            timings[code].append(time.perf_counter() - started)
            assert result.changes == DELTA and not result.percentiles_recomputed
    # Every registered part was folded by the refreshes (none computed again).
    last = CountryMetricsState.objects.get(country=country).last_change_id
    entries = {spec: cache.analysis_entries(spec.part_key, [country]).get(country)
               for spec in registered_specs(REGISTERED)}
    behind = [spec for spec, entry in entries.items() if entry is None or entry["change_id"] != last]
    assert not behind, f"not folded: {behind}"
    none, registered = median(timings[other]), median(timings[country])
    return {"refresh_seconds_none_registered": round(none, 4),
            f"refresh_seconds_{REGISTERED}_registered": round(registered, 4),
            "ms_per_registered_analysis": round((registered - none) / REGISTERED * 1000, 3),
            "target_ms_per_registered_analysis": "< 5"}, next_id


def throughput() -> dict:
    from pisa_site.embedded import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "bench.wsgi:without_edge", "--bind", f"127.0.0.1:{port}", "--workers",
         str(WEB_WORKERS), "--threads", str(WEB_THREADS), "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    paths = {"metrics": f"/api/v1/metrics/?countries={','.join(COUNTRIES)}",
             "analyses": f"/api/v1/analyses/?{QUERY}&countries={','.join(COUNTRIES)}"}
    try:
        etags, sizes = {}, {}
        for name, path in paths.items():
            for _ in range(100):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as response:
                        assert response.status == 200, (path, response.status)
                        etags[name], sizes[name] = response.headers["ETag"], len(response.read())
                    break
                except OSError:
                    time.sleep(0.2)
        cases = {"metrics_200": (paths["metrics"], {}), "analyses_200": (paths["analyses"], {}),
                 "metrics_304": (paths["metrics"], {"If-None-Match": etags["metrics"]}),
                 "analyses_304": (paths["analyses"], {"If-None-Match": etags["analyses"]})}
        workers = psutil.Process(server.pid).children()
        for path, headers in cases.values():
            requests_per_second(port, path, headers, 0.5)
        runs: dict[str, list] = {name: [] for name in cases}
        names = list(cases)  # each analyses slice right after (or before) its metrics slice
        for k in range(ROUNDS):
            for name in (names if k % 2 == 0 else names[::-1]):
                path, headers = cases[name]
                runs[name].append(requests_per_second(port, path, headers, SLICE_SECONDS, workers))
    finally:
        server.terminate()
        server.wait()
    rps = {name: [r[0] for r in values] for name, values in runs.items()}

    def ratio(kind: str) -> float:
        return round(median([a / b for a, b in zip(rps[f"analyses_{kind}"], rps[f"metrics_{kind}"])]), 3)

    return {"body_bytes": sizes, **{f"{name}_rps": round(median(values)) for name, values in rps.items()},
            "ratio_analyses_over_metrics_200": ratio("200"), "ratio_analyses_over_metrics_304": ratio("304"),
            "errors": sum(r[2] for values in runs.values() for r in values), "target_ratio": ">= 0.8"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    seed = QUICK_SEED_PER_COUNTRY if quick else SEED_PER_COUNTRY
    full_total = QUICK_FULL_PER_COUNTRY * len(COUNTRIES) if quick else FULL_SIZE
    with bench_environment():
        from django.test import Client

        from ingestion.models import Source

        rng = np.random.default_rng(16)
        sources = {country: Source.objects.create(code=country, name=country, url="postgresql+psycopg2://bench@/none")
                   for country in COUNTRIES}
        client = Client(HTTP_HOST="127.0.0.1")
        print(f"seed size: {seed * len(COUNTRIES):,} students...", flush=True)
        next_id = warehouse_grow(sources, {country: seed for country in COUNTRIES}, rng, 1)
        seed_first = first_answer_seconds(client)
        with analysis_worker():
            first_answer_through_workers(client, query=WARM_UP_QUERY)
            seed_product = [first_answer_through_workers(client) for _ in range(PRODUCT_REPEATS)]
        print("refresh with registered analyses...", flush=True)
        refresh, next_id = refresh_cost(sources, rng, next_id)
        print("throughput...", flush=True)
        first_answer_seconds(client)  # the analysis of the throughput cases, computed
        api = throughput()
        base, extra = divmod(full_total, len(COUNTRIES))
        students = {c: base + (1 if k < extra else 0) for k, c in enumerate(COUNTRIES)}
        from ingestion.models import Student

        have = Student.objects.count()
        grown = {c: n - seed - (REPEATS * DELTA if c in COUNTRIES[:2] else 0) for c, n in students.items()}
        print(f"full size: {full_total:,} students ({have:,} there)...", flush=True)
        warehouse_grow(sources, grown, rng, next_id)
        warehouse_vacuum()
        total = Student.objects.count()
        plan = read_plan(COUNTRIES[0])
        full_first = first_answer_seconds(client)
        with analysis_worker():
            first_answer_through_workers(client, query=WARM_UP_QUERY)
            full_product = [first_answer_through_workers(client) for _ in range(PRODUCT_REPEATS)]
        report("analysis", {
            "what": f"open analyses: '{QUERY}', 20 countries",
            "seed_students": seed * len(COUNTRIES), "full_students": total,
            "first_answer_seconds_seed": round(median(seed_product), 3),
            "first_answer_seconds_full": round(median(full_product), 3),
            "first_answer_what": f"through the product: the Procfile's analysis worker ({ANALYSIS_PROCESSES} "
                                 f"processes), GET 202 to the first GET 200 asked every {POLL_SECONDS}s, medians of "
                                 f"{PRODUCT_REPEATS}",
            "first_answer_runs_full": [round(seconds, 3) for seconds in full_product],
            "first_answer_max_full": round(max(full_product), 3),
            "one_process_first_answer_seconds_seed": round(seed_first[0], 3),
            "one_process_first_answer_seconds_full": round(full_first[0], 3),
            "one_process_split_full": {"parts_computed_s": round(full_first[1], 3),
                                       "answering_get_s": round(full_first[2], 4)},
            "target_first_answer_full": "< 2 s",
            "read_plan_full": plan,
            "refresh_what": f"metrics refresh after {DELTA} new rows of {COUNTRIES[0]} ({REGISTERED} analyses "
                            f"registered) and of {COUNTRIES[1]} (none), interleaved, medians of {REPEATS}",
            **refresh,
            "api_what": f"GET /api/v1/analyses/ next to /api/v1/metrics/ (20 countries), gunicorn "
                        f"{WEB_WORKERS}x{WEB_THREADS}, medians of {ROUNDS} interleaved rounds of {SLICE_SECONDS}s",
            **api,
        }, quick=quick)


if __name__ == "__main__":
    main()
