"""Writing a transformed batch into the warehouse, in one transaction, by one of two paths.

- New students only (every batch of a backfill, most polls): binary COPY straight into the student table and the
  change log (+1).
- Anything else (updates, re-read rows, a CNTSTUID taken by another row): COPY into a staging table, then set-based
  SQL that upserts the students (latest `created_at, id` wins per country+CNTSTUID) and appends the analysis values
  they replace or add to the change log (-1 / +1).

Either way bad rows are quarantined and the caller advances the source's bookmark in the same transaction. A crash at
any point rolls all of it back; the next run reads the same rows again and the upsert makes that harmless.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import struct
from dataclasses import dataclass

import numpy as np
from django.db import connection
from psycopg2.extras import Json, execute_values

from ingestion.layout import ANALYSIS_COLUMNS
from ingestion.models import DuplicateStudent, QuarantinedRow, Student, StudentChange
from ingestion.transform import Transformed

STUDENT = Student._meta.db_table
CHANGE = StudentChange._meta.db_table
QUARANTINE = QuarantinedRow._meta.db_table
DUPLICATE = DuplicateStudent._meta.db_table
STAGING = "ingest_staging"
ADVISORY_LOCK_NAMESPACE = 7_118  # first key of pg_advisory_xact_lock(int, int): "PISA warehouse writes"
ANALYSIS = ", ".join(ANALYSIS_COLUMNS)
CHANGE_COLUMNS = f"country, cntschid, source_created_at, {ANALYSIS}, raw"


@dataclass
class LoadResult:
    inserted_or_updated: int = 0
    removed: int = 0
    quarantined: int = 0
    duplicates: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.inserted_or_updated or self.removed)


def country_write_lock(cursor, *, country: str) -> None:
    """Serialise, until the transaction ends, everything that writes a country's students or reads its change log:
    the change log computes -1/+1 from the rows it reads, which must not change under it by an overlapping run, and
    the metrics refresh must never skip a change id committed after a higher one."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [ADVISORY_LOCK_NAMESPACE, country])


@contextlib.contextmanager
def commits_without_waiting_for_disk():
    """Within this block the warehouse connection commits without waiting for its WAL to reach the disk
    (`synchronous_commit = off`): a load's three commits each cost one fsync less (~5-10 ms on this machine).

    Safe here, and only here, because the sources are the system of record and every write in this block is
    idempotent: a PostgreSQL crash can forget the last fraction of a second of commits, but the bookmark and the
    metrics' change-log position are forgotten in the same transactions as the rows they cover, so the next run reads
    those rows again and nothing is lost or counted twice. (Staff edits in the admin keep fully durable commits.)"""
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO OFF")
    try:
        yield
    finally:
        with contextlib.suppress(Exception), connection.cursor() as cursor:  # a broken connection is closed anyway
            cursor.execute("RESET synchronous_commit")


def _ensure_staging(cursor) -> None:
    # A temporary table per connection, emptied at each commit: no catalog churn per batch. NaN stands for NULL in
    # its float columns (binary COPY rows then have a fixed layout); the upsert turns NaN back into NULL.
    cursor.execute(f"SELECT to_regclass('pg_temp.{STAGING}')")
    if cursor.fetchone()[0] is not None:
        return
    cursor.execute(
        f"""CREATE TEMP TABLE {STAGING} (
                cntstuid bigint, cntschid float8, source_row_id bigint, source_created_at timestamptz,
                raw_md5 text, {", ".join(f"{c} float8" for c in ANALYSIS_COLUMNS)}, raw text, country text
            ) ON COMMIT DELETE ROWS"""
    )
    # Never compressed here (a staged row fits a page): see the warehouse's own choice in migration 0003.
    cursor.execute(f"ALTER TABLE {STAGING} ALTER COLUMN raw SET STORAGE PLAIN")


STAGING_COLUMNS = f"cntstuid, cntschid, source_row_id, source_created_at, raw_md5, {ANALYSIS}, raw, country"
# psycopg2 hands a COPY's data to libpq in pieces of this many bytes (its default, 8 KB, costs a call per piece:
# a batch's student rows are ~4.5 MB, and whole-megabyte pieces took a third less CPU).
COPY_CHUNK_BYTES = 1 << 20
_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_BINARY_TRAILER = struct.pack(">h", -1)
POSTGRES_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)  # binary COPY's timestamps count from it
_POSTGRES_EPOCH_MICROSECONDS = int(POSTGRES_EPOCH.timestamp()) * 1_000_000  # in Unix microseconds
_FLOAT8 = np.dtype([("length", ">i4"), ("value", ">f8")])
_FIXED_PART = np.dtype([
    ("field_count", ">i2"),
    ("cntstuid_length", ">i4"), ("cntstuid", ">i8"),
    ("cntschid", _FLOAT8),
    ("row_id_length", ">i4"), ("row_id", ">i8"),
    ("created_length", ">i4"), ("created", ">i8"),
    ("md5_length", ">i4"), ("md5", "S32"),
    ("analysis", _FLOAT8, (len(ANALYSIS_COLUMNS),)),
])


def _created_microseconds(batch: Transformed) -> np.ndarray:
    """The good rows' created_at as binary COPY timestamps (microseconds since POSTGRES_EPOCH)."""
    created = batch.good.created_at.iloc[batch.good_index].dt.tz_convert("UTC").dt.tz_localize(None)
    return created.to_numpy("datetime64[us]").astype(np.int64) - _POSTGRES_EPOCH_MICROSECONDS


def _staging_payload(batch: Transformed, country: str) -> io.BytesIO:
    """The batch in PostgreSQL's binary COPY format. Fast path: every fixed-width field of every row is written by
    one NumPy assignment; only the two variable-length fields (raw, country) are appended per row."""
    good, index = batch.good, batch.good_index
    fixed = np.zeros(len(index), dtype=_FIXED_PART)
    fixed["field_count"] = 5 + len(ANALYSIS_COLUMNS) + 2
    fixed["cntstuid_length"], fixed["cntstuid"] = 8, batch.cntstuid
    fixed["cntschid"]["length"], fixed["cntschid"]["value"] = 8, batch.cntschid
    fixed["row_id_length"], fixed["row_id"] = 8, good.row_ids[index]
    fixed["created_length"], fixed["created"] = 8, _created_microseconds(batch)
    fixed["md5_length"], fixed["md5"] = 32, [good.raw_md5[i].encode() for i in index]
    fixed["analysis"]["length"], fixed["analysis"]["value"] = 8, batch.analysis
    row_size = _FIXED_PART.itemsize
    fixed_bytes = fixed.tobytes()
    country_field = struct.pack(">i", len(country.encode())) + country.encode()
    parts = [_BINARY_HEADER]
    for k, i in enumerate(index):
        raw = good.raw[i]
        parts.append(fixed_bytes[k * row_size:(k + 1) * row_size])
        parts.append(struct.pack(">i", len(raw)) + raw + country_field)
    parts.append(_BINARY_TRAILER)
    return io.BytesIO(b"".join(parts))


def batch_load(*, source_id: int, country: str, batch: Transformed) -> LoadResult:
    """Apply one batch. Must run inside transaction.atomic() together with the bookmark update."""
    result = LoadResult(quarantined=len(batch.quarantined))
    with connection.cursor() as cursor:
        cursor = cursor.cursor  # psycopg2's own cursor, for COPY
        country_write_lock(cursor, country=country)
        if len(batch.good_index):
            new = _when_every_student_is_new(cursor, source_id=source_id, country=country, batch=batch)
            if new is not None:
                result.inserted_or_updated += _new_students_insert(
                    cursor, source_id=source_id, country=country, batch=batch, new=new)
            else:
                _staged_upsert(cursor, source_id=source_id, country=country, batch=batch, result=result)
        if batch.duplicates:
            execute_values(
                cursor,
                f"""INSERT INTO {DUPLICATE} (source_id, cntstuid, kept_row_id, superseded_row_id, detected_at)
                    VALUES %s ON CONFLICT (source_id, superseded_row_id) DO UPDATE SET kept_row_id = EXCLUDED.kept_row_id""",
                [(source_id, d.cntstuid, d.kept_row_id, d.superseded_row_id) for d in batch.duplicates],
                template="(%s, %s, %s, %s, now())",
            )
        if batch.quarantined:
            result.removed += _quarantine(cursor, source_id, country, batch.quarantined)
    return result


def _staged_upsert(cursor, *, source_id: int, country: str, batch: Transformed, result: LoadResult) -> None:
    """The general path: the batch is staged, matched to the students it replaces, and upserted."""
    _ensure_staging(cursor)
    cursor.copy_expert(f"COPY {STAGING} ({STAGING_COLUMNS}) FROM STDIN WITH (FORMAT binary)",
                       _staging_payload(batch, country), size=COPY_CHUNK_BYTES)
    # Index lookups, in the three statements that match the batch's rows to their students: each is a LATERAL
    # subquery with OFFSET 0, which the planner cannot merge into a join, so it runs as one index lookup per
    # staged row whatever the statistics say. Written as plain joins, the planner (which knows nothing of the
    # staging table, and whose warehouse statistics lag behind a backfill) hashed every student of the warehouse
    # per batch (30 ms at 10,000 students, seconds at PISA's 612,004: a backfill quadratic in its size), or
    # looped over a source's students once per staged row (0.8 s a batch at 10,000).
    #
    # A source row whose CNTSTUID changed leaves its old student behind: remove that one first.
    cursor.execute(
        f"""WITH gone AS (
                DELETE FROM {STUDENT} s
                WHERE s.id = ANY(ARRAY(
                    SELECT old.id FROM {STAGING} t CROSS JOIN LATERAL (
                        SELECT x.id, x.cntstuid FROM {STUDENT} x
                        WHERE x.source_id = %s AND x.source_row_id = t.source_row_id OFFSET 0) old
                    WHERE old.cntstuid <> t.cntstuid))
                RETURNING s.*)
            INSERT INTO {CHANGE} (sign, recorded_at, {CHANGE_COLUMNS})
            SELECT -1, now(), {CHANGE_COLUMNS} FROM gone""",
        [source_id],
    )
    result.removed += cursor.rowcount
    # Different source rows for one student: record who lost, whichever side it is on.
    cursor.execute(
        f"""INSERT INTO {DUPLICATE} (source_id, cntstuid, kept_row_id, superseded_row_id, detected_at)
            SELECT %s, t.cntstuid,
                   CASE WHEN (s.source_created_at, s.source_row_id) <= (t.source_created_at, t.source_row_id)
                        THEN t.source_row_id ELSE s.source_row_id END,
                   CASE WHEN (s.source_created_at, s.source_row_id) <= (t.source_created_at, t.source_row_id)
                        THEN s.source_row_id ELSE t.source_row_id END,
                   now()
            FROM {STAGING} t CROSS JOIN LATERAL (
                SELECT source_created_at, source_row_id FROM {STUDENT} x
                WHERE x.country = t.country AND x.cntstuid = t.cntstuid OFFSET 0) s
            WHERE s.source_row_id <> t.source_row_id
            ON CONFLICT (source_id, superseded_row_id) DO UPDATE SET kept_row_id = EXCLUDED.kept_row_id""",
        [source_id],
    )
    result.duplicates += cursor.rowcount
    # The versions about to be replaced leave the running sums...
    cursor.execute(
        f"""INSERT INTO {CHANGE} (sign, recorded_at, {CHANGE_COLUMNS})
            SELECT -1, now(), {", ".join(f"s.{c}" for c in CHANGE_COLUMNS.split(", "))}
            FROM {STAGING} t CROSS JOIN LATERAL (
                SELECT {CHANGE_COLUMNS}, source_row_id, raw_md5 FROM {STUDENT} x
                WHERE x.country = t.country AND x.cntstuid = t.cntstuid OFFSET 0) s
            WHERE (s.source_created_at, s.source_row_id) <= (t.source_created_at, t.source_row_id)
              AND (s.source_row_id <> t.source_row_id OR s.raw_md5 <> t.raw_md5)"""
    )
    # ...and the new versions enter them.
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in
                        ("source_id", "cntschid", "source_row_id", "source_created_at", "raw", "raw_md5",
                         *ANALYSIS_COLUMNS))
    cursor.execute(
        f"""WITH upserted AS (
                INSERT INTO {STUDENT} (source_id, country, cntstuid, cntschid, source_row_id, source_created_at,
                                       raw, raw_md5, loaded_at, {ANALYSIS})
                SELECT %s, country, cntstuid, NULLIF(cntschid, 'NaN')::bigint, source_row_id, source_created_at,
                       raw, raw_md5, now(), {", ".join(f"NULLIF({c}, 'NaN')" for c in ANALYSIS_COLUMNS)}
                FROM {STAGING}
                ON CONFLICT (country, cntstuid) DO UPDATE SET {updates}, loaded_at = now()
                WHERE ({STUDENT}.source_created_at, {STUDENT}.source_row_id)
                      <= (EXCLUDED.source_created_at, EXCLUDED.source_row_id)
                  AND ({STUDENT}.source_row_id <> EXCLUDED.source_row_id OR {STUDENT}.raw_md5 <> EXCLUDED.raw_md5)
                RETURNING {CHANGE_COLUMNS})
            INSERT INTO {CHANGE} (sign, recorded_at, {CHANGE_COLUMNS})
            SELECT 1, now(), {CHANGE_COLUMNS} FROM upserted""",
        [source_id],
    )
    result.inserted_or_updated += cursor.rowcount
    # Rows that load now are no longer in quarantine (the source fixed them).
    cursor.execute(
        f"DELETE FROM {QUARANTINE} q USING {STAGING} t WHERE q.source_id = %s AND q.source_row_id = t.source_row_id",
        [source_id],
    )

# Fast path (every batch of a backfill, most polls): when the warehouse holds none of a batch's students yet, nothing
# has to be matched, replaced or logged as leaving. The rows go straight into the student table and the change log by
# binary COPY, without the staging table, the three matching statements and ON CONFLICT: about a third of a load's
# warehouse work. Whether it applies is asked inside the transaction, under the country's write lock, so no other
# load can add one of these students in between.
_EVERY_STUDENT_NEW_SQL = f"""
    SELECT now(),
           NOT EXISTS (SELECT FROM unnest(%(cntstuid)s::bigint[]) AS t(cntstuid) CROSS JOIN LATERAL (
                           SELECT FROM {STUDENT} x WHERE x.country = %(country)s AND x.cntstuid = t.cntstuid OFFSET 0) s)
       AND NOT EXISTS (SELECT FROM unnest(%(row_ids)s::bigint[]) AS t(row_id) CROSS JOIN LATERAL (
                           SELECT FROM {STUDENT} x WHERE x.source_id = %(source)s AND x.source_row_id = t.row_id
                           OFFSET 0) s),
           EXISTS (SELECT FROM {QUARANTINE} WHERE source_id = %(source)s)"""
# In the order of the fields of `_new_students_payloads`.
NEW_STUDENT_COLUMNS = (f"source_id, cntstuid, source_row_id, loaded_at, raw_md5, source_created_at, cntschid, country, "
                       f"{ANALYSIS}, raw")
NEW_CHANGE_COLUMNS = f"sign, recorded_at, source_created_at, cntschid, country, {ANALYSIS}, raw"


@dataclass(frozen=True)
class _NewStudents:
    now: dt.datetime  # the transaction's now(), for loaded_at and recorded_at
    source_has_quarantine: bool


def _when_every_student_is_new(cursor, *, source_id: int, country: str, batch: Transformed) -> _NewStudents | None:
    """None unless the warehouse has none of the batch's students (by CNTSTUID, or by source row: a row whose
    CNTSTUID changed)."""
    cursor.execute(_EVERY_STUDENT_NEW_SQL, {
        "cntstuid": batch.cntstuid.tolist(), "country": country, "source": source_id,
        "row_ids": batch.good.row_ids[batch.good_index].tolist()})
    now, every_student_new, source_has_quarantine = cursor.fetchone()
    return _NewStudents(now, source_has_quarantine) if every_student_new else None


def _postgres_microseconds(moment: dt.datetime) -> int:
    return (moment - POSTGRES_EPOCH) // dt.timedelta(microseconds=1)


def _nullable_float8_fields(values: np.ndarray) -> tuple[bytes, list[int]]:
    """The binary COPY fields of a rows x columns float array with NaN as NULL, every row's after the other's, and
    where each row's start (n + 1 offsets). Vectorised: every cell is written as a length and a value, and the value
    bytes of NULL cells are then dropped by one boolean mask."""
    n, m = values.shape
    missing = np.isnan(values)
    cells = np.empty((n, m), dtype=_FLOAT8)
    cells["length"] = np.where(missing, -1, 8)
    cells["value"] = values
    keep = np.ones((n, m, _FLOAT8.itemsize), dtype=bool)
    keep[:, :, 4:] = ~missing[:, :, None]
    data = cells.view(np.uint8).reshape(n, m, _FLOAT8.itemsize)[keep].tobytes()
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(keep.reshape(n, -1).sum(axis=1), out=offsets[1:])
    return data, offsets.tolist()


def _new_students_payloads(batch: Transformed, *, source_id: int, country: str, now: dt.datetime
                           ) -> tuple[io.BytesIO, io.BytesIO]:
    """The student rows and their +1 change-log rows in binary COPY format (NEW_STUDENT_COLUMNS and
    NEW_CHANGE_COLUMNS, both ending with raw). The fixed-width fields of every row are one NumPy assignment; the
    analysis fields (NULL or not) and raw are appended per row."""
    good, index = batch.good, batch.good_index
    country_bytes = country.encode()
    created = _created_microseconds(batch)
    now_microseconds = _postgres_microseconds(now)
    shared = [("created_length", ">i4"), ("created", ">i8"), ("cntschid_length", ">i4"), ("cntschid", ">i8"),
              ("country_length", ">i4"), ("country", f"S{len(country_bytes)}")]
    student = np.zeros(len(index), dtype=np.dtype([
        ("field_count", ">i2"), ("source_length", ">i4"), ("source", ">i8"), ("cntstuid_length", ">i4"),
        ("cntstuid", ">i8"), ("row_id_length", ">i4"), ("row_id", ">i8"), ("loaded_length", ">i4"), ("loaded", ">i8"),
        ("md5_length", ">i4"), ("md5", "S32"), *shared]))
    change = np.zeros(len(index), dtype=np.dtype([
        ("field_count", ">i2"), ("sign_length", ">i4"), ("sign", ">i2"), ("recorded_length", ">i4"),
        ("recorded", ">i8"), *shared]))
    for rows in (student, change):
        rows["created_length"], rows["created"] = 8, created
        rows["cntschid_length"], rows["cntschid"] = 8, batch.cntschid.astype(np.int64)
        rows["country_length"], rows["country"] = len(country_bytes), country_bytes
    student["field_count"] = len(NEW_STUDENT_COLUMNS.split(", "))
    student["source_length"], student["source"] = 8, source_id
    student["cntstuid_length"], student["cntstuid"] = 8, batch.cntstuid
    student["row_id_length"], student["row_id"] = 8, good.row_ids[index]
    student["loaded_length"], student["loaded"] = 8, now_microseconds
    student["md5_length"], student["md5"] = 32, [good.raw_md5[i].encode() for i in index]
    change["field_count"] = len(NEW_CHANGE_COLUMNS.split(", "))
    change["sign_length"], change["sign"] = 2, 1
    change["recorded_length"], change["recorded"] = 8, now_microseconds

    analysis, starts = _nullable_float8_fields(batch.analysis)
    student_bytes, change_bytes = student.tobytes(), change.tobytes()
    student_size, change_size = student.dtype.itemsize, change.dtype.itemsize
    student_parts, change_parts = [_BINARY_HEADER], [_BINARY_HEADER]
    for k, i in enumerate(index):
        values = analysis[starts[k]:starts[k + 1]]
        raw = good.raw[i]
        raw_field = struct.pack(">i", len(raw))
        student_parts += (student_bytes[k * student_size:(k + 1) * student_size], values, raw_field, raw)
        change_parts += (change_bytes[k * change_size:(k + 1) * change_size], values, raw_field, raw)
    student_parts.append(_BINARY_TRAILER)
    change_parts.append(_BINARY_TRAILER)
    return io.BytesIO(b"".join(student_parts)), io.BytesIO(b"".join(change_parts))


def _new_students_insert(cursor, *, source_id: int, country: str, batch: Transformed, new: _NewStudents) -> int:
    students, changes = _new_students_payloads(batch, source_id=source_id, country=country, now=new.now)
    cursor.copy_expert(f"COPY {STUDENT} ({NEW_STUDENT_COLUMNS}) FROM STDIN WITH (FORMAT binary)", students,
                       size=COPY_CHUNK_BYTES)
    cursor.copy_expert(f"COPY {CHANGE} ({NEW_CHANGE_COLUMNS}) FROM STDIN WITH (FORMAT binary)", changes,
                       size=COPY_CHUNK_BYTES)
    # Rows that load now are no longer in quarantine (the source fixed them).
    if new.source_has_quarantine:
        cursor.execute(f"DELETE FROM {QUARANTINE} WHERE source_id = %s AND source_row_id = ANY(%s)",
                       [source_id, batch.good.row_ids[batch.good_index].tolist()])
    return len(batch.good_index)


def _quarantine(cursor, source_id: int, country: str, rows) -> int:
    execute_values(
        cursor,
        f"""INSERT INTO {QUARANTINE} (source_id, source_row_id, cntstuid, reasons, raw, first_seen_at, last_seen_at)
            VALUES %s
            ON CONFLICT (source_id, source_row_id)
            DO UPDATE SET reasons = EXCLUDED.reasons, raw = EXCLUDED.raw, cntstuid = EXCLUDED.cntstuid,
                          last_seen_at = now()""",
        [(source_id, row_id, cntstuid[:64], Json(reasons), raw) for row_id, cntstuid, reasons, raw in rows],
        template="(%s, %s, %s, %s, %s, now(), now())",
    )
    # A row that used to be good and was changed into a bad one no longer counts as a student.
    return students_remove(cursor, source_id=source_id, country=country, row_ids=[row[0] for row in rows])


def students_remove(cursor, *, source_id: int, country: str, row_ids: list[int] | None) -> int:
    """Remove students loaded from these source rows (all of the source's when None), logging -1 changes."""
    country_write_lock(cursor, country=country)
    condition = "source_id = %s" + ("" if row_ids is None else " AND source_row_id = ANY(%s)")
    params: list = [source_id] if row_ids is None else [source_id, list(row_ids)]
    cursor.execute(
        f"""WITH gone AS (DELETE FROM {STUDENT} WHERE {condition} RETURNING {CHANGE_COLUMNS})
            INSERT INTO {CHANGE} (sign, recorded_at, {CHANGE_COLUMNS}) SELECT -1, now(), {CHANGE_COLUMNS} FROM gone""",
        params,
    )
    return cursor.rowcount
