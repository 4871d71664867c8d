"""The load's cost follows the batch, not the warehouse: matching a batch to its students is index lookups, and a
batch of students the warehouse does not hold yet is written without matching at all."""

from __future__ import annotations

import hashlib

import pytest
from django.db import connection, transaction

from ingestion.extract import SourceReader
from ingestion.layout import pisa_variables
from ingestion.layout import ANALYSIS_COLUMNS
from ingestion.load import LoadResult, _staged_upsert, batch_load, country_write_lock
from ingestion.models import QuarantinedRow, Student, StudentChange
from ingestion.pipeline import source_sync
from ingestion.transform import transform

pytestmark = pytest.mark.django_db(transaction=True)


def _warehouse_scans_in_this_transaction() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(seq_scan, 0) FROM pg_stat_xact_user_tables WHERE relname = %s",
                       [Student._meta.db_table])
        row = cursor.fetchone()
    return row[0] if row else 0


def test_a_batch_is_matched_to_its_students_without_scanning_the_warehouse(source_db):
    alb, arg = source_db("ALB"), source_db("ARG")
    alb.insert_students(1500)
    arg.insert_students(1500)
    source_sync(source_id=alb.source.pk)
    source_sync(source_id=arg.source.pk)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Student._meta.db_table}")  # statistics that make a hash join over it look cheap
    new_ids = alb.insert_students(50)
    reader = SourceReader(alb.source, pisa_variables())
    # Re-read rows (the look-back window) and new ones, as in every incremental batch.
    lines = reader.lines_for_ids(sorted(new_ids) + list(range(1, 51)))
    batch = transform(lines, pisa_variables(), country="ALB")

    with transaction.atomic():
        before = _warehouse_scans_in_this_transaction()
        load = batch_load(source_id=alb.source.pk, country="ALB", batch=batch)
        scans = _warehouse_scans_in_this_transaction() - before

    assert load.inserted_or_updated == 50 and load.removed == 0
    assert scans == 0
    assert Student.objects.filter(country="ALB").count() == 1550


def test_each_sync_reads_only_its_look_back_window_of_the_warehouse(source_db):
    import datetime as dt
    from django.utils import timezone

    from ingestion.pipeline import _ACCOUNTED_IDS_SQL, _accounted_ids

    alb = source_db("ALB")
    old = alb.insert_students(1500)
    source_sync(source_id=alb.source.pk)
    Student.objects.filter(source=alb.source).update(source_created_at=timezone.now() - dt.timedelta(hours=1))
    recent = alb.insert_students(20)
    source_sync(source_id=alb.source.pk)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Student._meta.db_table}")
    window_start = timezone.now() - dt.timedelta(minutes=5)

    assert _accounted_ids(alb.source, since=window_start) == set(recent)
    assert len(old) == 1500
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + _ACCOUNTED_IDS_SQL.format(since="AND source_created_at >= %(since)s"),
                       {"source": alb.source.pk, "since": window_start})
        plan = cursor.fetchone()[0][0]["Plan"]
    # A range scan of the window's index entries (index-only or through a bitmap), never a read of every student.
    nodes = list(_plan_nodes(plan))
    assert not [node for node in nodes if node["Node Type"] == "Seq Scan"
                and node.get("Relation Name") == Student._meta.db_table]
    assert [node for node in nodes if node.get("Index Name") == "student_source_created"]


def _plan_nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def test_a_staged_batch_stays_in_memory():
    # 1,000 staged rows of ~5 KB each: more than PostgreSQL's default 8 MB of temporary buffers, which made every
    # statement of a load read the staging table back from disk.
    from ingestion.pipeline import BATCH_ROWS

    with connection.cursor() as cursor:
        cursor.execute("SELECT setting::bigint * pg_size_bytes(unit) FROM pg_settings WHERE name = 'temp_buffers'")
        temp_buffers = cursor.fetchone()[0]
    assert temp_buffers >= BATCH_ROWS * 8192 * 2  # a staged row takes a page of its own; room for two batches


def _batch_of(source, row_ids):
    reader = SourceReader(source.source, pisa_variables())
    return transform(reader.lines_for_ids(sorted(row_ids)), pisa_variables(), country=source.code)


_COMPARED_STUDENT_COLUMNS = ("source_id", "country", "cntstuid", "cntschid", "source_row_id", "source_created_at",
                             "raw", "raw_md5", *ANALYSIS_COLUMNS)
_COMPARED_CHANGE_COLUMNS = ("sign", "country", "cntschid", "source_created_at", *ANALYSIS_COLUMNS)


def _warehouse_rows(source_id: int) -> tuple[list, list]:
    students = list(Student.objects.filter(source_id=source_id).order_by("source_row_id")
                    .values_list(*_COMPARED_STUDENT_COLUMNS))
    changes = list(StudentChange.objects.order_by("source_created_at", "cntschid", "id")
                   .values_list(*_COMPARED_CHANGE_COLUMNS))
    return students, changes


def test_new_students_written_straight_by_copy_equal_the_same_batch_upserted(source_db):
    alb = source_db("ALB")
    # The sample's missing values (NULL, and codes such as 99 that become NULL) must arrive as NULL, never as NaN.
    ids = alb.insert_students(400) + alb.insert_students(3, ESCS=None, ST004D01T=None) + alb.insert_students(
        2, PV1MATH=None, PV2MATH=None, PV3MATH=None, PV4MATH=None, PV5MATH=None, PV6MATH=None, PV7MATH=None,
        PV8MATH=None, PV9MATH=None, PV10MATH=None) + alb.insert_students(2, STRATUM="ALB0203 Zürich – ñ")
    batch = _batch_of(alb, ids)
    assert len(batch.good_index) == len(ids)

    with transaction.atomic():
        load = batch_load(source_id=alb.source.pk, country="ALB", batch=batch)
    copied = _warehouse_rows(alb.source.pk)
    Student.objects.all().delete()
    StudentChange.objects.all().delete()
    with transaction.atomic(), connection.cursor() as cursor:
        country_write_lock(cursor.cursor, country="ALB")
        upserted_result = LoadResult()
        _staged_upsert(cursor.cursor, source_id=alb.source.pk, country="ALB", batch=batch, result=upserted_result)
    upserted = _warehouse_rows(alb.source.pk)

    assert load.inserted_or_updated == upserted_result.inserted_or_updated == len(ids)
    assert copied == upserted
    students, changes = copied
    assert len(changes) == len(ids) and {change[0] for change in changes} == {1}
    escs = ANALYSIS_COLUMNS.index("escs") + 8
    assert sum(student[escs] is None for student in students) >= 3
    assert not any(value != value for student in students for value in student[8:] if isinstance(value, float))
    assert Student.objects.filter(source=alb.source, pv1math__isnull=True).count() == 2
    # Text beyond ASCII arrives as it was, and raw_md5 is the MD5 of what is stored (as the reconciliation computes it).
    assert Student.objects.filter(source=alb.source, raw__contains="\tALB0203 Zürich – ñ\t").count() == 2
    raw, md5 = _COMPARED_STUDENT_COLUMNS.index("raw"), _COMPARED_STUDENT_COLUMNS.index("raw_md5")
    assert all(hashlib.md5(student[raw].encode()).hexdigest() == student[md5] for student in students)


def test_a_batch_with_a_student_the_warehouse_holds_is_matched_and_upserted(source_db):
    alb = source_db("ALB")
    first = alb.insert_students(5)
    source_sync(source_id=alb.source.pk)
    # Its CNTSTUID is taken by a newer row: the new row must replace the student, not be added beside it.
    cntstuid = Student.objects.get(source=alb.source, source_row_id=first[0]).cntstuid
    newer = alb.insert_students(1, CNTSTUID=cntstuid) + alb.insert_students(3)
    with transaction.atomic():
        load = batch_load(source_id=alb.source.pk, country="ALB", batch=_batch_of(alb, newer))

    assert load.inserted_or_updated == 4 and load.duplicates == 1
    assert Student.objects.filter(source=alb.source).count() == 8
    assert Student.objects.get(country="ALB", cntstuid=cntstuid).source_row_id == newer[0]
    assert StudentChange.objects.filter(sign=-1).count() == 1


def test_a_new_student_leaves_the_quarantine_when_its_fixed_row_loads(source_db):
    alb = source_db("ALB")
    [row_id] = alb.insert_students(1, W_FSTUWT=None)
    source_sync(source_id=alb.source.pk)
    assert QuarantinedRow.objects.filter(source=alb.source, source_row_id=row_id).exists()
    # Fixed with a final weight its replicates agree with (each within 4 x the final weight: ingestion/plausibility.py)
    replicates = ", ".join(f"w_fsturwt{g} = 12.5" for g in range(1, 81))
    alb.execute(f"UPDATE responses SET w_fstuwt = 12.5, {replicates} WHERE id = :id", id=row_id)

    with transaction.atomic():
        load = batch_load(source_id=alb.source.pk, country="ALB", batch=_batch_of(alb, [row_id]))

    assert load.inserted_or_updated == 1
    assert not QuarantinedRow.objects.filter(source=alb.source).exists()
    assert Student.objects.get(source=alb.source, source_row_id=row_id).w_fstuwt == 12.5


def test_a_row_whose_cntstuid_changed_replaces_its_student_rather_than_adding_one(source_db):
    alb = source_db("ALB")
    [row_id, *_] = alb.insert_students(3)
    source_sync(source_id=alb.source.pk)
    StudentChange.objects.all().delete()
    alb.execute("UPDATE responses SET cntstuid = 99999001 WHERE id = :id", id=row_id)

    with transaction.atomic():
        load = batch_load(source_id=alb.source.pk, country="ALB", batch=_batch_of(alb, [row_id]))

    assert (load.inserted_or_updated, load.removed) == (1, 1)
    students_of_the_row = Student.objects.filter(source=alb.source, source_row_id=row_id)
    assert list(students_of_the_row.values_list("cntstuid", flat=True)) == [99999001]
    assert Student.objects.filter(source=alb.source).count() == 3
    assert sorted(StudentChange.objects.values_list("sign", flat=True)) == [-1, 1]


def test_every_student_carries_its_school_and_analysis_columns_packed_as_they_are_typed(source_db):
    """analysis_packed (migration 0012, generated by PostgreSQL) is PACKED_COLUMNS in order, NULL as NaN, after new
    students with missing values and an update by the ORM: the open analyses read it instead."""
    import numpy as np

    from ingestion.layout import PACKED_COLUMNS

    alb = source_db("ALB")
    ids = alb.insert_students(30) + alb.insert_students(2, ESCS=None, IMMIG=9)
    source_sync(source_id=alb.source.pk)
    Student.objects.filter(source_row_id=ids[0]).update(escs=1.25)  # any writer: PostgreSQL regenerates it
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT source_row_id, analysis_packed, {', '.join(PACKED_COLUMNS)} FROM ingestion_student")
        rows = {row[0]: row[1:] for row in cursor.fetchall()}
    assert sorted(rows) == sorted(ids)
    for packed, *typed in rows.values():
        expected = np.array([np.nan if value is None else value for value in typed], dtype=">f8")
        assert np.array_equal(np.frombuffer(bytes(packed), ">f8"), expected, equal_nan=True)
    immig, escs = PACKED_COLUMNS.index("immig"), PACKED_COLUMNS.index("escs")
    assert [rows[i][1 + immig] for i in ids[-2:]] == [None, None]  # 9, no response: a missing code, NULL
    assert rows[ids[0]][1 + escs] == 1.25
