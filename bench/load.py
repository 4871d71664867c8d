"""Results day on one machine: thousands of live viewers, the web tier's latency and errors, next to a constant view
of the same size in the same run; then a flood of ten times as many, shed with fast 503s.

    .venv/bin/python -m bench.load [--quick] [--streams 2000] [--pollers 500] [--rate 2] [--seconds 60] [--no-flood]

The stack is the Procfile's (bench/stack.py: web, stream, ingest, metrics, watch, beat; the web module is
bench.wsgi, the product's application plus the constant views) with the simulator adding `--rate` rows/s over 20
sources during every phase (the issue's setting: its default 2 rows/s). Viewers are asyncio clients in
CLIENT_PROCESSES processes of their own (their CPU is reported), each viewer its own keep-alive connections, asking
with `Accept-Encoding: gzip` as a browser does:

- a *poller* asks the three polled URLs every second (metrics for 2 to 5 of the 20 countries, the sources panel,
  the country list), each with the If-None-Match of its last 200, timing out after 2.5 s as dashboard.js; a 503's
  Retry-After is waited out before it asks again (as dashboard.js);
- a *streamer* does what js/stream.js does: it holds GET /api/v1/stream/?countries=<its 2 to 5>, takes the
  metrics and the sources' status the events carry (it does not unpack them: the browser's cost, not the server's),
  fetches its metrics URL on an event without its document or on `resync` (one fetch at a time, once more if events
  came meanwhile, again after 150 ms on a 304 up to 3 times), and every 5 s polls the metrics as a safety net, and
  the sources too unless the stream brought them in the last 15 s.

Phases, each of `--seconds` with the freshness observer running (bench/stack.py):

1. baseline: 5 pollers;
2. loaded: `--streams` streamers and `--pollers` pollers;
3. constant: the same pollers asking three constant views (bench/urls.py) answering as many bytes as phase 2's
   average 200 of each URL, always a 200: the server's floor for the same requests and more bytes;
4. flood (unless --no-flood): FLOOD_FACTOR x `--pollers` pollers, with a prober asking /api/v1/health/ every
   0.5 s.

Reported per phase: per URL the request rate, p50/p99 of the answers, errors (timeouts, connection errors, statuses
other than 200/304/503) and 503s; bytes received per viewer per second; stream events heard; the clients' CPU; the
freshness figures (warehouse and API p50/p99) and their ratios to the baseline's; the health prober's p99 and failures.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import threading
import time
import urllib.request
from collections import defaultdict

import psutil

from bench.common import bench_environment, percentile, report
from bench.stack import COUNTRIES, FreshnessObserver, SourceDatabases, Stack, say

STREAMS, POLLERS, BASELINE_POLLERS, FLOOD_FACTOR = 2000, 500, 5, 10
QUICK_STREAMS, QUICK_POLLERS = 300, 100
CLIENT_PROCESSES = 2
# From the dashboard's JS: CONFIG.pollSeconds, streamingPollSeconds, REQUEST_TIMEOUT_MS, AFTER_304_MS/TRIES.
POLL_SECONDS, STREAMING_POLL_SECONDS, SOURCES_PUSH_TRUSTED_SECONDS = 1.0, 5.0, 15.0
REQUEST_TIMEOUT_SECONDS = 2.5
AFTER_304_SECONDS, AFTER_304_TRIES = 0.15, 3
COUNTRIES_PER_VIEWER = (2, 5)
# The first seconds of a phase are its viewers' page loads and stream openings: left out of the figures.
WARM_UP_SECONDS = 5.0
HEALTH_EVERY_SECONDS, HEALTH_TIMEOUT_SECONDS = 0.5, 5.0
SEED_ROWS = 200
# A phase's simulator is stopped when the phase ends; it must have fed its first row within this.
SIMULATOR_MAX_SECONDS, SIMULATOR_START_SECONDS = 3600, 90
METRICS, SOURCES, COUNTRY_LIST = "metrics", "sources", "countries"
PATHS = {SOURCES: "/api/v1/sources/", COUNTRY_LIST: "/api/v1/countries/"}
CONSTANT_PATH = "/bench/constant-of/{size}/"
TIMEOUT, CONNECTION_ERROR = "timeout", "connection error"


# --- the simulated viewers (run in client processes) -----------------------------------------------------------

class Connection:
    """One keep-alive HTTP/1.1 connection, opened on first use and reopened when the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, etag: str | None = None) -> tuple[int, dict, int]:
        """(status, headers, bytes received) of GET path; the body is read and dropped."""
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAccept: application/json\r\n"
                   "Accept-Encoding: gzip\r\n" + (f"If-None-Match: {etag}\r\n" if etag else "") + "\r\n").encode()
        reused = self.writer is not None
        try:
            return await self._exchange(request)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            if not reused:
                raise
            # The server closed the idle connection as we sent: a browser retries an idempotent request on a new
            # connection, and so do we.
            return await self._exchange(request)

    async def _exchange(self, request: bytes) -> tuple[int, dict, int]:
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
        size = len(head)
        if status in (204, 304) or status < 200:
            pass
        elif "content-length" in headers:
            size += len(await self.reader.readexactly(int(headers["content-length"])))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line = await self.reader.readuntil(b"\r\n")
                chunk = int(line.split(b";")[0], 16)
                size += len(line) + len(await self.reader.readexactly(chunk + 2))
                if chunk == 0:
                    break
        else:
            size += len(await self.reader.read())
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, size

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Viewer:
    """What both kinds of viewer share: their records (kind, url, started, latency s, outcome, bytes) and the wait
    a 503's Retry-After asks for."""

    def __init__(self, port: int, countries: list[str], records: list, counters: dict) -> None:
        self.port = port
        self.metrics_path = f"/api/v1/metrics/?countries={','.join(countries)}"
        self.records, self.counters = records, counters
        self.busy_until = 0.0

    async def request(self, kind: str, connection: Connection, path: str, etag: str | None = None,
                      record_kind: str | None = None) -> tuple[int | str, str | None]:
        """(outcome, the ETag to send next time) of one GET."""
        started = time.time()
        try:
            status, headers, size = await asyncio.wait_for(connection.get(path, etag), REQUEST_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            connection.close()  # like the browser's AbortController: the connection is dropped
            self.records.append((record_kind or kind, started, time.time() - started, TIMEOUT, 0))
            return TIMEOUT, etag
        except OSError:
            connection.close()
            self.records.append((record_kind or kind, started, time.time() - started, CONNECTION_ERROR, 0))
            return CONNECTION_ERROR, etag
        self.records.append((record_kind or kind, started, time.time() - started, status, size))
        if status == 503 and headers.get("retry-after", "").isdigit():
            self.busy_until = max(self.busy_until, time.time() + int(headers["retry-after"]))
        return status, headers.get("etag") if status == 200 else etag

    async def wait_out_retry_after(self) -> None:
        if self.busy_until > time.time():
            await asyncio.sleep(self.busy_until - time.time())


class Poller(Viewer):
    """Asks its three URLs every second (each on its own connection, in parallel), as a polling dashboard does."""

    def __init__(self, *args, constant_paths: dict[str, str] | None = None) -> None:
        super().__init__(*args)
        self.paths = constant_paths or {METRICS: self.metrics_path, **PATHS}

    async def run(self, first_tick: float, stop) -> None:
        connections = {kind: Connection(self.port) for kind in self.paths}
        etags: dict[str, str | None] = dict.fromkeys(self.paths)
        await asyncio.sleep(max(0.0, first_tick - time.time()))

        async def ask(kind):
            _, etags[kind] = await self.request(kind, connections[kind], self.paths[kind], etags[kind])

        while not stop.is_set():
            started = time.time()
            await self.wait_out_retry_after()
            await asyncio.gather(*(ask(kind) for kind in self.paths))
            await asyncio.sleep(max(0.0, started + POLL_SECONDS - time.time()))
        for connection in connections.values():
            connection.close()


class Streamer(Viewer):
    """js/stream.js: the stream open, its pushed documents taken, a fetch on an event without one, a safety poll
    every 5 s."""

    def __init__(self, *args, stream_port: int) -> None:
        super().__init__(*args)
        self.stream_port = stream_port
        self.stream_path = "/api/v1/stream/?" + self.metrics_path.split("?", 1)[1]
        self.metrics, self.panel = Connection(self.port), Connection(self.port)
        self.etag = self.sources_etag = None
        self.fetching, self.fetch_again = False, False
        self.sources_pushed_at = float("-inf")

    async def fetch_changed(self) -> None:
        if self.fetching:
            self.fetch_again = True
            return
        self.fetching = True
        try:
            while True:
                before = self.etag
                for _ in range(AFTER_304_TRIES + 1):
                    await self.wait_out_retry_after()
                    _, self.etag = await self.request(METRICS, self.metrics, self.metrics_path, self.etag,
                                                      record_kind="metrics (on event)")
                    if self.etag != before:
                        break
                    await asyncio.sleep(AFTER_304_SECONDS)
                if not self.fetch_again:
                    return
                self.fetch_again = False
        finally:
            self.fetching = False

    async def safety_poll(self, stop) -> None:
        while not stop.is_set():
            await asyncio.sleep(STREAMING_POLL_SECONDS)
            await self.wait_out_retry_after()
            if time.monotonic() - self.sources_pushed_at >= SOURCES_PUSH_TRUSTED_SECONDS:
                _, self.sources_etag = await self.request(SOURCES, self.panel, PATHS[SOURCES], self.sources_etag)
            if not self.fetching:
                self.fetching = True
                try:
                    _, self.etag = await self.request(METRICS, self.metrics, self.metrics_path, self.etag)
                finally:
                    self.fetching = False

    async def run(self, first_tick: float, stop) -> None:
        await asyncio.sleep(max(0.0, first_tick - time.time()))
        poll = asyncio.create_task(self.safety_poll(stop))
        fetches: set[asyncio.Task] = set()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.stream_port, limit=1 << 20)
            writer.write(f"GET {self.stream_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         "Accept: text/event-stream\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
            if b" 200 " not in status:
                self.counters["streams refused"] += 1
                writer.close()
                return
            self.counters["streams opened"] += 1
            event = None
            while not stop.is_set():
                try:
                    line = await asyncio.wait_for(reader.readline(), 1.0)
                except asyncio.TimeoutError:
                    continue
                if not line:
                    self.counters["streams closed by the server"] += 1
                    return
                self.counters["stream bytes"] += len(line)
                if line.startswith(b"event: "):
                    event = line[7:].strip()
                elif line.startswith(b"data: ") and event in (b"metrics", b"sources", b"resync"):
                    self.counters["stream events"] += 1
                    if b'"gzip":' in line:
                        self.counters[f"{event.decode()} pushed"] += 1
                        if event == b"sources":
                            self.sources_pushed_at = time.monotonic()
                        continue
                    if event == b"sources":
                        continue
                    task = asyncio.create_task(self.fetch_changed())
                    fetches.add(task)
                    task.add_done_callback(fetches.discard)
            writer.close()
        except OSError:
            self.counters["streams failed"] += 1
        finally:
            poll.cancel()
            await asyncio.gather(poll, *fetches, return_exceptions=True)
            self.metrics.close()
            self.panel.close()


def viewers_process(port: int, stream_port: int, plan: list[tuple[str, int]], seed: int,
                    constant_paths: dict | None, ready, stop, results) -> None:
    """A client process: runs its viewers (kind, index) until `stop` is set, then puts (records, counters, CPU s)."""

    async def main():
        records: list = []
        counters: dict = defaultdict(int)
        viewers = []
        now = time.time()
        for kind, index in plan:
            rng = random.Random(seed * 100_003 + index)
            countries = rng.sample(COUNTRIES, rng.randint(*COUNTRIES_PER_VIEWER))
            viewer = (Streamer(port, countries, records, counters, stream_port=stream_port) if kind == "stream"
                      else Poller(port, countries, records, counters, constant_paths=constant_paths))
            viewers.append(viewer.run(now + rng.uniform(0, POLL_SECONDS * 2), stop))
        await asyncio.gather(*viewers)
        return records, dict(counters)

    ready.put(None)
    records, counters = asyncio.run(main())
    cpu = psutil.Process().cpu_times()
    results.put((records, counters, cpu.user + cpu.system))


class Viewers:
    """Streamers and pollers in CLIENT_PROCESSES processes, from entry until `finish`."""

    def __init__(self, stack: Stack, *, streams: int, pollers: int, constant_paths: dict | None = None,
                 seed: int = 1) -> None:
        self.stack, self.constant_paths, self.seed = stack, constant_paths, seed
        self.plan = [("stream", k) for k in range(streams)] + [("poll", streams + k) for k in range(pollers)]
        self.viewers = max(streams + pollers, 1)
        self.context = multiprocessing.get_context("spawn")  # a fork would share the bench's database connections

    def __enter__(self):
        self.ready, self.stop, self.results = self.context.Queue(), self.context.Event(), self.context.Queue()
        shares = [self.plan[k::CLIENT_PROCESSES] for k in range(CLIENT_PROCESSES)]
        self.processes = [self.context.Process(target=viewers_process, daemon=True, args=(
            self.stack.port, self.stack.stream_port, share, self.seed, self.constant_paths, self.ready, self.stop,
            self.results)) for share in shares if share]
        for process in self.processes:
            process.start()
        for _ in self.processes:
            self.ready.get(timeout=120)
        self.started_at = time.time()
        return self

    def __exit__(self, *exc_info) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join()

    def finish(self) -> dict:
        """Stop the viewers; the figures of the requests started after the warm-up."""
        stopped_at = time.time()
        self.stop.set()
        collected = [self.results.get(timeout=120) for _ in self.processes]
        for process in self.processes:
            process.join(10)
        records = [record for part in collected for record in part[0]]
        counters: dict = defaultdict(int)
        for part in collected:
            for name, value in part[1].items():
                counters[name] += value
        window_start = self.started_at + WARM_UP_SECONDS
        window = stopped_at - window_start
        measured = [r for r in records if window_start <= r[1] <= stopped_at]
        return {
            "urls": request_figures(measured, window),
            "bytes_per_viewer_per_second": round(
                (sum(r[4] for r in measured) + counters.get("stream bytes", 0) * window / (stopped_at - self.started_at))
                / self.viewers / window, 1),
            "counters": dict(counters),
            "clients_cpu_cores": round(sum(part[2] for part in collected) / (stopped_at - self.started_at), 2),
        }


def request_figures(records: list, window: float) -> dict[str, dict]:
    """Per URL kind: rate, answers' p50/p99, errors, 503s (count and p99), average 200 body."""
    by_kind: dict[str, list] = defaultdict(list)
    for kind, _, latency, outcome, size in records:
        by_kind[kind].append((latency, outcome, size))
    figures = {}
    for kind, requests in sorted(by_kind.items()):
        answered = [latency for latency, outcome, _ in requests if outcome in (200, 304)]
        shed = [latency for latency, outcome, _ in requests if outcome == 503]
        errors = [outcome for _, outcome, _ in requests if outcome not in (200, 304, 503)]
        sizes = [size for _, outcome, size in requests if outcome == 200]
        figures[kind] = {
            "requests_per_second": round(len(requests) / window, 1),
            "p50_ms": round(percentile(answered, 0.5) * 1000, 1) if answered else None,
            "p99_ms": round(percentile(answered, 0.99) * 1000, 1) if answered else None,
            "errors": len(errors), "error_kinds": {str(o): errors.count(o) for o in sorted(set(errors), key=str)},
            "shed_503": len(shed), "shed_p99_ms": round(percentile(shed, 0.99) * 1000, 1) if shed else None,
            "share_304": round(sum(1 for _, o, _ in requests if o == 304) / len(answered), 3) if answered else None,
            "mean_200_bytes": round(sum(sizes) / len(sizes)) if sizes else None,
        }
    return figures


class HealthProber:
    """GET /api/v1/health/ every HEALTH_EVERY_SECONDS in a thread: latency of each answer, failures."""

    def __init__(self, url: str) -> None:
        self.url, self.latencies, self.failures = url, [], 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=HEALTH_TIMEOUT_SECONDS) as response:
                    response.read()
                self.latencies.append(time.monotonic() - started)
            except OSError as exc:  # a 503 of the health check itself (a service down) counts too
                if getattr(exc, "code", None) == 503:
                    self.latencies.append(time.monotonic() - started)
                else:
                    self.failures += 1
            self.stop.wait(max(0.0, HEALTH_EVERY_SECONDS - (time.monotonic() - started)))

    def figures(self) -> dict:
        return {"health_answers": len(self.latencies), "health_failures": self.failures,
                "health_p99_ms": round(percentile(self.latencies, 0.99) * 1000, 1) if self.latencies else None}


# --- the benchmark ---------------------------------------------------------------------------------------------

def ratio(value, baseline):
    return round(value / baseline, 2) if value is not None and baseline else None


def phase(stack: Stack, sources: SourceDatabases, *, rate: float, seconds: float, streams: int, pollers: int,
          constant_paths: dict | None = None) -> dict:
    """One phase: the simulator feeding first (its start-up, seconds of CPU, is kept out of the window), then the
    viewers for their warm-up and `seconds`, with the freshness observer counting the rows created in that window."""
    simulator = stack.start(sources.simulate(rate=rate, seconds=SIMULATOR_MAX_SECONDS, seed=8, bursts=False),
                            env=stack.env)
    stack.by_name["simulator"] = simulator  # its CPU is counted with the stack's
    first_rows = FreshnessObserver(stack)
    deadline = time.monotonic() + SIMULATOR_START_SECONDS
    first_rows.observe_while(lambda: len(first_rows.warehouse_delays) < 20 and time.monotonic() < deadline,
                             drain_seconds=0)
    with HealthProber(f"{stack.api_url}/api/v1/health/") as health, \
            Viewers(stack, streams=streams, pollers=pollers, constant_paths=constant_paths) as viewers:
        time.sleep(WARM_UP_SECONDS)
        # The API's counts now may lag the rows just created by a row or two: at the rates of this benchmark, a
        # bias of at most that on the first rows' API delays.
        observer = FreshnessObserver(stack)
        cpu_before, window_started = stack.cpu_seconds(), time.monotonic()
        end = time.monotonic() + seconds
        observer.observe_while(lambda: time.monotonic() < end, drain_seconds=0)
        # The rows of the window only: the simulator stopped by a signal below commits its last row late.
        observer.created_until = time.time()
        cpu_after, window = stack.cpu_seconds(), time.monotonic() - window_started
        # The window's last rows, on their way to the warehouse and the API under the same load. (Observed after the
        # viewers had gone, they were seen as late as collecting the viewers' figures took: 2 to 13 s.)
        observer.observe_while(lambda: False)
        figures = viewers.finish()
    stack.stop(simulator)
    del stack.by_name["simulator"]
    freshness = observer.figures()
    freshness["rows_per_second_fed"] = round(freshness["rows_observed"] / window, 1)
    figures["stack_cpu_cores"] = {name: round((cpu_after[name] - cpu_before.get(name, 0.0)) / window, 2)
                                  for name in cpu_after}
    return {**figures, "freshness": freshness, **health.figures()}


def constant_paths_like(loaded: dict) -> dict[str, str]:
    """The constant views as large as the loaded phase's average 200 of each URL, as received (gzipped)."""
    sizes = {kind: loaded["urls"].get(kind, {}).get("mean_200_bytes") or 1000 for kind in (METRICS, SOURCES,
                                                                                           COUNTRY_LIST)}
    return {kind: CONSTANT_PATH.format(size=size) for kind, size in sizes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"phases of 15 s, {QUICK_STREAMS} streams and "
                                                              f"{QUICK_POLLERS} pollers unless given")
    parser.add_argument("--streams", type=int)
    parser.add_argument("--pollers", type=int)
    parser.add_argument("--rate", type=float, default=2.0, help="simulator rows/s over all sources")
    parser.add_argument("--seconds", type=float, help="length of each phase (default 60, 15 with --quick)")
    parser.add_argument("--no-flood", action="store_true", help="leave out the flood phase")
    args = parser.parse_args()
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    streams = args.streams if args.streams is not None else QUICK_STREAMS if args.quick else STREAMS
    pollers = args.pollers if args.pollers is not None else QUICK_POLLERS if args.quick else POLLERS
    # The stream server keeps this many viewers: room for every streamer, as a deployment sized for them would.
    environment = {"STREAM_MAX_VIEWERS": str(max(streams + 100, 5000))}
    with bench_environment(), SourceDatabases("pisa_load_src_") as sources, \
            Stack("load", environment=environment, web_module="bench.wsgi") as stack:
        say("seeding the sources...")
        stack.run(sources.simulate(seed_rows=SEED_ROWS, seed=7), env=stack.env)
        stack.wait_until_settled()
        say(f"baseline: {BASELINE_POLLERS} pollers, simulator at {args.rate:g} rows/s for {seconds:g}s...")
        baseline = phase(stack, sources, rate=args.rate, seconds=seconds, streams=0, pollers=BASELINE_POLLERS)
        say(f"loaded: {streams} streams and {pollers} pollers...")
        loaded = phase(stack, sources, rate=args.rate, seconds=seconds, streams=streams, pollers=pollers)
        say(f"constant: {pollers} pollers asking constant views of the same sizes...")
        constant = phase(stack, sources, rate=args.rate, seconds=seconds, streams=0, pollers=pollers,
                         constant_paths=constant_paths_like(loaded))
        flood = None
        if not args.no_flood:
            say(f"flood: {FLOOD_FACTOR * pollers} pollers...")
            flood = phase(stack, sources, rate=args.rate, seconds=seconds, streams=0, pollers=FLOOD_FACTOR * pollers)

    def fresh(figures, name):
        return figures["freshness"].get(name)

    polled = {kind: loaded["urls"].get(kind, {}) for kind in (METRICS, SOURCES, COUNTRY_LIST)}
    report("load", {
        "what": f"{streams} streaming and {pollers} polling viewers (asyncio clients in {CLIENT_PROCESSES} processes, "
                f"gzip accepted) while the simulator adds {args.rate:g} rows/s over {len(COUNTRIES)} sources, "
                f"{seconds:g}s per phase; baseline {BASELINE_POLLERS} pollers; constant views of the same sizes; "
                f"flood {FLOOD_FACTOR}x the pollers; same run",
        "streams": streams, "pollers": pollers,
        "poll_p99_ms": {kind: figures.get("p99_ms") for kind, figures in polled.items()},
        "poll_p99_ms_constant": {kind: figures.get("p99_ms") for kind, figures in constant["urls"].items()},
        "ratio_metrics_p99_over_constant": ratio(polled[METRICS].get("p99_ms"),
                                                 constant["urls"].get(METRICS, {}).get("p99_ms")),
        "errors_loaded": sum(f["errors"] for f in loaded["urls"].values()),
        "shed_503_loaded": sum(f["shed_503"] for f in loaded["urls"].values()),
        "bytes_per_viewer_per_second": loaded["bytes_per_viewer_per_second"],
        "bytes_per_viewer_per_second_constant": constant["bytes_per_viewer_per_second"],
        "warehouse_p99_s": {"baseline": fresh(baseline, "warehouse_p99_s"), "loaded": fresh(loaded, "warehouse_p99_s"),
                            "flood": fresh(flood, "warehouse_p99_s") if flood else None},
        "api_p99_s": {"baseline": fresh(baseline, "api_p99_s"), "loaded": fresh(loaded, "api_p99_s"),
                      "flood": fresh(flood, "api_p99_s") if flood else None},
        "health_p99_ms": {"loaded": loaded["health_p99_ms"], "flood": flood["health_p99_ms"] if flood else None},
        "health_failures": {"loaded": loaded["health_failures"], "flood": flood["health_failures"] if flood else None},
        "stack_cpu_cores": {"loaded": loaded["stack_cpu_cores"], "constant": constant["stack_cpu_cores"],
                            "flood": flood["stack_cpu_cores"] if flood else None},
        "clients_cpu_cores": {"loaded": loaded["clients_cpu_cores"], "flood": flood["clients_cpu_cores"] if flood
                              else None},
        "flood_urls": flood["urls"] if flood else None,
        "flood_errors": sum(f["errors"] for f in flood["urls"].values()) if flood else None,
        "phases": {"baseline": baseline, "loaded": loaded, "constant": constant, "flood": flood},
        "web": f"granian {stack.env.get('WEB_WORKERS', '2')} workers x {stack.env.get('WEB_THREADS', '64')} threads, "
               f"{stack.env.get('WEB_ACTIVE_REQUESTS', '8')} at once in Django",
    }, quick=args.quick)


if __name__ == "__main__":
    main()
