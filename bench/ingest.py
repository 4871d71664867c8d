"""Backfill throughput: 100,000 1,120-column rows from 20 sources through the real pipeline (Celery workers), next to a
plain `COPY (SELECT ...) TO STDOUT | COPY ... FROM STDIN` pipe of the same rows in the same run, and the workers'
peak memory.

    .venv/bin/python -m bench.ingest [--quick] [--workers 2] [--runs 3]

The pipe is the physical ceiling of moving these rows between two databases on this machine: it runs with as many
parallel streams as the pipeline has worker processes. Targets: the pipeline at least half the pipe's rows/s, each
worker process under 300 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import threading
import time

import psutil

from bench.common import BENCH_DATABASE, ROOT, bench_environment, report
from bench.stack import COUNTRIES, SourceDatabases, backfill, warehouse_reset

INSERT_BATCH = 1000
DEFAULT_WORKERS = 2
# Single runs of the same code ranged from 0.30 to 0.43 in one afternoon (autovacuum, the host's other tenants).
DEFAULT_RUNS = 3


def student_factory(seed: int = 2018):
    """The simulator's factory of realistic students (from the shared PISA sample), serials counted in memory."""
    from django.conf import settings

    from simulator.selectors import codebook_specs
    from simulator.students import StudentFactory

    shared = settings.PISA_SHARED_DIR / "pisa2018"
    return StudentFactory(seed=seed, specs=codebook_specs(), sample_path=shared / "students_sample.csv",
                          country_means_path=settings.PISA_COUNTRY_MEANS_PATH)


def provision(rows_per_source: int, *, url_template: str, created_at=None) -> dict:
    """20 real source databases (`url_template` with {code}) with `rows_per_source` synthetic students each,
    registered as sources; `created_at` for every row instead of the time of the insert."""
    from simulator.selectors import codebook_specs
    from simulator.services import responses_insert, source_provision

    specs = codebook_specs()
    factory = student_factory()
    handles = {}
    for code in COUNTRIES:
        handle = source_provision(code=code, name=code, url_template=url_template, specs=specs, style="typed")
        with handle.engine.begin() as connection:
            connection.exec_driver_sql("TRUNCATE responses RESTART IDENTITY")
        for start in range(0, rows_per_source, INSERT_BATCH):
            responses_insert(engine=handle.engine, table=handle.table, created_at=created_at,
                             rows=factory.students(code, min(INSERT_BATCH, rows_per_source - start)))
        settle_statistics(handle)
        handles[code] = handle
        print(f"  source {code}: {rows_per_source:,} rows", flush=True)
    return handles


class MachineCpu:
    """The machine's busy CPU-seconds (every process: workers, PostgreSQL's backends, this one) over a block, and
    its share of what the cores could give over the same wall time. On a quiet machine it says where a phase's time
    went: a busy share near 1 means CPU-bound, well below 1 means waiting."""

    def __enter__(self):
        self._busy, self._wall = self._busy_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        self.busy_seconds = self._busy_seconds() - self._busy
        self.wall_seconds = time.perf_counter() - self._wall
        self.busy_share = self.busy_seconds / (self.wall_seconds * (psutil.cpu_count() or 1))

    @staticmethod
    def _busy_seconds() -> float:
        times = psutil.cpu_times()
        # Not busy here: idle, waiting for I/O, and time the hypervisor gave to other machines (steal).
        return sum(times) - times.idle - sum(getattr(times, name, 0.0) for name in ("iowait", "steal", "guest",
                                                                                     "guest_nice"))


class CpuByRole:
    """CPU-seconds per kind of process over a block, to say which side of a phase costs what: the worker processes,
    the warehouse's backends, the sources' backends, PostgreSQL's own processes (autovacuum, WAL writer,
    checkpointer) and this process (the pipe's streams are its threads).

    Processes come and go within a phase (a stream's connections close as it ends), so a thread samples every process
    every SAMPLE_SECONDS and a process that has gone counts with its last sample: at most that much of its CPU is
    missed."""

    SAMPLE_SECONDS = 0.25

    def __init__(self, *, warehouse_database: str, source_prefix: str) -> None:
        self.warehouse_database, self.source_prefix = warehouse_database, source_prefix
        self._seen: dict[int, list] = {}  # pid -> [role, cpu when first seen, cpu when last seen]
        self._stopped = threading.Event()

    def _role(self, process: psutil.Process) -> str:
        command = " ".join(process.cmdline())
        if command.startswith("postgres:"):
            # A backend's title is "postgres: <user> <database> <client> <state>"; the server's own processes have no
            # client ("postgres: autovacuum worker", "postgres: walwriter").
            words = command.split()
            database = words[2] if len(words) > 3 else ""
            if database == self.warehouse_database:
                return "warehouse_backends"
            if database.startswith(self.source_prefix):
                return "source_backends"
            return "postgres_own"
        if process.pid == os.getpid():
            return "benchmark"
        if "celery" in command and "worker" in command:
            return "workers"
        return "other"

    def _sample(self, *, first: bool = False) -> None:
        for process in psutil.process_iter():
            try:
                times = process.cpu_times()
                cpu = times.user + times.system
                entry = self._seen.get(process.pid)
                if entry is None:
                    # A process born during the phase spent all its CPU in it.
                    self._seen[process.pid] = [self._role(process), cpu if first else 0.0, cpu]
                else:
                    entry[2] = cpu
                    if entry[0] == "other":  # a new backend shows the server's command line until it sets its title
                        entry[0] = self._role(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass

    def _run(self) -> None:
        while not self._stopped.wait(self.SAMPLE_SECONDS):
            self._sample()

    def __enter__(self):
        self._sample(first=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        self._thread.join()
        self._sample()

    def per_1000_rows(self, rows: int) -> dict[str, float]:
        seconds: dict[str, float] = {}
        for role, first, last in self._seen.values():
            seconds[role] = seconds.get(role, 0.0) + last - first
        return {role: round(cpu / rows * 1000, 3) for role, cpu in sorted(seconds.items()) if cpu >= 0.005}


def settle_statistics(handle) -> None:
    """VACUUM ANALYZE a freshly filled source table, as its server's autovacuum would soon after, then keep
    autovacuum off it. Otherwise autovacuum analyses the 20 new 1,120-column tables (seconds of CPU each) in the middle
    of the measurement, as it did: most of the source server's CPU during the pipeline phase, charging one side of
    the comparison for the setup. The inserting sessions go first: their table statistics reach the server when they
    end, and would otherwise count the inserts again after the ANALYZE."""
    handle.engine.dispose()
    with handle.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE responses")
        connection.exec_driver_sql("ALTER TABLE responses SET (autovacuum_enabled = false)")


def copy_pipe(handles: dict, streams: int) -> float:
    """Seconds to pipe every source's rows into same-shaped tables of the warehouse, `streams` at a time."""
    from django.db import connection

    warehouse_dsn = connection.get_connection_params()
    import psycopg2

    with psycopg2.connect(**warehouse_dsn) as conn, conn.cursor() as cursor:
        for code, handle in handles.items():
            # Same columns and types, no constraint or index: the cheapest possible target.
            columns = ", ".join(f'"{column.name}" {column.type.compile(handle.engine.dialect)}'
                                for column in handle.table.columns)
            cursor.execute(f"DROP TABLE IF EXISTS pipe_{code.lower()}")
            # Autovacuum off: it would analyse them during the pipeline's run (scaffolding, not either side's work).
            cursor.execute(f"CREATE TABLE pipe_{code.lower()} ({columns}) WITH (autovacuum_enabled = false)")
    pending = list(handles.items())
    lock = threading.Lock()

    def stream():
        target = psycopg2.connect(**warehouse_dsn)
        while True:
            with lock:
                if not pending:
                    break
                code, handle = pending.pop()
            source = handle.engine.raw_connection()
            buffer = io.BytesIO()
            with source.cursor() as cursor:
                cursor.copy_expert("COPY (SELECT * FROM responses) TO STDOUT", buffer)
            source.close()
            buffer.seek(0)
            with target.cursor() as cursor:
                cursor.copy_expert(f"COPY pipe_{code.lower()} FROM STDIN", buffer)
            target.commit()
        target.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=stream) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def run_pipeline(total: int, workers: int, *, measure=contextlib.nullcontext) -> tuple[float, dict[int, float]]:
    """Seconds until the warehouse holds every row, with `workers` Celery worker processes; peak RSS per process.
    `measure()` is a context manager around the backfill alone: from the workers answering to the last row loaded
    (their start and stop are not the pipeline's work)."""

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "pisa_site", "worker", "--queues", "ingestion", "--concurrency",
         str(workers), "--hostname", "bench@%h", "--loglevel", os.environ.get("BENCH_WORKER_LOG_LEVEL", "WARNING"),
         "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env)
    from pisa_site.celery import app

    peaks: dict[int, float] = {}

    def sample_memory() -> None:
        for child in psutil.Process(worker.pid).children(recursive=True):
            try:
                peaks[child.pid] = max(peaks.get(child.pid, 0.0), child.memory_info().rss / 2**20)
            except psutil.NoSuchProcess:
                pass

    try:
        while not app.control.ping(destination=[f"bench@{os.uname().nodename}"], timeout=0.5):
            time.sleep(0.2)
        with measure():
            seconds = backfill(total, while_waiting=sample_memory)
        return seconds, peaks
    finally:
        worker.terminate()
        worker.wait()


def warehouse_settle() -> None:
    """Before each phase, outside its timing: vacuum and analyse the warehouse's tables (after a pipeline phase
    autovacuum would otherwise process its 100,000 new rows during the next pipe) and write the dirty buffers out
    (a phase would otherwise pay for the checkpoint of the one before)."""
    from django.db import connection

    from ingestion.models import Student, StudentChange

    with connection.cursor() as cursor:
        for model in (Student, StudentChange):
            cursor.execute(f"VACUUM ANALYZE {model._meta.db_table}")
        cursor.execute("CHECKPOINT")


def measure_once(handles: dict, total: int, workers: int) -> dict:
    """A pipe phase, a pipeline phase on an empty warehouse, and a second pipe phase: their figures, side by side.

    The pipeline is compared with the mean of the two pipes around it. On this shared host the CPU a phase gets
    drifts within a minute (the same code's ratio ranged from 0.40 to 0.58 in one afternoon when it was compared with
    a single pipe before it); bracketing cancels a drift that is steady over the run and shows one that is not
    (`pipe_rows_per_second_before_after`)."""
    roles = {"warehouse_database": BENCH_DATABASE, "source_prefix": "pisa_bench_src_"}

    def pipe(when: str):
        print(f"  pipe (baseline, {when})...", flush=True)
        warehouse_settle()
        with MachineCpu() as pipe_cpu, CpuByRole(**roles) as pipe_roles:
            seconds = copy_pipe(handles, workers)
        return seconds, pipe_cpu, pipe_roles

    pipes = [pipe("before")]
    print("  pipeline...", flush=True)
    warehouse_settle()
    pipeline_cpu, pipeline_roles = MachineCpu(), CpuByRole(**roles)

    @contextlib.contextmanager
    def measure_pipeline():
        with pipeline_cpu, pipeline_roles:
            yield

    pipeline_seconds, peaks = run_pipeline(total, workers, measure=measure_pipeline)
    pipes.append(pipe("after"))
    pipe_seconds = sum(seconds for seconds, _, _ in pipes) / len(pipes)
    pipe_busy = sum(cpu.busy_seconds for _, cpu, _ in pipes) / len(pipes)
    pipe_share = sum(cpu.busy_share for _, cpu, _ in pipes) / len(pipes)
    pipe_by_role: dict[str, float] = {}
    for _, _, by_role in pipes:
        for role, value in by_role.per_1000_rows(total).items():
            pipe_by_role[role] = pipe_by_role.get(role, 0.0) + value / len(pipes)
    pipe_by_role = {role: round(value, 3) for role, value in pipe_by_role.items()}
    pipe_rate, pipeline_rate = total / pipe_seconds, total / pipeline_seconds
    figures = {
        "pipe_seconds": round(pipe_seconds, 2), "pipe_rows_per_second": round(pipe_rate),
        "pipe_rows_per_second_before_after": [round(total / seconds) for seconds, _, _ in pipes],
        "pipeline_seconds": round(pipeline_seconds, 2), "pipeline_rows_per_second": round(pipeline_rate),
        "ratio_pipeline_over_pipe": round(pipeline_rate / pipe_rate, 3),
        # Where the time goes: machine-wide busy CPU per 1,000 rows, and how busy the cores were (1 = saturated).
        "pipe_cpu_seconds_per_1000_rows": round(pipe_busy / total * 1000, 3),
        "pipeline_cpu_seconds_per_1000_rows": round(pipeline_cpu.busy_seconds / total * 1000, 3),
        "pipe_cpu_busy_share": round(pipe_share, 2),
        "pipeline_cpu_busy_share": round(pipeline_cpu.busy_share, 2),
        # The same CPU by kind of process (the pipe's streams are threads of the benchmark process).
        "pipe_cpu_seconds_per_1000_rows_by_role": pipe_by_role,
        "pipeline_cpu_seconds_per_1000_rows_by_role": pipeline_roles.per_1000_rows(total),
        "peak_worker_rss_mb": round(max(peaks.values()), 1) if peaks else None,
    }
    print(f"  ratio {figures['ratio_pipeline_over_pipe']} (pipe before/after: "
          f"{figures['pipe_rows_per_second_before_after']} rows/s)", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500 rows per source instead of 5,000, one run")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="worker processes (and pipe streams)")
    parser.add_argument("--runs", type=int, help=f"pipe, pipeline, pipe phases (default {DEFAULT_RUNS}); "
                                                 "the run with the median ratio is reported")
    args = parser.parse_args()
    rows_per_source = 500 if args.quick else 5_000
    runs = args.runs or (1 if args.quick else DEFAULT_RUNS)
    total = rows_per_source * len(COUNTRIES)
    with bench_environment(), SourceDatabases("pisa_bench_src_") as sources:
        print(f"provisioning {len(COUNTRIES)} sources...", flush=True)
        handles = provision(rows_per_source, url_template=sources.template)
        measured = []
        for run in range(runs):
            print(f"run {run + 1} of {runs}", flush=True)
            if run:
                warehouse_reset()
            measured.append(measure_once(handles, total, args.workers))
        for handle in handles.values():
            handle.dispose()
    ratios = [figures["ratio_pipeline_over_pipe"] for figures in measured]
    median_run = sorted(measured, key=lambda figures: figures["ratio_pipeline_over_pipe"])[len(measured) // 2]
    report("ingest", {
        "what": f"backfill of {total:,} rows (1,120 columns) from {len(COUNTRIES)} sources, "
                f"{args.workers} worker processes / pipe streams; the median of {runs} run(s), each a pipeline phase on "
                "an empty warehouse between two pipe phases (compared with their mean)",
        "rows": total,
        **median_run,
        "ratio_of_each_run": ratios,
        "target_ratio": ">= 0.5",
        "peak_worker_rss_mb_of_all_runs": max(figures["peak_worker_rss_mb"] or 0 for figures in measured),
        "target_peak_rss_mb": "< 300",
    }, quick=args.quick)


if __name__ == "__main__":
    main()
