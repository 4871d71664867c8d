"""Celery is configured on purpose, and a real worker built from that configuration serves both queues."""

import os
import time

import psutil
import pytest
from django.conf import settings

from pisa_site.celery import STACK_DUMP_SIGNAL, app
from tests.conftest import wait_until


def test_messages_outlive_the_longest_task():
    # A message still unacknowledged after the visibility timeout is redelivered: if that could happen while the
    # task still runs, it would run twice at once.
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    longest = max(
        [settings.CELERY_TASK_TIME_LIMIT]
        + [task.time_limit for task in app.tasks.values() if getattr(task, "time_limit", None)]
    )
    assert settings.CELERY_TASK_SOFT_TIME_LIMIT < settings.CELERY_TASK_TIME_LIMIT < visibility
    assert longest < visibility


def test_every_redis_client_gives_up_on_a_dead_connection_instead_of_waiting_forever():
    # Without a socket timeout a worker can block for good on a socket left over from before a Redis restart (the
    # chaos test caught one alive but consuming nothing). The broker's channels, the cache and the locks all get one.
    from django.core.cache import cache

    with app.connection_for_write() as connection:
        broker_pool = connection.default_channel.client.connection_pool.connection_kwargs
    cache_pool = cache._cache.get_client(write=True).connection_pool.connection_kwargs
    for kwargs in (broker_pool, cache_pool):
        assert 0 < kwargs["socket_timeout"] <= 10 and 0 < kwargs["socket_connect_timeout"] <= 10


def test_delivery_guarantees_are_at_least_once():
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.worker_send_task_events and conf.task_send_sent_event


def test_project_tasks_are_routed_to_their_app_queue_and_heavy_reads_to_the_analysis_queue():
    app.loader.import_default_modules()  # the apps' tasks modules, as a worker imports them at start
    router = app.amqp.router
    project_tasks = [name for name in app.tasks if name.split(".")[0] in {"ingestion", "metrics"}]
    assert {"ingestion.sync_source", "metrics.refresh_country", "metrics.distribution_country"} <= set(project_tasks)
    for name in project_tasks:
        queue = router.route({}, name)["queue"].name
        expected = "analysis" if name.startswith("metrics.distribution_") else name.split(".")[0]
        assert queue == expected, name


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_consumes_both_queues(celery_worker_process):
    worker = celery_worker_process("ingestion,metrics")
    queues = app.control.inspect(destination=[worker.name], timeout=5).active_queues()
    assert {q["name"] for q in queues[worker.name]} == {"ingestion", "metrics"}
    stats = app.control.inspect(destination=[worker.name], timeout=5).stats()[worker.name]
    assert stats["prefetch_count"] == 1  # prefetch multiplier 1 x concurrency 1


def test_a_pool_process_leaves_what_it_inherits_out_of_garbage_collection():
    # Celery sends worker_process_init in each forked pool process; the objects alive then are never freed.
    import gc

    from celery.signals import worker_process_init

    from pisa_site.celery import _freeze_what_the_pool_process_inherits

    assert _freeze_what_the_pool_process_inherits in [receiver() for _, receiver in worker_process_init.receivers]
    assert gc.get_freeze_count() == 0
    try:
        _freeze_what_the_pool_process_inherits()
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


@pytest.mark.django_db(transaction=True)
def test_sigusr2_writes_every_stack_of_a_worker_and_its_pool_process_to_the_log_and_both_carry_on(
        celery_worker_process, tmp_path):
    log_path = tmp_path / "worker.log"
    worker = celery_worker_process("ingestion", log=open(log_path, "wb"))
    [child] = psutil.Process(worker.process.pid).children()

    for pid in (worker.process.pid, child.pid):
        before = log_path.stat().st_size
        os.kill(pid, STACK_DUMP_SIGNAL)
        assert wait_until(lambda: log_path.stat().st_size > before, timeout=10)
        dump = wait_for_dump(log_path, before)
        assert "Current thread" in dump or "Thread 0x" in dump
        assert 'File "' in dump and "celery" in dump

    assert worker.process.poll() is None and child.is_running()
    assert app.control.ping(destination=[worker.name], timeout=5)


def wait_for_dump(log_path, offset: int) -> str:
    """What the process wrote after `offset`, once it stopped writing (faulthandler writes a thread at a time)."""
    size = -1
    while size != log_path.stat().st_size:
        size = log_path.stat().st_size
        time.sleep(0.3)
    return log_path.read_bytes()[offset:].decode(errors="replace")
