"""The source watcher: a new row starts its sync within about WATCH_PROBE_SECONDS, not at the next fan-out tick.

Without write access to the sources (no trigger, so no NOTIFY), the cheapest sign of a new row is the table's
largest id: `SELECT max(id)`, one probe of the primary key's index (tens of microseconds in the source). The
watcher probes every enabled source every WATCH_PROBE_SECONDS (20 queries a second per source when idle, one
connection each) and, when the largest id grew, queues that source's sync at once (`ingestion.tasks.sync_request`,
the fan-out's own rule, without its interval). What the probe cannot see (an update in place, a row committed late
under a smaller id, a delete) the fan-out's per-second syncs still find: the watcher only makes the common case
fast, and the stack is correct without it.

Why not the WAL position (`pg_current_wal_lsn()`): it is per server, so every write to any database on it (the
warehouse too, when it shares the server) would look like a change of every source.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import sqlalchemy as sa
from django.conf import settings

from ingestion.extract import SourceReader, SourceUnavailable, source_error_text
from ingestion.models import Source

logger = logging.getLogger(__name__)

SOURCES_RELOAD_SECONDS = 10.0  # sources added, disabled or edited are picked up this soon
FAILED_PROBE_PAUSE_SECONDS = 5.0  # a source that cannot be probed is left to the fan-out this long
UNPROBED = object()


@dataclass
class WatchedSource:
    source: Source
    reader: SourceReader | None = None  # made at the first probe, kept while the source's URL stays the same
    largest_id: object = UNPROBED  # None once probed: an empty table
    paused_until: float = 0.0
    syncs_started: int = 0
    probes: int = 0
    failures: list[str] = field(default_factory=list)


def _where(source: Source) -> tuple:
    """What a probe reads: a source edited here gets a new reader."""
    return source.url, source.table_name, source.cursor_columns


def largest_id(reader: SourceReader):
    """The source table's largest id (the engine and the table's reflection are cached per process)."""
    statement = sa.select(sa.func.max(reader.id_column)).select_from(reader.table)
    with reader.engine.connect() as connection:
        return connection.execute(statement).scalar()


def source_probe(watched: WatchedSource, *, request_sync) -> str | None:
    """Probe one source; when its largest id grew, ask for its sync (`request_sync(source) -> SYNC_*`). Returns
    what the request said, or None when nothing was asked."""
    from ingestion.tasks import SYNC_QUEUED, SYNC_WAITING

    now = time.monotonic()
    if now < watched.paused_until:
        return None
    try:
        if watched.reader is None:
            watched.reader = SourceReader(watched.source, [])
        newest = largest_id(watched.reader)
    except (SourceUnavailable, sa.exc.SQLAlchemyError) as exc:
        message = str(exc) if isinstance(exc, SourceUnavailable) else source_error_text(exc, watched.source.url)
        if not watched.failures or watched.failures[-1] != message:
            logger.warning("watch %s: cannot probe (%s); the fan-out syncs it meanwhile", watched.source.code, message)
        watched.failures = [message]
        watched.paused_until = now + FAILED_PROBE_PAUSE_SECONDS
        return None
    watched.probes += 1
    watched.failures = []
    if watched.largest_id is UNPROBED:
        watched.largest_id = newest  # the first probe: a baseline (rows already there are the fan-out's)
        return None
    if newest is None or (watched.largest_id is not None and newest <= watched.largest_id):
        watched.largest_id = newest  # unchanged, or rows deleted: a new baseline
        return None
    outcome = request_sync(watched.source)
    # Queued, or a sync is already waiting (it will read this row): this id is dealt with. Running or backing off:
    # the next probe asks again, so that a sync starting after this commit is queued.
    if outcome in (SYNC_QUEUED, SYNC_WAITING):
        watched.largest_id = newest
        watched.syncs_started += outcome == SYNC_QUEUED
    return outcome


def sources_watch(*, probe_seconds: float | None = None, until=None, on_round=None) -> None:
    """Probe every enabled source every `probe_seconds` (settings.WATCH_PROBE_SECONDS) until interrupted or
    `until()` is true. `on_round(watched)` is called after each round (the command's status line)."""
    from ingestion.tasks import sync_request

    probe_seconds = settings.WATCH_PROBE_SECONDS if probe_seconds is None else probe_seconds
    watched: dict[int, WatchedSource] = {}
    loaded_at = 0.0
    while until is None or not until():
        started = time.monotonic()
        if started - loaded_at >= SOURCES_RELOAD_SECONDS:
            current = {source.pk: source for source in Source.objects.filter(enabled=True).select_related("state")}
            watched = {pk: watched[pk] if pk in watched and _where(watched[pk].source) == _where(source)
                       else WatchedSource(source) for pk, source in current.items()}
            for pk, entry in watched.items():
                entry.source = current[pk]  # its state (retry_at) as of now
            loaded_at = started
        for entry in watched.values():
            source_probe(entry, request_sync=lambda source: sync_request(source, respect_interval=False))
        if on_round is not None:
            on_round(watched)
        time.sleep(max(0.0, probe_seconds - (time.monotonic() - started)))
