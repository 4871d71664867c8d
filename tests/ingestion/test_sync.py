"""source_sync keeps the warehouse equal to the sources: new, late, updated, deleted and emptied rows."""

import math
import time

import pytest
import sqlalchemy as sa

from ingestion.models import SourceState, Student, StudentChange
from ingestion.pipeline import source_sync
from tests.ingestion.factories import minutes_ago


def warehouse_ids(source) -> set[int]:
    return set(Student.objects.filter(source=source).values_list("source_row_id", flat=True))


def test_first_run_loads_every_row_and_later_runs_only_the_new_ones(source_db):
    alb = source_db("ALB")
    first = alb.insert_students(40)
    result = source_sync(source_id=alb.source.pk)
    assert result.loaded == 40 and result.error == ""
    assert warehouse_ids(alb.source) == set(first)

    second = alb.insert_students(25)
    result = source_sync(source_id=alb.source.pk)
    assert result.loaded == 25
    assert warehouse_ids(alb.source) == set(first) | set(second)
    assert source_sync(source_id=alb.source.pk).loaded == 0


def test_a_source_url_spelled_postgres_colon_slash_slash_is_read_like_postgresql(source_db):
    alb = source_db("ALB")
    alb.insert_students(2)
    alb.source.url = alb.url.replace("postgresql+psycopg2://", "postgres://")  # Heroku's spelling, DATABASE_URL's too
    alb.source.save()
    result = source_sync(source_id=alb.source.pk)
    assert (result.error, result.loaded) == ("", 2)


def test_rows_committed_late_by_a_long_transaction_are_not_missed(source_db):
    alb = source_db("ALB")
    with alb.engine.connect() as long_transaction:
        # This transaction takes its ids and timestamps first, but commits after newer rows.
        late = alb.insert([alb.student(created_at=minutes_ago(1))], connection=long_transaction)
        on_time = alb.insert_students(10)
        assert source_sync(source_id=alb.source.pk).loaded == 10
        long_transaction.commit()
    assert max(late) < min(on_time)
    result = source_sync(source_id=alb.source.pk)
    assert result.loaded == 1
    assert warehouse_ids(alb.source) == set(late) | set(on_time)


def test_an_emptied_source_is_resynced(source_db):
    alb = source_db("ALB")
    alb.insert_students(30)
    source_sync(source_id=alb.source.pk)
    alb.execute("TRUNCATE responses RESTART IDENTITY")
    fresh = alb.insert_students(5)
    result = source_sync(source_id=alb.source.pk)
    assert result.reset
    assert warehouse_ids(alb.source) == set(fresh)
    assert SourceState.objects.get(source=alb.source).rows_loaded == 5


def test_deleted_rows_leave_the_warehouse(source_db):
    alb = source_db("ALB")
    ids = alb.insert_students(20)
    source_sync(source_id=alb.source.pk)
    alb.execute("DELETE FROM responses WHERE id = ANY(:ids)", ids=ids[:3])
    result = source_sync(source_id=alb.source.pk)
    assert result.removed == 3
    assert warehouse_ids(alb.source) == set(ids[3:])


def test_updated_rows_are_applied_and_logged_as_a_change(source_db):
    alb = source_db("ALB")
    ids = alb.insert_students(10, ESCS=0.25)
    source_sync(source_id=alb.source.pk)
    alb.execute("UPDATE responses SET escs = 1.5 WHERE id = :id", id=ids[0])
    SourceState.objects.filter(source=alb.source).update(last_reconciled_at=None)  # reconcile is due
    result = source_sync(source_id=alb.source.pk)
    assert result.reconciled and result.loaded == 1
    assert Student.objects.get(source=alb.source, source_row_id=ids[0]).escs == 1.5
    changes = list(StudentChange.objects.filter(country="ALB", escs__in=[0.25, 1.5]).values_list("sign", "escs"))
    assert changes.count((1, 0.25)) == 10 and (-1, 0.25) in changes and (1, 1.5) in changes


def test_an_update_in_a_postgresql_source_is_found_by_its_update_counter_without_waiting(source_db):
    alb = source_db("ALB")
    ids = alb.insert_students(10, ESCS=0.25)
    source_sync(source_id=alb.source.pk)
    assert not source_sync(source_id=alb.source.pk).reconciled  # nothing changed in place: no full comparison
    alb.execute("UPDATE responses SET escs = 1.5 WHERE id = :id", id=ids[0])
    deadline = time.monotonic() + 30  # the source's statistics count the update within about a second
    while not (result := source_sync(source_id=alb.source.pk)).reconciled:
        assert time.monotonic() < deadline, "the update counter never moved"
        time.sleep(0.2)
    assert result.loaded == 1
    assert Student.objects.get(source=alb.source, source_row_id=ids[0]).escs == 1.5
    assert not source_sync(source_id=alb.source.pk).reconciled  # and once compared, polls are cheap again


def test_missing_codes_become_null_in_analysis_columns(source_db):
    alb = source_db("ALB")
    [row_id] = alb.insert([alb.student(ESCS=99.0, TMINS=99999997, ST004D01T=9, DURECEC=95, BELONG=None)])
    source_sync(source_id=alb.source.pk)
    student = Student.objects.get(source_row_id=row_id, source=alb.source)
    assert (student.escs, student.tmins, student.st004d01t, student.durecec, student.belong) == (None,) * 5


def test_raw_keeps_all_1118_values_losslessly(source_db):
    alb = source_db("ALB")
    row = alb.student()
    [row_id] = alb.insert([row])
    source_sync(source_id=alb.source.pk)
    raw = Student.objects.get(source_row_id=row_id, source=alb.source).raw.split("\t")
    assert len(raw) == len(alb.variables) == 1118
    for spec, text in zip(alb.variables, raw):
        expected = row[spec.name]
        if expected is None:
            assert text == "\\N", spec.name
        elif isinstance(expected, float):
            assert float(text) == expected, spec.name
        else:
            assert text == str(expected), spec.name


def test_text_style_sources_load_the_same_values_as_typed_ones(source_db):
    typed, text = source_db("ALB"), source_db("ARG", style="text")
    students = [typed.student() for _ in range(15)]
    typed.insert(students)
    text.insert([{**s, "CNT": "ARG"} for s in students])
    source_sync(source_id=typed.source.pk)
    source_sync(source_id=text.source.pk)
    from ingestion.layout import ANALYSIS_COLUMNS

    def analysis(code):
        return [tuple(r) for r in Student.objects.filter(country=code).order_by("cntstuid")
                .values_list("cntstuid", "cntschid", *ANALYSIS_COLUMNS)]

    assert analysis("ALB") == analysis("ARG")
    assert len(analysis("ARG")) == 15


def test_upper_case_column_names_are_matched(source_db):
    alb = source_db("ALB", upper_case=True)
    alb.insert_students(5)
    assert source_sync(source_id=alb.source.pk).loaded == 5


def test_a_sqlite_source_loads_like_a_postgresql_one(source_db):
    lite = source_db("ALB", dialect="sqlite")
    ids = lite.insert_students(12)
    assert source_sync(source_id=lite.source.pk).loaded == 12
    assert warehouse_ids(lite.source) == set(ids)


@pytest.mark.parametrize("loads", ["one load", "one load per row"])
def test_deleting_the_row_that_superseded_duplicates_brings_the_latest_earlier_one_back(source_db, loads):
    from ingestion.models import DuplicateStudent

    alb = source_db("ALB")
    rows = []
    for _ in range(3):
        rows += alb.insert([alb.student(CNTSTUID=900001)])
        if loads == "one load per row":
            source_sync(source_id=alb.source.pk)
    first, second, latest = rows
    alb.insert_students(3)  # the deleted row is not the newest: the id diff, not a reset, must handle it
    source_sync(source_id=alb.source.pk)
    assert Student.objects.get(country="ALB", cntstuid=900001).source_row_id == latest

    alb.execute("DELETE FROM responses WHERE id = :id", id=latest)
    result = source_sync(source_id=alb.source.pk)

    assert not result.reset
    assert Student.objects.get(country="ALB", cntstuid=900001).source_row_id == second
    assert set(DuplicateStudent.objects.values_list("kept_row_id", "superseded_row_id")) == {(second, first)}
    assert warehouse_ids(alb.source) == alb.ids() - {first}


def test_a_sync_whose_time_budget_runs_out_stops_after_a_batch_and_the_next_carries_on(source_db, monkeypatch):
    from ingestion import pipeline

    monkeypatch.setattr(pipeline, "BATCH_ROWS", 10)
    alb = source_db("ALB")
    ids = alb.insert_students(5)
    source_sync(source_id=alb.source.pk)
    ids += alb.insert_students(35)  # a burst

    syncs = [source_sync(source_id=alb.source.pk, budget_seconds=0)]
    state = SourceState.objects.get(source=alb.source)
    assert state.backlog_pending and state.source_row_count == 40  # the status still shows the source's count
    while syncs[-1].truncated:
        assert len(syncs) < 10, "the syncs never caught up"
        syncs.append(source_sync(source_id=alb.source.pk, budget_seconds=0))

    # Each sync loads one batch once its budget is spent; the source did not change between them, yet each one
    # found the rows the previous left behind.
    assert [sync.loaded for sync in syncs] == [10, 10, 10, 5]
    assert warehouse_ids(alb.source) == set(ids)
    assert not SourceState.objects.get(source=alb.source).backlog_pending
    assert source_sync(source_id=alb.source.pk, budget_seconds=0).loaded == 0


def test_catching_up_after_a_first_load_cut_short_does_not_read_the_whole_source_again(source_db, monkeypatch):
    from ingestion import pipeline

    monkeypatch.setattr(pipeline, "BATCH_ROWS", 10)
    alb = source_db("ALB")
    ids = alb.insert_students(25)
    syncs = [source_sync(source_id=alb.source.pk, budget_seconds=0)]
    assert syncs[0].truncated
    # Every row up to the first snapshot is new: there is nothing to compare, however many syncs the load takes.
    assert SourceState.objects.get(source=alb.source).last_reconciled_at is not None
    while syncs[-1].truncated:
        assert len(syncs) < 10, "the syncs never caught up"
        syncs.append(source_sync(source_id=alb.source.pk, budget_seconds=0))
    assert warehouse_ids(alb.source) == set(ids)
    assert not any(sync.reconciled for sync in syncs)


def test_without_a_budget_a_sync_loads_the_whole_backlog(source_db, monkeypatch):
    from ingestion import pipeline

    monkeypatch.setattr(pipeline, "BATCH_ROWS", 10)
    alb = source_db("ALB")
    ids = alb.insert_students(35)
    result = source_sync(source_id=alb.source.pk)
    assert (result.loaded, result.batches, result.truncated) == (35, 4, False)
    assert warehouse_ids(alb.source) == set(ids)


def test_rows_deleted_during_a_backlog_leave_once_the_syncs_have_caught_up(source_db, monkeypatch):
    from ingestion import pipeline

    monkeypatch.setattr(pipeline, "BATCH_ROWS", 10)
    alb = source_db("ALB")
    ids = alb.insert_students(30)
    assert source_sync(source_id=alb.source.pk, budget_seconds=0).truncated
    alb.execute("DELETE FROM responses WHERE id = ANY(:ids)", ids=ids[:2])  # already loaded
    for _ in range(5):
        if not source_sync(source_id=alb.source.pk, budget_seconds=0).truncated:
            break
    assert warehouse_ids(alb.source) == set(ids[2:])
