"""Freshness: the delay from a row's commit in its source to its presence in the warehouse and in the API's count,
with the simulator adding 200 rows/s over 20 sources and the real processes of `make run` doing the work.

    .venv/bin/python -m bench.freshness [--quick] [--rate 200] [--seconds 60]

Processes: `manage.py simulate` (its sources in databases of their own), a Celery worker per queue as in the Procfile,
Celery beat and gunicorn. An observer polls every 50 ms: new warehouse rows (delay = seen - the source row's
created_at, which the source sets at commit-time-ish now()) and GET /api/v1/countries/ (a row counts as served once
its country's n_students reaches the row's rank in that country). Reported: p50 and p99 of both, over every row
the simulator added. Targets: p50 under 1 s, p99 under 2 s. The observer's 50 ms period bounds the bias. Also
reported, to tell waiting from working: the delay to the start of the transaction that loaded each row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict

from bench.common import ROOT, bench_environment, report

COUNTRIES = "ALB ARG AUS AUT BEL BGR BIH BLR BRA BRN CAN CHE CHL COL CRI CZE DEU DNK DOM ESP".split()
OBSERVE_EVERY_SECONDS = 0.05
DRAIN_SECONDS = 10


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start(args: list[str], env: dict, log) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="15 s instead of 60")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args()
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    with bench_environment():
        from django.conf import settings
        from django.db import connection

        from pisa_site.embedded import _free_port
        from simulator.schema import server_url_of, source_database_drop, url_template_on

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        server = server_url_of(settings.DATABASE_URL)
        for code in COUNTRIES:  # fresh sources for every run
            source_database_drop(server_url=server.render_as_string(hide_password=False),
                                 database=f"pisa_fresh_src_{code.lower()}")
        template = url_template_on(server, database="pisa_fresh_src_{code}")
        port = _free_port()
        log = open(ROOT / "bench" / "freshness.log", "wb")
        python = sys.executable
        print("seeding the sources...", flush=True)
        subprocess.run([python, "manage.py", "simulate", "--url-template", template, "--countries", ",".join(COUNTRIES),
                        "--seed-rows", "200", "--max-rows", "0", "--seed", "7"], cwd=ROOT, env=env, check=True,
                       stdout=log, stderr=subprocess.STDOUT)
        processes = [
            start([python, "-m", "celery", "-A", "pisa_site", "worker", "--queues", "ingestion", "--hostname",
                   "fresh-ingest@%h", "--concurrency", "4", "--loglevel", "WARNING"], env, log),
            start([python, "-m", "celery", "-A", "pisa_site", "worker", "--queues", "metrics", "--hostname",
                   "fresh-metrics@%h", "--concurrency", "2", "--loglevel", "WARNING"], env, log),
            start([python, "-m", "celery", "-A", "pisa_site", "beat", "--loglevel", "WARNING", "--schedule",
                   str(ROOT / "bench" / ".freshness-beat-schedule")], env, log),
            start([python, "-m", "gunicorn", "pisa_site.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                   "--threads", "8", "--log-level", "warning"], env, log),
        ]
        simulator = None
        try:
            with connection.cursor() as cursor:
                deadline = time.monotonic() + 120
                seeded = 0
                while time.monotonic() < deadline:
                    cursor.execute("SELECT count(*) FROM ingestion_student")
                    seeded = cursor.fetchone()[0]
                    if seeded >= 200:
                        break
                    time.sleep(0.5)
                print(f"{seeded} seed rows loaded; simulating {args.rate:g} rows/s for {seconds:g}s...", flush=True)
                cursor.execute("SELECT coalesce(max(id), 0) FROM ingestion_student")
                last_id = cursor.fetchone()[0]
                cursor.execute("SELECT country, count(*) FROM ingestion_student GROUP BY country")
                base_count = dict(cursor.fetchall())
                started_at = time.time()
                simulator = start([python, "manage.py", "simulate", "--url-template", template, "--countries",
                                   ",".join(COUNTRIES), "--seed-rows", "0", "--rate", str(args.rate), "--duration",
                                   str(seconds), "--seed", "8"], env, log)
                warehouse_delays: list[float] = []
                load_start_delays: list[float] = []  # created_at to the start of the transaction that loaded it
                rows_by_country: dict[str, list[float]] = defaultdict(list)  # created_at epoch of each new row
                served: dict[str, int] = dict(base_count)
                api_delays: list[float] = []
                end = time.monotonic() + seconds + DRAIN_SECONDS
                while time.monotonic() < end:
                    now = time.time()
                    cursor.execute("SELECT id, country, extract(epoch from source_created_at), "
                                   "extract(epoch from loaded_at) FROM ingestion_student WHERE id > %s ORDER BY id",
                                   [last_id])
                    for row_id, country, created, loaded in cursor.fetchall():
                        last_id = row_id
                        if created >= started_at:
                            warehouse_delays.append(now - float(created))
                            load_start_delays.append(float(loaded) - float(created))
                            rows_by_country[country].append(float(created))
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/countries/", timeout=2) as response:
                        countries = json.load(response)["results"]
                    now = time.time()
                    for item in countries:
                        code, count = item["code"], item["n_students"]
                        new_rows = sorted(rows_by_country[code])
                        already = served.get(code, base_count.get(code, 0)) - base_count.get(code, 0)
                        reached = min(count - base_count.get(code, 0), len(new_rows))
                        for created in new_rows[max(already, 0):max(reached, 0)]:
                            api_delays.append(now - created)
                        served[code] = max(served.get(code, 0), base_count.get(code, 0) + max(reached, 0))
                    time.sleep(OBSERVE_EVERY_SECONDS)
        finally:
            for process in [*processes, *([simulator] if simulator else [])]:
                if process.poll() is None:
                    os.killpg(process.pid, 15)
            for process in processes:
                process.wait(30)
            log.close()
        report("freshness", {
            "what": f"simulator at {args.rate:g} rows/s over {len(COUNTRIES)} sources for {seconds:g}s; "
                    "delay from the source row's created_at to its presence",
            "rows_observed": len(warehouse_delays),
            "warehouse_p50_s": round(percentile(warehouse_delays, 0.5) or -1, 3),
            "warehouse_p99_s": round(percentile(warehouse_delays, 0.99) or -1, 3),
            "load_started_p50_s": round(percentile(load_start_delays, 0.5) or -1, 3),
            "load_started_p99_s": round(percentile(load_start_delays, 0.99) or -1, 3),
            "api_rows_observed": len(api_delays),
            "api_p50_s": round(percentile(api_delays, 0.5) or -1, 3),
            "api_p99_s": round(percentile(api_delays, 0.99) or -1, 3),
            "targets": "p50 < 1 s, p99 < 2 s",
        }, quick=args.quick)


if __name__ == "__main__":
    main()
