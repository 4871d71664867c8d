"""`manage.py chaos --quick` against a real stack in miniature: Celery workers, beat and the simulator as processes,
real PostgreSQL, and a Redis of the test's own that the scenario stops and starts again."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
from django.conf import settings

from ingestion.models import QuarantinedRow, Source, SourceState, Student
from operations.verification import sources_to_verify, verify_sources
from metrics.services import countries_with_data, country_metrics_rebuild
from pisa_site.celery import STACK_DUMP_SIGNAL
from operations.chaos import QUICK, ChaosRun, Stack, poll_until
from simulator.models import Injection
from simulator.services import source_provision
from tests.conftest import ROOT, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)

# Six sources: one per fault, ARG in the text style so that every kind of bad row fits.
COUNTRIES = ("ALB", "ARG", "AUS", "AUT", "BEL", "BGR")
TEXT_STYLE_SOURCE = "ARG"
STARTUP_TIMEOUT = 120
CHAOS_TIMEOUT = 600
STEPS = ("kill-worker", "restart-redis", "source-outage", "empty-source", "bad-rows", "late-transaction",
         "update-delete", "late-insert-delete", "delete-newest", "settle", "verify", "metrics-verify")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _tail(path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@pytest.fixture
def chaos_stack(own_redis, celery_worker_process, pg_url_template, specs, tmp_path):
    """What `make run` runs, minus the web server: an ingest worker (two pool processes), a metrics worker, beat and
    the simulator feeding six source databases, all on `own_redis`. Yields the environment and the log folder."""
    env = {
        "PISA_HOME": str(own_redis.home), "REDIS_URL": own_redis.url(0), "CELERY_BROKER_URL": own_redis.url(1),
        # Shorter than in production, to keep the run short: updates are found by the content reconciliation (every
        # minute), and a source whose sync died with its worker or lost Redis waits for its lock to expire (30 s).
        "INGEST_RECONCILE_SECONDS": "2", "INGEST_SYNC_LOCK_SECONDS": "6", "LOG_LEVEL": "WARNING",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    source_provision(code=TEXT_STYLE_SOURCE, name="Argentina", url_template=pg_url_template, specs=specs,
                     style="text").dispose()  # the simulator keeps an existing table's style
    processes: list[subprocess.Popen] = []

    def spawn(name: str, command: list[str]) -> subprocess.Popen:
        process = subprocess.Popen(command, cwd=ROOT, env=subprocess_env(**env), start_new_session=True,
                                   stdout=open(logs / f"{name}.log", "wb"), stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    try:
        simulator = spawn("simulator", [sys.executable, "manage.py", "simulate", "--countries", ",".join(COUNTRIES),
                                        "--url-template", pg_url_template, "--rate", "10", "--seed-rows", "60"])
        ingest = celery_worker_process("ingestion", name="chaos-ingest", concurrency=2, env=env,
                                       log=open(logs / "ingest.log", "wb"))
        metrics = celery_worker_process("metrics", name="chaos-metrics", env=env, log=open(logs / "metrics.log", "wb"))
        beat = spawn("beat", [sys.executable, "-m", "celery", "-A", "pisa_site", "beat", "--loglevel", "WARNING"])
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while "Seeded" not in (logs / "simulator.log").read_text(errors="replace"):
            assert simulator.poll() is None and time.monotonic() < deadline, _tail(logs / "simulator.log")
            time.sleep(0.2)
        # Beat ticks and the worker syncs: the stack is up (and beat's SIGUSR2 handler is in place, see _stack_dumps).
        while not SourceState.objects.filter(last_success_at__isnull=False).exists():
            assert beat.poll() is None and time.monotonic() < deadline, _tail(logs / "beat.log")
            time.sleep(0.2)
        yield env, logs, {"ingest": ingest.process, "metrics": metrics.process, "beat": beat, "simulator": simulator}
    finally:
        for process in processes:
            _stop(process)


def _broker_state(env) -> str:
    """What the broker holds (queued and unacknowledged messages) and what the ingest worker says of itself (its
    prefetch count, the tasks it runs and holds): a worker that does not answer is one whose main loop is stuck."""
    import redis

    lines = []
    try:
        broker = redis.Redis.from_url(env["CELERY_BROKER_URL"], socket_timeout=5)
        lines.append(f"queued: ingestion {broker.llen('ingestion')}, metrics {broker.llen('metrics')}; "
                     f"unacknowledged {broker.hlen('unacked')}")
    except redis.RedisError as exc:
        lines.append(f"broker unreachable: {exc}")
    for what in ("stats", "active", "reserved"):
        try:
            answer = subprocess.run([sys.executable, "-m", "celery", "-A", "pisa_site", "inspect", what, "--timeout",
                                     "3", "--json"], cwd=ROOT, env=subprocess_env(**env), capture_output=True,
                                    text=True, timeout=60)
        except subprocess.TimeoutExpired:
            lines.append(f"inspect {what}: no answer within 60 s (the broker itself does not answer)")
            continue
        try:
            replies = json.loads(answer.stdout)
        except ValueError:  # nobody answered: the command says so in words
            lines.append(f"inspect {what}: {(answer.stdout + answer.stderr).strip()[:500]}")
            continue
        for worker, reply in sorted(replies.items()):
            if what == "stats":
                reply = {"prefetch_count": reply.get("prefetch_count"), "total": reply.get("total"),
                         "processes": reply.get("pool", {}).get("processes")}
            else:
                reply = [(task["name"], task.get("kwargs", {}).get("code") or task.get("args"), task.get("worker_pid"))
                         for task in reply]
            lines.append(f"inspect {what} {worker}: {reply}")
    return "\n=== broker and workers\n" + "\n".join(lines)


def _stack_dumps(logs, processes) -> str:
    """Every thread's stack of the stack's Celery processes (workers, their pool processes, beat), as each wrote it
    to its log on SIGUSR2 (pisa_site/celery.py): what a process that is alive but does nothing is waiting on."""
    offsets, signalled = {}, []
    for name in ("ingest", "metrics", "beat"):
        process, log = processes[name], logs / f"{name}.log"
        if process.poll() is not None:
            continue
        offsets[name] = log.stat().st_size
        pids = [process.pid]
        with contextlib.suppress(psutil.Error):
            pids += [child.pid for child in psutil.Process(process.pid).children()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # a pool process replaced meanwhile
                os.kill(pid, STACK_DUMP_SIGNAL)
                signalled.append(f"{name}:{pid}")
    time.sleep(2)  # each writes its own, from C, at once
    dumps = "".join(f"\n--- stacks written to {name}.log:\n"
                    + (logs / f"{name}.log").read_bytes()[offset:].decode(errors="replace")
                    for name, offset in offsets.items())
    return f"\n=== stacks of {', '.join(signalled)} (SIGUSR2)" + dumps


def test_the_quick_chaos_scenario_loses_duplicates_and_changes_nothing(chaos_stack, own_redis, tmp_path):
    env, logs, processes = chaos_stack
    redis_pid = own_redis.pid()
    report_path = tmp_path / "chaos.json"

    chaos = subprocess.Popen(
        [sys.executable, "manage.py", "chaos", "--quick", "--outage", "2", "--redis-down", "0.5", "--late-hold", "1",
         "--backlog", "2500", "--json", str(report_path)],
        cwd=ROOT, env=subprocess_env(**env, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        output, _ = chaos.communicate(timeout=CHAOS_TIMEOUT)
    except subprocess.TimeoutExpired:
        chaos.kill()  # what it printed so far, and the stack's logs, say which step hung and why
        output = chaos.communicate()[0] + f"\n(chaos still running after {CHAOS_TIMEOUT} s: killed)"

    context = output + "".join(f"\n--- {log.name}:\n{_tail(log)}" for log in sorted(logs.iterdir()))
    if chaos.returncode != 0:
        for diagnose in (lambda: _broker_state(env), lambda: _stack_dumps(logs, processes)):
            try:
                context += diagnose()
            except Exception as exc:  # noqa: BLE001 - a diagnostic that fails must not hide the failure it explains
                context += f"\n(a diagnostic failed: {type(exc).__name__}: {exc})"
    assert chaos.returncode == 0, context
    report = json.loads(report_path.read_text())
    assert [(step["name"], step["status"]) for step in report["steps"]] == [(name, "done") for name in STEPS], context
    assert report["ok"] and report["failures"] == [] and "Outcome: PASS" in output
    lines = {step["name"]: "\n".join(step["lines"]) for step in report["steps"]}

    # The kill landed in the middle of the backlog's load, on a pool process of the stack's ingest worker...
    killed = re.search(r"SIGKILL to pool process (\d+), running sync_source\((\w+)\) \(task [\w-]+\) with ([\d,]+) "
                       r"of ([\d,]+)", lines["kill-worker"])
    assert killed, lines["kill-worker"]
    pid, committed, backlog = int(killed[1]), int(killed[3].replace(",", "")), int(killed[4].replace(",", ""))
    assert 0 < committed < backlog
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # ...Redis really went away and came back as another process, and nothing else was restarted.
    assert own_redis.pid() != redis_pid and own_redis.is_running()
    assert all(process.poll() is None for process in processes.values()), "a stack process died"
    assert "Traceback" not in (logs / "simulator.log").read_text(errors="replace")
    # Each fault was done to a source, as logged by the simulator's injection log.
    assert set(Injection.objects.values_list("kind", flat=True)) == {"empty", "bad", "late", "update", "delete"}
    bad = Injection.objects.get(kind="bad")
    assert bad.source_code == TEXT_STYLE_SOURCE
    assert {row["problem"] for row in bad.details["rows"]} == {"text_in_numeric", "out_of_range_code",
                                                               "duplicate_cntstuid", "null_keys", "negative_weight",
                                                               "huge_weight", "absurd_scores"}
    # The hostile values were refused at the door, each with its plausibility reason, and froze no country.
    reasons = " ".join(" ".join(row.reasons) for row in QuarantinedRow.objects.filter(source__code=TEXT_STYLE_SOURCE))
    assert "W_FSTUWT: -5 is not a plausible final weight" in reasons and "PV1MATH: 1e+09" in reasons
    assert not SourceState.objects.exclude(figures_error="").exists()
    # While Redis was down the API answered JSON, and the late insert and delete that cancel in a count were seen.
    assert "answered 503 JSON" in lines["restart-redis"]
    assert "loaded the inserted row and removed the deleted one" in lines["late-insert-delete"]
    late = Injection.objects.filter(kind="late").exclude(details__deleted_ids=[]).get()
    assert not Student.objects.filter(source_row_id__in=late.details["deleted_ids"],
                                      source__code=late.source_code).exists()

    # The proof, once more from this process, with the simulator stopped (it resumed after the scenario, so the
    # newest rows may be on their way): the warehouse equals the sources and the metrics equal a rebuild.
    _stop(processes["simulator"])
    verifications = []
    assert poll_until(lambda: verifications.append(verify_sources(sources=sources_to_verify()))
                      or verifications[-1].ok, timeout=120) is not None, verifications[-1].as_dict()
    verification = verifications[-1]
    assert verification.total.loaded > backlog and verification.total.quarantined > 0
    assert {result.code for result in verification.sources} == set(COUNTRIES)
    assert report["verification"]["total"]["missing"] == report["verification"]["total"]["extra"] == 0
    for country in countries_with_data():
        assert country_metrics_rebuild(country=country, verify=True).differences == []


def test_chaos_refuses_to_run_without_a_stack_and_says_what_is_missing(own_redis, transactional_db):
    Source.objects.create(code="ALB", name="Albania", url="postgresql+psycopg2://postgres@127.0.0.1:1/nowhere")
    env = {"PISA_HOME": str(own_redis.home), "REDIS_URL": own_redis.url(0), "CELERY_BROKER_URL": own_redis.url(1)}

    run = subprocess.run([sys.executable, "manage.py", "chaos", "--quick"], cwd=ROOT, env=subprocess_env(**env),
                         capture_output=True, text=True, timeout=120)

    assert run.returncode == 1
    assert f"no Celery worker consumes the ingestion queue of the broker {own_redis.url(1)}" in run.stderr
    assert "make run" in run.stderr and "Traceback" not in run.stderr
    assert settings.CELERY_BROKER_URL != own_redis.url(1)  # the suite's own broker was never in question


def test_a_worker_that_exits_stops_the_scenario_at_once_and_says_which(specs, pg_url_template):
    source_provision(code="ALB", name="Albania", url_template=pg_url_template, specs=specs,
                     style="typed").dispose()
    sleeper = subprocess.Popen(["sleep", "60"])
    gone_worker = psutil.Process(sleeper.pid)
    sleeper.kill()
    sleeper.wait()
    stack = Stack(broker_url=settings.CELERY_BROKER_URL, ingest_workers=[gone_worker], beat=[psutil.Process()],
                  simulators=[], embedded_redis=None)
    lines: list[str] = []

    began = time.monotonic()
    report = ChaosRun(stack=stack, plan=dataclasses.replace(QUICK, backlog_rows=10), sources=list(Source.objects.all()),
                      say=lines.append).run()

    assert [(step.name, step.status) for step in report.steps] == [("kill-worker", "failed")]
    assert f"the ingest worker pid {gone_worker.pid} exited during the scenario" in report.failures[0]
    assert not report.ok and time.monotonic() - began < QUICK.step_timeout_seconds  # it did not wait out a deadline
    assert any("The scenario stops" in line for line in lines)
