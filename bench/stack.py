"""The running product, for benchmarks: the Procfile's processes on the bench warehouse, source databases fed by the
simulator, and an observer of freshness.

    with bench_environment(), SourceDatabases("pisa_fresh_src_") as sources, Stack("freshness") as stack:
        stack.run(sources.simulate(seed_rows=200, seed=7))      # create and seed the 20 sources
        stack.wait_until_settled()                              # seed rows in the warehouse and in the API
        figures = stack.freshness(sources, rate=200, seconds=60, seed=8)

`Stack` starts web, stream, ingest, metrics, watch and beat with the Procfile's own command lines, so its environment variables
(WEB_WORKERS, WEB_THREADS, INGEST_CONCURRENCY, METRICS_CONCURRENCY...) apply as in `make run`. Every process runs in
a session of its own: a Ctrl-C (or SIGTERM) reaches the benchmark alone, which stops every process it started, whole
process groups included, on its way out. Their output goes to bench/<name>.log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import psutil

from bench.common import ROOT, percentile

COUNTRIES = "ALB ARG AUS AUT BEL BGR BIH BLR BRA BRN CAN CHE CHL COL CRI CZE DEU DNK DOM ESP".split()
PROCFILE = ROOT / "Procfile"
# Flower only watches, and each benchmark runs the simulator itself with arguments of its own.
STACK_PROCESSES = ("web", "stream", "ingest", "metrics", "watch", "beat")
# A Celery worker's warm shutdown waits for its running task (up to the 60 s soft limit of a sync): not that long.
STOP_TIMEOUT_SECONDS = 20
STARTUP_TIMEOUT_SECONDS = 60
SETTLE_TIMEOUT_SECONDS = 180
# What beat does (INGEST_FAN_OUT_SECONDS), when a benchmark queues the syncs itself.
FAN_OUT_EVERY_SECONDS = 1.0
BACKFILL_POLL_SECONDS = 0.2
BACKFILL_TIMEOUT_SECONDS = 3 * 3600
OBSERVE_EVERY_SECONDS = 0.05
SLOWEST_ROWS_KEPT = 3
# How long the observer keeps watching after the simulator stopped, for the last rows to reach the API.
DRAIN_SECONDS = 10


_STARTED = time.monotonic()


def say(message: str) -> None:
    """Progress, with the seconds since the benchmark started (phases take minutes on a busy machine)."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", flush=True)


def child_environment(**overrides: str) -> dict[str, str]:
    """The benchmark's environment (bench warehouse, Redis databases) for a child: this checkout's code first, the
    venv's commands on PATH (the Procfile says `celery`, `gunicorn`), quieter logs unless LOG_LEVEL says otherwise."""
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "PYTHONPATH": str(ROOT), "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"), **overrides}


def procfile_commands() -> dict[str, str]:
    """The Procfile's command line of each process, by name."""
    commands = {}
    for line in PROCFILE.read_text().splitlines():
        name, separator, command = line.partition(":")
        if separator and not line.lstrip().startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


class Processes:
    """Child processes in sessions of their own, with their output in one log file; all stopped on exit, also after
    a Ctrl-C or a SIGTERM (bench_environment turns SIGTERM into SystemExit)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.started: list[subprocess.Popen] = []

    def __enter__(self):
        self.log = open(self.log_path, "wb")
        return self

    def __exit__(self, *exc_info) -> None:
        # A second Ctrl-C or SIGTERM must not interrupt the cleanup half-way and leave processes behind.
        previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.stop(*reversed(self.started))
        finally:
            self.log.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def start(self, args: list[str], *, env: dict | None = None) -> subprocess.Popen:
        process = subprocess.Popen(args, cwd=ROOT, env=env or child_environment(), stdout=self.log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(process)
        return process

    def finish(self, process: subprocess.Popen, timeout: float | None = None) -> None:
        """Wait for a process that ends by itself; raise if it failed."""
        returncode = process.wait(timeout)
        self.stop(process)
        if returncode != 0:
            raise RuntimeError(f"{' '.join(process.args)} exited with {returncode}; see {self.log_path}")

    def run(self, args: list[str], *, env: dict | None = None) -> None:
        self.finish(self.start(args, env=env))

    def stop(self, *processes: subprocess.Popen) -> None:
        """SIGTERM to each process still running, at once (to the leader only: a Celery worker then finishes its
        running task, and gunicorn its requests, before stopping their children), then SIGKILL to whatever of its
        process group (pool children, gunicorn workers) lingers after STOP_TIMEOUT_SECONDS."""
        stopping_at = time.time()
        for process in processes:
            if process.poll() is None:  # never signal a pid already reaped: it may belong to someone else by now
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
            for member in _group_members(process.pid, created_before=stopping_at):
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.kill()  # psutil checks that the pid is still that very process
            process.wait()
            if process in self.started:
                self.started.remove(process)


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def _group_members(group: int, *, created_before: float) -> list[psutil.Process]:
    """The processes of a process group that already existed at `created_before` (a group id left free could be
    taken by an unrelated process later)."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == group and process.create_time() <= created_before:
                members.append(process)
    return members


class SourceDatabases:
    """The 20 source databases `<prefix><code>` on the warehouse's server (`template` is their URL template), made
    by `manage.py simulate` (see `simulate`) or a benchmark: absent on entry (left-overs of an interrupted run are
    dropped), dropped on exit."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __enter__(self):
        from django.conf import settings

        from simulator.schema import server_url_of, url_template_on

        self.server = server_url_of(settings.DATABASE_URL)
        self.template = url_template_on(self.server, database=self.prefix + "{code}")
        self.drop()
        return self

    def __exit__(self, *exc_info) -> None:
        self.drop()

    def drop(self) -> None:
        from simulator.schema import source_database_drop

        for code in COUNTRIES:
            source_database_drop(server_url=self.server.render_as_string(hide_password=False),
                                 database=self.prefix + code.lower())

    def simulate(self, *, seed: int, seed_rows: int = 0, rate: float = 0.0, seconds: float | None = None,
                 bursts: bool = True) -> list[str]:
        """The `manage.py simulate` command line: top the sources up to `seed_rows` rows altogether, then (with a
        rate and a duration) feed them `rate` rows/s for `seconds`, with the simulator's bursts of 4-10x the rate
        about once a minute unless `bursts` is off; without a duration it stops after seeding."""
        command = [sys.executable, "manage.py", "simulate", "--url-template", self.template, "--countries",
                   ",".join(COUNTRIES), "--seed-rows", str(seed_rows), "--seed", str(seed)]
        if seconds is None:
            return [*command, "--max-rows", "0"]
        return [*command, "--rate", str(rate), "--duration", str(seconds), *([] if bursts else ["--steady"])]


class Stack(Processes):
    """The Procfile's web, stream, ingest, metrics, watch and beat on the bench warehouse; `environment` overrides its variables."""

    def __init__(self, name: str, *, environment: dict[str, str] | None = None,
                 web_module: str = "pisa_site.wsgi") -> None:
        """`web_module`: the WSGI module the web runs (bench.wsgi adds the constant views)."""
        super().__init__(ROOT / "bench" / f"{name}.log")
        self.name = name
        self.overrides = environment or {}
        self.web_module = web_module
        self.by_name: dict[str, subprocess.Popen] = {}

    def __enter__(self):
        super().__enter__()
        try:
            from pisa_site.embedded import free_port

            self.port = free_port()
            self.stream_port = free_port()
            while self.stream_port == self.port:
                self.stream_port = free_port()
            self.api_url = f"http://127.0.0.1:{self.port}"
            self.env = child_environment(PORT=str(self.port), STREAM_PORT=str(self.stream_port), **self.overrides)
            commands = procfile_commands()
            for name in STACK_PROCESSES:
                command = commands[name]
                if name == "web":
                    command = command.replace("pisa_site.wsgi", self.web_module)
                if name == "beat":  # a schedule file of its own, not the one `make run` keeps under PISA_HOME
                    command += f" --schedule {ROOT / 'bench' / f'.{self.name}-beat-schedule'}"
                self.by_name[name] = self.start(["bash", "-c", f"exec {command}"], env=self.env)
            self._wait_for_web()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each of the stack's processes, its children (workers, pool) included; the
        database and Redis servers as "postgres" and "redis" (every process of theirs on the machine)."""
        used: dict[str, float] = {}
        for name, process in self.by_name.items():
            with contextlib.suppress(psutil.Error):
                leader = psutil.Process(process.pid)
                used[name] = sum(_cpu(p) for p in [leader, *leader.children(recursive=True)])
        for name in ("postgres", "redis-server"):
            used[name.split("-")[0]] = sum(_cpu(p) for p in psutil.process_iter(["name"]) if p.info["name"] == name)
        return used

    def _wait_for_web(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            try:
                get_json(f"{self.api_url}/api/v1/health/", timeout=2)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the web server did not answer within {STARTUP_TIMEOUT_SECONDS}s; see "
                                       f"{self.log_path}") from None
                time.sleep(0.3)

    def api_counts(self, *, patience: float = 0) -> dict[str, int]:
        """Students per country, as the API serves them; retried for `patience` seconds when it does not answer."""
        deadline = time.monotonic() + patience
        while True:
            try:
                results = get_json(f"{self.api_url}/api/v1/countries/")["results"]
                return {item["code"]: item["n_students"] for item in results}
            except OSError:
                if time.monotonic() > deadline:
                    raise

    def wait_until_settled(self, timeout: float = SETTLE_TIMEOUT_SECONDS) -> dict[str, int]:
        """Until ingestion and the metrics have caught up with sources that no longer change: every enabled source
        polled successfully since this call, and the API counting exactly the students the warehouse holds for each
        country. Returns the API's counts."""
        from django.utils import timezone

        from ingestion.models import Source, SourceState

        since = timezone.now()
        deadline = time.monotonic() + timeout
        while True:
            states = SourceState.objects.filter(source__enabled=True)
            polled = states.filter(last_success_at__gte=since).count() == Source.objects.filter(enabled=True).count()
            loaded = dict(states.values_list("source__code", "rows_loaded"))
            served = self.api_counts(patience=STARTUP_TIMEOUT_SECONDS)
            if polled and all(served.get(code, 0) == rows for code, rows in loaded.items()):
                return served
            if time.monotonic() > deadline:
                raise RuntimeError(f"not settled after {timeout:g}s: warehouse {loaded}, API {served}; see "
                                   f"{self.log_path}")
            time.sleep(0.5)

    def freshness(self, sources: SourceDatabases, *, rate: float, seconds: float, seed: int,
                  settled_counts: dict[str, int] | None = None, bursts: bool = False) -> dict:
        """Feed the sources `rate` rows/s for `seconds` and observe every new row's delays (FreshnessObserver).
        `settled_counts`: the API's counts before the feed, if known (from wait_until_settled). Steady by default:
        the simulator's random bursts (4-10x the rate for 3-10 s, about once a minute) would make two runs, or a
        benchmark and its baseline, measure different loads."""
        observer = FreshnessObserver(self, settled_counts)
        simulator = self.start(sources.simulate(rate=rate, seconds=seconds, seed=seed, bursts=bursts), env=self.env)
        observer.observe_while(lambda: simulator.poll() is None)
        self.finish(simulator)
        figures = observer.figures()
        # On a busy machine the simulator itself may fall short of the rate asked for.
        figures["rows_per_second_fed"] = round(figures["rows_observed"] / seconds, 1)
        return figures


class FreshnessObserver:
    """For every row a source commits from the observer's creation on, the delay from its `created_at` (set by the
    source at insert, on the same server clock)

    - to its presence in the warehouse, polled every 50 ms: per source, the rows after the highest source row id
      seen so far (a source is synced by one worker at a time, in id order; the warehouse's own ids would not do,
      as two loads commit in any order);
    - to its presence in the API: GET /api/v1/countries/ polled every 50 ms in a thread of its own (a slow API never
      delays the warehouse's figures); a row counts as served at the first answer where its country's n_students
      reaches the row's rank, by created_at, among that country's new rows.

    The 50 ms period bounds the bias. Also kept, to tell waiting from working: the delay to the start of the
    transaction that loaded each row (its loaded_at)."""

    def __init__(self, stack: Stack, settled_counts: dict[str, int] | None = None) -> None:
        from django.db import connection

        self.stack = stack
        self.cursor = connection.cursor()
        # One statement, so that the rows already loaded and the newest of them are of one moment. A row counts as
        # served once its country's count in the API reaches the rows loaded then plus its rank: asking the API
        # for its counts instead would be shed in a flood, and would lag the warehouse by a refresh.
        self.cursor.execute("SELECT s.id, s.code, coalesce(st.rows_loaded, 0), (SELECT coalesce(max(source_row_id), 0) "
                            "FROM ingestion_student WHERE source_id = s.id) FROM ingestion_source s "
                            "LEFT JOIN ingestion_sourcestate st ON st.source_id = s.id")
        rows = self.cursor.fetchall()
        self.last_row_by_source: dict[int, int] = {source: newest for source, _, _, newest in rows}
        self.base_counts = settled_counts or {code: loaded for _, code, loaded, _ in rows}
        self.started_at = time.time()
        self.created_until = float("inf")  # rows created later are not counted (a benchmark's window ended)
        self.warehouse_delays: list[float] = []
        self.load_start_delays: list[float] = []
        self.slowest: list[tuple] = []  # (delay s, country, source row id, created at): where to look first
        self.created_by_country: dict[str, list[float]] = defaultdict(list)  # epochs of the new rows
        self.api_answers: list[tuple[float, dict[str, int]]] = []  # (epoch, students per country)
        self.api_failures = 0  # observations the API did not answer in time (a later one catches up)

    def observe_while(self, running, *, drain_seconds: float = DRAIN_SECONDS) -> None:
        """Observe while `running()` is true, then `drain_seconds` more."""
        stop = threading.Event()
        api_thread = threading.Thread(target=self._observe_api, args=(stop,), name="api-observer", daemon=True)
        api_thread.start()
        drain_until = None
        try:
            while drain_until is None or time.monotonic() < drain_until:
                if drain_until is None and not running():
                    drain_until = time.monotonic() + drain_seconds
                self._observe_warehouse()
                time.sleep(OBSERVE_EVERY_SECONDS)
        finally:
            stop.set()
            api_thread.join()

    def _observe_warehouse(self) -> None:
        now = time.time()
        self.cursor.execute(
            "SELECT s.source_id, st.source_row_id, st.country, extract(epoch from st.source_created_at), "
            "extract(epoch from st.loaded_at) FROM unnest(%s::bigint[], %s::bigint[]) AS s(source_id, last_row) "
            "JOIN ingestion_student st ON st.source_id = s.source_id AND st.source_row_id > s.last_row",
            [list(self.last_row_by_source), list(self.last_row_by_source.values())])
        for source_id, source_row_id, country, created, loaded in self.cursor.fetchall():
            self.last_row_by_source[source_id] = max(self.last_row_by_source[source_id], source_row_id)
            created = float(created)
            if self.started_at <= created <= self.created_until:
                self.warehouse_delays.append(now - created)
                self.slowest.append((round(now - created, 3), country, source_row_id,
                                     time.strftime("%H:%M:%S", time.localtime(created))))
                self.slowest = sorted(self.slowest, reverse=True)[:SLOWEST_ROWS_KEPT]
                self.load_start_delays.append(float(loaded) - created)
                self.created_by_country[country].append(created)

    def _observe_api(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                counts = self.stack.api_counts()
            except OSError:  # timeouts included: an overloaded server delays the figure, it does not end the run
                self.api_failures += 1
            else:
                self.api_answers.append((time.time(), counts))
            stop.wait(OBSERVE_EVERY_SECONDS)

    def api_delays(self) -> list[float]:
        delays = []
        for code, created in self.created_by_country.items():
            created = sorted(created)
            served = 0
            for answered_at, counts in self.api_answers:
                reached = min(max(counts.get(code, 0) - self.base_counts.get(code, 0), 0), len(created))
                delays.extend(answered_at - row_created for row_created in created[served:reached])
                served = max(served, reached)
        return delays

    def figures(self) -> dict:
        def seconds(values, q):
            value = percentile(values, q)
            return None if value is None else round(value, 3)

        api_delays = self.api_delays()
        self.cursor.execute("SELECT count(*) FROM ingestion_student WHERE country = ANY(%s) "
                            "AND source_created_at BETWEEN to_timestamp(%s) AND to_timestamp(%s)",
                            [COUNTRIES, self.started_at, min(self.created_until, 4e9)])
        return {
            "rows_observed": len(self.warehouse_delays),
            # Rows in the warehouse the observer never saw: 0 unless the one-sync-per-source rule was broken.
            "rows_not_observed": self.cursor.fetchone()[0] - len(self.warehouse_delays),
            "warehouse_p50_s": seconds(self.warehouse_delays, 0.5),
            "warehouse_p99_s": seconds(self.warehouse_delays, 0.99),
            "load_started_p50_s": seconds(self.load_start_delays, 0.5),
            "load_started_p99_s": seconds(self.load_start_delays, 0.99),
            "api_rows_observed": len(api_delays),
            "api_p50_s": seconds(api_delays, 0.5),
            "api_p99_s": seconds(api_delays, 0.99),
            "api_observations_failed": self.api_failures,
            "slowest_rows_to_the_warehouse": [list(row) for row in self.slowest],
        }


def warehouse_reset() -> None:
    """Back to the state of a first deployment with the sources registered: no student, change, quarantined row,
    source state or metrics state, and empty Redis databases (locks, due marks, queued tasks, published metrics)."""
    import redis
    from django.conf import settings
    from django.db import connection

    from ingestion.models import DuplicateStudent, QuarantinedRow, SourceState, Student, StudentChange
    from metrics.models import CountryMetricsState

    tables = [model._meta.db_table for model in
              (Student, StudentChange, QuarantinedRow, DuplicateStudent, SourceState, CountryMetricsState)]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)}")
    for url in (settings.CACHES["default"]["LOCATION"], settings.CELERY_BROKER_URL):
        redis.Redis.from_url(url).flushdb()


def backfill(total: int, *, while_waiting=None) -> float:
    """Queue what beat would (ingestion.fan_out every second) until the warehouse holds `total` students; the seconds
    it took. Ingest workers must be running. `while_waiting()`, if given, is called between two checks."""
    from django.db.models import Sum

    from ingestion.models import SourceState, Student
    from ingestion.tasks import fan_out

    def loaded() -> int:
        # The sources' own counters, not count(*) over the warehouse: scanning 100,000 wide rows five times a second
        # would load the machine and slow down the very pipeline being measured.
        return SourceState.objects.aggregate(rows=Sum("rows_loaded"))["rows"] or 0

    started = last_fan_out = time.perf_counter()
    fan_out()
    while loaded() < total:
        now = time.perf_counter()
        if now - last_fan_out >= FAN_OUT_EVERY_SECONDS:
            fan_out()
            last_fan_out = now
        if while_waiting:
            while_waiting()
        time.sleep(BACKFILL_POLL_SECONDS)
        if now - started > BACKFILL_TIMEOUT_SECONDS:
            raise TimeoutError(f"the backfill did not finish within {BACKFILL_TIMEOUT_SECONDS} s")
    elapsed = time.perf_counter() - started
    held = Student.objects.count()
    if held != total:
        raise RuntimeError(f"the warehouse holds {held:,} students, expected {total:,}")
    return elapsed
