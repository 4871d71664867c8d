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
import dataclasses
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from ingestion.extract import (FINGERPRINT_PRIME, IdsFingerprint, SourceReader, SourceSnapshot, SourceUnavailable,
                               forget_table)
from ingestion.layout import pisa_variables
from ingestion.load import LoadResult, batch_load, commits_without_waiting_for_disk, students_remove
from ingestion.models import DuplicateStudent, QuarantinedRow, Source, SourceState, Student
from ingestion.plausibility import RULES_VERSION
from ingestion.transform import line_digest, transform

logger = logging.getLogger(__name__)

# Rows per load transaction: ~4 KB each on the wire, so a batch is ~4 MB whatever the backlog (worker memory stays
# flat, well under 300 MB), while still large enough to amortise the per-batch costs.
BATCH_ROWS = 1000
# How far before the bookmark each run looks for rows committed late by long transactions.
LOOKBACK = dt.timedelta(seconds=settings.INGEST_LOOKBACK_SECONDS)
RECONCILE_SECONDS = settings.INGEST_RECONCILE_SECONDS
RECONCILE_MAX_SECONDS = settings.INGEST_RECONCILE_MAX_SECONDS
# Rows per id range when re-reading a source to find updated rows.
RECONCILE_RANGE = 5000
# Ids per range when the ids of source and warehouse are compared range by range (a 100,000-row source has ~25).
DIFF_RANGE = 4096
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
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
    # The budget ran out with rows still to load: the next sync carries on, from these ids (ascending).
    truncated: bool = False
    pending_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""
    changed_countries: set[str] = field(default_factory=set)

    def add(self, load: LoadResult) -> None:
        self.loaded += load.inserted_or_updated
        self.removed += load.removed
        self.quarantined += load.quarantined
        self.duplicates += load.duplicates
        self.batches += 1

    def followed_by(self, later: SyncResult) -> SyncResult:
        """This sync and the one that ran right after it (same source, same lock), as one: counts added up, the
        later one's outcome (error, truncation, pending ids)."""
        return dataclasses.replace(
            later, loaded=self.loaded + later.loaded, removed=self.removed + later.removed,
            quarantined=self.quarantined + later.quarantined, duplicates=self.duplicates + later.duplicates,
            batches=self.batches + later.batches, reset=self.reset or later.reset,
            reconciled=self.reconciled or later.reconciled, seconds=self.seconds + later.seconds,
            changed_countries=self.changed_countries | later.changed_countries)


Progress = Callable[[int], None]


_ACCOUNTED_IDS_SQL = f"""
    SELECT source_row_id FROM {Student._meta.db_table} WHERE source_id = %(source)s {{since}}
    UNION ALL SELECT source_row_id FROM {QuarantinedRow._meta.db_table} WHERE source_id = %(source)s
    UNION ALL SELECT superseded_row_id FROM {DuplicateStudent._meta.db_table} WHERE source_id = %(source)s"""
def _accounted_ids(source: Source, *, since: dt.datetime | None = None) -> set[int]:
    """Source row ids the warehouse already accounts for: loaded, quarantined, or superseded by a duplicate.
    One round trip; with `since`, only the students created from then on (quarantine and duplicates are few)."""
    sql = _ACCOUNTED_IDS_SQL.format(since="" if since is None else "AND source_created_at >= %(since)s")
    with connection.cursor() as cursor:
        cursor.execute(sql, {"source": source.pk, "since": since})
        return {row[0] for row in cursor.fetchall()}


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
    from ingestion.warehouse import country_changed

    transaction.on_commit(lambda: country_changed.send(sender=Source, country=country))


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
                result.pending_ids = [row_id for rest in chunks[k + 1:] for row_id in rest]
                return


_STORED_LINES_SQL = f"""
    SELECT source_row_id, source_created_at, raw FROM {Student._meta.db_table}
    WHERE source_id = %s AND source_row_id > %s ORDER BY source_row_id LIMIT %s"""


def _stored_lines(source: Source, after_row_id: int) -> list[bytes]:
    """Up to BATCH_ROWS students of a source as the source lines they were loaded from (from the warehouse's copy)."""
    with connection.cursor() as cursor:
        cursor.execute(_STORED_LINES_SQL, [source.pk, after_row_id, BATCH_ROWS])
        rows = cursor.fetchall()
    return [f"{row_id}\t{created.isoformat()}\t".encode() + (raw.encode() if isinstance(raw, str) else bytes(raw))
            for row_id, created, raw in rows]


def source_students_recheck(*, source: Source, progress: Progress | None = None) -> SyncResult:
    """Check every stored student of a source against today's rules (from the warehouse's own copy of its line, no
    source needed): one that breaks a rule moves to the quarantine with its reasons, and leaves the figures."""
    state, _ = SourceState.objects.get_or_create(source=source)
    result = SyncResult(source=source.code)
    after = 0
    while lines := _stored_lines(source, after):
        after = int(lines[-1].split(b"\t", 1)[0])
        verdict = transform(lines, pisa_variables(), country=source.code)
        broken = {row_id for row_id, *_ in verdict.quarantined}
        if broken:
            _load_lines(source, state, [line for line in lines if int(line.split(b"\t", 1)[0]) in broken], result)
        if progress:
            progress(len(lines))
    if result.quarantined:
        logger.warning("source %s: %s stored student(s) break today's rules and were quarantined", source.code,
                       result.quarantined)
        state.rows_loaded = Student.objects.filter(source=source).count()
        state.quarantined_count = QuarantinedRow.objects.filter(source=source).count()
        state.save(update_fields=["rows_loaded", "quarantined_count"])
    return result


def _source_rows_recheck(reader: SourceReader, source: Source, state: SourceState, result: SyncResult,
                         progress: Progress | None) -> None:
    """Under rules other than the ones the stored rows were checked with: quarantined rows are read again from the
    source (a row the new rules accept loads; one still refused is not counted again), then stored students are
    checked again."""
    reread = SyncResult(source=source.code)
    quarantined = sorted(QuarantinedRow.objects.filter(source=source).values_list("source_row_id", flat=True))
    for chunk in _in_batches(quarantined):
        _load_lines(source, state, reader.lines_for_ids(chunk), reread)
    checked = source_students_recheck(source=source, progress=progress)
    result.loaded += reread.loaded
    result.quarantined += checked.quarantined
    result.removed += checked.removed + reread.removed
    result.changed_countries |= checked.changed_countries | reread.changed_countries
    state.rules_version = RULES_VERSION


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
    reloaded = False
    try:
        reader = SourceReader(source, pisa_variables())
        first_load = state.bookmark_created_at is None
        if state.rules_version != RULES_VERSION:
            _source_rows_recheck(reader, source, state, result, progress)
        window_start = None if first_load else state.bookmark_created_at - LOOKBACK
        previous = (None if state.source_row_count is None or state.backlog_pending
                    else SourceSnapshot(row_count=state.source_row_count, max_id=state.source_max_id,
                                        ids=_stored_fingerprint(state)))
        # Fast path: the same fingerprint of ids (count, max id, power sums) as last time means nothing was added or
        # deleted, so the idle poll that runs every second for every source costs one cheap query on the source.
        snapshot, candidates = reader.poll(window_start, unless=None if (full or first_load) else previous)
        # Emptied, truncated, recreated, or its newest rows deleted: every id is compared below, and what differs is
        # repaired in place. The country is never forgotten and reloaded, so readers never see it half-loaded.
        went_backwards = (state.source_max_id is not None
                          and (snapshot.max_id is None or snapshot.max_id < state.source_max_id))
        result.reset = went_backwards
        due = not first_load and (full or went_backwards or _reconcile_due(state, snapshot))
        if (went_backwards or full) and not first_load and not state.reloading:
            # Atomic for readers: the metrics hold the country's published figures until the repair is over.
            state.reloading = True
            state.save(update_fields=["reloading"])
        if due and candidates is None:
            snapshot, candidates = reader.poll(window_start)

        # Nothing added or deleted since a poll that found the warehouse exact: it still is.
        verified = candidates is None and previous is not None and previous.ids is not None
        if candidates is not None:
            missing = sorted(set(candidates) - _accounted_ids(source, since=window_start))
            if pending:
                pending(len(missing))
            _load_ids(reader, source, state, missing, result, progress, deadline)
            if not result.truncated:
                _rows_beyond_remove(reader, source, state, snapshot.max_id, result, progress, deadline)
                verified = _ids_compare(reader, source, state, snapshot, previous, candidates, due, result, progress,
                                        deadline)

        if first_load:
            # Everything up to this snapshot is new: nothing to compare yet, also when the budget cut the load short
            # (an update after the snapshot moves the counter, and the comparison is due again).
            state.last_reconciled_at = timezone.now()
            state.source_update_count = snapshot.updates
        if due and snapshot.max_id is not None and not result.truncated:
            _reconcile_content(reader, source, state, snapshot.max_id, result, progress)
            state.last_reconciled_at = timezone.now()
            state.source_update_count = snapshot.updates
            result.reconciled = True

        # The fingerprint is kept only when the warehouse was found to hold exactly these ids: the next poll's fast
        # paths compare against it.
        _store_fingerprint(state, snapshot.ids if verified and not result.truncated else None)
        state.source_max_id = snapshot.max_id
        state.source_row_count = snapshot.row_count
        # The next poll must read the ids again even if the source has not changed meanwhile (its fast path skips a
        # source whose row count and max id are as recorded).
        state.backlog_pending = result.truncated
        _lag_record(reader, state, result)
        reloaded = state.reloading and not result.truncated
        if reloaded:
            state.reloading = False
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
    if reloaded:
        _refresh_metrics_after_commit(source.code)  # the repair is over: publish it, all at once
    result.seconds = time.perf_counter() - started
    return result


# Source rows whose created_at is read to date a backlog: the oldest ids left (rows arrive in about id order).
LAG_SAMPLE_IDS = 1000


def _lag_record(reader: SourceReader, state: SourceState, result: SyncResult) -> None:
    """How far behind the source the warehouse is once this sync is over: nothing left (0 rows, no date) unless the
    budget cut it short, and then the rows left and the creation time of the oldest of them."""
    state.rows_behind = len(result.pending_ids)
    state.oldest_pending_created_at = (reader.oldest_created_at(result.pending_ids[:LAG_SAMPLE_IDS])
                                       if result.pending_ids else None)


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


def _stored_fingerprint(state: SourceState) -> IdsFingerprint | None:
    if state.source_ids_sum is None or state.source_row_count is None:
        return None
    return IdsFingerprint(state.source_row_count, state.source_ids_sum, state.source_ids_square_sum,
                          state.source_ids_cube_sum)


def _store_fingerprint(state: SourceState, fingerprint: IdsFingerprint | None) -> None:
    state.source_ids_sum = fingerprint.id_sum if fingerprint else None
    state.source_ids_square_sum = fingerprint.square_sum if fingerprint else None
    state.source_ids_cube_sum = fingerprint.cube_sum if fingerprint else None


def _ids_compare(reader, source, state, snapshot: SourceSnapshot, previous: SourceSnapshot | None,
                 candidates: list[int], due: bool, result: SyncResult, progress, deadline: float) -> bool:
    """Make the ids the warehouse accounts for equal to the source's up to its max id; True once they are.

    Fast path (every poll that finds new rows): when the source's fingerprint is last poll's plus exactly the ids
    appended beyond last poll's max id, the warehouse (which matched last poll and has just loaded those) still
    matches, and is not even asked. Otherwise its fingerprint is compared, and when it differs, range by range
    (`_ranges_repair`): a late row, a delete, an insert and a delete that cancel in a count, all show."""
    if snapshot.max_id is None:
        return True  # emptied: _rows_beyond_remove removed everything
    if not due and previous is not None and previous.ids is not None and previous.max_id is not None:
        appended = IdsFingerprint.of(i for i in candidates if i > previous.max_id)
        if snapshot.ids == previous.ids + appended:
            return True
    if not due and snapshot.ids == warehouse_ids_fingerprint(source, snapshot.max_id):
        return True
    _ranges_repair(reader, source, state, snapshot.max_id, result, progress, deadline)
    return not result.truncated


def _rows_vanished(source: Source, vanished: list[int], result: SyncResult) -> set[int]:
    """Remove what the warehouse holds for source rows that are gone. Returns the ids of rows that a vanished row had
    superseded (duplicates of its CNTSTUID): they are the student again, and must be loaded."""
    if not vanished:
        return set()
    kept_by_vanished = DuplicateStudent.objects.filter(source=source, kept_row_id__in=vanished)
    superseded = set(kept_by_vanished.values_list("superseded_row_id", flat=True)) - set(vanished)
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
    return superseded


def _rows_beyond_remove(reader, source: Source, state, max_id: int | None, result: SyncResult, progress,
                        deadline: float) -> None:
    """Source rows above the source's max id (every row when it is empty) were deleted: remove what we hold of them
    (one index range scan, usually finding nothing)."""
    beyond = _accounted_ids_between(source, BIGINT_MIN if max_id is None else max_id + 1, BIGINT_MAX)
    superseded = _rows_vanished(source, sorted(beyond), result)
    _load_ids(reader, source, state, sorted(superseded), result, progress, deadline)


def _ranges_repair(reader, source, state, max_id: int, result: SyncResult, progress, deadline: float) -> None:
    """Compare the ids of source and warehouse range by range (DIFF_RANGE ids each); in the ranges whose fingerprints
    differ, remove what the source no longer has and load what the warehouse lacks."""
    theirs = reader.range_fingerprints(range_size=DIFF_RANGE, up_to_id=max_id)
    ours = warehouse_range_fingerprints(source, max_id)
    present: set[int] = set()
    accounted: set[int] = set()
    for bucket in sorted(set(theirs) | set(ours)):
        if theirs.get(bucket) == ours.get(bucket):
            continue
        low, high = bucket * DIFF_RANGE, min(bucket * DIFF_RANGE + DIFF_RANGE - 1, max_id)
        present.update(reader.ids_between(low, high))
        accounted.update(_accounted_ids_between(source, low, high))
    superseded = _rows_vanished(source, sorted(accounted - present), result)
    _load_ids(reader, source, state, sorted((present - accounted) | superseded), result, progress, deadline)


_ACCOUNTED_BETWEEN_SQL = f"""
    SELECT source_row_id FROM {Student._meta.db_table}
    WHERE source_id = %(source)s AND source_row_id BETWEEN %(low)s AND %(high)s
    UNION ALL SELECT source_row_id FROM {QuarantinedRow._meta.db_table}
    WHERE source_id = %(source)s AND source_row_id BETWEEN %(low)s AND %(high)s
    UNION ALL SELECT superseded_row_id FROM {DuplicateStudent._meta.db_table}
    WHERE source_id = %(source)s AND superseded_row_id BETWEEN %(low)s AND %(high)s"""
# The fingerprint (extract.IdsFingerprint) of the ids accounted for, by range or in all: index-only scans.
_FINGERPRINT_SQL = f"""
    SELECT {{bucket}} count(*), coalesce(sum(r), 0), coalesce(sum(q), 0), coalesce(sum(q * m %% {FINGERPRINT_PRIME}), 0)
    FROM (SELECT r, m, m * m %% {FINGERPRINT_PRIME} AS q
          FROM (SELECT r, r %% {FINGERPRINT_PRIME} AS m FROM ({_ACCOUNTED_BETWEEN_SQL}) AS a(r)) AS reduced) AS accounted
    {{group_by}}"""


def _accounted_ids_between(source: Source, low: int, high: int) -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute(_ACCOUNTED_BETWEEN_SQL, {"source": source.pk, "low": low, "high": high})
        return {row[0] for row in cursor.fetchall()}


def warehouse_ids_fingerprint(source: Source, up_to_id: int) -> IdsFingerprint:
    with connection.cursor() as cursor:
        cursor.execute(_FINGERPRINT_SQL.format(bucket="", group_by=""),
                       {"source": source.pk, "low": BIGINT_MIN, "high": up_to_id})
        return IdsFingerprint(*(int(v) for v in cursor.fetchone()))


def warehouse_range_fingerprints(source: Source, up_to_id: int) -> dict[int, IdsFingerprint]:
    # Integer division truncates toward zero here as in the sources' SQL (extract.range_fingerprints).
    with connection.cursor() as cursor:
        cursor.execute(_FINGERPRINT_SQL.format(bucket=f"r / {DIFF_RANGE},", group_by="GROUP BY 1"),
                       {"source": source.pk, "low": BIGINT_MIN, "high": up_to_id})
        return {int(row[0]): IdsFingerprint(*(int(v) for v in row[1:])) for row in cursor.fetchall()}
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
