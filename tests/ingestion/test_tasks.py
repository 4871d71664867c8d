"""The Celery side of ingestion, with real workers: fan-out, per-source locking, faults."""

import os
import signal
import time

import psutil
import pytest

from ingestion.models import SourceState, Student
from ingestion.pipeline import source_sync
from ingestion.tasks import fan_out, sync_source

from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def loaded(source) -> int:
    return Student.objects.filter(source=source).count()


def test_fan_out_queues_one_sync_per_due_source_and_workers_load_them(source_db, celery_worker_process):
    alb, arg, aus = source_db("ALB"), source_db("ARG"), source_db("AUS")
    for source in (alb, arg, aus):
        source.insert_students(7)
    aus.source.enabled = False
    aus.source.save()
    celery_worker_process("ingestion", concurrency=2)

    assert fan_out() == 2
    assert fan_out() == 0  # not due again before its poll interval
    assert wait_until(lambda: loaded(alb.source) == 7 and loaded(arg.source) == 7)
    assert loaded(aus.source) == 0


def test_while_a_sync_waits_in_the_queue_the_fan_out_queues_no_second_one(source_db, celery_worker_process):
    alb = source_db("ALB")
    alb.insert_students(3)
    assert fan_out() == 1
    time.sleep(1.1)  # ALB is due again by its poll interval...
    assert fan_out() == 0  # ...but its first message still waits for a worker: no second one behind it
    celery_worker_process("ingestion")
    # As beat would: fan out again while waiting (a message that waited over 5 s for the worker drops itself).
    assert wait_until(lambda: fan_out() >= 0 and loaded(alb.source) == 3)
    # Once that sync has started and finished, the next poll is queued as usual.
    assert wait_until(lambda: fan_out() == 1, timeout=10)


def test_a_sync_that_waited_too_long_drops_itself_unless_it_is_a_dead_workers_redelivery(source_db):
    from pisa_site.cache import redis_client
    from pisa_site.locks import lock_key

    alb = source_db("ALB")
    alb.insert_students(2)
    long_ago = time.time() - 60
    stale = sync_source.apply(args=[alb.source.pk], kwargs={"code": "ALB", "queued_at": long_ago}, task_id="t-1").get()
    assert "stale" in stale["skipped"] and loaded(alb.source) == 0
    # The worker running "t-2" died holding the source's lock; the redelivered message is as old, and runs at once.
    redis_client().set(lock_key(f"source:{alb.source.pk}"), "t-2", px=30_000)
    again = sync_source.apply(args=[alb.source.pk], kwargs={"code": "ALB", "queued_at": long_ago}, task_id="t-2").get()
    assert again["loaded"] == 2 and loaded(alb.source) == 2


def test_a_source_that_is_down_backs_off_while_the_others_continue_then_catches_up(source_db):
    alb, arg = source_db("ALB"), source_db("ARG")
    alb.insert_students(4)
    arg.insert_students(6)
    working_url = arg.source.url
    arg.source.url = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"
    arg.source.save()

    assert source_sync(source_id=alb.source.pk).loaded == 4
    failed = source_sync(source_id=arg.source.pk)
    assert "OperationalError" in failed.error
    state = SourceState.objects.get(source=arg.source)
    assert state.consecutive_failures == 1 and state.retry_at is not None and "OperationalError" in state.last_error
    queued = fan_out()
    assert queued == 1  # ALB only: ARG waits for its retry time

    arg.source.url = working_url
    arg.source.save()
    SourceState.objects.filter(source=arg.source).update(retry_at=None)
    assert source_sync(source_id=arg.source.pk).loaded == 6
    state.refresh_from_db()
    assert state.consecutive_failures == 0 and state.last_error == ""


def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(source_db, celery_worker_process):
    alb = source_db("ALB")
    ids = alb.insert_students(6000)  # several batches, so the kill lands between or inside them
    worker = celery_worker_process("ingestion", concurrency=1)
    sync_source.delay(alb.source.pk, code="ALB")

    assert wait_until(lambda: 0 < loaded(alb.source), timeout=60, interval=0.05)
    children = psutil.Process(worker.process.pid).children()
    assert children, "the prefork pool has a child process"
    os.kill(children[0].pid, signal.SIGKILL)  # the pool process running the task, mid-run

    # acks_late + reject_on_worker_lost requeue the message; its redelivery takes over the lock and finishes.
    assert wait_until(lambda: loaded(alb.source) == len(ids), timeout=120)
    rows = list(Student.objects.filter(source=alb.source).values_list("source_row_id", flat=True))
    assert sorted(rows) == sorted(ids)


def test_a_load_triggers_one_metrics_refresh_after_commit_and_the_api_count_follows(
        source_db, celery_worker_process, client):
    alb = source_db("ALB")
    alb.insert_students(9)
    celery_worker_process("ingestion,metrics", concurrency=2)
    fan_out()
    assert wait_until(lambda: client.get("/api/forage/submissions").json()["count"] == 9)


def test_a_source_is_due_again_on_the_next_tick_even_when_it_comes_a_little_early(source_db):
    from pisa_site.locks import clear_queued

    alb = source_db("ALB")
    alb.source.poll_interval_seconds = 1.0
    alb.source.save()
    assert fan_out() == 1
    clear_queued(f"source:{alb.source.pk}")  # as the sync does when it starts

    time.sleep(0.85)  # beat's next tick, 150 ms early

    assert fan_out() == 1



def test_fan_out_queues_the_least_recently_synced_sources_first(source_db):
    import datetime as dt

    import redis
    from django.conf import settings
    from django.utils import timezone

    alb, arg, aus = source_db("ALB"), source_db("ARG"), source_db("AUS")
    now = timezone.now()
    for source, age in ((alb, 1), (arg, 60), (aus, None)):
        SourceState.objects.create(source=source.source,
                                   last_success_at=None if age is None else now - dt.timedelta(seconds=age))
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("ingestion")
    assert fan_out() == 3
    import json

    # Celery's Redis transport pushes with LPUSH and consumes from the right: the first queued is the last element.
    queued = [json.loads(message)["headers"]["kwargsrepr"] for message in reversed(broker.lrange("ingestion", 0, -1))]
    assert ["AUS" in q for q in queued] == [True, False, False]
    assert "ARG" in queued[1] and "ALB" in queued[2]


def test_the_sync_task_gives_its_sync_a_time_budget(source_db, monkeypatch):
    from ingestion import pipeline, tasks

    monkeypatch.setattr(pipeline, "BATCH_ROWS", 10)
    monkeypatch.setattr(tasks, "SYNC_BUDGET_SECONDS", 0)
    alb = source_db("ALB")
    alb.insert_students(25)
    first = sync_source.apply(args=[alb.source.pk], kwargs={"code": "ALB"}).get()
    assert (first["loaded"], first["truncated"]) == (10, True)
    assert loaded(alb.source) == 10


def test_rows_the_watcher_sees_during_a_sync_are_read_by_that_sync_before_it_lets_the_source_go(
        source_db, monkeypatch):
    from ingestion import tasks

    alb = source_db("ALB")
    alb.insert_students(3)
    answers, calls = [], []

    def sync_while_rows_arrive(**kwargs):
        calls.append(kwargs["source_id"])
        if len(calls) == 1:  # as the watcher would, seeing these commit while the first sync runs
            alb.insert_students(2)
            answers.append(tasks.sync_request(alb.source, new_rows_seen=True))
        return source_sync(**kwargs)

    monkeypatch.setattr(tasks, "source_sync", sync_while_rows_arrive)
    result = sync_source.apply(args=[alb.source.pk], kwargs={"code": "ALB"}).get()
    assert answers == [tasks.SYNC_FOLLOW_UP]
    assert len(calls) == 2 and result["loaded"] == 5 and loaded(alb.source) == 5
    # Nothing left asked: the next sync is the fan-out's or the watcher's.
    assert tasks.sync_request(alb.source, new_rows_seen=True) == tasks.SYNC_QUEUED


def test_a_follow_up_beyond_the_sync_budget_goes_back_through_the_queue(source_db, monkeypatch):
    from ingestion import tasks
    from pisa_site.locks import follow_up_ask

    monkeypatch.setattr(tasks, "SYNC_BUDGET_SECONDS", 0)
    alb = source_db("ALB")
    alb.insert_students(3)
    follow_up_ask(f"source:{alb.source.pk}", seconds=30)
    result = sync_source.apply(args=[alb.source.pk], kwargs={"code": "ALB"}).get()
    assert result["loaded"] == 3
    # Queued rather than run in place: a second request finds one waiting.
    assert tasks.sync_request(alb.source, new_rows_seen=True) == tasks.SYNC_WAITING


def _worker_warehouse_backend() -> int | None:
    """The PostgreSQL backend serving the worker's warehouse connection, if it has one open.

    Found by the product's application_name rather than by client port: over the embedded server's Unix socket a
    backend has no client port.
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                       " AND application_name = %s AND pid <> pg_backend_pid()",
                       [connection.settings_dict["OPTIONS"]["application_name"]])
        backends = [row[0] for row in cursor.fetchall()]
    assert len(backends) <= 1
    return backends[0] if backends else None


def test_a_worker_keeps_its_warehouse_connection_from_one_sync_to_the_next(source_db, celery_worker_process):
    # Celery's Django fixup would close it around every task: a new PostgreSQL backend (and a new staging table) for
    # each of the 20 syncs a second.
    alb = source_db("ALB")
    celery_worker_process("ingestion")
    alb.insert_students(3)
    assert fan_out() == 1
    assert wait_until(lambda: loaded(alb.source) == 3)
    backend = _worker_warehouse_backend()
    assert backend is not None

    alb.insert_students(2)
    assert wait_until(lambda: fan_out() >= 0 and loaded(alb.source) == 5, timeout=10)  # as beat would, each second
    assert _worker_warehouse_backend() == backend
