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
