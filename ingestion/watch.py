"""The source watcher: a new row starts its sync within about WATCH_PROBE_SECONDS, not at the next fan-out tick.

Without write access to the sources (no trigger, so no NOTIFY), the cheapest sign of a new row is the table's
largest id: `SELECT max(id)`, one probe of the primary key's index (tens of microseconds in the source). The
watcher probes every enabled source every WATCH_PROBE_SECONDS (20 queries a second per source when idle, one
connection each) and, when the largest id grew, queues that source's sync at once (`ingestion.tasks.sync_request`,
the fan-out's own rule, without its interval), or, when a sync of it is running, asks that sync to read again before
it lets the source go (a busy source is then read back to back by one worker, not through the queue). What the
probe cannot see (an update in place, a row committed late under a smaller id, a delete) the fan-out's per-second
syncs still find: the watcher only makes the common case fast, and the stack is correct without it.

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


class LargestIdProbe:
    """`SELECT max(id)` of one source, on a connection of its own kept open in autocommit between probes (no
    transaction is left open on the source). Through a pooled connection per probe, the pool's ping, the rollback on
    return and Core's execution cost ~1 ms of the watcher's CPU each: at 20 sources x 20 probes a second, a third of
    a core; on a held DBAPI cursor, a tenth of that."""

    def __init__(self, reader: SourceReader) -> None:
        self.engine = reader.engine
        statement = sa.select(sa.func.max(reader.id_column)).select_from(reader.table)
        self.sql = str(statement.compile(dialect=self.engine.dialect))
        self.connection: sa.Connection | None = None
        self.cursor = None

    def __call__(self):
        try:
            if self.cursor is None:
                self.connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                self.cursor = self.connection.connection.cursor()
            self.cursor.execute(self.sql)
            return self.cursor.fetchone()[0]
        except self.engine.dialect.loaded_dbapi.Error as exc:
            self.close(broken=True)
            raise sa.exc.DBAPIError.instance(self.sql, None, exc, self.engine.dialect.loaded_dbapi.Error) from None
        except sa.exc.SQLAlchemyError:
            self.close(broken=True)
            raise

    def close(self, *, broken: bool = False) -> None:
        if self.connection is not None:
            if broken:
                self.connection.invalidate()  # never handed back to the pool: the server may have ended it
            self.connection.close()
        self.connection = self.cursor = None


@dataclass
class WatchedSource:
    source: Source
    probe: LargestIdProbe | None = None  # made at the first probe, kept while the source's URL stays the same
    largest_id: object = UNPROBED  # None once probed: an empty table
    paused_until: float = 0.0
    syncs_started: int = 0
    probes: int = 0
    failures: list[str] = field(default_factory=list)


def _where(source: Source) -> tuple:
    """What a probe reads: a source edited here gets a new reader."""
    return source.url, source.table_name, source.cursor_columns


def source_probe(watched: WatchedSource, *, request_sync) -> str | None:
    """Probe one source; when its largest id grew, ask for its sync (`request_sync(source) -> SYNC_*`). Returns
    what the request said, or None when nothing was asked."""
    from ingestion.tasks import SYNC_FOLLOW_UP, SYNC_QUEUED, SYNC_WAITING

    now = time.monotonic()
    if now < watched.paused_until:
        return None
    try:
        if watched.probe is None:
            watched.probe = LargestIdProbe(SourceReader(watched.source, []))
        newest = watched.probe()
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
    # Queued, a sync already waiting, or the running sync asked to follow up: whichever runs next reads this row.
    # Backing off: the next probe asks again.
    if outcome in (SYNC_QUEUED, SYNC_WAITING, SYNC_FOLLOW_UP):
        watched.largest_id = newest
        watched.syncs_started += outcome == SYNC_QUEUED
    return outcome


def sources_watch(*, probe_seconds: float | None = None, until=None, on_round=None) -> None:
    """Probe every enabled source every `probe_seconds` (settings.WATCH_PROBE_SECONDS) until interrupted or
    `until()` is true. `on_round(watched, seconds)` is called after each round with the time it took (the command's
    status line)."""
    from ingestion.tasks import sync_request

    probe_seconds = settings.WATCH_PROBE_SECONDS if probe_seconds is None else probe_seconds
    watched: dict[int, WatchedSource] = {}
    try:
        _watch(watched, probe_seconds, until, on_round, sync_request)
    finally:
        for entry in watched.values():
            if entry.probe is not None:
                entry.probe.close()


def _watch(watched: dict[int, WatchedSource], probe_seconds: float, until, on_round, sync_request) -> None:
    loaded_at = 0.0
    while until is None or not until():
        started = time.monotonic()
        if started - loaded_at >= SOURCES_RELOAD_SECONDS:
            current = {source.pk: source for source in Source.objects.filter(enabled=True).select_related("state")}
            kept = {pk: watched[pk] for pk, source in current.items()
                    if pk in watched and _where(watched[pk].source) == _where(source)}
            for pk, entry in watched.items():
                if pk not in kept and entry.probe is not None:
                    entry.probe.close()  # disabled, deleted or moved: its connection goes
            watched.clear()  # in place: the caller closes what is left in it
            watched.update({pk: kept.get(pk) or WatchedSource(source) for pk, source in current.items()})
            for pk, entry in watched.items():
                entry.source = current[pk]  # its state (retry_at) as of now
            loaded_at = started
        for entry in watched.values():
            source_probe(entry, request_sync=lambda source: sync_request(source, new_rows_seen=True))
        if on_round is not None:
            on_round(watched, time.monotonic() - started)
        time.sleep(max(0.0, probe_seconds - (time.monotonic() - started)))
