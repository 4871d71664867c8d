"""The load's cost follows the batch, not the warehouse: matching a batch to its students is index lookups."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from ingestion.extract import SourceReader
from ingestion.layout import pisa_variables
from ingestion.load import batch_load
from ingestion.models import Student
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
