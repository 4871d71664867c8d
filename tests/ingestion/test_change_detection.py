"""Change detection that cannot cancel out: which ids changed is seen, not only how many rows there are.

The breaks of issue 14 that a count comparison missed: a late transaction that inserts one row and deletes
another (+1 and -1), a row deleted and re-inserted under the same id, and the deletion of a source's newest row
(which made the pipeline forget and reload the country, showing it half-loaded)."""

import time

from django.db import transaction

from ingestion.extract import IdsFingerprint
from ingestion.models import StudentChange, Student
from ingestion.pipeline import source_sync
from tests.ingestion.factories import minutes_ago


def warehouse_ids(source) -> set[int]:
    return set(Student.objects.filter(source=source).values_list("source_row_id", flat=True))


def test_a_late_transaction_inserting_one_row_and_deleting_another_is_seen_at_once(source_db):
    aut = source_db("AUT")
    ids = aut.insert_students(20)
    source_sync(source_id=aut.source.pk)
    with aut.engine.connect() as late:
        # Held long enough for its row to fall out of the look-back window: created 5 minutes ago, committed now.
        aut.insert([aut.student(created_at=minutes_ago(5))], connection=late)
        late.exec_driver_sql(f"DELETE FROM responses WHERE id = {ids[3]}")
        source_sync(source_id=aut.source.pk)  # before the commit: nothing to see
        late.commit()
    assert aut.count() == 20  # +1 and -1: the same row count, and the max id did not move either

    result = source_sync(source_id=aut.source.pk)

    assert (result.loaded, result.removed) == (1, 1)
    assert warehouse_ids(aut.source) == aut.ids()


def test_the_same_with_other_rows_arriving_meanwhile(source_db):
    aut = source_db("AUT")
    ids = aut.insert_students(20)
    source_sync(source_id=aut.source.pk)
    with aut.engine.connect() as late:
        aut.insert([aut.student(created_at=minutes_ago(5))], connection=late)
        late.exec_driver_sql(f"DELETE FROM responses WHERE id = {ids[0]}")
        aut.insert_students(5)
        source_sync(source_id=aut.source.pk)
        late.commit()
    aut.insert_students(2)
    source_sync(source_id=aut.source.pk)
    assert warehouse_ids(aut.source) == aut.ids()


def test_a_row_deleted_and_inserted_again_under_the_same_id_with_other_values_is_reloaded(source_db):
    aut = source_db("AUT")
    ids = aut.insert_students(10, ESCS=0.25)
    source_sync(source_id=aut.source.pk)
    assert not source_sync(source_id=aut.source.pk).reconciled
    target = ids[4]
    row = aut.student(ESCS=1.75, created_at=minutes_ago(60))
    with aut.engine.begin() as connection:
        connection.exec_driver_sql(f"DELETE FROM responses WHERE id = {target}")
        values = aut._column_values(row)
        connection.execute(aut.table.insert(), [{"id": target, **values}])
    # No update counter moves for this (it is a delete and an insert); the delete counter does, within a second.
    deadline = time.monotonic() + 30
    while Student.objects.get(source=aut.source, source_row_id=target).escs != 1.75:
        assert time.monotonic() < deadline, "the re-inserted row was never reloaded"
        source_sync(source_id=aut.source.pk)
        time.sleep(0.2)
    assert warehouse_ids(aut.source) == set(ids)


def test_deleting_the_newest_row_removes_that_row_only_and_never_reloads_the_country(source_db):
    dnk = source_db("DNK")
    ids = dnk.insert_students(30)
    source_sync(source_id=dnk.source.pk)
    StudentChange.objects.all().delete()

    dnk.execute("DELETE FROM responses WHERE id = :id", id=max(ids))
    result = source_sync(source_id=dnk.source.pk)

    assert result.removed == 1 and result.loaded == 0
    assert warehouse_ids(dnk.source) == set(ids) - {max(ids)}
    # One change: the deleted row's -1. A reload would have logged 30 removals and 29 additions, which readers saw
    # as 0, then 1,000, then 2,000 students...
    assert list(StudentChange.objects.values_list("sign", flat=True)) == [-1]
    dnk.insert_students(3)
    source_sync(source_id=dnk.source.pk)
    assert warehouse_ids(dnk.source) == dnk.ids()


def test_an_idle_poll_costs_one_query_and_a_steady_stream_never_asks_the_warehouse(source_db, monkeypatch):
    from ingestion import pipeline

    alb = source_db("ALB")
    alb.insert_students(20)
    source_sync(source_id=alb.source.pk)
    source_sync(source_id=alb.source.pk)  # verifies the fingerprint once
    asked = []
    real = pipeline.warehouse_ids_fingerprint
    monkeypatch.setattr(pipeline, "warehouse_ids_fingerprint", lambda *a: asked.append(a) or real(*a))
    for _ in range(3):
        alb.insert_students(4)
        assert source_sync(source_id=alb.source.pk).loaded == 4
    assert asked == []  # each poll's fingerprint was explained by the rows it appended
    assert warehouse_ids(alb.source) == alb.ids()


def test_the_fingerprint_tells_apart_sets_a_count_cannot():
    assert IdsFingerprint.of([1, 2, 3]) != IdsFingerprint.of([1, 2, 4])  # one swapped
    assert IdsFingerprint.of([1, 4]) != IdsFingerprint.of([2, 3])  # same count and sum
    assert IdsFingerprint.of([1, 5, 6]) != IdsFingerprint.of([2, 3, 7])  # same count, sum and sum of squares
    assert IdsFingerprint.of([3, 1, 2]) == IdsFingerprint.of([1, 2, 3])
    assert IdsFingerprint.of([1, 2]) + IdsFingerprint.of([7]) == IdsFingerprint.of([1, 2, 7])


def test_a_source_that_went_backwards_is_repaired_in_place_and_published_at_once(source_db, monkeypatch):
    from ingestion import pipeline
    from metrics import cache
    from metrics.services import country_metrics_refresh

    monkeypatch.setattr(pipeline, "BATCH_ROWS", 5)
    dnk = source_db("DNK")
    dnk.insert_students(30)
    source_sync(source_id=dnk.source.pk)
    country_metrics_refresh(country="DNK")
    dnk.execute("TRUNCATE responses RESTART IDENTITY")  # emptied and refilled with 20 other students
    dnk.insert_students(20)

    seen = []

    def refresh_and_look():  # what a metrics worker does after each commit that changed the country
        country_metrics_refresh(country="DNK")
        seen.append(cache.country_documents(["DNK"])["DNK"]["statistics"]["n_students"])

    monkeypatch.setattr(pipeline, "_refresh_metrics_after_commit",
                        lambda country: transaction.on_commit(refresh_and_look))
    result = source_sync(source_id=dnk.source.pk)

    assert result.reset and len(seen) >= 3
    assert seen[:-1] == [30] * (len(seen) - 1)  # readers saw the country as it was, never a partial one...
    assert seen[-1] == 20  # ...and then the repaired one, at once
    assert warehouse_ids(dnk.source) == dnk.ids()
