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
from pisa_site.locks import claim_interval, clear_queued, held_by, is_locked, mark_queued, redis_lock
from ingestion.models import Source
from ingestion.pipeline import source_sync

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


SYNC_QUEUED, SYNC_WAITING, SYNC_RUNNING, SYNC_BACKING_OFF, SYNC_NOT_DUE = (
    "queued", "already queued", "running", "backing off", "not due")


def sync_request(source: Source, *, now=None, respect_interval: bool = True) -> str:
    """Queue one sync of `source` unless it is backing off, running, or already has one waiting; with
    `respect_interval`, also unless it was queued less than its poll_interval_seconds ago (the fan-out's pace; the
    source watcher, which has seen a new row, does not wait for it). Returns what happened (SYNC_*)."""
    now = now or timezone.now()
    state = getattr(source, "state", None)
    if state is not None and state.retry_at and state.retry_at > now:
        return SYNC_BACKING_OFF
    name = f"source:{source.pk}"
    if is_locked(name):
        return SYNC_RUNNING
    if respect_interval and not claim_interval(name, seconds=source.poll_interval_seconds):
        return SYNC_NOT_DUE
    # At most one waiting message per source: when the workers fall behind, the queue stays one round of the
    # sources long (each sync reads everything new anyway), instead of piling up a message a second per source
    # and making every row wait for the whole backlog.
    if not mark_queued(name, seconds=max(FAN_OUT_EXPIRES_SECONDS, source.poll_interval_seconds * 2)):
        return SYNC_WAITING
    sync_source.apply_async(args=[source.pk], kwargs={"code": source.code, "queued_at": time.time()})
    return SYNC_QUEUED


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
    with redis_lock(name, token=token, ttl_seconds=SYNC_LOCK_SECONDS) as lock:
        if not lock.acquired:
            return {"source": code, "skipped": "already running"}
        result = source_sync(source_id=source_id, heartbeat=lock.extend, budget_seconds=SYNC_BUDGET_SECONDS)
    if result.error:
        logger.warning("sync %s failed: %s", code, result.error)
    elif result.loaded or result.removed:
        logger.info("sync %s: +%s -%s quarantined %s in %.2fs%s", code, result.loaded, result.removed,
                    result.quarantined, result.seconds, " (budget spent: the next sync carries on)"
                    if result.truncated else "")
    return {"source": code, "loaded": result.loaded, "removed": result.removed, "error": result.error,
            "truncated": result.truncated}
