"""Keeping one source in the warehouse: the service behind the Celery task and `manage.py ingest`.

One run of `source_sync`:

1. **Reset check**: if the source's max id went backwards (emptied, truncated, recreated), forget what came from it
   and load it again from scratch.
2. **New and late rows**: list the ids created since the bookmark minus a look-back window (cheap: ids only), subtract
   the ids already accounted for (loaded, quarantined or superseded), and load the rest in bounded batches. A long
   transaction that commits rows older than the bookmark is caught by the window.
3. **Deletes and very late rows**: if the source's row count up to its max id differs from what we account for, diff
   the full id lists, remove what the source no longer has and load what we lack.
4. **Updates**: when a PostgreSQL source's update counter moved (or every `RECONCILE_SECONDS` for other dialects),
   re-read the source in id ranges and reload rows whose content hash differs.

Each batch is loaded in its own transaction together with the bookmark and counters, so memory stays flat and a crash
loses nothing. Metrics are refreshed after commit when anything changed.

A sync may have a time budget (the Celery task gives one, `manage.py ingest` does not): a large backlog stops after
the batch that crosses it, steps 3 and 4 wait, and the next sync carries on where this one stopped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from ingestion.extract import SourceReader, SourceSnapshot, SourceUnavailable, forget_table
from ingestion.layout import pisa_variables
from ingestion.load import LoadResult, batch_load, commits_without_waiting_for_disk, students_remove
from ingestion.models import DuplicateStudent, QuarantinedRow, Source, SourceState, Student
from ingestion.transform import line_digest, transform

logger = logging.getLogger(__name__)

# Rows per load transaction: ~4 KB each on the wire, so a batch is ~4 MB whatever the backlog (worker memory stays
# flat, well under 300 MB), while still large enough to amortise the per-batch costs.
BATCH_ROWS = 1000
# How far before the bookmark each run looks for rows committed late by long transactions.
LOOKBACK = dt.timedelta(seconds=getattr(settings, "INGEST_LOOKBACK_SECONDS", 30))
RECONCILE_SECONDS = getattr(settings, "INGEST_RECONCILE_SECONDS", 60)
RECONCILE_MAX_SECONDS = getattr(settings, "INGEST_RECONCILE_MAX_SECONDS", 3600)
# Rows per id range when re-reading a source to find updated rows.
RECONCILE_RANGE = 5000
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0


@dataclass
class SyncResult:
    source: str
    loaded: int = 0
    removed: int = 0
    quarantined: int = 0
    duplicates: int = 0
    batches: int = 0
    reset: bool = False
    reconciled: bool = False
    # The budget ran out with rows still to load: the next sync carries on.
    truncated: bool = False
    seconds: float = 0.0
    error: str = ""
    changed_countries: set[str] = field(default_factory=set)

    def add(self, load: LoadResult) -> None:
        self.loaded += load.inserted_or_updated
        self.removed += load.removed
        self.quarantined += load.quarantined
        self.duplicates += load.duplicates
        self.batches += 1


Progress = Callable[[int], None]


_ACCOUNTED_IDS_SQL = f"""
    SELECT source_row_id FROM {Student._meta.db_table} WHERE source_id = %(source)s {{since}}
    UNION ALL SELECT source_row_id FROM {QuarantinedRow._meta.db_table} WHERE source_id = %(source)s
    UNION ALL SELECT superseded_row_id FROM {DuplicateStudent._meta.db_table} WHERE source_id = %(source)s"""
_ACCOUNTED_COUNT_SQL = f"""
    SELECT (SELECT count(*) FROM {Student._meta.db_table} WHERE source_id = %(source)s AND source_row_id <= %(up_to)s)
         + (SELECT count(*) FROM {QuarantinedRow._meta.db_table}
            WHERE source_id = %(source)s AND source_row_id <= %(up_to)s)
         + (SELECT count(*) FROM {DuplicateStudent._meta.db_table}
            WHERE source_id = %(source)s AND superseded_row_id <= %(up_to)s)"""


def _accounted_ids(source: Source, *, since: dt.datetime | None = None) -> set[int]:
    """Source row ids the warehouse already accounts for: loaded, quarantined, or superseded by a duplicate.
    One round trip; with `since`, only the students created from then on (quarantine and duplicates are few)."""
    sql = _ACCOUNTED_IDS_SQL.format(since="" if since is None else "AND source_created_at >= %(since)s")
    with connection.cursor() as cursor:
        cursor.execute(sql, {"source": source.pk, "since": since})
        return {row[0] for row in cursor.fetchall()}


def _accounted_count(source: Source, up_to_id: int) -> int:
    """How many source row ids up to `up_to_id` the warehouse accounts for (counted in SQL, in one round trip)."""
    with connection.cursor() as cursor:
        cursor.execute(_ACCOUNTED_COUNT_SQL, {"source": source.pk, "up_to": up_to_id})
        return cursor.fetchone()[0]


def _load_lines(source: Source, state: SourceState, lines: list[bytes], result: SyncResult) -> None:
    if not lines:
        return
    started = time.perf_counter()
    batch = transform(lines, pisa_variables(), country=source.code)
    with transaction.atomic():
        load = batch_load(source_id=source.pk, country=source.code, batch=batch)
        newest = batch.good.created_at.max()
        if newest is not None and not isinstance(newest, type(None)) and newest == newest:  # NaT-safe
            newest = newest.to_pydatetime()
            if state.bookmark_created_at is None or newest > state.bookmark_created_at:
                state.bookmark_created_at = newest
                state.newest_created_at = newest
        max_id = int(batch.good.row_ids.max())
        state.bookmark_id = max(state.bookmark_id or 0, max_id)
        state.last_batch_size = len(lines)
        state.last_batch_seconds = time.perf_counter() - started
        state.save(update_fields=["bookmark_created_at", "newest_created_at", "bookmark_id", "last_batch_size",
                                  "last_batch_seconds"])
        if load.changed:
            _refresh_metrics_after_commit(source.code)
    result.add(load)
    if load.changed:
        result.changed_countries.add(source.code)


def _refresh_metrics_after_commit(country: str) -> None:
    from ingestion.followup import metrics_refresh_request

    transaction.on_commit(lambda: metrics_refresh_request(country=country))


def _in_batches(ids: list[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), BATCH_ROWS):
        yield ids[start:start + BATCH_ROWS]


def _load_ids(reader: SourceReader, source, state, ids: list[int], result: SyncResult, progress: Progress | None,
              deadline: float):
    """Load these ids batch by batch, oldest first, until done or `deadline` (perf_counter) passes; then set
    `result.truncated` and leave the rest to the next sync."""
    chunks = list(_in_batches(sorted(ids)))
    if len(chunks) <= 1:  # a poll's few rows: no thread
        for chunk in chunks:
            _load_lines(source, state, reader.lines_for_ids(chunk), result)
            if progress:
                progress(len(chunk))
        return
    # Fast path for backlogs: the source renders batch k+1 while this process parses and loads batch k, so the
    # source server, this process and the warehouse work at the same time instead of waiting for each other. Two
    # batches in memory at most (~8 MB). The thread only reads the source; every warehouse write stays here.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"read-{source.code}") as reads:
        next_lines = reads.submit(reader.lines_for_ids, chunks[0])
        for k, chunk in enumerate(chunks):
            lines = next_lines.result()
            last = k + 1 == len(chunks)
            # The budget is checked before the next read starts, so that a sync cut short reads nothing it throws away.
            out_of_time = not last and time.perf_counter() > deadline
            if not (last or out_of_time):
                next_lines = reads.submit(reader.lines_for_ids, chunks[k + 1])
            _load_lines(source, state, lines, result)
            if progress:
                progress(len(chunk))
            if out_of_time:
                result.truncated = True
                return


def source_forget(*, source: Source) -> int:
    """Remove everything loaded from a source (it was emptied or replaced), logging -1 changes for the metrics."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            removed = students_remove(cursor.cursor, source_id=source.pk, country=source.code, row_ids=None)
        QuarantinedRow.objects.filter(source=source).delete()
        DuplicateStudent.objects.filter(source=source).delete()
        SourceState.objects.filter(source=source).update(bookmark_created_at=None, bookmark_id=None,
                                                         newest_created_at=None, source_max_id=None)
        if removed:
            _refresh_metrics_after_commit(source.code)
    return removed


def source_sync(*, source_id: int, full: bool = False, progress: Progress | None = None,
                pending: Callable[[int], None] | None = None, heartbeat: Callable[[], object] | None = None,
                budget_seconds: float | None = None) -> SyncResult:
    """Bring the warehouse up to date with one source, or as far as `budget_seconds` allows (None: no limit; see
    `SyncResult.truncated`). Safe to run again at any time (idempotent).

    `progress(n)` is called after each batch of n rows, `pending(n)` with the number of rows about to load, and
    `heartbeat()` after each batch (the Celery task renews its lock there)."""
    with commits_without_waiting_for_disk():
        return _source_sync(source_id=source_id, full=full, progress=progress, pending=pending, heartbeat=heartbeat,
                            budget_seconds=budget_seconds)


def _source_sync(*, source_id: int, full: bool, progress: Progress | None, pending: Callable[[int], None] | None,
                 heartbeat: Callable[[], object] | None, budget_seconds: float | None) -> SyncResult:
    started = time.perf_counter()
    deadline = float("inf") if budget_seconds is None else started + budget_seconds
    if heartbeat:
        user_progress = progress

        def progress(n: int) -> None:
            heartbeat()
            if user_progress:
                user_progress(n)

    source = Source.objects.get(pk=source_id)
    state, _ = SourceState.objects.get_or_create(source=source)
    result = SyncResult(source=source.code)
    try:
        reader = SourceReader(source, pisa_variables())
        first_load = state.bookmark_created_at is None
        window_start = None if first_load else state.bookmark_created_at - LOOKBACK
        previous = (None if state.source_row_count is None or state.backlog_pending
                    else SourceSnapshot(row_count=state.source_row_count, max_id=state.source_max_id))
        # Fast path: same row count and max id as last time means nothing was added or deleted, so the idle poll
        # that runs every second for every source costs one cheap query on the source.
        snapshot, candidates = reader.poll(window_start, unless=None if (full or first_load) else previous)
        went_backwards = (state.source_max_id is not None
                          and (snapshot.max_id is None or snapshot.max_id < state.source_max_id))
        if went_backwards or (full and state.bookmark_id is not None):
            result.removed += source_forget(source=source)
            result.reset = True
            state.refresh_from_db()
            first_load, window_start = True, None
            snapshot, candidates = reader.poll(None)
        due = not first_load and _reconcile_due(state, snapshot)
        if due and candidates is None:
            snapshot, candidates = reader.poll(window_start)

        if candidates is not None:
            missing = sorted(set(candidates) - _accounted_ids(source, since=window_start))
            if pending:
                pending(len(missing))
            _load_ids(reader, source, state, missing, result, progress, deadline)
            # Deleted rows, and rows committed later than the window, show as a different count of ids.
            if not result.truncated and snapshot.max_id is not None and (
                    due or snapshot.row_count != _accounted_count(source, snapshot.max_id)):
                _diff_ids(reader, source, state, snapshot.max_id, _accounted_ids(source), result, progress, deadline)

        if first_load:
            # Everything up to this snapshot is new: nothing to compare yet, also when the budget cut the load short
            # (an update after the snapshot moves the counter, and the comparison is due again).
            state.last_reconciled_at = timezone.now()
            state.source_update_count = snapshot.updates
        if (due or full) and snapshot.max_id is not None and not result.truncated:
            _reconcile_content(reader, source, state, snapshot.max_id, result, progress)
            state.last_reconciled_at = timezone.now()
            state.source_update_count = snapshot.updates
            result.reconciled = True

        state.source_max_id = snapshot.max_id
        state.source_row_count = snapshot.row_count
        # The next poll must read the ids again even if the source has not changed meanwhile (its fast path skips a
        # source whose row count and max id are as recorded).
        state.backlog_pending = result.truncated
        state.last_success_at = timezone.now()
        state.last_error = ""
        state.consecutive_failures = 0
        state.retry_at = None
    except SourceUnavailable as exc:
        forget_table(source.url, source.table_name)
        result.error = str(exc)
        _record_failure(state, result.error)
    finally:
        if result.loaded or result.removed or result.quarantined or result.reset or full:
            state.rows_loaded = Student.objects.filter(source=source).count()
            state.quarantined_count = QuarantinedRow.objects.filter(source=source).count()
        if result.removed or result.reset:
            newest = Student.objects.filter(source=source).aggregate(newest=Max("source_created_at"))["newest"]
            state.newest_created_at = newest
        state.save()
    result.seconds = time.perf_counter() - started
    return result


def _reconcile_due(state: SourceState, snapshot: SourceSnapshot) -> bool:
    """Whether rows may have changed in place, so that the source's content must be compared with the warehouse.

    A PostgreSQL source says so itself: its update counter moved since the last comparison (the statistics reach
    the counter within about a second of the update's commit). The comparison re-reads every row, so it runs only
    then, and every RECONCILE_MAX_SECONDS in case statistics were off. Other sources are compared every
    RECONCILE_SECONDS."""
    if snapshot.updates is not None and snapshot.updates != state.source_update_count:
        return True
    interval = RECONCILE_SECONDS if snapshot.updates is None else RECONCILE_MAX_SECONDS
    return (state.last_reconciled_at is None
            or timezone.now() - state.last_reconciled_at > dt.timedelta(seconds=interval))


def _record_failure(state: SourceState, message: str) -> None:
    """Back off exponentially with jitter, so a dead source costs little and does not slow the others."""
    state.consecutive_failures += 1
    delay = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (state.consecutive_failures - 1))
    state.retry_at = timezone.now() + dt.timedelta(seconds=delay * random.uniform(0.5, 1.0))
    state.last_error = message
    state.last_error_at = timezone.now()
    logger.warning("source %s unavailable (%s failures in a row): %s", state.source_id,
                   state.consecutive_failures, message)


def _diff_ids(reader, source, state, max_id: int, accounted: set[int], result: SyncResult, progress,
              deadline: float) -> None:
    present = set(reader.ids_created_since(None, up_to_id=max_id))
    vanished = sorted(i for i in accounted if i <= max_id and i not in present)
    if vanished:
        # A deleted row that had superseded duplicates of its CNTSTUID: they are the student again, so they are no
        # longer accounted for and load below (the latest of them wins, as on any load).
        kept_by_vanished = DuplicateStudent.objects.filter(source=source, kept_row_id__in=vanished)
        accounted = accounted - set(kept_by_vanished.values_list("superseded_row_id", flat=True))
        with transaction.atomic():
            with connection.cursor() as cursor:
                removed = students_remove(cursor.cursor, source_id=source.pk, country=source.code, row_ids=vanished)
            QuarantinedRow.objects.filter(source=source, source_row_id__in=vanished).delete()
            DuplicateStudent.objects.filter(source=source, superseded_row_id__in=vanished).delete()
            kept_by_vanished.delete()
            if removed:
                _refresh_metrics_after_commit(source.code)
        result.removed += removed
        if removed:
            result.changed_countries.add(source.code)
    _load_ids(reader, source, state, sorted(present - accounted), result, progress, deadline)


def _reconcile_content(reader, source, state, max_id: int, result: SyncResult, progress) -> None:
    """Find rows changed in place (same id, new values) by comparing content hashes range by range."""
    stored = dict(Student.objects.filter(source=source).values_list("source_row_id", "raw_md5"))
    stored.update((row_id, hashlib.md5(raw.encode()).hexdigest())
                  for row_id, raw in QuarantinedRow.objects.filter(source=source).values_list("source_row_id", "raw"))

    for low in range(0, max_id + 1, RECONCILE_RANGE):
        lines = reader.lines_in_id_range(low, low + RECONCILE_RANGE - 1)
        changed = []
        for line in lines:
            row_id, digest = line_digest(line)
            if row_id in stored and stored[row_id] != digest:
                changed.append(line)
        if changed:
            _load_lines(source, state, changed, result)
        if progress:
            progress(0)
