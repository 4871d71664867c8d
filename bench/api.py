"""Requests per second of GET /api/v1/metrics/ (200 and 304) next to a minimal Django view returning constant bytes,
served by the same gunicorn with the same settings, in the same run.

    .venv/bin/python -m bench.api [--quick]

20 countries with published metrics; the metrics URL asks for all of them. Load comes from client processes on this
machine with persistent connections (so the machine's 2 cores are shared by server and clients alike, for both
figures). Targets: a 304 at least 0.8 of the constant view; a 200 at least 0.8 of a constant view sending as many bytes.

The machine is shared, so its load drifts while the bench runs: after a warm-up of every case, the cases are measured
in short slices, each view right after (or before) its baseline, the order reversed every other round (A B B' A'
then A' B' B A), and each ratio is taken between the two adjacent slices of a round; the figures reported are medians
over the rounds. Beside requests/s, the gunicorn workers' CPU time per request (from /proc, during each slice) and its
ratio, which the other work on the machine disturbs less.

Both views sit behind the same middleware. The baselines are outside CORS_URLS_REGEX (/api/), so they skip the CORS
middleware's work (reading the request headers, adding `Vary: Origin`) that the metrics URL does; that cost is
counted against the metrics view. bench/urls.py splices the project's URL patterns (no include level the production
URLconf does not have) after the two baselines.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import psutil

from bench.common import ROOT, bench_environment, median, report
from bench.metrics import add_students

COUNTRIES = "ALB ARG AUS AUT BEL BGR BIH BLR BRA BRN CAN CHE CHL COL CRI CZE DEU DNK DOM ESP".split()
CLIENTS = 4
WEB_WORKERS, WEB_THREADS = 2, 8


def _hammer(port: int, path: str, headers: dict, seconds: float, out) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port)
    count, errors, latencies = 0, 0, []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        if response.status not in (200, 304):
            errors += 1
        count += 1
    out.put((count, errors, latencies))


def _cpu_seconds(processes) -> float:
    return sum(sum(process.cpu_times()[:2]) for process in processes)


def requests_per_second(port: int, path: str, headers: dict, seconds: float,
                        workers=()) -> tuple[float, float, int, float]:
    """(requests/s, median latency in ms, errors, server CPU microseconds per request)."""
    queue = multiprocessing.Queue()
    clients = [multiprocessing.Process(target=_hammer, args=(port, path, headers, seconds, queue))
               for _ in range(CLIENTS)]
    cpu_before = _cpu_seconds(workers)
    for client in clients:
        client.start()
    results = [queue.get() for _ in clients]
    cpu = _cpu_seconds(workers) - cpu_before
    for client in clients:
        client.join()
    latencies = sorted(x for r in results for x in r[2])
    count = sum(r[0] for r in results)
    return count / seconds, latencies[len(latencies) // 2] * 1000, sum(r[1] for r in results), cpu / count * 1e6


def metrics_body_size(students: int) -> int:
    """The size of the 20-country metrics body, measured in this process before the server starts."""
    from django.test import Client

    response = Client(HTTP_HOST="127.0.0.1").get(f"/api/v1/metrics/?countries={','.join(COUNTRIES)}")
    return len(response.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    seconds, rounds, students = (1.5, 4, 200) if quick else (3, 10, 2_000)
    with bench_environment():
        from pisa_site.embedded import free_port
        from ingestion.models import Source
        from metrics.services import country_metrics_rebuild

        rng = np.random.default_rng(7)
        for k, country in enumerate(COUNTRIES):
            source = Source.objects.create(code=country, name=country, url="postgresql+psycopg2://bench@/none")
            add_students(source, country, students, rng, 1 + k * students, log_changes=False)
            country_metrics_rebuild(country=country)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "bench.wsgi:without_edge", "--bind", f"127.0.0.1:{port}", "--workers",
             str(WEB_WORKERS), "--threads", str(WEB_THREADS), "--log-level", "warning"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT),
                           "BENCH_CONSTANT_LARGE_BYTES": str(metrics_body_size(students))})
        try:
            metrics_path = f"/api/v1/metrics/?countries={','.join(COUNTRIES)}"
            for _ in range(100):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{metrics_path}") as response:
                        etag, size = response.headers["ETag"], len(response.read())
                    break
                except OSError:
                    time.sleep(0.2)
            gzip_request = urllib.request.Request(f"http://127.0.0.1:{port}{metrics_path}",
                                                  headers={"Accept-Encoding": "gzip"})
            with urllib.request.urlopen(gzip_request) as response:
                gzip_size = len(response.read())  # urllib does not decode: the bytes sent
            cases = {"constant": ("/bench/constant/", {}), "metrics_304": (metrics_path, {"If-None-Match": etag}),
                     "constant_large": ("/bench/constant-large/", {}), "metrics_200": (metrics_path, {}),
                     "metrics_200_gzip": (metrics_path, {"Accept-Encoding": "gzip"})}
            workers = psutil.Process(server.pid).children()
            for path, headers in cases.values():  # warm-up: first requests, imports, views built
                requests_per_second(port, path, headers, 0.5)
            figures = {name: [] for name in cases}
            names = list(cases)  # baseline, view, baseline, view: each ratio's two slices are adjacent
            for k in range(rounds):
                for name in (names if k % 2 == 0 else names[::-1]):
                    path, headers = cases[name]
                    figures[name].append(requests_per_second(port, path, headers, seconds, workers))
        finally:
            server.terminate()
            server.wait()
        rps = {name: [r[0] for r in runs] for name, runs in figures.items()}
        best = {name: median(values) for name, values in rps.items()}
        p50 = {name: median([r[1] for r in runs]) for name, runs in figures.items()}
        cpu = {name: [r[3] for r in runs] for name, runs in figures.items()}
        errors = sum(r[2] for runs in figures.values() for r in runs)

        def ratio(name: str, baseline: str) -> float:
            return round(median([a / b for a, b in zip(rps[name], rps[baseline])]), 3)

        def cpu_ratio(baseline: str, name: str) -> float:
            return round(median([b / a for a, b in zip(cpu[name], cpu[baseline])]), 3)

        report("api", {
            "what": f"requests/s, {CLIENTS} client processes with keep-alive, gunicorn {WEB_WORKERS}x{WEB_THREADS}, "
                    f"medians of {rounds} interleaved rounds of {seconds}s per case, 20 countries",
            "metrics_body_bytes": size, "metrics_body_bytes_gzip": gzip_size,
            "constant_view_rps": round(best["constant"]), "constant_same_size_rps": round(best["constant_large"]),
            "metrics_200_rps": round(best["metrics_200"]), "metrics_304_rps": round(best["metrics_304"]),
            "ratio_304_over_constant": ratio("metrics_304", "constant"),
            "ratio_200_over_constant_same_size": ratio("metrics_200", "constant_large"),
            "ratio_200_over_constant": ratio("metrics_200", "constant"),
            "metrics_200_gzip_rps": round(best["metrics_200_gzip"]),
            "ratio_200_gzip_over_200": ratio("metrics_200_gzip", "metrics_200"),
            "ratio_304_per_round": [round(a / b, 3) for a, b in zip(rps["metrics_304"], rps["constant"])],
            "ratio_200_per_round": [round(a / b, 3) for a, b in zip(rps["metrics_200"], rps["constant_large"])],
            "p50_ms": {name: round(value, 2) for name, value in p50.items()},
            # Less disturbed by the machine's other work than requests/s: the gunicorn workers' CPU time per request.
            "server_cpu_us_per_request": {name: round(median(values)) for name, values in cpu.items()},
            "cpu_ratio_constant_over_304": cpu_ratio("constant", "metrics_304"),
            "cpu_ratio_same_size_over_200": cpu_ratio("constant_large", "metrics_200"),
            "errors": errors, "target_ratio": ">= 0.8",
        }, quick=quick)


if __name__ == "__main__":
    main()
