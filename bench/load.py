"""500 dashboards: the API's latency, error rate and request rate with 500 dashboards polling it every second while the
simulator adds 200 rows/s over 20 sources, and freshness meanwhile next to freshness without them, in the same run.

    .venv/bin/python -m bench.load [--quick] [--dashboards 500] [--rate 200] [--seconds 60] [--metrics-only]

The stack is the Procfile's (bench/stack.py): gunicorn with WEB_WORKERS x WEB_THREADS (2 x 8 unless set), ingest and
metrics workers, beat. Two phases, each a simulator run of `--seconds` (same seed, so the same bursts) observed by
the freshness observer:

1. baseline: 5 dashboards only (a negligible 5 requests/s; they give the unloaded latency);
2. loaded: 500 dashboards.

A simulated dashboard does what dashboard/static/dashboard/dashboard.js does: one tick a second, counted from the
start of the previous one (a slow answer does not stretch the period); each tick awaits
GET /api/v1/metrics/?countries=<2 to 5 of the 20> with If-None-Match (the ETag of its last 200), and alongside,
not awaited and never two at once, GET /api/v1/sources/ (the pipeline panel, with its own If-None-Match); every
10 s GET /api/v1/countries/ (the country selector). Requests time out after 2.5 s, as there; every URL keeps its
keep-alive HTTP/1.1 connection, as a browser would. `--metrics-only` leaves out the sources panel and the selector. The dashboards start spread over
the first second and run in a few client processes (asyncio streams, one task per dashboard).

Reported for the loaded phase, over the requests started after a warm-up (page load): per URL the request rate
achieved, p50/p99 latency of the answers, error rate (timeouts, failed connections, statuses other than 200/304)
and the share of 304s; the clients' tick lag p99 (how late the clients woke a dashboard up for its tick: a large one
means the clients, not only the server, were short of CPU); then the freshness figures of both phases and their
ratios (loaded / baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import time
from collections import defaultdict

from bench.common import bench_environment, percentile, report
from bench.stack import COUNTRIES, SourceDatabases, Stack, say

DASHBOARDS = 500
BASELINE_DASHBOARDS = 5
CLIENT_PROCESSES = 2
# From dashboard.js: CONFIG.pollSeconds, REQUEST_TIMEOUT_MS, COUNTRY_LIST_REFRESH_MS.
POLL_SECONDS = 1.0
REQUEST_TIMEOUT_SECONDS = 2.5
COUNTRY_LIST_SECONDS = 10.0
COUNTRIES_PER_DASHBOARD = (2, 5)
# The first requests of a dashboard are its page load (no ETag yet): left out of the figures.
WARM_UP_SECONDS = 3.0
SEED_ROWS = 200
METRICS, SOURCES, COUNTRY_LIST = "metrics", "sources", "countries"
PATHS = {SOURCES: "/api/v1/sources/", COUNTRY_LIST: "/api/v1/countries/"}
TIMEOUT, CONNECTION_ERROR = "timeout", "connection error"


# --- the simulated dashboards (run in client processes) --------------------------------------------------------

class Connection:
    """One keep-alive HTTP/1.1 connection to the server, opened on first use and reopened when the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, etag: str | None = None) -> tuple[int, str | None]:
        """(status, ETag) of GET path; the body is read and dropped."""
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAccept: application/json\r\n"
                   + (f"If-None-Match: {etag}\r\n" if etag else "") + "\r\n").encode()
        reused = self.writer is not None
        try:
            return await self._exchange(request)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            if not reused:
                raise
            # The server closed the idle connection as we sent (gunicorn keeps one alive 2 s): a browser retries an
            # idempotent request on a new connection, and so do we.
            return await self._exchange(request)

    async def _exchange(self, request: bytes) -> tuple[int, str | None]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 304 or status == 204 or status < 200:
            pass  # no body
        elif "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)  # the chunk and its CRLF; the last one is empty
                if size == 0:
                    break
        else:
            await self.reader.read()  # a body delimited by the end of the connection
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers.get("etag")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Dashboard:
    """dashboard.js's polling, with a record (url, started, latency s, status or error) of every request."""

    def __init__(self, port: int, countries: list[str], *, sources_panel: bool, records: list) -> None:
        self.port = port
        self.metrics_path = f"/api/v1/metrics/?countries={','.join(countries)}"
        self.sources_panel = sources_panel
        self.records = records
        self.tick_lags: list[float] = []

    async def request(self, connection: Connection, kind: str, path: str, etag: str | None = None) -> str | None:
        """One GET; the answer's ETag when it was a 200, the ETag sent when it was a 304, else None."""
        started = time.time()
        try:
            status, new_etag = await asyncio.wait_for(connection.get(path, etag), REQUEST_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            connection.close()  # like the browser's AbortController: the connection is dropped
            self.records.append((kind, started, time.time() - started, TIMEOUT))
            return None
        except OSError:
            connection.close()
            self.records.append((kind, started, time.time() - started, CONNECTION_ERROR))
            return None
        self.records.append((kind, started, time.time() - started, status))
        return etag if status == 304 else new_etag if status == 200 else None

    async def run(self, first_tick: float, stop) -> None:
        metrics_connection = Connection(self.port)
        panel_connection, selector_connection = Connection(self.port), Connection(self.port)
        await asyncio.sleep(max(0.0, first_tick - time.time()))
        etag = sources_etag = None
        sources_in_flight: asyncio.Task | None = None
        selector_loop = asyncio.create_task(self.country_list_loop(selector_connection, stop)) \
            if self.sources_panel else None
        while not stop.is_set():
            started = time.time()
            if self.sources_panel and (sources_in_flight is None or sources_in_flight.done()):
                if sources_in_flight is not None:
                    sources_etag = sources_in_flight.result() or sources_etag
                sources_in_flight = asyncio.create_task(self.request(panel_connection, SOURCES, PATHS[SOURCES],
                                                                     sources_etag))
            etag = await self.request(metrics_connection, METRICS, self.metrics_path, etag) or etag
            wake_at = max(started + POLL_SECONDS, time.time())
            await asyncio.sleep(wake_at - time.time())
            # How late the event loop woke this dashboard up: large values mean the clients were short of CPU.
            self.tick_lags.append(time.time() - wake_at)
        for task in (sources_in_flight, selector_loop):
            if task is not None:
                await task
        for connection in (metrics_connection, panel_connection, selector_connection):
            connection.close()

    async def country_list_loop(self, connection: Connection, stop) -> None:
        while not stop.is_set():
            started = time.time()
            await self.request(connection, COUNTRY_LIST, PATHS[COUNTRY_LIST])
            while not stop.is_set() and time.time() < started + COUNTRY_LIST_SECONDS:
                await asyncio.sleep(0.2)


def dashboards_process(port: int, indices: list[int], seed: int, sources_panel: bool, ready, stop, results) -> None:
    """A client process: says it is `ready` (imports done), runs its share of the dashboards until `stop` is set,
    then puts (records, tick lags) on `results`."""

    async def main():
        records: list = []
        dashboards = []
        now = time.time()
        for index in indices:
            rng = random.Random(seed * 100_003 + index)
            countries = rng.sample(COUNTRIES, rng.randint(*COUNTRIES_PER_DASHBOARD))
            dashboards.append(Dashboard(port, countries, sources_panel=sources_panel, records=records))
        await asyncio.gather(*(d.run(now + random.Random(index).uniform(0, POLL_SECONDS), stop)
                               for d, index in zip(dashboards, indices)))
        return records, [lag for d in dashboards for lag in d.tick_lags]

    ready.put(None)
    results.put(asyncio.run(main()))


class Dashboards:
    """`count` simulated dashboards in CLIENT_PROCESSES processes, from entry until exit."""

    def __init__(self, port: int, count: int, *, sources_panel: bool, seed: int = 1) -> None:
        self.port, self.count, self.sources_panel, self.seed = port, count, sources_panel, seed
        # Spawned, not forked: a fork would share the benchmark's open database connections.
        self.context = multiprocessing.get_context("spawn")

    def __enter__(self):
        self.ready, self.stop, self.results = self.context.Queue(), self.context.Event(), self.context.Queue()
        shares = [list(range(self.count))[k::CLIENT_PROCESSES] for k in range(CLIENT_PROCESSES)]
        self.processes = [self.context.Process(target=dashboards_process, daemon=True,
                                               args=(self.port, share, self.seed, self.sources_panel, self.ready,
                                                     self.stop, self.results))
                          for share in shares if share]
        for process in self.processes:
            process.start()
        for _ in self.processes:  # a spawned interpreter takes a while to import, more on a busy machine
            self.ready.get(timeout=120)
        self.started_at = time.time()
        return self

    def __exit__(self, *exc_info) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join()

    def finish(self) -> tuple[list, list[float], float, float]:
        """Stop the dashboards; (records, tick lags, window start, window end) of the measured window."""
        stopped_at = time.time()
        self.stop.set()
        collected = [self.results.get(timeout=60) for _ in self.processes]
        for process in self.processes:
            process.join(10)
        records = [record for part in collected for record in part[0]]
        lags = [lag for part in collected for lag in part[1]]
        return records, lags, self.started_at + WARM_UP_SECONDS, stopped_at


def request_figures(records: list, window_start: float, window_end: float) -> dict[str, dict]:
    """Per URL kind, over the requests started in the window: rate, latency of the answers, errors, 304 share."""
    by_kind: dict[str, list] = defaultdict(list)
    for kind, started, latency, outcome in records:
        if window_start <= started <= window_end:
            by_kind[kind].append((latency, outcome))
    figures = {}
    for kind, requests in by_kind.items():
        answered = [latency for latency, outcome in requests if outcome in (200, 304)]
        not_modified = sum(1 for _, outcome in requests if outcome == 304)
        errors = [outcome for _, outcome in requests if outcome not in (200, 304)]
        figures[kind] = {
            "requests": len(requests),
            "requests_per_second": round(len(requests) / (window_end - window_start), 1),
            "p50_ms": round(percentile(answered, 0.5) * 1000, 1) if answered else None,
            "p99_ms": round(percentile(answered, 0.99) * 1000, 1) if answered else None,
            "error_rate": round(len(errors) / len(requests), 4),
            "errors": {str(outcome): errors.count(outcome) for outcome in sorted(set(errors), key=str)},
            "share_304": round(not_modified / len(answered), 3) if answered else None,
        }
    return figures


# --- the benchmark ---------------------------------------------------------------------------------------------

def ratio(loaded, baseline):
    return round(loaded / baseline, 2) if loaded is not None and baseline else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="phases of 15 s instead of 60")
    parser.add_argument("--dashboards", type=int, default=DASHBOARDS)
    parser.add_argument("--rate", type=float, default=200.0, help="simulator rows/s over all sources")
    parser.add_argument("--seconds", type=float, help="length of each phase's simulator run")
    parser.add_argument("--metrics-only", action="store_true",
                        help="dashboards poll the metrics URL only (no sources panel, no country list)")
    args = parser.parse_args()
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    sources_panel = not args.metrics_only
    with bench_environment(), SourceDatabases("pisa_load_src_") as sources, Stack("load") as stack:
        say("seeding the sources...")
        stack.run(sources.simulate(seed_rows=SEED_ROWS, seed=7), env=stack.env)
        stack.wait_until_settled()
        say(f"baseline: {BASELINE_DASHBOARDS} dashboards, simulator at {args.rate:g} rows/s for {seconds:g}s...")
        with Dashboards(stack.port, BASELINE_DASHBOARDS, sources_panel=sources_panel) as dashboards:
            time.sleep(WARM_UP_SECONDS)
            baseline = stack.freshness(sources, rate=args.rate, seconds=seconds, seed=8)
            records, _, window_start, window_end = dashboards.finish()
        baseline_requests = request_figures(records, window_start, window_end)
        # Counted before the dashboards start: under their load the API may not answer the observer for a while.
        settled = stack.wait_until_settled()
        say(f"loaded: {args.dashboards} dashboards, simulator at {args.rate:g} rows/s for {seconds:g}s...")
        with Dashboards(stack.port, args.dashboards, sources_panel=sources_panel) as dashboards:
            time.sleep(WARM_UP_SECONDS)
            loaded = stack.freshness(sources, rate=args.rate, seconds=seconds, seed=8, settled_counts=settled)
            records, lags, window_start, window_end = dashboards.finish()
        loaded_requests = request_figures(records, window_start, window_end)
    metrics, metrics_baseline = loaded_requests.get(METRICS, {}), baseline_requests.get(METRICS, {})
    report("load", {
        "what": f"{args.dashboards} dashboards polling every second "
                f"({'metrics only' if args.metrics_only else 'metrics, sources panel, country list'}, as "
                f"dashboard.js) while the simulator adds {args.rate:g} rows/s over {len(COUNTRIES)} sources for "
                f"{seconds:g}s; baseline: the same with {BASELINE_DASHBOARDS} dashboards, in the same run",
        "dashboards": args.dashboards,
        "metrics_requests_per_second": metrics.get("requests_per_second"),
        "metrics_requests_per_second_expected": args.dashboards / POLL_SECONDS,
        "metrics_p50_ms": metrics.get("p50_ms"), "metrics_p99_ms": metrics.get("p99_ms"),
        "metrics_p50_ms_baseline": metrics_baseline.get("p50_ms"),
        "metrics_p99_ms_baseline": metrics_baseline.get("p99_ms"),
        "ratio_metrics_p50_loaded_over_baseline": ratio(metrics.get("p50_ms"), metrics_baseline.get("p50_ms")),
        "metrics_error_rate": metrics.get("error_rate"), "metrics_errors": metrics.get("errors"),
        "metrics_share_304": metrics.get("share_304"),
        "other_urls": {kind: figures for kind, figures in loaded_requests.items() if kind != METRICS},
        "other_urls_baseline": {kind: figures for kind, figures in baseline_requests.items() if kind != METRICS},
        "client_tick_lag_p99_ms": round(percentile(lags, 0.99) * 1000, 1) if lags else None,
        **{f"{name}_loaded": value for name, value in loaded.items()},
        **{f"{name}_baseline": value for name, value in baseline.items()},
        **{f"ratio_{name}_loaded_over_baseline": ratio(loaded[name], baseline[name])
           for name in ("warehouse_p50_s", "warehouse_p99_s", "api_p50_s", "api_p99_s")},
        "web": f"gunicorn {stack.env.get('WEB_WORKERS', '2')} workers x {stack.env.get('WEB_THREADS', '8')} threads",
    }, quick=args.quick)


if __name__ == "__main__":
    main()
