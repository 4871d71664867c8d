"""The source watcher (ingestion/watch.py): a new row's sync starts at once, without waiting for the fan-out; what
it cannot see is left to the fan-out, and a source it cannot read stops nothing."""

import threading
import time

import pytest

from ingestion.models import Source, Student
from ingestion.tasks import SYNC_QUEUED, SYNC_RUNNING, SYNC_WAITING
from ingestion.watch import WatchedSource, source_probe, sources_watch

from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


class Requests:
    """What the watcher asked for, answering as sync_request would."""

    def __init__(self, answer=SYNC_QUEUED):
        self.answer, self.asked = answer, []

    def __call__(self, source):
        self.asked.append(source.code)
        return self.answer


def test_the_first_probe_is_a_baseline_and_a_new_row_asks_for_a_sync_once(source_db):
    alb = source_db("ALB")
    alb.insert_students(3)
    watched, requests = WatchedSource(alb.source), Requests()
    assert source_probe(watched, request_sync=requests) is None  # rows already there: the fan-out's business
    assert source_probe(watched, request_sync=requests) is None
    alb.insert_students(1)
    assert source_probe(watched, request_sync=requests) == SYNC_QUEUED
    assert source_probe(watched, request_sync=requests) is None  # that row is dealt with
    assert requests.asked == ["ALB"]


def test_a_new_row_while_a_sync_runs_is_asked_for_again_until_one_is_queued(source_db):
    alb = source_db("ALB")
    watched, busy = WatchedSource(alb.source), Requests(SYNC_RUNNING)
    source_probe(watched, request_sync=busy)
    alb.insert_students(1)
    assert source_probe(watched, request_sync=busy) == SYNC_RUNNING
    assert source_probe(watched, request_sync=busy) == SYNC_RUNNING  # the running sync may have missed it
    waiting = Requests(SYNC_WAITING)
    assert source_probe(watched, request_sync=waiting) == SYNC_WAITING  # a queued sync will read it
    assert source_probe(watched, request_sync=waiting) is None


def test_a_source_that_cannot_be_probed_is_paused_and_the_others_go_on(source_db):
    alb, arg = source_db("ALB"), source_db("ARG")
    alb.source.table_name = "no_such_table"
    alb.source.save()
    broken, fine, requests = WatchedSource(alb.source), WatchedSource(arg.source), Requests()
    assert source_probe(broken, request_sync=requests) is None
    assert broken.failures and "no_such_table" in broken.failures[0]
    assert broken.paused_until > time.monotonic()
    source_probe(fine, request_sync=requests)
    arg.insert_students(2)
    assert source_probe(fine, request_sync=requests) == SYNC_QUEUED
    assert requests.asked == ["ARG"]


def test_with_the_watcher_and_a_worker_and_no_beat_a_new_row_reaches_the_warehouse_in_well_under_a_second(
        source_db, celery_worker_process):
    alb = source_db("ALB")
    celery_worker_process("ingestion")
    stop = threading.Event()

    def watch():
        from django.db import connections

        try:
            sources_watch(until=stop.is_set)
        finally:
            connections.close_all()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        time.sleep(0.5)  # its baseline
        took = []
        for _ in range(3):
            before = Student.objects.filter(source=alb.source).count()
            started = time.monotonic()
            alb.insert_students(1)
            assert wait_until(lambda: Student.objects.filter(source=alb.source).count() == before + 1, timeout=10,
                              interval=0.01)
            took.append(time.monotonic() - started)
            time.sleep(0.3)
        # No beat runs: only the watcher could have queued these syncs. Their time is the probe, the queue and the
        # sync itself; the figure for the stack is bench.freshness's.
        assert max(took) < 3, took
        assert Source.objects.count() == 1
    finally:
        stop.set()
        watcher.join(10)


def test_probes_share_one_connection_per_source_and_leave_no_transaction_open(source_db):
    alb = source_db("ALB")
    watched, requests = WatchedSource(alb.source), Requests()
    for _ in range(5):
        source_probe(watched, request_sync=requests)
    with alb.engine.connect() as connection:
        sessions = connection.exec_driver_sql(
            "SELECT state FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).scalars().all()
    assert sessions == ["idle"]  # not "idle in transaction": vacuum on the source is never held back
    watched.probe.close()
