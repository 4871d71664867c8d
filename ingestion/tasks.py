"""Celery tasks of the ingestion queue. They receive ids, call services, and own only lock and scheduling policy."""

from __future__ import annotations

import logging
import time

from celery import shared_task
from celery.signals import worker_process_init
from django.conf import settings
from django.db.models import F
from django.utils import timezone

from ingestion import extract
from ingestion.models import Source
from ingestion.pipeline import source_sync
from pisa_site.locks import (
    claim_interval, clear_queued, follow_up_ask, follow_up_take, held_by, is_locked, mark_queued, redis_lock)

logger = logging.getLogger(__name__)

SYNC_SOFT_TIME_LIMIT = 60
SYNC_TIME_LIMIT = 90
# A sync stops loading after the batch that crosses this and the fan-out's next sync carries on: far from the soft
# limit even on a slow machine, and a backfilling country hands its worker back to the other sources every few
# seconds (the fan-out queues least recently synced sources first).
SYNC_BUDGET_SECONDS = settings.INGEST_SYNC_BUDGET_SECONDS
# Renewed after every batch (a batch takes about a second), so a dead worker frees its source within this time.
SYNC_LOCK_SECONDS = settings.INGEST_SYNC_LOCK_SECONDS
# A fan-out message older than this is dropped rather than run late: the next second sends a fresh one. Checked by
# the task itself rather than by Celery's `expires`, which would also discard the redelivery of a sync whose worker
# died, leaving its source locked until the lock expired.
FAN_OUT_EXPIRES_SECONDS = 5


@worker_process_init.connect
def _fresh_source_connections(**kwargs):
    extract.dispose_engines()


SYNC_QUEUED, SYNC_WAITING, SYNC_RUNNING, SYNC_FOLLOW_UP, SYNC_BACKING_OFF, SYNC_NOT_DUE = (
    "queued", "already queued", "running", "follow-up asked", "backing off", "not due")


def sync_request(source: Source, *, now=None, new_rows_seen: bool = False) -> str:
    """Queue one sync of `source` unless it is backing off, running, or already has one waiting, or was queued less
    than its poll_interval_seconds ago (the fan-out's pace). `new_rows_seen` (the source watcher saw its largest id
    grow): no waiting for the interval, and a running sync is asked to follow up with these rows before it lets the
    source go (SYNC_FOLLOW_UP). Returns what happened (SYNC_*)."""
    now = now or timezone.now()
    state = getattr(source, "state", None)
    if state is not None and state.retry_at and state.retry_at > now:
        return SYNC_BACKING_OFF
    name = f"source:{source.pk}"
    if is_locked(name):
        if new_rows_seen:
            follow_up_ask(name, seconds=SYNC_LOCK_SECONDS)
            return SYNC_FOLLOW_UP
        return SYNC_RUNNING
    if not new_rows_seen and not claim_interval(name, seconds=source.poll_interval_seconds):
        return SYNC_NOT_DUE
    return SYNC_QUEUED if _sync_queue(source.pk, source.code, source.poll_interval_seconds) else SYNC_WAITING


def _sync_queue(source_id: int, code: str, poll_interval_seconds: float) -> bool:
    """Queue a sync unless one is waiting already. At most one waiting message per source: when the workers fall
    behind, the queue stays one round of the sources long (each sync reads everything new anyway), instead of
    piling up a message a second per source and making every row wait for the whole backlog."""
    if not mark_queued(f"source:{source_id}", seconds=max(FAN_OUT_EXPIRES_SECONDS, poll_interval_seconds * 2)):
        return False
    sync_source.apply_async(args=[source_id], kwargs={"code": code, "queued_at": time.time()})
    return True


@shared_task(name="ingestion.fan_out", ignore_result=True, soft_time_limit=10, time_limit=15)
def fan_out() -> int:
    """Run by beat every second: queue one sync per enabled source that is due, not running and not backing off."""
    now = timezone.now()
    queued = 0
    # Least recently synced first: when workers cannot keep up, every source still gets its turn (queued messages
    # expire, so a fixed order would starve the sources at the end of it).
    sources = (Source.objects.filter(enabled=True).select_related("state")
               .order_by(F("state__last_success_at").asc(nulls_first=True), "code"))
    for source in sources:
        queued += sync_request(source, now=now) == SYNC_QUEUED
    return queued


@shared_task(bind=True, name="ingestion.sync_source", ignore_result=True, acks_late=True,
             soft_time_limit=SYNC_SOFT_TIME_LIMIT, time_limit=SYNC_TIME_LIMIT)
def sync_source(self, source_id: int, code: str = "", queued_at: float | None = None) -> dict:
    """Bring one source up to date. `code` is only there so Flower shows which country a task is for; `queued_at`
    (epoch seconds, set by the fan-out) lets a message that waited too long drop itself."""
    token = self.request.id or "eager"
    name = f"source:{source_id}"
    clear_queued(name)  # from now on the fan-out may queue the next one (it waits for the lock)
    # Too old to be worth running, unless it is the redelivery of a sync whose worker died (it holds the lock).
    if queued_at is not None and time.time() - queued_at > FAN_OUT_EXPIRES_SECONDS and not held_by(name, token):
        return {"source": code, "skipped": "stale (the fan-out queues a fresh sync every second)"}
    started = time.monotonic()
    with redis_lock(name, token=token, ttl_seconds=SYNC_LOCK_SECONDS) as lock:
        if not lock.acquired:
            return {"source": code, "skipped": "already running"}
        result = source_sync(source_id=source_id, heartbeat=lock.extend, budget_seconds=SYNC_BUDGET_SECONDS)
        # Rows the watcher saw committed meanwhile are read at once, by the worker that holds the source, instead
        # of going back through the queue (behind the other sources' syncs): a busy source is read back to back.
        while (not result.error and not result.truncated
               and (left := SYNC_BUDGET_SECONDS - (time.monotonic() - started)) > 0 and follow_up_take(name)):
            # What is left of the budget, not a new one: the soft time limit bounds the whole task.
            result = result.followed_by(source_sync(source_id=source_id, heartbeat=lock.extend, budget_seconds=left))
    if follow_up_take(name):  # asked between the last look and the release, or the budget is spent: queue it
        source = Source.objects.only("poll_interval_seconds").get(pk=source_id)
        _sync_queue(source_id, code, source.poll_interval_seconds)
    if result.error:
        logger.warning("sync %s failed: %s", code, result.error)
    elif result.loaded or result.removed:
        logger.info("sync %s: +%s -%s quarantined %s in %.2fs%s", code, result.loaded, result.removed,
                    result.quarantined, result.seconds, " (budget spent: the next sync carries on)"
                    if result.truncated else "")
    return {"source": code, "loaded": result.loaded, "removed": result.removed, "error": result.error,
            "truncated": result.truncated}
