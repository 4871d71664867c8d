"""A scripted chaos scenario against a running stack (`make run`): the service behind `manage.py chaos`.

While the simulator feeds the sources, it does to the stack what production will, one fault after the other, and
watches the pipeline react to each:

1. **kill-worker**: a backlog of rows lands in one source; once its sync task has committed some batches, the pool
   process running it gets SIGKILL (found through the workers' `inspect active` and checked against the stack's
   worker processes, psutil). The message is redelivered and the backlog must load in full.
2. **restart-redis**: the broker's Redis (the embedded one of `PISA_HOME`) is stopped and started again; rows
   inserted afterwards must reach the warehouse without anyone restarting a worker or beat. An external Redis
   cannot be restarted from here: the step says so and is skipped.
3. **source-outage**: a source database refuses connections (`ALLOW_CONNECTIONS false`, its sessions ended) for a
   while; the pipeline must notice, back off, and catch up once it is back.
4. **empty-source**: a source is truncated (the simulator goes on writing to it); its old rows must leave.
5. **bad-rows**: rows with each problem the source's style can hold; they must be quarantined, the duplicate
   CNTSTUIDs recorded.
6. **late-transaction**: rows committed seconds after newer ones; they must not be missed.
7. **update-delete**: rows changed in place and deleted, including the row that superseded an injected duplicate
   (its predecessor must become the student again).
8. **late-insert-delete**: one transaction, held open, inserts a row dated before the look-back window and deletes
   another: the row count does not move, yet the new row must load and the deleted one leave.
9. **delete-newest**: the source's newest row is deleted: it must leave the warehouse, and the country's published
   figures must never show it half-loaded meanwhile (the pipeline once forgot and reloaded such a country).

The bad rows include hostile values (a negative or absurd weight, plausible values of 1e9) that only the plausibility
rules refuse; the country's figures must not go stale. While Redis is down (restart-redis), the API must answer with
a JSON 503, never an HTML page.

Then it pauses the simulator, waits for the pipeline to settle, runs the same comparison as `manage.py verify` and
`metrics rebuild --verify`, resumes the simulator, and reports. The outcome is a failure on any loss, duplicate or
difference, or when the pipeline did not recover from a fault within its deadline.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import sqlalchemy as sa
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from ingestion.models import DuplicateStudent, QuarantinedRow, Source, SourceState, Student, StudentChange
from ingestion.verification import Verification, verify_sources
from metrics.services import countries_with_data, country_metrics_rebuild
from pisa_site import embedded
from ingestion.source_urls import with_installed_driver
from simulator.schema import table_style
from simulator.selectors import codebook_specs, simulator_control_get
from simulator.services import (
    UPDATE_PV_DELTA, SourceHandle, injection_bad_rows, injection_delete, injection_late, injection_update,
    simulator_control_set, source_empty, source_open, source_outage_begin, source_outage_end,
    student_factory_for_sources, students_insert,
)

# How often the scenario looks at the warehouse while it waits for the pipeline.
POLL_SECONDS = 0.25
# The rows the scenario adds come from the simulator's factory (CNTSTUIDs from the same shared serials).
CHAOS_SEED = 8118
# The simulator reads its control row every tick (0.5 s); a batch it began before the pause may commit after it.
SIMULATOR_PAUSE_MARGIN_SECONDS = 2.0
INSPECT_TIMEOUT_SECONDS = 1.0
# A backlog can finish loading before a kill lands (a fast machine, a small --backlog): try again, twice as large.
KILL_ATTEMPTS = 3
BAD_ROWS = 14  # each problem at least twice (the injection cycles through the 6 or 7 the style can hold)
LATE_ROWS = 5
UPDATED_ROWS = 5
DELETED_ROWS = 5
RESUME_PROBE_ROWS = 5

# Steps that act on one source each; bad rows and the updates and deletes share one (see `_assign`).
SOURCE_ROLES = ("kill-worker", "restart-redis", "source-outage", "empty-source", "late-transaction",
                "late-insert-delete", "delete-newest")
# How long the published figures of a country are watched after its newest row is deleted.
WATCH_SECONDS = 5.0


@dataclass(frozen=True)
class ChaosPlan:
    """How hard and how long. `FULL` is the default of `manage.py chaos`, `QUICK` its `--quick` (and CI's)."""

    outage_seconds: float = 60.0
    redis_down_seconds: float = 5.0
    late_hold_seconds: float = 10.0
    backlog_rows: int = 20_000
    # Deadlines for the pipeline to react to one fault, and to settle at the end; generous, never an assertion of speed.
    step_timeout_seconds: float = 180.0
    settle_timeout_seconds: float = 300.0


FULL = ChaosPlan()
QUICK = ChaosPlan(outage_seconds=5.0, redis_down_seconds=1.0, late_hold_seconds=2.0, backlog_rows=4000,
                  step_timeout_seconds=90.0, settle_timeout_seconds=120.0)


class ChaosError(RuntimeError):
    """The scenario cannot run (no stack found, no source): the message says what is missing."""


class StepFailed(RuntimeError):
    """The pipeline did not do what a step waits for within its deadline."""


class StackBroken(StepFailed):
    """A process of the stack (an ingest worker, beat) exited during the scenario: nothing after can be trusted."""


class StepSkipped(RuntimeError):
    """A step that cannot be done here (an external Redis); the message says why."""


@dataclass
class StepOutcome:
    name: str
    status: str = "running"  # done, skipped or failed
    source: str = ""
    started_at: str = ""
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)


@dataclass
class ChaosReport:
    started_at: str
    steps: list[StepOutcome] = field(default_factory=list)
    verification: dict | None = None
    verify_attempts: int = 0
    metrics_differences: dict[str, list[str]] = field(default_factory=dict)
    metrics_countries: int = 0
    seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        problems = [f"{step.name} failed: {step.lines[-1] if step.lines else ''}" for step in self.steps
                    if step.status == "failed"]
        if self.verification is None:
            problems.append("verify did not run")
        elif not self.verification["ok"]:
            total = self.verification["total"]
            problems.append("verify: " + (total["error"] or ", ".join(
                f"{total[kind]} {kind}" for kind in ("missing", "extra", "differing", "duplicated"))))
        problems += [f"metrics of {country} differ from a rebuild" for country in self.metrics_differences]
        return problems

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "failures": self.failures}


# --- the stack ---------------------------------------------------------------------------------------------------

def _redis_address(url: str) -> tuple[str, int, int]:
    """(host, port, database number) of a redis:// URL; 127.0.0.1 and localhost are the same host."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    host = "127.0.0.1" if host in {"localhost", "::1"} else host
    return host, parts.port or 6379, int(parts.path.strip("/") or 0)


def _broker_of(environ: dict[str, str]) -> tuple[str, int, int] | None:
    """The broker a product process uses, worked out from its environment the way settings.py does."""
    if environ.get("CELERY_BROKER_URL"):
        return _redis_address(environ["CELERY_BROKER_URL"])
    if environ.get("REDIS_URL"):
        host, port, db = _redis_address(environ["REDIS_URL"])
        return host, port, db + 1
    home = environ.get("PISA_HOME")
    if home:  # settings found the embedded servers of its PISA_HOME
        port = _embedded_redis_port(Path(home))
        return ("127.0.0.1", port, embedded.BROKER_REDIS_DB) if port else None
    return None


def _celery_role(cmdline: list[str]) -> str | None:
    """'worker' or 'beat' for a `celery ... worker|beat` command line (not a shell wrapping one), else None."""
    words = [os.path.basename(word) for word in cmdline]
    if "celery" not in words:
        return None
    return next((word for word in words if word in {"worker", "beat"}), None)


def _worker_queues(cmdline: list[str]) -> set[str]:
    for index, word in enumerate(cmdline):
        if word in {"--queues", "-Q"} and index + 1 < len(cmdline):
            return set(cmdline[index + 1].split(","))
        if word.startswith("--queues="):
            return set(word.split("=", 1)[1].split(","))
    return {settings.CELERY_TASK_DEFAULT_QUEUE}


@dataclass
class Stack:
    """The processes and servers of the running stack this checkout's settings point at."""

    broker_url: str
    ingest_workers: list[psutil.Process]  # the main process of each worker consuming the ingestion queue
    beat: list[psutil.Process]
    simulators: list[psutil.Process]
    embedded_redis: embedded.EmbeddedRedis | None

    def pool_children(self) -> dict[int, psutil.Process]:
        children = {}
        for worker in self.ingest_workers:
            with contextlib.suppress(psutil.Error):
                children.update({child.pid: child for child in worker.children()})
        return children


def stack_find(*, broker_url: str | None = None) -> Stack:
    """Find the stack's Celery workers, beat and simulator by what they run and which broker their environment
    names (other stacks on the machine use other brokers and are never touched), and whether the broker is this
    PISA_HOME's embedded Redis (which can be restarted from here)."""
    broker_url = broker_url or settings.CELERY_BROKER_URL
    ours = _redis_address(broker_url)
    found: dict[str, list[psutil.Process]] = {"worker": [], "beat": [], "simulate": []}
    me = os.getpid()
    for process in psutil.process_iter(["pid", "ppid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        role = _celery_role(cmdline)
        if role is None and "manage.py" in " ".join(cmdline) and "simulate" in cmdline:
            role = "simulate"
        if role is None or process.pid == me:
            continue
        try:
            environ = process.environ()
        except psutil.Error:
            continue  # another user's process: not ours to touch
        if role == "simulate":
            if environ.get("DATABASE_URL", "") and _same_database(environ["DATABASE_URL"]):
                found["simulate"].append(process)
            continue
        if _broker_of(environ) != ours:
            continue
        if role == "worker":
            # Pool processes are forks of their worker, with its command line: keep the worker itself.
            is_pool_child = _celery_role(_cmdline_of(process.info["ppid"])) == "worker"
            if not is_pool_child and "ingestion" in _worker_queues(cmdline):
                found["worker"].append(process)
        else:
            found["beat"].append(process)
    redis = embedded.EmbeddedRedis(settings.PISA_HOME)
    port = _embedded_redis_port(redis.home)
    is_embedded = port is not None and ours[:2] == ("127.0.0.1", port) and redis.is_running()
    return Stack(broker_url=broker_url, ingest_workers=found["worker"], beat=found["beat"],
                 simulators=found["simulate"], embedded_redis=redis if is_embedded else None)


def _embedded_redis_port(home: Path) -> int | None:
    """The port an embedded Redis of that PISA_HOME was given, if it ever ran (EmbeddedRedis.port would pick one)."""
    return embedded.known_port(home / "redis.port")


def _cmdline_of(pid: int | None) -> list[str]:
    try:
        return psutil.Process(pid).cmdline() if pid else []
    except psutil.Error:
        return []


def _same_database(url: str) -> bool:
    db = settings.DATABASES["default"]
    parts = urlsplit(url)
    host = "127.0.0.1" if parts.hostname in {"localhost", None} else parts.hostname
    ours = "127.0.0.1" if db["HOST"] in {"localhost", "", None} else db["HOST"]
    return (host, str(parts.port or 5432), parts.path.strip("/")) == (ours, str(db["PORT"] or 5432), db["NAME"])


# --- the scenario ------------------------------------------------------------------------------------------------

def _safe(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


class ChaosRun:
    def __init__(self, *, stack: Stack, plan: ChaosPlan, sources: list[Source], say: Callable[[str], None]) -> None:
        if not sources:
            raise ChaosError("no enabled source: start the stack with `make run` (its simulator creates 20)")
        if not stack.ingest_workers:
            raise ChaosError(f"no Celery worker consumes the ingestion queue of the broker {_safe(stack.broker_url)}: "
                             "start the stack with `make run` first")
        if not stack.beat:
            raise ChaosError(f"no Celery beat uses the broker {_safe(stack.broker_url)}: without it nothing is "
                             "synced; start the stack with `make run` first")
        self.stack = stack
        self.plan = plan
        self.say_line = say
        self.started = time.monotonic()
        self.report = ChaosReport(started_at=timezone.now().isoformat(timespec="seconds"))
        self.specs = codebook_specs()
        self.factory = student_factory_for_sources(seed=CHAOS_SEED, specs=self.specs)
        self.targets = self._assign(sources)
        self.step: StepOutcome | None = None
        self.faults_done_at: dt.datetime | None = None
        self.duplicate: tuple[int, int] | None = None  # (kept row id, CNTSTUID) of the injected duplicates

    # --- output ---
    def say(self, message: str) -> None:
        stamp = f"[{timezone.localtime():%H:%M:%S} +{time.monotonic() - self.started:6.1f}s]"
        self.say_line(f"{stamp} {message}")
        if self.step is not None:
            self.step.lines.append(message)

    # --- choosing sources ---
    def _assign(self, sources: list[Source]) -> dict[str, Source]:
        """One source per fault where there are enough (cycling otherwise). Bad rows go to a text-style source when
        there is one, because only text can hold text in a numeric column; the updates and deletes go to the same
        source, so that one of them can delete the row that superseded an injected duplicate."""
        ordered = sorted(sources, key=lambda source: source.code)
        text_source = next((source for source in ordered if _source_style(source) == "text"), None)
        others = [source for source in ordered if source != text_source] or ordered
        targets = {role: others[index % len(others)] for index, role in enumerate(SOURCE_ROLES)}
        targets["bad-rows"] = targets["update-delete"] = text_source or others[len(SOURCE_ROLES) % len(others)]
        return targets

    # --- running ---
    def run(self) -> ChaosReport:
        self.say(f"Chaos scenario on {len(self.stack.ingest_workers)} ingest worker(s) "
                 f"(pids {', '.join(str(p.pid) for p in self.stack.ingest_workers)}), beat pid "
                 f"{self.stack.beat[0].pid}, broker {_safe(self.stack.broker_url)}"
                 f"{' (embedded Redis)' if self.stack.embedded_redis else ''}")
        self.say("Targets: " + ", ".join(f"{role} {source.code}" for role, source in self.targets.items()))
        was_paused = simulator_control_get().paused
        if not self.stack.simulators:
            self.say("warning: no `manage.py simulate` process of this warehouse found: the sources do not grow "
                     "during the scenario (start the stack with `make run`)")
        if was_paused:
            self.say("The simulator was paused: resuming it for the scenario")
            simulator_control_set(paused=False)
        try:
            for name, action in (("kill-worker", self.kill_worker), ("restart-redis", self.restart_redis),
                                 ("source-outage", self.source_outage), ("empty-source", self.empty_source),
                                 ("bad-rows", self.bad_rows), ("late-transaction", self.late_transaction),
                                 ("update-delete", self.update_delete),
                                 ("late-insert-delete", self.late_insert_delete),
                                 ("delete-newest", self.delete_newest)):
                self._run_step(name, action)
            self.faults_done_at = timezone.now()
            self._run_step("settle", self.settle)
            self._run_step("verify", self.verify)
            self._run_step("metrics-verify", self.metrics_verify)
        except StackBroken:
            self.say("The scenario stops: a process of the stack is gone (see its log); start the stack again")
        finally:
            simulator_control_set(paused=was_paused)
            self.say(f"The simulator is {'paused again' if was_paused else 'feeding the sources again'}")
        self.report.seconds = time.monotonic() - self.started
        return self.report

    def _run_step(self, name: str, action: Callable[[Source], None]) -> None:
        source = self.targets.get(name)
        self.step = StepOutcome(name=name, source=source.code if source else "",
                                started_at=timezone.localtime().isoformat(timespec="seconds"))
        self.report.steps.append(self.step)
        began = time.monotonic()
        self.say(f"== {name}" + (f" ({source.code})" if source else ""))
        try:
            action(source)
            self.step.status = "done"
        except StepSkipped as exc:
            self.step.status = "skipped"
            self.say(f"skipped: {exc}")
        except StepFailed as exc:
            self.step.status = "failed"
            self.say(f"FAILED: {exc}")
            if isinstance(exc, StackBroken):
                raise
        except Exception as exc:  # noqa: BLE001 - a fault that broke the scenario itself: report it and go on
            self.step.status = "failed"
            self.say(f"FAILED: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
        finally:
            self.step.seconds = round(time.monotonic() - began, 1)
            self.step = None
            close_old_connections()

    def wait_for(self, condition: Callable[[], object], *, timeout: float, what: str) -> float:
        """Wait until `condition()` is true; the seconds it took. StepFailed after `timeout`, StackBroken as soon as
        a worker or beat has exited (waiting on would only run out every later step's deadline too)."""
        def stack_alive_and_condition() -> object:
            self._check_stack()
            return condition()

        seconds = poll_until(stack_alive_and_condition, timeout=timeout)
        if seconds is None:
            raise StepFailed(f"{what}: not after {timeout:g} s")
        return seconds

    def _check_stack(self) -> None:
        for role, processes in (("ingest worker", self.stack.ingest_workers), ("beat", self.stack.beat)):
            for process in processes:
                if not _is_alive(process):
                    raise StackBroken(f"the {role} pid {process.pid} exited during the scenario")

    def _open(self, source: Source) -> SourceHandle:
        return source_open(source)

    # --- 1. SIGKILL mid-batch ---
    def kill_worker(self, source: Source) -> None:
        backlog = self.plan.backlog_rows
        for attempt in range(1, KILL_ATTEMPTS + 1):
            ids, landed = self._kill_mid_backlog(source, backlog)
            if landed is not None:
                break
            if attempt == KILL_ATTEMPTS:
                raise StepFailed(f"each of {KILL_ATTEMPTS} backlogs loaded before a kill could land mid-run: use a "
                                 "larger --backlog")
            backlog *= 2
            self.say(f"the backlog loaded before a kill could land mid-run: again with {backlog:,} rows")
        victim, task_id, _ = landed

        def loaded() -> int:
            # By id, not by range: the simulator, writing to the same source meanwhile, can take ids in between.
            return Student.objects.filter(source=source, source_row_id__in=ids).count()

        redelivered = []

        def recovered() -> bool:
            # The same task in another process (until the worker notices the death, it still reports the dead one).
            if not redelivered and (again := self._running_sync(source)) is not None and again[1] == task_id \
                    and again[0] != victim:
                redelivered.append(again[0])
            return loaded() == len(ids)

        seconds = self.wait_for(recovered, timeout=self.plan.step_timeout_seconds,
                                what=f"the {len(ids):,} backlog rows of {source.code} in the warehouse after the kill")
        if redelivered:
            how = f"its message was redelivered (task {task_id} ran again in pool process {redelivered[0]})"
        elif seconds >= settings.INGEST_SYNC_LOCK_SECONDS:
            how = (f"task {task_id} was not seen running again, so a later sync took over once the source's lock "
                   f"had expired (INGEST_SYNC_LOCK_SECONDS={settings.INGEST_SYNC_LOCK_SECONDS})")
        else:
            how = f"task {task_id} was not seen running again (a redelivery too quick to catch, or a later sync)"
        self.say(f"recovered: all {len(ids):,} rows loaded {seconds:.1f} s after the kill; {how}")

    def _kill_mid_backlog(self, source: Source, rows: int) -> tuple[list[int], tuple[int, str, int] | None]:
        """Insert a backlog of `rows` into the source and SIGKILL the pool process syncing it once some but not all of
        it is committed: (the backlog's ids, (victim pid, task id, rows committed at the kill) or None when the whole
        backlog was committed before a kill could land)."""
        handle = self._open(source)
        try:
            ids = students_insert(handle=handle, factory=self.factory, specs=self.specs, count=rows)
        finally:
            handle.dispose()
        first, last = min(ids), max(ids)
        self.say(f"inserted a backlog of {len(ids):,} rows into {source.code} in one transaction (ids {first}-{last})")

        def loaded() -> int:
            return Student.objects.filter(source=source, source_row_id__in=ids).count()

        began = time.monotonic()
        while True:
            self._check_stack()
            if time.monotonic() - began > self.plan.step_timeout_seconds:
                raise StepFailed(f"no sync of {source.code} seen running within {self.plan.step_timeout_seconds:g} s")
            done = loaded()
            if done >= len(ids):
                return ids, None
            # Mid-run: at least one batch committed, the task still running in a pool process of the stack's.
            running = self._running_sync(source) if done > 0 else None
            if running is None:
                time.sleep(POLL_SECONDS / 5)
                continue
            # Asking the workers takes a while, in which the task may have committed its last batch: count again.
            victim, task_id = running
            done = loaded()
            if done >= len(ids):
                return ids, None
            os.kill(victim, signal.SIGKILL)
            self.say(f"SIGKILL to pool process {victim}, running sync_source({source.code}) (task {task_id}) with "
                     f"{done:,} of {len(ids):,} backlog rows committed")
            return ids, (victim, task_id, done)

    def _running_sync(self, source: Source) -> tuple[int, str] | None:
        """(pid, task id) of the stack's pool process running a sync of this source, from the workers' own report."""
        from pisa_site.celery import app

        try:
            active = app.control.inspect(timeout=INSPECT_TIMEOUT_SECONDS, limit=len(self.stack.ingest_workers)
                                         ).active() or {}
        except Exception as exc:  # noqa: BLE001 - a broker hiccup: look again
            self.say(f"inspect failed ({type(exc).__name__}); trying again")
            return None
        children = self.stack.pool_children()
        for tasks in active.values():
            for task in tasks:
                if task.get("name") != "ingestion.sync_source":
                    continue
                if (task.get("kwargs") or {}).get("code") == source.code or (task.get("args") or [None])[0] == source.pk:
                    pid = task.get("worker_pid")
                    return (pid, task.get("id")) if pid in children else None
        return None

    # --- 2. Redis restart ---
    def restart_redis(self, source: Source) -> None:
        redis = self.stack.embedded_redis
        if redis is None:
            raise StepSkipped(
                f"the broker {_safe(self.stack.broker_url)} is not the embedded Redis of {settings.PISA_HOME}: an "
                "external Redis (a system service, a managed one) cannot be restarted from here. Restart it by hand "
                "(e.g. `sudo systemctl restart redis-server`) while the stack runs to see the same recovery.")
        old_pid = redis.pid()
        redis.stop()
        self.say(f"stopped the embedded Redis (pid {old_pid}, port {redis.port}): broker, locks and metrics cache "
                 f"are gone for {self.plan.redis_down_seconds:g} s")
        down_until = time.monotonic() + self.plan.redis_down_seconds
        answer = _api_answer("/api/v1/metrics/")
        time.sleep(max(0.0, down_until - time.monotonic()))
        redis.start()
        if answer[0] != 503 or answer[1] != "application/json":
            raise StepFailed(f"while Redis was down, GET /api/v1/metrics/ answered {answer[0]} {answer[1]}, not a JSON "
                             "503")
        self.say(f"while it was down, GET /api/v1/metrics/ answered 503 JSON: {answer[2][:120]}")
        restarted_at = timezone.now()
        self.say(f"started it again (pid {redis.pid()}), same port and append-only file; no other process restarted")
        handle = self._open(source)
        try:
            ids = students_insert(handle=handle, factory=self.factory, specs=self.specs, count=RESUME_PROBE_ROWS)
        finally:
            handle.dispose()
        seconds = self.wait_for(
            lambda: Student.objects.filter(source=source, source_row_id__in=ids).count() == len(ids),
            timeout=self.plan.step_timeout_seconds,
            what=f"{len(ids)} rows inserted into {source.code} after the restart in the warehouse")
        self.say(f"{len(ids)} rows inserted into {source.code} after the restart were loaded {seconds:.1f} s later")
        # Every source, not only the probed one: a sync that was running when Redis went away could not release its
        # lock, which then expires by itself (ingestion.tasks.SYNC_LOCK_SECONDS).
        enabled = Source.objects.filter(enabled=True)
        behind = SourceState.objects.filter(source__in=enabled).exclude(last_success_at__gt=restarted_at)
        self.wait_for(lambda: not behind.exists(), timeout=self.plan.step_timeout_seconds,
                      what="every source synced again after the Redis restart")
        self.say(f"the pipeline resumed by itself: all {enabled.count()} sources synced again, the last "
                 f"{(timezone.now() - restarted_at).total_seconds():.1f} s after the restart")

    # --- 3. a source goes down ---
    def source_outage(self, source: Source) -> None:
        down_at = timezone.now()
        undo = source_outage_begin(source=source)
        self.say(f"{source.code} is down for {self.plan.outage_seconds:g} s (refusing connections, its sessions "
                 f"ended). Should this run die, restore it with: {undo}")
        try:
            state = SourceState.objects.filter(source=source)
            if poll_until(lambda: state.filter(last_error_at__gte=down_at, consecutive_failures__gt=0).exists(),
                          timeout=self.plan.outage_seconds) is not None:
                seen = state.get()
                self.say(f"the pipeline saw it: {seen.last_error.splitlines()[0][:160]} "
                         f"({seen.consecutive_failures} failure(s) so far, backing off)")
            else:
                self.say("the pipeline did not try this source while it was down")
            remaining = self.plan.outage_seconds - (timezone.now() - down_at).total_seconds()
            if remaining > 0:
                time.sleep(remaining)
        finally:
            source_outage_end(source=source)
        up_at = timezone.now()
        self.say(f"{source.code} is back")
        seconds = self.wait_for(
            lambda: SourceState.objects.filter(source=source, last_success_at__gt=up_at,
                                               consecutive_failures=0).exists(),
            timeout=self.plan.step_timeout_seconds, what=f"a successful sync of {source.code} after the outage")
        self.say(f"the pipeline synced {source.code} again {seconds:.1f} s after it came back")

    # --- 4. an emptied source ---
    def empty_source(self, source: Source) -> None:
        handle = self._open(source)
        try:
            with handle.engine.connect() as connection:
                max_id = connection.execute(sa.select(sa.func.max(handle.table.c.id))).scalar() or 0
            injection = source_empty(handle=handle)
        finally:
            handle.dispose()
        before = Student.objects.filter(source=source, source_row_id__lte=max_id).count()
        self.say(f"emptied {source.code}: {injection.details['rows_removed']:,} rows truncated "
                 f"({before:,} of them in the warehouse); the simulator keeps writing to it")
        seconds = self.wait_for(
            lambda: not Student.objects.filter(source=source, source_row_id__lte=max_id).exists(),
            timeout=self.plan.step_timeout_seconds, what=f"the truncated rows of {source.code} out of the warehouse")
        self.say(f"the pipeline removed them in {seconds:.1f} s; "
                 f"{Student.objects.filter(source=source).count():,} newer rows loaded since")

    # --- 5. bad rows ---
    def bad_rows(self, source: Source) -> None:
        handle = self._open(source)
        try:
            injection = injection_bad_rows(handle=handle, factory=self.factory, specs=self.specs, count=BAD_ROWS)
            style = handle.style
        finally:
            handle.dispose()
        rows = injection.details["rows"]
        problems = sorted({row["problem"] for row in rows})
        self.say(f"inserted {len(rows)} bad rows into {source.code} ({style} style): {', '.join(problems)}")
        if "text_in_numeric" not in problems:
            self.say("note: text in a numeric column needs a text-style source; there is none among the targets")
        duplicates = [row for row in rows if row["problem"] == "duplicate_cntstuid"]
        spoiled = [row["id"] for row in rows if row["problem"] != "duplicate_cntstuid"]
        # The duplicates share one CNTSTUID and one created_at: the one with the highest id is the latest, kept.
        kept = max((row["id"] for row in duplicates), default=None)

        def accounted() -> bool:
            quarantined = QuarantinedRow.objects.filter(source=source, source_row_id__in=spoiled).count()
            return quarantined == len(spoiled) and (
                kept is None or Student.objects.filter(source=source, source_row_id=kept).exists())

        seconds = self.wait_for(accounted, timeout=self.plan.step_timeout_seconds,
                                what=f"the bad rows of {source.code} quarantined and the latest duplicate loaded")
        self.say(f"the pipeline quarantined {len(spoiled)} rows with their reasons in {seconds:.1f} s")
        stale = SourceState.objects.filter(source=source).exclude(figures_error="").values_list("figures_error",
                                                                                               flat=True).first()
        if stale:
            raise StepFailed(f"the figures of {source.code} went stale after the bad rows: {stale}")
        if kept is not None:
            superseded = DuplicateStudent.objects.filter(source=source, kept_row_id=kept).count()
            self.duplicate = (kept, duplicates[0]["value"])
            self.say(f"{len(duplicates)} rows repeat CNTSTUID {duplicates[0]['value']}: row {kept} is the student, "
                     f"{superseded} earlier row(s) recorded as superseded")

    # --- 6. a late transaction ---
    def late_transaction(self, source: Source) -> None:
        handle = self._open(source)
        try:
            self.say(f"holding {LATE_ROWS} rows of {source.code} in an open transaction for "
                     f"{self.plan.late_hold_seconds:g} s while newer rows commit")
            injection = injection_late(handle=handle, factory=self.factory, specs=self.specs, count=LATE_ROWS,
                                       hold_seconds=self.plan.late_hold_seconds)
        finally:
            handle.dispose()
        ids = injection.details["ids"]
        self.say(f"committed them (ids {min(ids)}-{max(ids)}, created_at {injection.details['created_at']}) after "
                 f"{len(injection.details['committed_after_ids'])} newer rows")
        seconds = self.wait_for(
            lambda: Student.objects.filter(source=source, source_row_id__in=ids).count() == len(ids),
            timeout=self.plan.step_timeout_seconds, what=f"the late rows of {source.code} in the warehouse")
        self.say(f"the pipeline loaded the late rows {seconds:.1f} s after their commit")

    # --- 7. updates and deletes ---
    def update_delete(self, source: Source) -> None:
        victims = [self.duplicate[0]] if self.duplicate else []
        # The rows the victim superseded: one of them becomes the student again, unless all are gone or quarantined.
        superseded = set(DuplicateStudent.objects.filter(source=source, kept_row_id__in=victims)
                         .values_list("superseded_row_id", flat=True))
        handle = self._open(source)
        try:
            updated = injection_update(handle=handle, count=UPDATED_ROWS)
            deleted = injection_delete(handle=handle, count=DELETED_ROWS, ids=victims)
        finally:
            handle.dispose()
        deleted_ids = deleted.details["ids"]
        # A row whose gender is a missing code and whose PVs are NULL is "updated" to the same values.
        changed = [row["id"] for row in updated.details["rows"]
                   if row["id"] not in deleted_ids and any(old != new for old, new in row["changes"].values())]
        before = dict(Student.objects.filter(source=source, source_row_id__in=changed)
                      .values_list("source_row_id", "raw_md5"))
        self.say(f"updated {len(updated.details['ids'])} rows of {source.code} in place (gender swapped, math PVs "
                 f"+{UPDATE_PV_DELTA:g}) and deleted {len(deleted_ids)}"
                 + (f", among them row {victims[0]}, the student of the duplicated CNTSTUID" if victims else ""))

        def applied() -> bool:
            if Student.objects.filter(source=source, source_row_id__in=deleted_ids).exists():
                return False
            now = dict(Student.objects.filter(source=source, source_row_id__in=list(before))
                       .values_list("source_row_id", "raw_md5"))
            return all(now.get(row_id) != md5 for row_id, md5 in before.items())

        seconds = self.wait_for(applied, timeout=self.plan.step_timeout_seconds + settings.INGEST_RECONCILE_SECONDS,
                                what=f"the updates and deletes of {source.code} applied")
        self.say(f"the pipeline removed the deleted rows and reloaded the {len(before)} updated rows it held in "
                 f"{seconds:.1f} s (updates are found by its content reconciliation, which a PostgreSQL source's "
                 "update counter triggers)")
        heirs = (superseded - set(deleted_ids)
                 - set(QuarantinedRow.objects.filter(source=source).values_list("source_row_id", flat=True)))
        if self.duplicate and not heirs:
            self.say(f"the rows CNTSTUID {self.duplicate[1]} superseded were deleted or quarantined as well: no "
                     "student of it is expected")
        elif self.duplicate:
            _, cntstuid = self.duplicate
            heir = Student.objects.filter(source=source, cntstuid=cntstuid).exclude(source_row_id__in=victims)
            self.wait_for(heir.exists, timeout=self.plan.step_timeout_seconds,
                          what=f"a student for CNTSTUID {cntstuid} again after deleting the row that had superseded "
                               "the others")
            self.say(f"CNTSTUID {cntstuid} is a student again, from its next latest row "
                     f"{heir.values_list('source_row_id', flat=True).first()}")

    # --- 8. a late transaction whose insert and delete cancel in a count ---
    def late_insert_delete(self, source: Source) -> None:
        handle = self._open(source)
        created_at = timezone.now() - dt.timedelta(seconds=settings.INGEST_LOOKBACK_SECONDS + 60)
        try:
            self.say(f"holding an insert (created_at {created_at:%H:%M:%S}, before the look-back window) and a delete "
                     f"in {source.code} open for {self.plan.late_hold_seconds:g} s")
            injection = injection_late(handle=handle, factory=self.factory, specs=self.specs, count=1,
                                       hold_seconds=self.plan.late_hold_seconds, created_at=created_at,
                                       delete_count=1)
        finally:
            handle.dispose()
        [inserted], deleted = injection.details["ids"], injection.details["deleted_ids"]
        self.say(f"committed: row {inserted} in, row(s) {', '.join(map(str, deleted))} out: the row count did not move")
        rows = Student.objects.filter(source=source)
        seconds = self.wait_for(
            lambda: rows.filter(source_row_id=inserted).exists() and not rows.filter(source_row_id__in=deleted).exists(),
            timeout=self.plan.step_timeout_seconds, what=f"the insert and the delete of {source.code} applied")
        self.say(f"the pipeline loaded the inserted row and removed the deleted one {seconds:.1f} s after the commit")

    # --- 9. the newest row deleted ---
    def delete_newest(self, source: Source) -> None:
        from metrics.selectors import country_document

        def published() -> int | None:
            document = country_document(source.code)
            return document["statistics"]["n_students"] if document else None

        handle = self._open(source)
        try:
            with handle.engine.connect() as connection:
                newest = connection.execute(sa.select(sa.func.max(handle.table.c.id))).scalar()
            before = published()
            injection_delete(handle=handle, count=0, ids=[newest])
        finally:
            handle.dispose()
        self.say(f"deleted row {newest}, the newest of {source.code}; {before} students published")
        lowest = before
        gone = Student.objects.filter(source=source, source_row_id=newest)
        watch_until = None
        deadline = time.monotonic() + self.plan.step_timeout_seconds
        while time.monotonic() < deadline:
            now_published = published()
            if now_published is not None and lowest is not None:
                lowest = min(lowest, now_published)
            if watch_until is None and not gone.exists():
                watch_until = time.monotonic() + WATCH_SECONDS
            if watch_until is not None and time.monotonic() > watch_until:
                break
            time.sleep(POLL_SECONDS / 2)
        if watch_until is None:
            raise StepFailed(f"row {newest} of {source.code} still in the warehouse after "
                             f"{self.plan.step_timeout_seconds:g} s")
        if before is not None and lowest is not None and lowest < before - 1:
            raise StepFailed(f"the published figures of {source.code} went down to {lowest} students (from {before}): "
                             "readers saw a partly loaded country")
        self.say(f"the row left the warehouse; the published count never went below {lowest} (from {before})")

    # --- settling and proof ---
    def settle(self, _source) -> None:
        sources = list(Source.objects.filter(enabled=True))
        self.wait_for(
            lambda: not SourceState.objects.filter(source__in=sources).exclude(
                last_success_at__gt=self.faults_done_at, consecutive_failures=0).exists(),
            timeout=self.plan.settle_timeout_seconds, what="every source synced without error after the faults")
        self.say("every source synced without error since the last fault")
        simulator_control_set(paused=True)
        paused_at = timezone.now() + dt.timedelta(seconds=SIMULATOR_PAUSE_MARGIN_SECONDS)
        self.say(f"paused the simulator; waiting for every source to be synced and reconciled after "
                 f"{timezone.localtime(paused_at):%H:%M:%S}, and the metrics to fold every change")

        def reconciled_after_pause() -> bool:
            behind = SourceState.objects.filter(source__in=sources).exclude(
                last_success_at__gt=paused_at, last_reconciled_at__gt=paused_at, consecutive_failures=0)
            if timezone.now() > paused_at:
                # Ask for a full content comparison of every source (PostgreSQL sources otherwise compare only when
                # their update counter moves, which the update step above has shown).
                behind.filter(last_reconciled_at__lte=paused_at).update(last_reconciled_at=None)
            return not behind.exists()

        seconds = self.wait_for(
            reconciled_after_pause,
            timeout=self.plan.settle_timeout_seconds + settings.INGEST_RECONCILE_SECONDS,
            what="every source synced and reconciled after the pause")
        self.say(f"every source synced and reconciled {seconds:.1f} s later")
        pending = self._metrics_pending
        try:
            seconds = self.wait_for(lambda: not pending(), timeout=self.plan.settle_timeout_seconds,
                                    what="the metrics folding every change")
            self.say(f"the metrics folded every change ({seconds:.1f} s)")
        except StepFailed:
            raise StepFailed(f"changes never folded into the metrics of {', '.join(pending())}: a lost refresh "
                             "request (rebuild --verify below folds them itself)") from None

    @staticmethod
    def _metrics_pending() -> list[str]:
        return sorted(set(StudentChange.objects.values_list("country", flat=True).distinct()))

    def verify(self, _source) -> None:
        deadline = time.monotonic() + self.plan.settle_timeout_seconds
        while True:
            self.report.verify_attempts += 1
            attempt_at = timezone.now()
            verification = verify_sources(sources=Source.objects.filter(enabled=True).order_by("code"))
            self.report.verification = verification.as_dict()
            total = verification.total
            self.say(_summary(verification))
            if verification.ok:
                return
            for result in verification.sources:
                if not result.ok:
                    self.say(f"  {result.code}: " + (result.error or ", ".join(
                        f"{getattr(result, kind)} {kind} (ids {', '.join(map(str, ids))})"
                        for kind, ids in result.examples.items() if ids)))
            if time.monotonic() > deadline or total.error:
                raise StepFailed(f"the warehouse still differs from the sources after {self.report.verify_attempts} "
                                 "comparison(s)")
            # A sync that was running across the pause may have missed its last rows: one more round, then compare.
            failing = [result.code for result in verification.sources if not result.ok]
            self.say(f"comparing {', '.join(failing)} again after their next sync and reconciliation")
            SourceState.objects.filter(source__code__in=failing).update(last_reconciled_at=None)
            self.wait_for(lambda: not SourceState.objects.filter(source__code__in=failing).exclude(
                last_success_at__gt=attempt_at, last_reconciled_at__gt=attempt_at).exists(),
                timeout=self.plan.settle_timeout_seconds + settings.INGEST_RECONCILE_SECONDS,
                what="another sync and reconciliation")

    def metrics_verify(self, _source) -> None:
        countries = countries_with_data()
        self.report.metrics_countries = len(countries)
        for country in countries:
            result = country_metrics_rebuild(country=country, verify=True)
            if result.differences:
                self.report.metrics_differences[country] = result.differences
                self.say(f"{country}: {len(result.differences)} difference(s) from a rebuild over "
                         f"{result.students} students: {result.differences[0]}")
        if self.report.metrics_differences:
            raise StepFailed(f"{len(self.report.metrics_differences)} country state(s) differ from a rebuild")
        self.say(f"metrics rebuild --verify: the incremental state of all {len(countries)} countries matches a "
                 "rebuild from the warehouse")


def _api_answer(path: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET of the API, in this process (its settings are the stack's)."""
    from django.test import Client

    response = Client(raise_request_exception=False, HTTP_HOST="localhost").get(path)
    return response.status_code, response.get("Content-Type", ""), response.content.decode(errors="replace")


def _summary(verification: Verification) -> str:
    from ingestion.verification import describe

    return "verify " + describe(verification.total)


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def poll_until(condition: Callable[[], object], *, timeout: float) -> float | None:
    """Seconds until `condition()` was true, or None if it was not within `timeout`."""
    began = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            return None
        time.sleep(POLL_SECONDS)


def _source_style(source: Source) -> str:
    """typed or text, from one column's type (reflecting all 1,120 would cost half a second per source)."""
    engine = sa.create_engine(with_installed_driver(sa.make_url(source.url)))
    try:
        table = sa.Table(source.table_name, sa.MetaData(), autoload_with=engine, include_columns=["id", "cntryid"])
        return table_style(table)
    except (sa.exc.SQLAlchemyError, AttributeError):
        return "unknown"
    finally:
        engine.dispose()


def chaos_run(*, plan: ChaosPlan, codes: list[str] | None = None, say: Callable[[str], None]) -> ChaosReport:
    """Run the scenario against the stack the settings point at. ChaosError when there is no stack to run it on."""
    say("Looking for the stack's processes and the sources (a few seconds)...")
    stack = stack_find()
    sources = Source.objects.filter(enabled=True)
    if codes:
        sources = sources.filter(code__in=[code.upper() for code in codes])
    return ChaosRun(stack=stack, plan=plan, sources=list(sources), say=say).run()


def report_lines(report: ChaosReport) -> list[str]:
    """The closing table of a run: one line per step, then the outcome."""
    lines = [f"Chaos report (started {report.started_at}, {report.seconds:.0f} s):"]
    for step in report.steps:
        last = step.lines[-1] if step.lines else ""
        lines.append(f"  {step.name:<17} {step.status:<8} {step.seconds:6.1f}s  {step.source:<4} {last}")
    lines.append("Outcome: " + ("PASS: no loss, no duplicate, no difference" if report.ok
                                else "FAIL: " + "; ".join(report.failures)))
    return lines

